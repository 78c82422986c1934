"""The network learns. Every other test checks that the notebook's figures are consistent with what it wrote, which a
network returning a constant would pass too. Here the notebook runs on a fixture whose fractured radiographs carry a
visible mark that augmentation keeps (a bright band across the bone; `build_learnable_fixture`), and its out-of-fold
ROC-AUC per radiograph must reach 0.9. (Checked once by hand: with the model's output layer replaced by a constant,
the figure is 0.5 and this test fails.)"""

import json

import pandas as pd
import pytest
from conftest import execute_notebook, run_folder
from fixture_data import build_learnable_fixture
from sklearn.metrics import roc_auc_score

# 96 radiographs at 64 px, 3 folds of one seed, 8 epochs: about a minute on 2 CPU cores.
LEARNING_RUN = {"BONE_FRACTURE_FOLDS": "3", "BONE_FRACTURE_EPOCHS": "8", "BONE_FRACTURE_IMG_SIZE": "64",
                "BONE_FRACTURE_BATCH_SIZE": "16", "BONE_FRACTURE_SEEDS": "7", "BONE_FRACTURE_BOOTSTRAP": "100",
                "BONE_FRACTURE_ANNOTATIONS": "none"}


@pytest.fixture(scope="module")
def learnt(tmp_path_factory):
    """The run folder of the notebook trained on the learnable fixture."""
    work = tmp_path_factory.mktemp("learnable")
    data = build_learnable_fixture(work / "data")
    _, error = execute_notebook({**LEARNING_RUN, "BONE_FRACTURE_DATA_DIR": str(data),
                                 "BONE_FRACTURE_OUTPUT_DIR": str(work / "output")})
    assert error is None, error
    return run_folder(work / "output")


def test_the_network_learns_a_visible_mark_out_of_fold(learnt):
    oof = pd.read_csv(learnt / "test_predictions.csv")
    radiographs = oof.groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"))
    assert len(radiographs) == 96  # every radiograph scored once: none merged as a copy of another
    auc = roc_auc_score(radiographs["label"] == "fractured", radiographs["p"])
    assert auc >= 0.9, f"out-of-fold ROC-AUC per radiograph {auc:.3f}: the network did not learn the mark"
    metrics = json.loads((learnt / "metrics.json").read_text())
    assert metrics["test"]["per_radiograph"]["cnn"]["roc_auc"] == pytest.approx(auc)
