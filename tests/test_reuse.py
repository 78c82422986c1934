"""Reuse without retraining, and losing nothing: the output folder's manifest and lock, predict-only runs, and
the saved model used outside the notebook as the README shows."""

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import ROOT, execute_notebook
from fixture_data import build_fixture, snapshot
from PIL import Image
from test_more_runs import failing_run

FOREIGN = {"model.keras": b"a model from another project", "metrics.json": b'{"theirs": true}',
           "notes.txt": b"the user's notes"}


def plant(folder, names=FOREIGN):
    """Put files that this notebook did not write into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(FOREIGN[name])


def untouched(folder, names=FOREIGN):
    return all((folder / name).read_bytes() == FOREIGN[name] for name in names)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The plainest fixture, in the renamed layout, for runs that only test the output folder."""
    return build_fixture(tmp_path_factory.mktemp("small") / "data", with_odd_forms=False)


def test_foreign_files_survive_a_failed_run_and_stop_a_run_they_would_be_in_the_way_of(small, tmp_path):
    output = tmp_path / "out"
    plant(output)
    failing_run({"BONE_FRACTURE_DATA_DIR": str(tmp_path / "missing"), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert untouched(output)  # the run that deleted them in the issue: data folder not found
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(small.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert "model.keras, metrics.json" in message and "did not write" in message
    assert "choose another BONE_FRACTURE_OUTPUT_DIR, or move these files" in message
    assert untouched(output) and sorted(p.name for p in output.iterdir()) == sorted(FOREIGN)  # nothing written


def test_the_data_folder_as_output_folder_stops_at_once_and_changes_no_data_file(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False, layout="archive")
    user_files = {"index.csv": "the user's index\n", "model_card.md": "the user's card\n"}
    for name, text in user_files.items():
        (data.root / name).write_text(text)
    before = snapshot(data.folder)
    for output in (data.root, data.folder, data.root / "train"):
        message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
        assert "cannot be the output folder: it holds the data folder" in message
        assert snapshot(data.folder) == before


def test_a_held_folder_stops_a_second_run_and_a_free_one_keeps_the_users_and_the_edited_files(small, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = {"pid": first.pid, "created": psutil.Process(first.pid).create_time(), "host": socket.gethostname(),
                "started": "2026-11-27 05:00:00", "run": "20261127-050000-1"}
        (output / ".bone_fracture.lock").write_text(json.dumps(lock))
        started = time.monotonic()
        message = failing_run({"BONE_FRACTURE_DATA_DIR": str(small.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
        assert time.monotonic() - started < 60
        assert f"Another run (process {first.pid}" in message and "started 2026-11-27 05:00:00" in message
        assert sorted(p.name for p in output.iterdir()) == [".bone_fracture.lock"]
    finally:
        first.kill()
        first.wait()
    # The first run is gone: its lock no longer holds the folder. A run goes on there beside the user's notes.
    plant(output, ["notes.txt"])
    _, error = execute_notebook({"BONE_FRACTURE_DATA_DIR": str(small.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                                 "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_FOLDS": "1"}, timeout=600)
    assert error is None, error
    assert not (output / ".bone_fracture.lock").exists()  # given up at the end
    assert untouched(output, ["notes.txt"]) and (output / "model.keras").exists()
    manifest = json.loads((output / ".bone_fracture_manifest.json").read_text())
    assert "notes.txt" not in manifest["files"] and "model.keras" in manifest["files"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((output / name).read_bytes()).hexdigest() == digest, name
    (output / "counts.csv").write_text("edited by the user\n")  # one of ours, changed since: now the user's
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(small.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert "already holds counts.csv" in message
    assert (output / "counts.csv").read_text() == "edited by the user\n" and (output / "model.keras").exists()


@pytest.fixture(scope="module")
def predict_only(notebook_run, fixture, tmp_path_factory):
    """A predict-only run with a trained model, into the output folder of the run that trained it (a copy of the
    default run's folder, which other tests read)."""
    earlier = tmp_path_factory.mktemp("reuse") / "artifacts"
    shutil.copytree(notebook_run, earlier, ignore=shutil.ignore_patterns("cache"))
    before = {p.name: p.read_bytes() for p in earlier.iterdir() if p.is_file()}
    trained = pd.read_csv(earlier / "predictions.csv", keep_default_na=False)  # the training run's own calls
    images = trained["path"].tolist() + [str(fixture.disk("val/not_fractured/notes.png"))]
    started = time.monotonic()
    _, error = execute_notebook({"BONE_FRACTURE_MODEL": str(earlier / "model.keras"),
                                 "BONE_FRACTURE_OUTPUT_DIR": str(earlier),
                                 "BONE_FRACTURE_DATA_DIR": str(tmp_path_factory.mktemp("no_data") / "missing"),
                                 "BONE_FRACTURE_PREDICT": ",".join(map(str, images))}, timeout=600)
    assert error is None, error
    return {"before": before, "seconds": time.monotonic() - started, "images": images, "folder": earlier,
            "trained": trained,
            "predictions": pd.read_csv(earlier / "predictions.csv", keep_default_na=False)}


def test_a_predict_only_run_gives_the_training_runs_probabilities_without_training(predict_only):
    predictions, trained = predict_only["predictions"], predict_only["trained"]
    assert predictions["path"].tolist() == predict_only["images"] and len(trained) == 4
    assert predictions["error"].iloc[-1].startswith("not an image")
    np.testing.assert_allclose(predictions["p_fractured"].iloc[:-1].astype(float), trained["p_fractured"], atol=1e-6)
    assert (predictions["decision"].iloc[:-1] == trained["decision"]).all()
    assert predict_only["seconds"] < 120  # kernel start and imports; no scan, no audit, no training
    assert not (predict_only["folder"] / "cache").exists()  # and no cache written


def test_a_predict_only_run_leaves_the_model_and_the_earlier_runs_files_as_they_were(predict_only):
    after = {p.name: p.read_bytes() for p in predict_only["folder"].iterdir() if p.is_file()}
    changed = {name for name in predict_only["before"] if after.get(name) != predict_only["before"][name]}
    assert changed <= {"predictions.csv", "predictions.png", ".bone_fracture_manifest.json"}, changed
    assert hashlib.sha256(after["model.keras"]).hexdigest() == hashlib.sha256(
        predict_only["before"]["model.keras"]).hexdigest()
    manifest = json.loads(after[".bone_fracture_manifest.json"])
    assert {"model.keras", "metrics.json", "index.csv"} <= set(manifest["files"])  # still the training run's, listed


def test_a_corrupt_model_file_ends_in_one_message(tmp_path, fixture):
    model = tmp_path / "model.keras"
    model.write_bytes(b"not a keras file")
    (tmp_path / "model.json").write_text(json.dumps({"image_size": 64, "threshold": 0.5}))
    message = failing_run({"BONE_FRACTURE_MODEL": str(model), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
                           "BONE_FRACTURE_PREDICT": str(fixture.root / "test/fractured")})
    assert f"{model} could not be loaded as a model" in message


def test_a_model_of_another_size_or_fit_and_a_missing_contract_are_refused(notebook_run, tmp_path):
    from nbhelpers import notebook_namespace

    nb = notebook_namespace(128, tmp_path / "o")
    with pytest.raises(nb["DataError"]) as wrong_size:
        nb["load_trained"](notebook_run / "model.keras")
    assert "takes 64x64 images" in str(wrong_size.value) and "BONE_FRACTURE_IMG_SIZE=64" in str(wrong_size.value)
    padded = notebook_namespace(64, tmp_path / "p", FIT="pad")
    with pytest.raises(padded["DataError"]) as wrong_fit:  # the model was trained on stretched images
        padded["load_trained"](notebook_run / "model.keras")
    assert "FIT 'squash'" in str(wrong_fit.value) and "BONE_FRACTURE_FIT=squash" in str(wrong_fit.value)
    shutil.copy(notebook_run / "model.keras", tmp_path / "lonely.keras")
    with pytest.raises(nb["DataError"]) as no_contract:
        nb["load_trained"](tmp_path / "lonely.keras")
    assert "lonely.json not found" in str(no_contract.value)


def test_the_readme_snippet_classifies_one_image_as_the_notebook_does(notebook_run, fixture, tmp_path):
    snippet = (ROOT / "README.md").read_text().split("<!-- predict-snippet -->", 1)[1]
    snippet = snippet.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 6
    (tmp_path / "artifacts").mkdir()
    for name in ("model.keras", "model.json"):
        shutil.copy(notebook_run / name, tmp_path / "artifacts" / name)
    key = next(k for k in sorted(fixture.good) if k.endswith(".jpg") and "exif" not in k)
    shutil.copy(fixture.disk(key), tmp_path / "xray.jpg")
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    probability, decision = result.stdout.split()[-2:]
    index = pd.read_csv(notebook_run / "index.csv").set_index("path")
    import keras

    model = keras.models.load_model(notebook_run / "model.keras")
    cached = np.asarray(Image.open(index.at[str(fixture.disk(key)), "cache"]), np.float32)[None, ..., None]
    assert float(probability) == pytest.approx(float(np.asarray(model(cached, training=False))[0, 0]), abs=1e-4)
    threshold = json.loads((notebook_run / "model.json").read_text())["threshold"]
    assert decision == ("fractured" if float(probability) >= threshold else "not_fractured")
