"""Split a FracAtlas folder into a training part and a held-back part, each in FracAtlas's own layout, so that a run
can train on one and test on the other with EXTERNAL: a stand-in, on the data one has, for the project's check
(trained on fracatlas_dev, tested on the rest of FracAtlas).

    python docs/analysis/held_back_split.py FRACATLAS_FOLDER OUT_FOLDER

FRACATLAS_FOLDER: the folder holding images/Fractured, images/Non_fractured and dataset.csv (and, if there, the COCO
outlines under Annotations/COCO JSON). The images are dealt by blocks of ID_BLOCK consecutive image ids (one patient's
views have neighbouring ids, as the notebook's ID_BLOCK keeps them together) into FOLDS stratified folds at SEED; one
fold is held back. OUT_FOLDER/train/FracAtlas and OUT_FOLDER/held/FracAtlas each get copies of their images, their
rows of dataset.csv and their outlines. Nothing in FRACATLAS_FOLDER is changed, and OUT_FOLDER must not exist yet.
docs/results.md's held-back test ran on the split this makes of fracatlas_dev.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

ID_BLOCK, FOLDS, SEED = 20, 5, 123
OUTLINES = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"


def held_back(table, id_block=ID_BLOCK, folds=FOLDS, seed=SEED):
    """A boolean per row of `table` (FracAtlas's dataset.csv): held back, the first of `folds` stratified folds of
    blocks of `id_block` consecutive image ids, dealt at `seed`."""
    block = table["image_id"].str.extract(r"IMG(\d{7})", expand=False).astype(int) // id_block
    _, held = next(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(table, table["fractured"], block))
    return np.isin(np.arange(len(table)), held)


def write_part(source, target, rows, coco):
    """Copy the images of `rows` (dataset.csv's) from FracAtlas folder `source` into a new one, `target`, with those
    rows as its dataset.csv and, if `coco` (the source's outlines) is given, the outlines of those images."""
    for name in ("Fractured", "Non_fractured"):
        (target / "images" / name).mkdir(parents=True)
    for image_id, fractured in zip(rows["image_id"], rows["fractured"]):
        folder = "Fractured" if fractured else "Non_fractured"
        shutil.copy2(source / "images" / folder / image_id, target / "images" / folder / image_id)
    rows.to_csv(target / "dataset.csv", index=False)
    if coco is not None:
        images = [image for image in coco["images"] if image["file_name"] in set(rows["image_id"])]
        kept = {image["id"] for image in images}
        (target / OUTLINES).parent.mkdir(parents=True)
        (target / OUTLINES).write_text(json.dumps({**coco, "images": images, "annotations": [
            outline for outline in coco["annotations"] if outline["image_id"] in kept]}))


def main(source, out):
    """Write OUT/train/FracAtlas and OUT/held/FracAtlas from the FracAtlas folder `source`; print their sizes."""
    if out.exists():
        sys.exit(f"{out} exists: name a new folder, so that nothing already there is overwritten.")
    table = pd.read_csv(source / "dataset.csv")
    coco = json.loads((source / OUTLINES).read_text()) if (source / OUTLINES).is_file() else None
    held = held_back(table)
    for name, rows in (("train", table[~held]), ("held", table[held])):
        write_part(source, out / name / "FracAtlas", rows, coco)
        print(f"{name}: {len(rows)} images, {int(rows['fractured'].sum())} fractured -> {out / name / 'FracAtlas'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
