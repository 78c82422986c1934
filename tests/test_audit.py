"""The duplicate audit, the grouped split and the clinical metrics of the default run (issue: honest evaluation)."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm


def relative(path, fixture):
    return str(path).removeprefix(f"{fixture.root}/")


def test_audit_finds_exactly_the_planted_duplicate_pairs(notebook_run, fixture):
    report = pd.read_csv(notebook_run / "leakage_report.csv")
    found = {frozenset((relative(a, fixture), relative(b, fixture))): kind
             for a, b, kind in zip(report["path_a"], report["path_b"], report["kind"])}
    assert len(found) == len(report), "a pair is listed twice"
    assert found == fixture.dup_pairs


def test_every_good_image_has_a_group_and_copies_share_it(notebook_run, fixture):
    index = pd.read_csv(notebook_run / "index.csv").assign(rel=lambda f: f["path"].map(lambda p: relative(p, fixture)))
    group = dict(zip(index["rel"], index["group"]))
    for pair in fixture.dup_pairs:
        a, b = sorted(pair)
        assert group[a] == group[b], pair
    planted = {path for pair in fixture.dup_pairs for path in pair}
    singles = index[~index["rel"].isin(planted)]
    assert singles["group"].is_unique  # no false merges among the other images


def test_grouped_split_keeps_every_group_in_one_split(notebook_run):
    index = pd.read_csv(notebook_run / "index.csv")
    used = index[index["split"] != "excluded"]
    assert (used.groupby("group")["split"].nunique() == 1).all()
    assert set(used["split"]) == {"train", "val", "test"}
    shares = used["split"].value_counts(normalize=True)
    assert shares["train"] > shares["val"] and shares["train"] > shares["test"]


def test_label_conflict_is_kept_out_of_training_and_reported(notebook_run, fixture, metrics):
    index = pd.read_csv(notebook_run / "index.csv").assign(rel=lambda f: f["path"].map(lambda p: relative(p, fixture)))
    conflict = index[index["rel"].isin(fixture.conflict)]
    assert len(conflict) == 2
    assert (conflict["split"] == "excluded").all()
    assert (conflict["note"] == "label conflict").all()
    assert metrics["audit"]["label_conflicts"] == 1
    assert metrics["audit"]["label_conflict_images"] == 2


def test_published_leak_is_measured_in_the_audit(metrics, fixture):
    for split in ("val", "test"):
        assert metrics["audit"]["published_leaked_share"][split] == pytest.approx(fixture.leaked_share(split), abs=1e-4)
    assert fixture.leaked_share("test") > 0
    assert metrics["audit"]["split_leaked_share"] == {"val": 0.0, "test": 0.0}


def test_metrics_recomputed_from_test_predictions_agree(notebook_run, metrics):
    predictions = pd.read_csv(notebook_run / "test_predictions.csv")
    assert list(predictions.columns[:5]) == ["path", "group", "label", "p_fractured", "predicted"]
    test = metrics["test"]
    y = (predictions["label"] == "fractured").to_numpy()
    p = predictions["p_fractured"].to_numpy()
    assert len(predictions) == test["images"]
    assert ((p >= 0) & (p <= 1)).all()
    assert skm.accuracy_score(predictions["label"], predictions["predicted"]) == pytest.approx(test["accuracy"])
    confusion = skm.confusion_matrix(predictions["label"], predictions["predicted"], labels=test["class_order"])
    assert confusion.tolist() == test["confusion_matrix"]
    assert skm.roc_auc_score(y, p) == pytest.approx(test["roc_auc"], abs=1e-4)
    assert skm.average_precision_score(y, p) == pytest.approx(test["average_precision"], abs=1e-4)
    assert skm.brier_score_loss(y, p) == pytest.approx(test["brier"], abs=1e-4)
    called = predictions["predicted_at_threshold"] == "fractured"
    assert (called == (p >= test["threshold"])).all()
    assert called[y].mean() == pytest.approx(test["sensitivity"])
    assert (~called[~y]).mean() == pytest.approx(test["specificity"])


def test_threshold_reaches_the_target_sensitivity_on_validation(metrics):
    assert 0 <= metrics["test"]["threshold"] <= 1
    assert metrics["parameters"]["target_sensitivity"] == 0.95


def test_every_confidence_interval_contains_its_estimate(metrics):
    test = metrics["test"]
    assert set(test["ci95"]) == {"accuracy", "roc_auc", "sensitivity", "specificity"}
    for name, (low, high) in test["ci95"].items():
        assert low <= test[name] + 1e-9 and test[name] <= high + 1e-9, (name, low, test[name], high)
        assert 0 <= low <= high <= 1


def test_metadata_baseline_is_reported(metrics):
    auc = metrics["audit"]["metadata_auc"]
    assert np.isnan(auc) or 0 <= auc <= 1
