"""On held-back FracAtlas radiographs, does a logistic regression trained on the run's FracAtlas images alone rank
them better than the shipped model? A run trained with EXTERNAL naming the held-back part of held_back_split.py.

    python docs/analysis/held_back_heads.py RUN_FOLDER CACHED_INDEX HELD_FRACATLAS_FOLDER

RUN_FOLDER: that run (HED's trunk on the four views): its index.csv and cached features (as learning_curve.py reads
them) and its external_predictions.csv. CACHED_INDEX: the index.csv of a run whose data held the held-back images (a
run on the whole FracAtlas folder), whose `cache` column names each image's cached copy, and so its features: the
external test keeps their features in the same folder but lists them nowhere. HELD_FRACATLAS_FOLDER: the held-back
part, whose dataset.csv gives each image's region and hardware (hed_heads' `described`).

hed_heads' logistic regression (C=0.01) is fitted on every view of the run's usable FracAtlas images and scores the
held-back ones, averaged over their views (learning_curve's view_probabilities). Printed for the shipped model, the
regression, and their mean: ROC-AUC per radiograph over all, inside region and without hardware (hed_heads' scores),
the copies of training images the run named left out; then the regression's paired difference from the shipped model
over all, with a 95 % interval from 1,000 bootstrap resamples of the radiographs.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import described, scores
from learning_curve import features_of, features_store, view_probabilities
from sklearn.metrics import roc_auc_score
from training_sources import FRACATLAS, fracatlas_features


def cached_copies(paths, cached_index):
    """The cached copy of each of the images `paths`, found by file name among the FracAtlas rows of `cached_index`
    (an index.csv)."""
    fracatlas = cached_index[cached_index["dataset"] == FRACATLAS]
    copy = dict(zip(fracatlas["path"].map(lambda path: Path(path).name), fracatlas["cache"]))
    return [copy[Path(path).name] for path in paths]


def held_features(paths, cached_index, store):
    """The cached features of the images `paths` (images x views x features), their cached copies found by
    cached_copies and their features read from the features folder `store`."""
    return features_of(store, [Path(copy).stem for copy in cached_copies(paths, cached_index)])


def paired_difference(y, group, p, q, resamples=1000, seed=0):
    """ROC-AUC per radiograph (its images' mean) of `q` less that of `p`, with a 95 % bootstrap interval."""
    r = pd.DataFrame({"g": group, "y": y, "p": p, "q": q}).groupby("g").agg(y=("y", "first"), p=("p", "mean"),
                                                                          q=("q", "mean"))
    rng, differences = np.random.default_rng(seed), []
    for _ in range(resamples):
        drawn = r.iloc[rng.integers(0, len(r), len(r))]
        if drawn["y"].nunique() == 2:
            differences.append(roc_auc_score(drawn["y"], drawn["q"]) - roc_auc_score(drawn["y"], drawn["p"]))
    return roc_auc_score(r["y"], r["q"]) - roc_auc_score(r["y"], r["p"]), np.percentile(differences, [2.5, 97.5])


def scored_rows(external):
    """The rows of `external_predictions.csv` whose radiographs the notebook scored: those without a `note` saying
    why the radiograph was left out (notebook 3.18 and later write it)."""
    if "note" not in external.columns:
        sys.exit("external_predictions.csv has no `note` column: rerun the notebook (3.18 or later), which writes "
                 "why each left-out radiograph was left out.")
    return external[external["note"].fillna("").eq("")].reset_index(drop=True)


def main(run, cached_index, held_folder):
    """Print the shipped model's, the regression's and their mean's figures on the held-back radiographs."""
    images, features = fracatlas_features(run)
    external = scored_rows(pd.read_csv(run / "external_predictions.csv"))
    store = features_store(run, Path(images["cache"].iloc[0]).parent)
    held = held_features(external["path"], pd.read_csv(cached_index), store)
    y = images["label"].eq("fractured").to_numpy(int)
    _, y_held, _, group, region, hardware = described(external, run, held_folder)
    everything, labels = np.concatenate([features, held]), np.concatenate([y, y_held])
    p_lr = view_probabilities(everything, labels, np.arange(len(y)), np.arange(len(y), len(labels)))
    shipped = external["p_fractured"].to_numpy()
    for name, p in (("shipped model", shipped), ("regression on FracAtlas alone", p_lr),
                    ("their mean", (shipped + p_lr) / 2)):
        print(f"{name}: all {{:.3f}}, inside region {{:.3f}}, without hardware {{:.3f}}".format(
            *scores(p, y_held, group, region, hardware)))
    difference, (low, high) = paired_difference(y_held, group, shipped, p_lr)
    print(f"regression less shipped model, all: {difference:+.3f} ({low:+.3f} to {high:+.3f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
