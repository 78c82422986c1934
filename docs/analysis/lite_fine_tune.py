"""Does training the last stage of EfficientNet-Lite0's trunk (blocks 12 to 14, at a low learning rate) rank
FracAtlas's fractures better than the frozen trunk the notebook uses? Measured on the held-back split
(held_back_split.py), FracAtlas's images alone, out of fold on the training part and on the held-back part.

The maps first, then either step (`folds` or `held`):

    python docs/analysis/lite_fine_tune.py maps RUN_FOLDER CACHED_INDEX MAPS_FOLDER
    python docs/analysis/lite_fine_tune.py STEP RUN_FOLDER CACHED_INDEX TRAIN_FRACATLAS HELD_FRACATLAS MAPS_FOLDER
        [SEED[,SEED...]]

RUN_FOLDER: a run of the notebook at 320 px on the held-back split's training part (its index.csv, whose cached
images are read, its folds.csv, whose `fold_group` is dealt into 5 stratified grouped folds at each SEED, default 42,
and its external_predictions.csv, which names the held-back images it scored). CACHED_INDEX: the index.csv of a run
at 320 px whose data held the held-back images (a run on the whole FracAtlas folder), which names their cached
copies (as held_back_heads.py reads it). TRAIN_FRACATLAS, HELD_FRACATLAS: the two parts, whose dataset.csv gives each
image's region and hardware; the casts come from annotations/fracatlas_casts.csv.

`maps` keeps, in MAPS_FOLDER, block 11's output (the start of Lite0's 192-channel stage, 10 x 10 at 320 px, float16)
of each image seen as each of the notebook's four views, computed by the notebook's own trunk (lite_layers.py).
Then STEP `folds` trains each fold's models at each SEED (default 42) and scores the fold's test images; STEP `held`
trains them on the whole training part at each SEED and scores the held-back images. The models:

    frozen      blocks 12-14 as the trunk has them, their maps pooled by each channel's mean and maximum, and the
                notebook's head (feature scaling, Dropout 0.3, Dense 128, Dropout 0.3, softmax; label smoothing 0.1,
                classes weighed the same, Adam 1e-3 with a warm-up epoch and a cosine decay) trained 20 epochs, each
                image shown three times an epoch as one of its views drawn at random
    fine-tuned  that model trained on: blocks 12-14's convolutions (their batch normalization kept as the ImageNet
                weights have it) and the head together, TUNED_EPOCHS epochs (environment, default 8) at a peak
                learning rate of TUNED_RATE (default 0.0003), each image shown once an epoch as a view drawn at random;
                with TUNE_STAGE=0 (the control) the same epochs train the head alone, the stage kept frozen

Each image's probability is the mean over its four views, and over the seeds. Printed: ROC-AUC per radiograph over
all, inside region (weighted by the smaller class), without hardware or cast, and the same inside region; then the
difference (fine-tuned less frozen) of each, with its paired 95 % interval over 1,000 resamples of the radiographs.
Each image's two probabilities are kept in MAPS_FOLDER/STEP_probabilities.csv (STEP_control_probabilities.csv with
TUNE_STAGE=0). TensorFlow's op determinism is on, as in the notebook, so a step run again prints the same figures.
"""
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from hed_heads import described as described_with_hardware
from hed_heads import scores
from hed_layers import seen_as
from held_back_heads import cached_copies, scored_rows
from lite_layers import notebook_lite
from PIL import Image
from region_weights import class_weights
from sklearn.model_selection import StratifiedGroupKFold

VIEWS = ("image", "mirror", "zoomed70", "zoomed70_mirror")  # the notebook's TTA_VIEWS, named as hed_layers names them
CASTS = Path(__file__).resolve().parents[2] / "annotations" / "fracatlas_casts.csv"
TUNED_EPOCHS = int(os.environ.get("TUNED_EPOCHS", 8))
TUNED_RATE = float(os.environ.get("TUNED_RATE", 3e-4))
TUNE_STAGE = os.environ.get("TUNE_STAGE", "1") == "1"  # 0: the control, the same epochs with the stage kept frozen


def images(run, cached_index):
    """The run's usable FracAtlas images (index.csv) and the held-back images its external test scored
    (external_predictions.csv), with their cached copies (held_back_heads' cached_copies of `cached_index`)."""
    index = pd.read_csv(run / "index.csv", keep_default_na=False)
    training = index[(index["dataset"] == "FracAtlas") & (index["note"] == "")].drop_duplicates("cache")
    held = scored_rows(pd.read_csv(run / "external_predictions.csv", keep_default_na=False))
    return training.reset_index(drop=True), held.assign(cache=cached_copies(held["path"], pd.read_csv(
        cached_index, keep_default_na=False)))


def described(frame, run, fracatlas):
    """What scoring needs of `frame`'s images: hed_heads' `described` (labels, 1: fractured; fold units from the
    run's folds.csv; radiograph groups; regions) and whether each shows a treated fracture (FracAtlas's hardware, or
    a cast in annotations/fracatlas_casts.csv)."""
    files, y, unit, group, part, hardware = described_with_hardware(frame, run, fracatlas)
    casts = pd.read_csv(CASTS, keep_default_na=False)
    cast = set(casts.loc[casts["marks"].str.contains("cast"), "file"].map(lambda path: Path(path).name))
    return {"y": y.astype(int), "unit": unit, "group": group, "part": part,
            "treated": pd.Series(hardware).fillna(False).to_numpy(bool) | files.isin(cast).to_numpy()}


def lower_and_stage(lite):
    """The notebook's Lite0 trunk as lite_trunk builds it, for any input size: the part up to block 11 (RGB in 0-255
    to block 11's maps) and blocks 12-14 (the maps to the trunk's), both with the trunk's ImageNet weights."""
    return lite["lite_trunk"]("efficientnet_lite0", None)


def stage_blocks(lite):
    """Blocks 12-14 of a new copy of the notebook's trunk: their convolutions trainable, their batch normalization not
    (kept in inference mode), as the notebook's fine_tuned makes them."""
    stage = lower_and_stage(lite)[1]
    stage.trainable = True
    for layer in stage.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return stage


def keep_maps(run, cached_index, out):
    """Keep block 11's maps of every training and held-back image, seen as each of VIEWS, in out/{training,held}.npy
    (images x views x 10 x 10 x 192, float16, in the order `images` gives)."""
    out.mkdir(parents=True, exist_ok=True)
    lower, _ = lower_and_stage(notebook_lite())
    for name, frame in zip(("training", "held"), images(run, cached_index)):
        shape = (len(frame), len(VIEWS), *lower.output.shape[1:])
        maps = np.lib.format.open_memmap(out / f"{name}.npy", "w+", np.float16, shape)
        for start in range(0, len(frame), 32):
            grey = [Image.open(path).convert("L") for path in frame["cache"][start : start + 32]]
            for v, view in enumerate(VIEWS):
                seen = np.stack([seen_as(image, view) for image in grey])
                maps[start : start + len(grey), v] = lower.predict(np.repeat(seen[..., None], 3, -1), verbose=0)
            print(f"{name}: {start + len(grey)} of {len(frame)} images", flush=True)
        maps.flush()


def pooled(maps):
    """Each channel's mean over the maps beside its maximum (the notebook's pooling of an EfficientNet-Lite trunk)."""
    return keras.ops.concatenate([keras.ops.mean(maps, axis=(1, 2)), keras.ops.max(maps, axis=(1, 2))], axis=-1)


def notebook_head(features):
    """The notebook's head of a frozen trunk, its feature scaling adapted to `features`."""
    scaling = keras.layers.Normalization()
    scaling.adapt(features)
    return keras.Sequential([keras.Input(features.shape[1:]), scaling, keras.layers.Dropout(0.3),
                             keras.layers.Dense(128, "relu"), keras.layers.Dropout(0.3),
                             keras.layers.Dense(2, activation="softmax")])


def adam(peak, steps_per_epoch, epochs):
    """The notebook's optimiser: clipped Adam, a warm-up epoch to `peak`, then a cosine decay to 1 % of it."""
    schedule = keras.optimizers.schedules.CosineDecay(peak / 10, max(1, steps_per_epoch * (epochs - 1)), alpha=0.01,
                                                      warmup_target=peak, warmup_steps=steps_per_epoch)
    return keras.optimizers.Adam(schedule, clipnorm=1.0)


def targets(y):
    """One-hot targets in the notebook's class order (fractured first)."""
    return np.stack([y, 1 - y], axis=1).astype(np.float32)


def view_probabilities(head, stage, maps):
    """Each image's p(fractured), the mean over its views, of `head` on `stage`'s pooled maps (block 11's `maps`)."""
    return np.mean([np.concatenate([head(pooled(stage(maps[i : i + 64, v].astype(np.float32))), training=False)
                                    .numpy()[:, 0] for i in range(0, len(maps), 64)]) for v in range(len(VIEWS))], 0)


def frozen_and_fine_tuned(maps, y, scored, seed, epochs=TUNED_EPOCHS, rate=TUNED_RATE, tune_stage=TUNE_STAGE):
    """Train on block 11's `maps` of images labelled `y` the frozen model, then fine-tune it (the head alone, the
    stage kept frozen, where `tune_stage` is false: the control); return the `scored` images' p(fractured) from each
    (frozen, fine-tuned)."""
    if len(maps) != len(y):
        raise ValueError(f"{len(maps)} images' maps but {len(y)} labels: the labels must be those of the maps")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    stage = stage_blocks(notebook_lite())
    features = np.stack([np.concatenate([pooled(stage(maps[i : i + 64, v].astype(np.float32))).numpy()
                                         for i in range(0, len(maps), 64)]) for v in range(len(VIEWS))], 1)
    head = notebook_head(features.reshape(-1, features.shape[-1]))
    weights = class_weights(y, np.zeros(len(y))).astype(np.float32)  # one stratum: the classes weigh the same
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    shown = np.tile(np.arange(len(y)), 3)
    head.compile(adam(1e-3, -(-len(shown) // 32), 20), loss)
    for _ in range(20):
        order, view = rng.permutation(shown), rng.integers(0, len(VIEWS), len(shown))
        head.fit(features[order, view], targets(y[order]), sample_weight=weights[order], batch_size=32, epochs=1,
                 shuffle=False, verbose=0)
    frozen = view_probabilities(head, stage, scored)
    optimizer = adam(rate, -(-len(y) // 32), epochs)
    trained = (stage.trainable_variables if tune_stage else []) + head.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x, target, weight):
        with tf.GradientTape() as tape:
            value = loss(target, head(pooled(stage(x, training=False)), training=True), sample_weight=weight)
        optimizer.apply_gradients(zip(tape.gradient(value, trained), trained))

    for _ in range(epochs):
        order, view = rng.permutation(len(y)), rng.integers(0, len(VIEWS), len(y))
        for start in range(0, len(y), 32):
            rows = order[start : start + 32]
            step(tf.constant(maps[rows, view[start : start + 32]].astype(np.float32)), tf.constant(targets(y[rows])),
                 tf.constant(weights[rows]))
    return frozen, view_probabilities(head, stage, scored)


def four_figures(p, d):
    """ROC-AUC per radiograph over all, inside region, without hardware or cast, and that inside region."""
    everything = scores(p, d["y"], d["group"], d["part"], d["treated"])
    untreated = ~d["treated"]
    inside_untreated = scores(p[untreated], d["y"][untreated], d["group"][untreated], d["part"][untreated],
                              d["treated"][untreated])[1]
    return np.array([*everything, inside_untreated])


def per_radiograph(d, frozen, tuned):
    """One row per radiograph: its label, region, whether treated, and each model's p(fractured) (its images' mean)."""
    table = pd.DataFrame({"group": d["group"], "y": d["y"], "part": d["part"], "treated": d["treated"],
                          "frozen": frozen, "tuned": tuned})
    return table.groupby("group").agg(y=("y", "first"), part=("part", "first"), treated=("treated", "max"),
                                      frozen=("frozen", "mean"), tuned=("tuned", "mean")).reset_index(drop=True)


def radiograph_figures(radiographs, column):
    """four_figures of `column` with each row of `radiographs` a radiograph of its own (drawn twice, counted twice)."""
    return four_figures(radiographs[column].to_numpy(), {
        "y": radiographs["y"].to_numpy(), "group": np.arange(len(radiographs)), "part": radiographs["part"].to_numpy(),
        "treated": radiographs["treated"].to_numpy(bool)})


def report(label, d, frozen, tuned, resamples=1000, seed=0):
    """Print the frozen and fine-tuned figures and each difference with its paired 95 % interval over `resamples`
    resamples of the radiographs."""
    radiographs = per_radiograph(d, frozen, tuned)
    figures = {name: radiograph_figures(radiographs, name) for name in ("frozen", "tuned")}
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(resamples):
        drawn = radiographs.iloc[rng.integers(0, len(radiographs), len(radiographs))]
        differences.append(radiograph_figures(drawn, "tuned") - radiograph_figures(drawn, "frozen"))
    low, high = np.percentile(differences, [2.5, 97.5], axis=0)
    print(f"{label}, {len(radiographs)} radiographs: all, inside region, without hardware or cast, the same inside "
          f"region\n  frozen     {' '.join(f'{v:.3f}' for v in figures['frozen'])}\n"
          f"  fine-tuned {' '.join(f'{v:.3f}' for v in figures['tuned'])}\n  fine-tuned less frozen "
          + " ".join(f"{v:+.3f} ({lo:+.3f} to {hi:+.3f})" for v, lo, hi in
                     zip(figures["tuned"] - figures["frozen"], low, high)), flush=True)


def out_of_fold(d, maps, seeds):
    """Each training image's p(fractured) from the frozen and the fine-tuned models of the fold that leaves it out,
    the mean over `seeds` (each dealing the folds of `d`'s units anew)."""
    frozen, tuned = np.zeros((len(seeds), len(d["y"]))), np.zeros((len(seeds), len(d["y"])))
    for s, seed in enumerate(seeds):
        folds = StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(d["y"], d["y"], d["unit"])
        for k, (train, test) in enumerate(folds):
            start = time.perf_counter()
            frozen[s, test], tuned[s, test] = frozen_and_fine_tuned(maps[train], d["y"][train], maps[test], seed + k)
            print(f"seed {seed}, fold {k + 1}: {time.perf_counter() - start:.0f} s", flush=True)
    return frozen.mean(0), tuned.mean(0)


def held_back(d, maps, held_maps, seeds):
    """Each held-back image's p(fractured) from the frozen and the fine-tuned models trained on every training image,
    the mean over `seeds`."""
    probabilities = np.array([frozen_and_fine_tuned(maps, d["y"], held_maps, seed) for seed in seeds])
    return probabilities[:, 0].mean(0), probabilities[:, 1].mean(0)


def main(step, run, cached_index, training_folder, held_folder, out, seeds):
    """Print the frozen and the fine-tuned models' figures out of fold (`step` "folds") or held back ("held")."""
    tf.config.experimental.enable_op_determinism()
    training, held = images(run, cached_index)
    d = described(training, run, training_folder)
    maps = np.load(out / "training.npy")
    together = f"seeds {','.join(map(str, seeds))} together"
    if step == "folds":
        frame, probabilities, label = training, out_of_fold(d, maps, seeds), f"out of fold, {together}"
    else:  # trained on the training images (d), scored on the held-back ones
        probabilities, label = held_back(d, maps, np.load(out / "held.npy"), seeds), f"held back, {together}"
        d, frame = described(held, run, held_folder), held
    control = "" if TUNE_STAGE else "_control"  # the control's probabilities beside, not over, the fine-tuned ones
    frame[["path", "label", "group"]].assign(frozen=probabilities[0], fine_tuned=probabilities[1]).to_csv(
        out / f"{step}{control}_probabilities.csv", index=False)
    report(label + (", the control: the head alone trained on" if control else ""), d, *probabilities)


if __name__ == "__main__":
    if sys.argv[1] == "maps":
        keep_maps(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        seeds = [int(seed) for seed in (sys.argv[7] if len(sys.argv) > 7 else "42").split(",")]
        main(sys.argv[1], *map(Path, sys.argv[2:7]), seeds)
