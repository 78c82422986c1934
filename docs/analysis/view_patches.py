"""Patches together with the four views of notebook 3.9's TTA: do patches of HED's block-4 maps, taught where the
outlined fractures are, still add to the whole image once each image is also seen mirrored and zoomed?

Two steps:

    python docs/analysis/view_patches.py extract RUN_FOLDER WINDOWS_FOLDER
    python docs/analysis/view_patches.py score RUN_FOLDER WINDOWS_FOLDER FEATURES_FOLDER FRACATLAS_FOLDER [TEACH]

RUN_FOLDER: a BACKBONE=hed run of the notebook on FracAtlas, as for hed_heads.py (its cached 224 px images and its
folds). `extract` keeps, in WINDOWS_FOLDER, the mean of each 14 x 14 window of cells (112 px of the input), 7 cells
apart, of block4_conv3's 28 x 28 maps of each cached image seen as each of the four views (`image`, `mirror`,
`zoomed70`, `zoomed70_mirror`: hed_layers.py's seen_as, the notebook's views): 3 x 3 windows of 512 features. `score`
fits, at seeds 42, 1 and 7 on 5 stratified grouped folds of the id blocks, a logistic regression on the windows of
the four views (each view's outlines seen through the same view; TEACH `boxes`: 1 for a fractured image's windows
that touch one of its boxes, 0 for a not-fractured image's, a fractured image's other windows left out; `image`:
every window its image's label), the image's probability its windows' largest, averaged over the views (`win`);
beside it a logistic regression on the four views' mean features (`lr`, FEATURES_FOLDER as hed_layers.py extract
keeps them: b4c3_mean), and the mean of the two probabilities (`win+lr`). It prints the figures of each seed and of
the three seeds' mean probability.
"""
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from hed_heads import box_masks, cached_images, described_images, hed_taps, scores, summary
from hed_layers import seen_as
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

SEEDS = (42, 1, 7)
VIEWS = ("image", "mirror", "zoomed70", "zoomed70_mirror")
WIDTH, CELL = 14, 8  # a window of 14 x 14 cells of block4_conv3's maps; a cell is 8 x 8 input pixels


def extract(run, out):
    """Keep the window means of block4_conv3's maps of the run's cached images, seen as each of VIEWS, in
    out/<view>.npy (images x windows x 512, float16; rows in the order of out/images.csv)."""
    used = cached_images(run)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.AveragePooling2D(WIDTH, WIDTH // 2)(hed_taps(inputs)["b4c3"]))
    out.mkdir(parents=True, exist_ok=True)
    for view in VIEWS:
        kept, start = [], time.perf_counter()
        for first in range(0, len(used), 32):
            grey = np.stack([seen_as(Image.open(path).convert("L"), view) for path in used["cache"][first:first + 32]])
            windows = model.predict(np.repeat(grey[..., None], 3, -1), batch_size=16, verbose=0)
            kept.append(windows.reshape(len(grey), -1, windows.shape[-1]).astype(np.float16))
        np.save(out / f"{view}.npy", np.concatenate(kept))
        print(f"{view}: {len(used)} images in {time.perf_counter() - start:.0f} s", flush=True)
    used[["path", "cache", "label", "group"]].to_csv(out / "images.csv", index=False)


def touched_windows(fracatlas, files, view):
    """Whether each window of each image, seen as `view`, touches one of its fracture boxes: images x windows."""
    masks = box_masks(fracatlas, files, 224)  # the boxes on the 224 px image, stretched as the cache holds it
    seen = np.stack([seen_as(Image.fromarray((mask * 255).astype(np.uint8)), view) > 0 for mask in masks])
    touched = tf.nn.max_pool2d(seen[..., None].astype(np.float32), WIDTH * CELL, WIDTH * CELL // 2, "VALID")
    return touched.numpy().reshape(len(files), -1) > 0


def window_probabilities(windows, touched, y, train, test, teach):
    """Fit a logistic regression on the training images' windows of every view and return each test image's
    probability: its windows' largest in each view, averaged over the views."""
    rows, labels = [], []
    for view in VIEWS:
        fractured = np.broadcast_to(y[train, None] == 1, touched[view][train].shape).ravel()
        label = fractured if teach == "image" else touched[view][train].ravel()
        kept = label | ~fractured | (teach != "boxes")
        rows.append(windows[view][train].reshape(-1, windows[view].shape[-1])[kept])
        labels.append(label[kept])
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced"))
    fitted.fit(np.concatenate(rows), np.concatenate(labels).astype(int))
    return np.mean([fitted.predict_proba(windows[view][test].reshape(-1, windows[view].shape[-1]))[:, 1]
                    .reshape(len(test), -1).max(axis=1) for view in VIEWS], axis=0)


def mean_probabilities(means, y, train, test):
    """Fit a logistic regression on the training images' mean features of every view and return each test
    image's probability averaged over the views."""
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
    fitted.fit(np.concatenate([means[view][train] for view in VIEWS]), np.tile(y[train], len(VIEWS)))
    return np.mean([fitted.predict_proba(means[view][test])[:, 1] for view in VIEWS], axis=0)


def score(run, out, features, fracatlas, teach):
    """Print `lr`, `win` and `win+lr`'s out-of-fold figures at each seed and for the seeds together."""
    files, y, unit, group, part, hardware = described_images(run, out, fracatlas)
    windows = {view: np.load(out / f"{view}.npy").astype(np.float32) for view in VIEWS}
    touched = {view: touched_windows(fracatlas, files, view) for view in VIEWS}
    means = {view: np.load(features / view / "b4c3_mean.npy") for view in VIEWS}
    heads = {"lr": [], "win": [], "win+lr": []}
    start = time.perf_counter()
    for seed in SEEDS:
        p = {head: np.zeros(len(y)) for head in heads}
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit):
            p["lr"][test] = mean_probabilities(means, y, train, test)
            p["win"][test] = window_probabilities(windows, touched, y, train, test, teach)
            p["win+lr"][test] = (p["lr"][test] + p["win"][test]) / 2
        for head in heads:
            heads[head].append(p[head])
    for head, probabilities in heads.items():
        figures = [scores(p, y, group, part, hardware) for p in probabilities]
        together = scores(np.mean(probabilities, axis=0), y, group, part, hardware)
        print(summary(f"{head} ({teach})", figures, SEEDS, time.perf_counter() - start,
                      "seeds together: all {:.3f}, inside region {:.3f}, without hardware {:.3f}; ".format(*together)),
              flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        score(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]),
              sys.argv[6] if len(sys.argv) > 6 else "boxes")
