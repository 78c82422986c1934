"""Bad input stops a run with one message saying what to do, before anything is written: no data, a failed
download, a folder that means neither class, an invalid parameter, an output folder that cannot be one, a data set
with nothing left to evaluate. Each test executes the notebook and expects it to stop (see conftest.failing_run)."""

import shutil
import time

from conftest import failing_run
from fixture_data import build_fixture

KAGGLE_DATASET = "bmadushanirodrigo/fracture-multi-region-x-ray-data"


def test_missing_data_folder_stops_with_one_clear_message(tmp_path):
    missing = tmp_path / "no_such_folder"
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(missing), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert str(missing) in message and "(not found)" in message
    assert KAGGLE_DATASET in message
    assert "train/fractured" in message and "BONE_FRACTURE_DOWNLOAD" in message
    assert not missing.exists() and not (tmp_path / "o").exists()  # stopped before the run's folder was made


def test_download_failure_without_network_is_clean_and_fast(tmp_path):
    missing = tmp_path / "no_such_folder"
    started = time.monotonic()
    message = failing_run({
        "BONE_FRACTURE_DATA_DIR": str(missing), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
        "BONE_FRACTURE_DOWNLOAD": "1", "KAGGLEHUB_CACHE": str(tmp_path / "cache"),
        # Nothing listens on port 9: every request is refused at once, as offline.
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
        "KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "0" * 32})
    assert time.monotonic() - started < 90  # kernel start and imports included: no retry loop, no hang
    assert str(missing) in message and "download failed" in message.lower()
    assert KAGGLE_DATASET in message


def test_a_folder_that_means_neither_class_is_named_with_the_accepted_names(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False).root
    (data / "val/other_class").mkdir()
    (data / "val/other_class/x.jpg").write_bytes(b"")
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert "'fractured', 'not_fractured', 'other_class'" in message and str(data / "val") in message
    assert "'other_class' means neither class" in message and "not fractured" in message
    assert (data / "val/other_class/x.jpg").exists() and not (tmp_path / "o").exists()


def test_an_invalid_value_stops_the_notebook_at_once_with_one_line(tmp_path):
    started = time.monotonic()
    message = failing_run({"BONE_FRACTURE_EPOCHS": "ten", "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert time.monotonic() - started < 60
    assert "BONE_FRACTURE_EPOCHS='ten' is not valid: expected 'auto', or a whole number of at least 1." in message
    assert not (tmp_path / "o").exists()  # stopped before anything was written


def test_an_output_folder_that_is_a_file_gets_one_clear_message(tmp_path, fixture):
    (tmp_path / "taken").write_text("a file")
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(fixture.folder),
                           "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "taken")})
    assert f"BONE_FRACTURE_OUTPUT_DIR={str(tmp_path / 'taken')!r} cannot hold this run's folder" in message
    assert "is not new" not in message  # the folder asked for is a file: no run folder exists
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_dataset_of_one_image_copied_everywhere_names_the_real_cause(tmp_path):
    data = tmp_path / "data"
    image = next(p for p in sorted(build_fixture(tmp_path / "src", False).root.rglob("*.png")))
    for split in ("train", "val", "test"):
        for label in ("fractured", "not_fractured"):
            for i in range(3):
                (data / split / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, data / split / label / f"{i}.png")
    output = tmp_path / "o"
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert "Too little data" in message and "label-conflict" in message and "18 fall into" in message
    assert not list(output.rglob("model.keras")) and not list(output.rglob("folds.csv"))  # stopped before training
