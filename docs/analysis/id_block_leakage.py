"""Leakage through neighbouring FracAtlas ids, measured with a logistic regression on the cached HED features:
5 grouped folds at 10 seeds, folds by radiograph (ID_BLOCK=0) against folds by blocks of 20 ids (ID_BLOCK=20).

Usage: python docs/analysis/id_block_leakage.py RUN_FOLDER FEATURES_FOLDER, with the folder of a BACKBONE=hed run
on FracAtlas (its index.csv and folds.csv) and the -hed-features folder beside its cache."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

run, store = Path(sys.argv[1]), Path(sys.argv[2])
index = pd.read_csv(run / "index.csv", keep_default_na=False)
used = index[index["note"] == ""].reset_index(drop=True)
X = np.stack([np.load(store / (Path(c).stem + ".npy")) for c in used["cache"]])
y = (used["label"] == "fractured").to_numpy()
folds_csv = pd.read_csv(run / "folds.csv").drop_duplicates("path").set_index("path")
unit = used["path"].map(folds_csv["fold_group"]).to_numpy()
group = used["group"].to_numpy()
def cv(groups, seed):
    p = np.zeros(len(y))
    for tr, te in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(X, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)).fit(X[tr], y[tr])
        p[te] = model.predict_proba(X[te])[:, 1]
    r = pd.DataFrame({"g": group, "y": y, "p": p}).groupby("g").mean()
    return roc_auc_score(r["y"] > 0.5, r["p"])
res = {name: [cv(g, s) for s in range(10)] for name, g in [("radiograph folds", group), ("id-block folds", unit)]}
for name, v in res.items():
    print(f"{name}: mean {np.mean(v):.3f}, range {min(v):.3f}-{max(v):.3f}, per seed {[round(x, 3) for x in v]}")
d = np.array(res["radiograph folds"]) - np.array(res["id-block folds"])
print(f"difference: mean {d.mean():.3f}, min {d.min():.3f}, max {d.max():.3f}")
