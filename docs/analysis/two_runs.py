"""Does averaging two runs' models rank one data set's fractures better than either alone? For two runs of the
notebook on the same data with the same folds (e.g. the CNN from scratch and HED's trunk, both at seed 42), the
out-of-fold probability of each radiograph from each run (its seeds' mean), and their mean.

Usage: python docs/analysis/two_runs.py RUN_A RUN_B DATA_SET [WEIGHT_B]

RUN_A, RUN_B: the run folders (their radiographs.csv and seed_predictions.csv); DATA_SET: a part of the paths of the
radiographs to score (e.g. `fracatlas_dev`); WEIGHT_B: run B's weight in the mean (default 0.5). Prints ROC-AUC per
radiograph over all, inside body part (weighted by the smaller class, as the notebook's matched figures are) and
without hardware (the `hardware` mark), for each run and for the mean, with 95 % intervals, and the mean's gain over
each run with its paired interval (1,000 bootstrap resamples of the radiographs).
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import scores


def out_of_fold(run, data_set):
    """The run's radiographs of `data_set` (group, fold, label, body part, marks) with their out-of-fold p(fractured),
    the mean over the run's seeds."""
    radiographs = pd.read_csv(run / "radiographs.csv", keep_default_na=False)
    radiographs = radiographs[radiographs["path"].str.contains(data_set, regex=False)]
    p = pd.read_csv(run / "seed_predictions.csv").groupby("group")["p_fractured"].mean()
    return radiographs.set_index("group")[["fold", "label", "body_part", "marks"]].join(p, how="inner")


def figures(described, p):
    """ROC-AUC over all, inside body part (weighted by the smaller class) and without hardware: hed_heads' `scores`,
    each row of `described` a radiograph of its own (a radiograph drawn twice by the bootstrap counts twice)."""
    return np.array(scores(np.asarray(p), described["label"].eq("fractured").to_numpy(), np.arange(len(described)),
                           described["body_part"].to_numpy(), described["marks"].str.contains("hardware").to_numpy()))


def described_figures(values, resampled, form):
    """One line of the three figures, each with the 95 % interval of its bootstrap `resampled` values."""
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    return ", ".join(f"{view} {value:{form}} ({lo:{form}} to {hi:{form}})" for view, value, lo, hi in
                     zip(("all", "inside body part", "without hardware"), values, low, high))


def main(run_a, run_b, data_set, weight_b, resamples=1000):
    """Print each run's figures and their weighted mean's, with bootstrap intervals over `resamples` resamples of
    the radiographs; stop if the two runs' radiographs or folds differ."""
    a, b = out_of_fold(run_a, data_set), out_of_fold(run_b, data_set)
    if not a.index.equals(b.index) or not a["fold"].equals(b["fold"]):
        raise SystemExit("the two runs do not hold the same radiographs in the same folds: not comparable")
    models = {run_a.name: a["p_fractured"], run_b.name: b["p_fractured"],
              "mean": (1 - weight_b) * a["p_fractured"] + weight_b * b["p_fractured"]}
    rng = np.random.default_rng(42)
    draws = [a.index[rng.integers(0, len(a), len(a))] for _ in range(resamples)]
    resampled = {name: np.array([figures(a.loc[rows].reset_index(), p.loc[rows].reset_index(drop=True))
                                 for rows in draws]) for name, p in models.items()}
    print(f"{len(a)} radiographs of {data_set}; run B's weight {weight_b}")
    for name, p in models.items():
        print(f"{name}: {described_figures(figures(a, p), resampled[name], '.3f')}")
    for name in (run_a.name, run_b.name):
        gain = figures(a, models["mean"]) - figures(a, models[name])
        print(f"mean minus {name}: {described_figures(gain, resampled['mean'] - resampled[name], '+.3f')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 0.5)
