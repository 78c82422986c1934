"""Jupyter users run cells again: every code cell run twice in a row must leave the same state as run once.

The doubled run is a second run on the same data with the same seed, so it also shows that the whole run repeats:
the same audit, folds, training history, metrics, figures' numbers and bootstrap intervals. Run twice in one
kernel, it still makes one run folder, and points `latest` at it."""

import copy
import json

import nbformat
import pandas as pd
from conftest import NOTEBOOK, RUN_ENV, execute_notebook, run_folder

RUN_SPECIFIC = {"run_id", "output_dir"}  # where the run wrote, not what it did


def test_running_every_code_cell_twice_raises_nothing_and_writes_the_same_results(notebook_run, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    doubled = []
    for cell in notebook.cells:
        doubled += [cell, copy.deepcopy(cell)] if cell.cell_type == "code" else [cell]
    notebook.cells = doubled
    output = tmp_path / "twice"
    seeds = RUN_ENV["BONE_FRACTURE_SEEDS"]  # the default run's, so that every figure can be compared
    _, error = execute_notebook({"BONE_FRACTURE_OUTPUT_DIR": str(output), "BONE_FRACTURE_SEEDS": seeds},
                                notebook=notebook)
    assert error is None, error
    folder = run_folder(output)
    assert sorted(p.name for p in output.iterdir()) == sorted(["cache", "latest", folder.name])  # one run folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in notebook_run.iterdir())
    once, twice = (json.loads((run / "metrics.json").read_text()) for run in (notebook_run, folder))
    assert twice["run"] == folder.name != once["run"]
    for part in ("data", "audit", "annotations", "training", "test", "cv", "beyond_source", "anatomy", "seeds",
                 "parameters"):
        if part == "training":
            for fold in once[part]["folds"] + twice[part]["folds"]:
                fold.pop("seconds")
        if part == "parameters":
            for name in RUN_SPECIFIC:
                once[part].pop(name), twice[part].pop(name)
        assert once[part] == twice[part], part
    columns = ["path", "label", "fold", "group", "note", "sha1", "sha256"]  # the same split of the same audit
    pd.testing.assert_frame_equal(*(pd.read_csv(run / "index.csv")[columns] for run in (notebook_run, folder)))
    for name in ("folds.csv", "test_predictions.csv", "validation_predictions.csv", "leakage_report.csv",
                 "radiographs.csv", "corrupt_images.csv", "counts.csv"):
        assert (notebook_run / name).read_text() == (folder / name).read_text(), name
    pd.testing.assert_frame_equal(*(pd.read_csv(run / "history.csv").drop(columns="seconds")
                                    for run in (notebook_run, folder)))
    assert (notebook_run / "model_card.md").read_text() == (folder / "model_card.md").read_text()
