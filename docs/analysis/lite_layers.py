"""Which of an EfficientNet-Lite's blocks rank FracAtlas's fractures best? The features that `hed_layers.py score`
reads, computed by the notebook's own EfficientNet-Lite0 or -Lite2 (its code cells, run here) with the package's
ImageNet weights.

    python docs/analysis/lite_layers.py BACKBONE RUN_FOLDER FEATURES_FOLDER VIEW[,...]
    python docs/analysis/hed_layers.py score RUN_FOLDER FEATURES_FOLDER FRACATLAS_FOLDER blk14_mean,... imcd:imcd

BACKBONE: efficientnet_lite0 or efficientnet_lite2. RUN_FOLDER: a run of the notebook on FracAtlas (its index.csv,
whose cached images are read). For each VIEW (as in hed_layers.py: `image`, `mirror`, `zoomed70`, `zoomed70_mirror`,
...), FEATURES_FOLDER/VIEW/blk<k>_mean.npy keeps the mean over the map of block k's output (k from 0 to the last
block, as the PyTorch file numbers its blocks: 15 for Lite0, 20 for Lite2) and blk<last + 1>_mean that of the
network's head (its 1x1 convolution to 1,280 channels), and blk<k>_max the maximum over the map of the same
(`blk14_mean+blk14_max`: what 3.16's head pools from Lite0's trunk), rows in the order of
FEATURES_FOLDER/images.csv. The
notebook's trunk ends one stage earlier (block 14, block 19); the last block and the head are added here from the
same file, with the same builder.
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
DEFINED_IN_THE_NOTEBOOK = ("TRUNK_PACKAGES = ", "TORCH_LEGACY_MAGIC = ", "def torch_state_dict(", "LITE_STAGES = ",
                           "def lite_trunk(", "def lite_weights(")  # how the cells that build the trunk begin
LAST_STAGE = {"efficientnet_lite0": 320, "efficientnet_lite2": 352}  # the filters of the one block the trunk leaves out


class DataError(Exception):
    """The notebook's error for bad input (here: the package is not installed)."""


def notebook_lite():
    """The notebook's cells that build the EfficientNet-Lite trunks, run in a namespace of their own (with what they
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


def every_block(lite, backbone):
    """The `backbone` EfficientNet-Lite with the notebook's trunk, its last block and its head, from RGB in 0-255 to
    the mean over the map of each block's output and the head's, in that order, then the maximum of each."""
    lower, stage = lite["lite_trunk"](backbone, None)
    blocks = lite["lite_blocks"](backbone)

    def block_ends(part):
        """Each block's output inside `part` (the trunk's lower part or its last stage), in order."""
        names = [layer.name for layer in part.layers]
        return [part.get_layer(f"block{k}_add" if f"block{k}_add" in names else f"block{k}_project_bn").output
                for k in range(blocks) if f"block{k}_project_bn" in names]

    ends = [*block_ends(lower), *keras.Model(stage.input, block_ends(stage))(lower.output)]
    channels = lite["LITE_STAGES"][backbone][-1][-1]
    last = lite["lite_block"](ends[-1], channels, 6, 3, 1, LAST_STAGE[backbone], f"block{blocks}")
    head = lite["lite_normalized"](keras.layers.Conv2D(1280, 1, use_bias=False, name="head")(last), "head_bn")
    maps = [*ends, last, head]
    model = keras.Model(lower.input, [pool(x, axis=(1, 2)) for pool in (keras.ops.mean, keras.ops.max) for x in maps])
    for name, weights in lite["lite_weights"](backbone, blocks + 1).items():
        if name.startswith(f"block{blocks}_"):
            model.get_layer(name).set_weights(weights)
    state = lite["torch_state_dict"](lite["trunk_weights_file"](backbone))
    model.get_layer("head").set_weights([state["_conv_head.weight"].transpose(2, 3, 1, 0)])
    model.get_layer("head_bn").set_weights([state[f"_bn1.{part}"] for part in ("weight", "bias", "running_mean",
                                                                                "running_var")])
    return model


def extract(backbone, run, out, views):
    """Keep the pooled output of every block and of the head of the `backbone` EfficientNet-Lite of the run's cached
    images seen as each of `views`."""
    used = cached_images(run)
    model = every_block(notebook_lite(), backbone)
    for view in views:
        kept = []
        for start in range(0, len(used), 64):
            grey = np.stack([seen_as(Image.open(path).convert("L"), view) for path in used["cache"][start:start + 64]])
            kept.append(model.predict(np.repeat(grey[..., None], 3, -1), batch_size=32, verbose=0))
            print(f"{view}: {start + len(grey)} of {len(used)} images", flush=True)
        (out / view).mkdir(parents=True, exist_ok=True)
        maps = len(kept[0]) // 2  # the means, then the maxima
        for k in range(len(kept[0])):
            name = f"blk{k % maps}_{'mean' if k < maps else 'max'}.npy"
            np.save(out / view / name, np.concatenate([batch[k] for batch in kept]))
    used[["path", "cache", "label", "group"]].to_csv(out / "images.csv", index=False)


if __name__ == "__main__":
    extract(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","))
