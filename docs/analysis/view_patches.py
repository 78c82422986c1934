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
from hed_heads import (
    box_masks,
    cached_images,
    described_images,
    hed_taps,
    mean_lr_probabilities,
    patch_probabilities,
    scores,
    summary,
)
from hed_layers import seen_as
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

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


def touched_windows(masks, view):
    """Whether each window of each image, seen as `view`, touches one of its fracture boxes (`masks`: box_masks of the
    224 px images, stretched as the cache holds them): images x windows."""
    seen = np.stack([seen_as(Image.fromarray((mask * 255).astype(np.uint8)), view) > 0 for mask in masks])
    touched = tf.nn.max_pool2d(seen[..., None].astype(np.float32), WIDTH * CELL, WIDTH * CELL // 2, "VALID")
    return touched.numpy().reshape(len(masks), -1) > 0


def over_views(probabilities, per_view, y, train, test, *options):
    """Fit `probabilities` (hed_heads' mean_lr_probabilities or patch_probabilities, which fit on the training images
    and score the test images) on every view's images at once, each `per_view` array's views stacked as further
    images, and return each test image's probability averaged over the views."""
    stacked = [np.concatenate([arrays[view] for view in VIEWS]) for arrays in per_view]
    rows = [np.concatenate([part + k * len(y) for k in range(len(VIEWS))]) for part in (train, test)]
    p = probabilities(*stacked, np.tile(y, len(VIEWS)), *rows, *options)
    return p.reshape(len(VIEWS), len(test)).mean(axis=0)


def score(run, out, features, fracatlas, teach):
    """Print `lr`, `win` and `win+lr`'s out-of-fold figures at each seed and for the seeds together."""
    files, y, unit, group, part, hardware = described_images(run, out, fracatlas)
    windows = {view: np.load(out / f"{view}.npy").astype(np.float32) for view in VIEWS}
    masks = box_masks(fracatlas, files, 224)
    touched = {view: touched_windows(masks, view) for view in VIEWS}
    means = {view: np.load(features / view / "b4c3_mean.npy") for view in VIEWS}
    heads = {"lr": [], "win": [], "win+lr": []}
    start = time.perf_counter()
    for seed in SEEDS:
        p = {head: np.zeros(len(y)) for head in heads}
        for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(y, y, unit):
            p["lr"][test] = over_views(mean_lr_probabilities, [means], y, train, test)
            p["win"][test] = over_views(patch_probabilities, [windows, touched], y, train, test, teach)
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
