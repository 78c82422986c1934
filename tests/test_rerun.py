"""Jupyter users run cells again: every code cell run twice in a row must leave the same state as run once.

The doubled run is a second run on the same data with the same seed, so it also shows that the whole run repeats:
the same audit, folds, training history, metrics, figures' numbers and bootstrap intervals."""

import copy
import json

import nbformat
import pandas as pd
from conftest import NOTEBOOK, execute_notebook


def test_running_every_code_cell_twice_raises_nothing_and_writes_the_same_results(notebook_run, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    doubled = []
    for cell in notebook.cells:
        doubled += [cell, copy.deepcopy(cell)] if cell.cell_type == "code" else [cell]
    notebook.cells = doubled
    output = tmp_path / "twice"
    _, error = execute_notebook({"BONE_FRACTURE_OUTPUT_DIR": str(output)}, notebook=notebook)
    assert error is None, error
    once, twice = (json.loads((run / "metrics.json").read_text()) for run in (notebook_run, output))
    for part in ("data", "audit", "training", "test", "cv", "beyond_source", "parameters"):
        if part == "training":
            for fold in once[part]["folds"] + twice[part]["folds"]:
                fold.pop("seconds")
        if part == "parameters":
            once[part].pop("output_dir"), twice[part].pop("output_dir")
        assert once[part] == twice[part], part
    columns = ["path", "label", "fold", "group", "note", "sha1"]  # the same split of the same audit
    pd.testing.assert_frame_equal(*(pd.read_csv(run / "index.csv")[columns] for run in (notebook_run, output)))
    for name in ("folds.csv", "test_predictions.csv", "validation_predictions.csv", "leakage_report.csv",
                 "predictions.csv"):
        assert (notebook_run / name).read_text() == (output / name).read_text(), name
    pd.testing.assert_frame_equal(*(pd.read_csv(run / "history.csv").drop(columns="seconds")
                                    for run in (notebook_run, output)))
    assert (notebook_run / "model_card.md").read_text() == (output / "model_card.md").read_text()
