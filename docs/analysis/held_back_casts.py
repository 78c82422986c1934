"""How much of the held-back figure rests on casts? FracAtlas marks implants (`hardware`) but not casts or splints,
which, like implants, show a fracture already treated. held_back_casts.csv is a label-blind reading of the 461
held-back images of held_back_split.py's split of fracatlas_dev (cast 1: the limb in a cast or splint), by a helper
session shown them on contact sheets in shuffled order, named by id only; one reader.

    python docs/analysis/held_back_casts.py RUN_FOLDER HELD_FRACATLAS_FOLDER [CASTS_CSV]

RUN_FOLDER: a run (notebook 3.18 or later) with EXTERNAL the held-back part: its external_predictions.csv.
HELD_FRACATLAS_FOLDER: that part, whose dataset.csv gives each image's region and hardware. CASTS_CSV: image_id and
cast (default: held_back_casts.csv beside this script). Prints the casts per class, then the shipped model's ROC-AUC
per radiograph over all, inside region (weighted by the smaller class) and without hardware (hed_heads' scores) on
the scored radiographs, without those in a cast, and without casts or hardware, each with a 95 % interval from
1,000 resamples of the run's units (external_predictions.csv's fold_group: a radiograph joined with its id block).
"""
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from hed_heads import scores
from held_back_heads import scored_rows
from sklearn.exceptions import UndefinedMetricWarning


def regions_and_marks(held_folder, casts):
    """Per FracAtlas image id: its region ("mixed" unless exactly one of hand, leg, hip, shoulder), hardware mark
    (dataset.csv) and cast (`casts`, a table of image_id and cast)."""
    table = pd.read_csv(held_folder / "dataset.csv", dtype=str).set_index("image_id")
    regions = table[["hand", "leg", "hip", "shoulder"]].eq("1")
    region = np.where(table["mixed"].eq("1") | regions.sum(axis=1).ne(1), "mixed", regions.idxmax(axis=1))
    cast = casts.set_index("image_id")["cast"].reindex(table.index)
    if cast.isna().any():
        missing = cast.index[cast.isna()]
        raise SystemExit(f"{len(missing)} held-back images have no cast reading (first: {missing[0]})")
    return pd.DataFrame({"region": region, "hardware": table["hardware"].eq("1"), "cast": cast.eq(1)}, table.index)


def radiographs(external, marks):
    """One row per scored radiograph of `external` (external_predictions.csv's rows): label, mean p_fractured, unit,
    region and whether any of its images shows hardware or a cast."""
    named = external.assign(**marks.loc[external["path"].map(lambda path: Path(path).name)].reset_index(drop=True))
    return named.groupby("group").agg(y=("label", lambda labels: labels.iloc[0] == "fractured"),
                                      p=("p_fractured", "mean"), unit=("fold_group", "first"),
                                      region=("region", "first"), hardware=("hardware", "max"), cast=("cast", "max"))


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


def main(run, held_folder, casts_csv):
    """Print the casts per class and the three figures with and without the radiographs in a cast."""
    marks = regions_and_marks(held_folder, pd.read_csv(casts_csv))
    rows = radiographs(scored_rows(pd.read_csv(run / "external_predictions.csv", keep_default_na=False)), marks)
    print(pd.crosstab(rows["cast"], rows["y"]).rename(index={True: "cast", False: "no cast"},
                                                     columns={True: "fractured", False: "not fractured"}))
    for name, kept in (("all", rows), ("without casts", rows[~rows["cast"]]),
                       ("without casts or hardware", rows[~rows["cast"] & ~rows["hardware"]])):
        values, intervals = figures(kept), unit_bootstrap(kept)
        print(f"{name} ({len(kept)} radiographs, {int(kept['y'].sum())} fractured): " + ", ".join(
            f"{view} {value:.3f} ({low:.3f}-{high:.3f})" for view, value, (low, high) in
            zip(("all", "inside region", "without hardware"), values, intervals)))


if __name__ == "__main__":
    default = Path(__file__).with_name("held_back_casts.csv")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else default)
