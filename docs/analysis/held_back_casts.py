"""How much of the held-back split's figures rests on casts? FracAtlas marks implants (`hardware`) but not casts or
splints, which, like implants, show a fracture already treated. fracatlas_dev_casts.csv is a label-blind reading of
fracatlas_dev's images (cast 1: the limb in a cast or splint): helper sessions shown them on contact sheets in
shuffled order, named by id only, one reader an image (`part`: the held-back or the training part of
held_back_split.py's split, read in separate passes).

    python docs/analysis/held_back_casts.py RUN_FOLDER HELD_FRACATLAS_FOLDER [TRAIN_FRACATLAS_FOLDER]

RUN_FOLDER: a run (notebook 3.18 or later) on the split, EXTERNAL its held-back part: its external_predictions.csv
and, for the training part, its radiographs.csv, seed_predictions.csv and folds.csv. HELD_FRACATLAS_FOLDER and
TRAIN_FRACATLAS_FOLDER: the two parts, whose dataset.csv gives each image's region and hardware. Prints, for the
held-back radiographs (the shipped model) and, if given, the training part's FracAtlas radiographs (out of fold, the
seeds' mean): the casts per class, then ROC-AUC per radiograph over all, inside region (weighted by the smaller
class) and without hardware (hed_heads' scores) on every radiograph, without those in a cast, and without casts or
hardware, each with a 95 % interval from 1,000 resamples of the run's units (fold_group: a radiograph joined with its
id block).
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import regions_and_hardware, scores
from held_back_heads import scored_rows
from sklearn.exceptions import UndefinedMetricWarning
from two_runs import out_of_fold as two_runs_out_of_fold

CASTS = Path(__file__).with_name("fracatlas_dev_casts.csv")


def regions_and_marks(folder, casts):
    """Per FracAtlas image id of `folder`'s dataset.csv: its region and hardware mark (hed_heads'
    regions_and_hardware) and its cast (`casts`, a table of image_id and cast)."""
    marks = regions_and_hardware(folder)
    cast = casts.set_index("image_id")["cast"].reindex(marks.index)
    if cast.isna().any():
        missing = cast.index[cast.isna()]
        raise SystemExit(f"{len(missing)} images of {folder} have no cast reading (first: {missing[0]})")
    return marks.assign(cast=cast.eq(1))


def radiographs(images, marks):
    """One row per radiograph (`group`) of `images` (path, group, fold_group, label, p_fractured): its label, mean
    p_fractured, unit, region and whether any of its images shows hardware or a cast (`marks`, by file name)."""
    named = images.reset_index(drop=True).assign(
        **marks.loc[images["path"].map(lambda path: Path(path).name)].reset_index(drop=True))
    return named.groupby("group").agg(y=("label", lambda labels: labels.iloc[0] == "fractured"),
                                      p=("p_fractured", "mean"), unit=("fold_group", "first"),
                                      region=("region", "first"), hardware=("hardware", "max"), cast=("cast", "max"))


def out_of_fold(run, folder):
    """The run's out-of-fold predictions of the radiographs under `folder` (two_runs' out_of_fold: the seeds' mean,
    a radiograph no fold scored left out), one row per radiograph, with its fold unit (folds.csv)."""
    scored = two_runs_out_of_fold(run, str(folder.resolve())).reset_index()
    units = pd.read_csv(run / "folds.csv").drop_duplicates("path").set_index("path")["fold_group"]
    return scored.assign(fold_group=scored["path"].map(units).to_numpy())


def figures(rows):
    """hed_heads' three ROC-AUCs of `rows` (one per radiograph); NaN where no region holds both classes (a resample
    can draw such rows)."""
    if not rows.groupby("region")["y"].nunique().eq(2).any():
        return np.full(3, np.nan)
    return np.array(scores(rows["p"].to_numpy(), rows["y"].to_numpy(), np.arange(len(rows)), rows["region"].to_numpy(),
                           rows["hardware"].to_numpy()))


def unit_bootstrap(rows, resamples=1000, seed=42):
    """95 % intervals of `figures` over resamples of whole units (each unit's radiographs drawn together); a view
    that a resample leaves with one class counts as NaN there."""
    rng, units = np.random.default_rng(seed), rows["unit"].unique()
    members = {unit: np.flatnonzero(rows["unit"].to_numpy() == unit) for unit in units}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        drawn = [figures(rows.iloc[np.concatenate([members[unit] for unit in rng.choice(units, len(units))])])
                 for _ in range(resamples)]
    return np.nanpercentile(np.array(drawn), [2.5, 97.5], axis=0).T


def report(name, rows):
    """Print the casts per class of `rows` and the three figures with and without the radiographs in a cast."""
    counts = pd.crosstab(rows["cast"], rows["y"]).reindex(index=[False, True], columns=[False, True], fill_value=0)
    print(f"{name}: {counts.loc[True, True]} of {counts[True].sum()} fractured radiographs in a cast, "
          f"{counts.loc[True, False]} of {counts[False].sum()} not fractured")
    for view, kept in (("every radiograph", rows), ("without casts", rows[~rows["cast"]]),
                       ("without casts or hardware", rows[~rows["cast"] & ~rows["hardware"]])):
        values, intervals = figures(kept), unit_bootstrap(kept)
        print(f"  {view} ({len(kept)}, {int(kept['y'].sum())} fractured): " + ", ".join(
            f"{figure} {value:.3f} ({low:.3f}-{high:.3f})" for figure, value, (low, high) in
            zip(("all", "inside region", "without hardware"), values, intervals)))


def main(run, held_folder, train_folder=None, casts_csv=CASTS):
    """Print `report` for the held-back radiographs and, with `train_folder`, the training part's."""
    casts = pd.read_csv(casts_csv)
    external = scored_rows(pd.read_csv(run / "external_predictions.csv", keep_default_na=False))
    report("held back, the shipped model", radiographs(external, regions_and_marks(held_folder, casts)))
    if train_folder is not None:
        report("the training part, out of fold", radiographs(out_of_fold(run, train_folder),
                                                             regions_and_marks(train_folder, casts)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
