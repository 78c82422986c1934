"""The pretrained-backbone option, without a download: a keras.applications network started from a weights file
saved from a randomly initialised copy trains, gives Grad-CAM maps, is saved and reloaded, and predicts alone."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import execute_notebook, run_folder
from fixture_data import build_fixture
from nbhelpers import notebook_namespace


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    """A quick training run with EfficientNetB0 at 32 px from random weights in a file, predicting three images."""
    import keras

    work = tmp_path_factory.mktemp("backbone")
    weights = work / "efficientnetb0_random.weights.h5"
    keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(weights)
    data = build_fixture(work / "data", with_odd_forms=False)
    images = [str(data.disk(key)) for key in sorted(data.good)[:3]]
    output = work / "out"
    _, error = execute_notebook({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                                 "BONE_FRACTURE_BACKBONE": "efficientnetb0",
                                 "BONE_FRACTURE_BACKBONE_WEIGHTS": str(weights), "BONE_FRACTURE_IMG_SIZE": "32",
                                 "BONE_FRACTURE_FOLDS": "1", "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_VIEWS": "1",
                                 "BONE_FRACTURE_TTA": "0",
                                 "BONE_FRACTURE_BOOTSTRAP": "100", "BONE_FRACTURE_ANNOTATIONS": "none",
                                 "BONE_FRACTURE_PREDICT": ",".join(images)}, timeout=900)
    assert error is None, error
    return {"folder": run_folder(output), "output": output, "images": images, "weights": weights}


def test_the_backbone_trains_explains_and_is_recorded(backbone_run):
    folder = backbone_run["folder"]
    contract = json.loads((folder / "model.json").read_text())
    assert contract["backbone"] == "efficientnetb0" and contract["gradcam_layer"] == "last_conv"
    predictions = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    assert predictions["path"].tolist() == backbone_run["images"] and (predictions["error"] == "").all()
    assert ((predictions["p_fractured"] > 0) & (predictions["p_fractured"] < 1)).all()
    assert (folder / "gradcam.png").stat().st_size > 10_000 and (folder / "predictions.png").exists()


def test_the_saved_backbone_model_reloads_and_predicts_as_in_its_run(backbone_run, tmp_path):
    """What a predict-only run does with it (load_trained, predict_images), here in-process: the notebook's predict-only
    path itself is run end to end with the Sequential CNN in test_predict_only.py."""
    nb = notebook_namespace(32, tmp_path)
    model, contract = nb["load_trained"](backbone_run["folder"] / "model.keras")
    again = nb["predict_images"](model, contract, backbone_run["images"], 200)
    trained = pd.read_csv(backbone_run["folder"] / "predictions.csv")
    assert again["path"].tolist() == trained["path"].tolist()
    np.testing.assert_allclose(again["p_fractured"], trained["p_fractured"], atol=1e-5)
    assert again["decision"].tolist() == trained["decision"].tolist()


def test_the_backbone_starts_from_the_weights_file(backbone_run, tmp_path):
    import keras

    nb = notebook_namespace(32, tmp_path)
    model = nb["build_model"](32, backbone="efficientnetb0", weights=str(backbone_run["weights"]))
    saved = keras.applications.EfficientNetB0(include_top=False, weights=str(backbone_run["weights"]),
                                              input_shape=(32, 32, 3))
    loaded = model.get_layer("last_conv").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, saved.get_weights()))
    fresh = nb["build_model"](32, backbone="efficientnetb0", weights="none").get_layer("last_conv").get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(loaded, fresh))


def test_a_weights_file_that_is_not_there_is_refused_up_front(tmp_path):
    with pytest.raises(Exception, match="BONE_FRACTURE_BACKBONE_WEIGHTS='missing.weights.h5' is not valid"):
        notebook_namespace(32, tmp_path, BACKBONE="efficientnetb0", BACKBONE_WEIGHTS="missing.weights.h5")
