"""Which of EfficientNet-Lite0's blocks rank FracAtlas's fractures best? The features that `hed_layers.py score` reads,
computed by the notebook's own EfficientNet-Lite0 (its code cells, run here) with the package's ImageNet weights.

    python docs/analysis/lite0_layers.py RUN_FOLDER FEATURES_FOLDER VIEW[,...]
    python docs/analysis/hed_layers.py score RUN_FOLDER FEATURES_FOLDER FRACATLAS_FOLDER blk14_mean,... imcd:imcd

RUN_FOLDER: a run of the notebook on FracAtlas (its index.csv, whose cached images are read). For each VIEW (as in
hed_layers.py: `image`, `mirror`, `zoomed70`, `zoomed70_mirror`, ...), FEATURES_FOLDER/VIEW/blk<k>_mean.npy keeps
the mean over the map of block k's output (k 0 to 15, as the PyTorch file numbers its blocks) and blk16_mean that of
the network's head (its 1x1 convolution to 1,280 channels), rows in the order of FEATURES_FOLDER/images.csv. The
notebook's trunk ends at block 14; block 15 and the head are added here from the same file, with the same builder.
"""
import collections
import importlib.util
import pickle
import sys
from pathlib import Path

import keras
import nbformat
import numpy as np
from hed_heads import cached_images
from hed_layers import seen_as
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[2] / "bone_fracture_classifier.ipynb"
DEFINED_IN_THE_NOTEBOOK = ("TRUNK_PACKAGES = ", "TORCH_LEGACY_MAGIC = ", "def torch_state_dict(", "LITE0_STAGES = ",
                           "def lite0_trunk(", "def lite0_weights(")  # how the cells that build the trunk begin


class DataError(Exception):
    """The notebook's error for bad input (here: the package is not installed)."""


def notebook_lite0():
    """The notebook's cells that build EfficientNet-Lite0's trunk, run in a namespace of their own (with what they
    use from the notebook's set-up): its functions and constants by name."""
    namespace = {"collections": collections, "pickle": pickle, "importlib": importlib, "Path": Path, "np": np,
                 "keras": keras, "DataError": DataError, "GRADCAM_LAYER": "last_conv"}
    cells = [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells
             if cell.cell_type == "code" and cell.source.startswith(DEFINED_IN_THE_NOTEBOOK)]
    if len(cells) != len(DEFINED_IN_THE_NOTEBOOK):
        raise RuntimeError(f"{len(cells)} of the notebook's cells begin as {DEFINED_IN_THE_NOTEBOOK}: update them")
    for source in cells:
        exec(source, namespace)
    return namespace


def every_block(lite0):
    """EfficientNet-Lite0 with the notebook's trunk, its last block (15) and its head, from RGB in 0-255 to the mean
    over the map of each block's output and the head's, in that order."""
    trunk = lite0["lite0_trunk"](None)
    names = {layer.name for layer in trunk.layers}
    ends = [trunk.get_layer(f"block{k}_add" if f"block{k}_add" in names else f"block{k}_project_bn").output
            for k in range(lite0["LITE0_BLOCKS"])]
    last = lite0["lite0_block"](trunk.output, 192, 6, 3, 1, 320, "block15")
    head = lite0["lite0_normalized"](keras.layers.Conv2D(1280, 1, use_bias=False, name="head")(last), "head_bn")
    model = keras.Model(trunk.input, [keras.ops.mean(x, axis=(1, 2)) for x in [*ends, last, head]])
    for name, weights in lite0["lite0_weights"](blocks=lite0["LITE0_BLOCKS"] + 1).items():
        if name.startswith("block15_"):
            model.get_layer(name).set_weights(weights)
    state = lite0["torch_state_dict"](lite0["trunk_weights_file"]("efficientnet_lite0"))
    model.get_layer("head").set_weights([state["_conv_head.weight"].transpose(2, 3, 1, 0)])
    model.get_layer("head_bn").set_weights([state[f"_bn1.{part}"] for part in ("weight", "bias", "running_mean",
                                                                                "running_var")])
    return model


def extract(run, out, views):
    """Keep the pooled output of every block and of the head of the run's cached images seen as each of `views`."""
    used = cached_images(run)
    model = every_block(notebook_lite0())
    for view in views:
        kept = []
        for start in range(0, len(used), 64):
            grey = np.stack([seen_as(Image.open(path).convert("L"), view) for path in used["cache"][start:start + 64]])
            kept.append(model.predict(np.repeat(grey[..., None], 3, -1), batch_size=32, verbose=0))
            print(f"{view}: {start + len(grey)} of {len(used)} images", flush=True)
        (out / view).mkdir(parents=True, exist_ok=True)
        for k in range(len(kept[0])):
            np.save(out / view / f"blk{k}_mean.npy", np.concatenate([batch[k] for batch in kept]))
    used[["path", "cache", "label", "group"]].to_csv(out / "images.csv", index=False)


if __name__ == "__main__":
    extract(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","))
