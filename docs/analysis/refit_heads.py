"""Would the shipped model score radiographs from elsewhere better as a head refitted on every training radiograph
than as the average of the fold heads it ships today? A simulation on the FracAtlas features a notebook run cached.

    python docs/analysis/refit_heads.py RUN_FOLDER FRACATLAS_FOLDER

RUN_FOLDER: a run of the notebook that trained HED's trunk on the four views, on FracAtlas alone or with other sets
(only FracAtlas's images are used): its index.csv, folds.csv and cached features, as learning_curve.py reads them.
FracAtlas's fold units are dealt into 5 stratified grouped outer folds (seed OUTER_SEED); each in turn stands for
the held-back radiographs, and the other four for the training data of a run. On those, three ways to make the
shipped model, each hed_heads' logistic regression on the four views (standardized features, C=0.01), the held-out
images' probabilities averaged over their views (view_patches' `over_views`):

    fold heads, as shipped     the run's 5 folds (seed 42), each head fitted on its training part less a validation
                               quarter (as the notebook's fold_parts takes it), the 5 heads' probabilities averaged
    fold heads, no validation  the same heads fitted on their whole training part
    refitted on all            one head fitted on all of the run's training data

It prints each way's figures on the held-out radiographs, pooled over the outer folds (ROC-AUC over all, inside
region weighted by the smaller class, without hardware: hed_heads' `scores`).
"""
import sys
from pathlib import Path

import numpy as np
from hed_heads import described, scores
from learning_curve import view_probabilities
from sklearn.model_selection import StratifiedGroupKFold
from training_sources import fracatlas_features

OUTER_SEED, RUN_SEED = 123, 42
WAYS = ("fold heads, as shipped", "fold heads, no validation", "refitted on all")


def fold_training_rows(y, unit, rows, seed=RUN_SEED):
    """The training rows of each of a run's 5 folds over `rows`, as [(with a validation quarter left out, whole)]:
    the folds grouped by `unit` and stratified, the quarter one of 4 grouped folds of the rest (fold_parts)."""
    folds = []
    for k, (train, _) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(
            rows, y[rows], unit[rows])):
        inner = StratifiedGroupKFold(4, shuffle=True, random_state=seed + k)
        _, val = next(inner.split(train, y[rows][train], unit[rows][train]))
        folds.append((rows[np.delete(train, val)], rows[train]))
    return folds


def shipped_probabilities(features, y, unit, rows, held):
    """{way: the `held` images' probabilities} for each of WAYS, the shipped model made from the images `rows`."""
    folds = fold_training_rows(y, unit, rows)
    return {"fold heads, as shipped": np.mean([view_probabilities(features, y, part, held) for part, _ in folds], 0),
            "fold heads, no validation": np.mean([view_probabilities(features, y, whole, held) for _, whole in folds],
                                                 0),
            "refitted on all": view_probabilities(features, y, rows, held)}


def held_out_probabilities(features, y, unit, seed=OUTER_SEED):
    """{way: each image's probability from the shipped model of the run that held its outer fold back}."""
    probabilities = {way: np.zeros(len(y)) for way in WAYS}
    for rows, held in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit):
        for way, p in shipped_probabilities(features, y, unit, rows, held).items():
            probabilities[way][held] = p
    return probabilities


def main(run, fracatlas_folder):
    """Print each way's figures on the held-out FracAtlas radiographs, pooled over the outer folds."""
    images, features = fracatlas_features(run)
    _, y, unit, group, part, hardware = described(images, run, fracatlas_folder)
    for way, p in held_out_probabilities(features, y, unit).items():
        print(f"{way}: all {{:.3f}}, inside region {{:.3f}}, without hardware {{:.3f}}".format(
            *scores(p, y, group, part, hardware)), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
