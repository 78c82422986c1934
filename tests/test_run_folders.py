"""One folder per run: every run writes a new folder of its own under OUTPUT_DIR and nothing outside it (the shared
cache aside); `latest` points at the newest finished run; runs started together do not collide."""

import json
import os
import subprocess
import sys

import pytest
from conftest import NOTEBOOK, failing_run
from fixture_data import build_fixture, snapshot

FOREIGN = {"model.keras": b"a model from another project", "metrics.json": b'{"theirs": true}',
           "notes.txt": b"the user's notes"}
WRITTEN = {"counts.csv", "corrupt_images.csv", "index.csv", "folds.csv", "history.csv", "test_predictions.csv",
           "radiographs.csv", "model.keras", "model.json", "metrics.json", "model_card.md", "gradcam.png", "run.json"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The plainest fixture, in the renamed layout."""
    return build_fixture(tmp_path_factory.mktemp("small") / "data", with_odd_forms=False)


def quick_env(data, output):
    """Environment of a quick run (1 epoch, 32 px) of the notebook on `data` into `output`, without annotations."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BONE_FRACTURE_")}
    return {**environment, "BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
            "BONE_FRACTURE_FOLDS": "2", "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_IMG_SIZE": "32",
            "BONE_FRACTURE_BOOTSTRAP": "100", "BONE_FRACTURE_ANNOTATIONS": "none", "BONE_FRACTURE_SEEDS": "7"}


def test_two_runs_started_together_both_finish_in_folders_of_their_own_beside_foreign_files(small, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    for name, data in FOREIGN.items():
        (output / name).write_bytes(data)
    runs = [subprocess.Popen([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                              str(NOTEBOOK), "--output-dir", str(tmp_path / f"executed{n}")],
                             env=quick_env(small, output), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for n in (1, 2)]
    logs = [run.communicate(timeout=600)[0].decode(errors="replace") for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    folders = sorted(p for p in output.iterdir() if p.is_dir() and p.name not in ("cache", "latest"))
    assert len(folders) == 2 and folders[0].name != folders[1].name
    for folder in folders:
        assert {p.name for p in folder.iterdir()} >= WRITTEN, folder
        assert json.loads((folder / "metrics.json").read_text())["run"] == folder.name
        assert json.loads((folder / "run.json").read_text())["run"] == folder.name
    assert (output / "latest").is_symlink() and os.readlink(output / "latest") in {f.name for f in folders}
    assert {name: (output / name).read_bytes() for name in FOREIGN} == FOREIGN  # untouched
    assert sorted(p.name for p in output.iterdir()) == sorted([*FOREIGN, "cache", "latest", *(f.name for f in folders)])


def test_a_run_id_that_exists_stops_the_run_and_changes_nothing(small, tmp_path):
    output = tmp_path / "out"
    (output / "mine").mkdir(parents=True)
    (output / "mine" / "model.keras").write_bytes(FOREIGN["model.keras"])
    before = snapshot(output)
    message = failing_run({**{k: v for k, v in quick_env(small, output).items() if k.startswith("BONE_FRACTURE_")},
                           "BONE_FRACTURE_RUN_ID": "mine"})
    assert f"{output / 'mine'} is not new: every run needs an empty folder of its own" in message
    assert snapshot(output) == before


@pytest.mark.parametrize("run_id", ["../escape", "latest", "a b"])
def test_a_run_id_that_is_not_a_plain_folder_name_is_refused(tmp_path, run_id):
    from nbhelpers import notebook_namespace

    with pytest.raises(Exception, match=f"BONE_FRACTURE_RUN_ID='{run_id}' is not valid"):
        notebook_namespace(64, tmp_path, RUN_ID=run_id)


def test_the_data_folder_as_output_folder_stops_at_once_and_changes_no_data_file(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False, layout="archive")
    (data.root / "index.csv").write_text("the user's index\n")
    before = snapshot(data.folder)
    for output in (data.root, data.folder, data.root / "train"):
        message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output)})
        assert "cannot be the output folder: it holds the data folder" in message
        assert snapshot(data.folder) == before


def test_latest_is_left_alone_when_it_is_not_a_link_this_notebook_made(tmp_path):
    from nbhelpers import notebook_namespace

    nb = notebook_namespace(64, tmp_path / "unused")
    output = tmp_path / "out"
    first, second = (nb["new_run_folder"](output, run_id, []) for run_id in ("first", "second"))
    assert "latest -> first" in nb["point_latest"](first) and os.readlink(output / "latest") == "first"
    assert "latest -> second" in nb["point_latest"](second) and os.readlink(output / "latest") == "second"
    (output / "latest").unlink()
    (output / "latest").write_text("the user's file\n")
    assert "left as it is" in nb["point_latest"](first)
    assert (output / "latest").read_text() == "the user's file\n"
