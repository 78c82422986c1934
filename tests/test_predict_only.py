"""Predict without training: a saved model and its model.json are all a predict-only run needs (image size, fit,
classes, threshold and Grad-CAM layer come from model.json); the model and its run's folder are only read."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, execute_notebook, failing_run, new_folder, readme_snippet, run_folder
from fixture_data import build_fixture, snapshot
from nbhelpers import notebook_namespace
from PIL import Image


@pytest.fixture(scope="module")
def trained_at_96(tmp_path_factory):
    """A quick training run at 96 px (padded) that also classifies a few images of its own, as PREDICT says."""
    data = build_fixture(tmp_path_factory.mktemp("predict") / "data", with_odd_forms=False)
    images = [str(data.disk(key)) for key in sorted(data.good)[:5]] + [str(data.disk("val/not_fractured/notes.png"))]
    output = tmp_path_factory.mktemp("trained")
    _, error = execute_notebook({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                                 "BONE_FRACTURE_IMG_SIZE": "96", "BONE_FRACTURE_FIT": "pad",
                                 "BONE_FRACTURE_FOLDS": "1", "BONE_FRACTURE_EPOCHS": "1",
                                 "BONE_FRACTURE_BOOTSTRAP": "100", "BONE_FRACTURE_ANNOTATIONS": "none",
                                 "BONE_FRACTURE_PREDICT": ",".join(images)}, timeout=600)
    assert error is None, error
    return {"folder": run_folder(output), "output": output, "images": images, "data": data}


@pytest.fixture(scope="module")
def predict_only(trained_at_96, tmp_path_factory):
    """A predict-only run with that model, given no image size, fit or data folder, into the same OUTPUT_DIR."""
    before, folders = snapshot(trained_at_96["folder"]), set(trained_at_96["output"].iterdir())
    started = time.monotonic()
    _, error = execute_notebook({"BONE_FRACTURE_MODEL": str(trained_at_96["folder"] / "model.keras"),
                                 "BONE_FRACTURE_OUTPUT_DIR": str(trained_at_96["output"]),
                                 "BONE_FRACTURE_IMG_SIZE": None, "BONE_FRACTURE_FIT": None,
                                 "BONE_FRACTURE_DATA_DIR": str(tmp_path_factory.mktemp("no_data") / "missing"),
                                 "BONE_FRACTURE_PREDICT": ",".join(trained_at_96["images"])}, timeout=600)
    assert error is None, error
    return {"before": before, "seconds": time.monotonic() - started,
            "folder": new_folder(trained_at_96["output"], folders)}


def test_a_model_trained_at_96_px_predicts_with_no_size_or_fit_given(trained_at_96, predict_only):
    trained = pd.read_csv(trained_at_96["folder"] / "predictions.csv", keep_default_na=False)
    again = pd.read_csv(predict_only["folder"] / "predictions.csv", keep_default_na=False)
    assert predict_only["folder"] != trained_at_96["folder"]  # a folder of its own
    assert again["path"].tolist() == trained_at_96["images"] and again["error"].iloc[-1].startswith("not an image")
    np.testing.assert_allclose(again["p_fractured"].iloc[:-1].astype(float),
                               trained["p_fractured"].iloc[:-1].astype(float), atol=1e-6)
    assert (again["decision"] == trained["decision"]).all()
    contract = json.loads((trained_at_96["folder"] / "model.json").read_text())
    assert (contract["image_size"], contract["fit"]) == (96, "pad")
    assert predict_only["seconds"] < 120  # kernel start and imports; no scan, no audit, no training


def test_a_predict_only_run_writes_only_its_own_folder(trained_at_96, predict_only):
    assert snapshot(trained_at_96["folder"]) == predict_only["before"]  # the model and its run only read
    written = sorted(p.name for p in predict_only["folder"].iterdir())
    assert written == ["predictions.csv", "predictions.png", "run.json"]
    output = trained_at_96["output"]
    assert {p.name for p in output.iterdir()} == {"cache", "latest", trained_at_96["folder"].name,
                                                  predict_only["folder"].name}
    assert run_folder(output) == trained_at_96["folder"]  # latest stays at the newest training run


def test_a_corrupt_model_file_ends_in_one_message(tmp_path, fixture):
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a keras file")
    (tmp_path / "model.json").write_text(json.dumps({"image_size": 64, "threshold": 0.5}))
    message = failing_run({"BONE_FRACTURE_MODEL": str(model), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
                           "BONE_FRACTURE_PREDICT": str(fixture.root / "test/fractured")})
    assert f"{model} could not be loaded as a model" in message


def test_a_missing_or_mismatched_model_json_is_refused(trained_at_96, tmp_path):
    nb = notebook_namespace(64, tmp_path / "o")
    shutil.copy(trained_at_96["folder"] / "model.keras", tmp_path / "lonely.keras")
    with pytest.raises(nb["DataError"], match="lonely.json not found"):
        nb["load_trained"](tmp_path / "lonely.keras")
    contract = json.loads((trained_at_96["folder"] / "model.json").read_text())
    (tmp_path / "lonely.json").write_text(json.dumps({**contract, "image_size": 64}))
    with pytest.raises(nb["DataError"], match="takes .96, 96, 1. images, but its model.json says image_size 64"):
        nb["load_trained"](tmp_path / "lonely.keras")
    for version in ("3.7", "3.8"):
        (tmp_path / "lonely.json").write_text(json.dumps({**contract, "notebook_version": version,
                                                          "test_time_augmentation": True}))
        with pytest.raises(nb["DataError"], match=f"saved by notebook {version} with TTA over other views"):
            nb["load_trained"](tmp_path / "lonely.keras")
    (tmp_path / "lonely.json").write_text(json.dumps({**contract, "notebook_version": "3.7"}))
    nb["load_trained"](tmp_path / "lonely.keras")  # without TTA, a 3.7 model scores as it did


def test_the_readme_snippet_classifies_one_image_as_the_notebook_does(trained_at_96, tmp_path):
    snippet = readme_snippet(ROOT / "README.md")
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 11
    (tmp_path / "artifacts" / "latest").mkdir(parents=True)
    for name in ("model.keras", "model.json"):
        shutil.copy(trained_at_96["folder"] / name, tmp_path / "artifacts" / "latest" / name)
    image = next(path for path in trained_at_96["images"][:-1] if len(set(Image.open(path).size)) == 2)
    shutil.copy(image, tmp_path / "xray.jpg")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    probability, decision = result.stdout.split()[-2:]
    trained = pd.read_csv(trained_at_96["folder"] / "predictions.csv").set_index("path")
    assert float(probability) == pytest.approx(trained.at[image, "p_fractured"], abs=1e-4)
    assert decision == trained.at[image, "decision"]
