"""Which of HED's layers, and which views of each image, rank FracAtlas's fractures best? A logistic regression on
the frozen trunk's pooled features, with the notebook's id-block folds.

Two steps:

    python docs/analysis/hed_layers.py extract RUN_FOLDER FEATURES_FOLDER VIEW
    python docs/analysis/hed_layers.py score RUN_FOLDER FEATURES_FOLDER FRACATLAS_FOLDER FEATURES[,...] VIEWS[,...]

RUN_FOLDER: a BACKBONE=hed run of the notebook on FracAtlas (as for hed_heads.py: its index.csv, whose cached 224 px
images are read, and folds.csv, whose `fold_group` is dealt into 5 stratified grouped folds at seeds 42, 1 and 7).
`extract` keeps, in FEATURES_FOLDER/VIEW, the mean and the generalised mean (power 3, `gem3`) over the map of every
convolution and pooling of HED's blocks 3 to 5 (e.g. `b4c3_mean`: block4_conv3's maps, mean-pooled; `b4pool`: block
4's pooling), of each cached image seen as VIEW: `image`, `mirror` (left-right), `upside_down`, `rotated180`,
`zoomed` (its central 85 % enlarged), `zoomed_mirror`, `zoomed70` (its central 70 %), `zoomed70_mirror`, `zoomed55`,
`zoomed55_mirror`, `enlarged320` (the whole image, its longest side 320 px), `enlarged320_mirror`, `tilted` (turned
8 degrees) or `tilted_mirror`. `score` fits a logistic regression (standardized features, C=0.01) on each FEATURES
(`+` joins several) and prints the out-of-fold ROC-AUC per radiograph over all, inside region (weighted by the
smaller class) and without hardware, the mean of the three seeds' figures, and those of the three seeds' mean
probability (seeds together). With THREE_FOLDS=1 in the environment, each fold's regression is trained on three
folds of five, a grouped fourth left out as the notebook leaves out its validation part. VIEWS says which views
of each image it is trained on and which it averages when scoring, as TRAIN:TEST of view initials (i image, m
mirror, u upside down, r rotated, z zoomed, y zoomed mirror, c and d the same at 70 %, g and h at 55 %, e enlarged,
f enlarged mirror, t tilted, s tilted mirror): `i:i` the image alone, `im:im` the image and its mirror in both,
`imcd:imcd` the four views of the notebook's TTA.
"""
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
from hed_heads import cached_images, described_images, hed_taps, scores, summary
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEEDS = (42, 1, 7)
THREE_FOLDS = os.environ.get("THREE_FOLDS") == "1"  # train on three folds of five, as the notebook's head does
VIEWS = {"i": "image", "m": "mirror", "u": "upside_down", "r": "rotated180", "z": "zoomed", "y": "zoomed_mirror",
         "c": "zoomed70", "d": "zoomed70_mirror", "g": "zoomed55", "h": "zoomed55_mirror", "e": "enlarged320",
         "f": "enlarged320_mirror", "t": "tilted", "s": "tilted_mirror"}


def pooled_layers():
    """HED's trunk (its weights) as a model from an RGB input in 0-255 to two pooled vectors of each layer of blocks
    3 to 5: the maps' mean and their generalised mean of power 3; and the names of those outputs."""
    inputs = keras.Input((None, None, 3))
    names, outputs = [], []
    for name, maps in hed_taps(inputs).items():
        if int(name[1]) >= 3:
            names += [f"{name}_mean", f"{name}_gem3"]
            outputs += [keras.ops.mean(maps, axis=(1, 2)),
                        keras.ops.power(keras.ops.mean(keras.ops.power(maps, 3), axis=(1, 2)) + 1e-9, 1 / 3)]
    return keras.Model(inputs, outputs), names


def seen_as(image, view):
    """A greyscale PIL image seen as `view`, as a float32 array of its size: `zoomed` is its central 85 %
    enlarged back to its size (`zoomed70` its central 70 %), `enlarged320` enlarged to 320 px on its longest
    side, `tilted` turned 8 degrees anticlockwise (corners black), a view with `mirror` in its name (and
    `rotated180`) turned left to right, `upside_down` (and `rotated180`) top to bottom."""
    if view.startswith("zoomed"):  # zoomed70: its central 70 %
        kept = int(view.removeprefix("zoomed").split("_")[0] or 85) / 100
        margin = [round((1 - kept) / 2 * side) for side in image.size]
        image = image.crop((margin[0], margin[1], image.width - margin[0], image.height - margin[1]))
        image = image.resize((image.width + 2 * margin[0], image.height + 2 * margin[1]), Image.BILINEAR)
    if view.startswith("enlarged"):  # enlarged320: its longest side 320 px
        scale = int(view.removeprefix("enlarged").split("_")[0]) / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    if view.startswith("tilted"):
        image = image.rotate(8, Image.BILINEAR)
    if "mirror" in view or view == "rotated180":
        image = ImageOps.mirror(image)
    if view in ("upside_down", "rotated180"):
        image = ImageOps.flip(image)
    return np.asarray(image, np.float32)


def extract(run, out, view):
    """Keep the pooled features of every layer of blocks 3 to 5 of the run's cached images, seen as `view`, in
    out/view, a .npy file per output (rows in the order of out/images.csv)."""
    used = cached_images(run)
    model, names = pooled_layers()
    kept = [[] for _ in names]
    for start in range(0, len(used), 32):
        grey = np.stack([seen_as(Image.open(path).convert("L"), view) for path in used["cache"][start:start + 32]])
        for k, pooled in enumerate(model.predict(np.repeat(grey[..., None], 3, -1), batch_size=16,
                                                 verbose=0)):
            kept[k].append(pooled)
        print(f"{start + len(grey)} of {len(used)} images", flush=True)
    (out / view).mkdir(parents=True, exist_ok=True)
    for name, pooled in zip(names, kept):
        np.save(out / view / f"{name}.npy", np.concatenate(pooled))
    used[["path", "cache", "label", "group"]].to_csv(out / "images.csv", index=False)


def score(run, out, fracatlas, features, views):
    """Print the out-of-fold figures of a logistic regression on each of `features`, trained on and averaged over
    each of `views` (TRAIN:TEST view initials), at seeds 42, 1 and 7."""
    _, y, unit, group, part, hardware = described_images(run, out, fracatlas)
    for feature in features:
        for spec in views:
            taught, averaged = spec.split(":")
            seen = {initial: np.concatenate([np.load(out / VIEWS[initial] / f"{name}.npy")
                                             for name in feature.split("+")], axis=1) for initial in taught + averaged}
            figures, probabilities, start = [], [], time.perf_counter()
            for seed in SEEDS:
                p = np.zeros(len(y))
                for k, (train, test) in enumerate(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(
                        y, y, unit), start=1):
                    if THREE_FOLDS:  # leave out a validation part as the notebook's fold_parts does
                        inner = StratifiedGroupKFold(4, shuffle=True, random_state=seed + k)
                        train = train[next(inner.split(train, y[train], unit[train]))[0]]
                    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
                    fitted.fit(np.concatenate([seen[v][train] for v in taught]), np.tile(y[train], len(taught)))
                    p[test] = np.mean([fitted.predict_proba(seen[v][test])[:, 1] for v in averaged], axis=0)
                figures.append(scores(p, y, group, part, hardware))
                probabilities.append(p)
            together = scores(np.mean(probabilities, axis=0), y, group, part, hardware)
            print(summary(f"{feature} {spec}", figures, SEEDS, time.perf_counter() - start,
                          "seeds together: all {:.3f}, inside region {:.3f}, without hardware {:.3f}; ".format(
                              *together)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
    else:
        score(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5].split(","), sys.argv[6].split(","))
