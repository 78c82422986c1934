"""The duplicate audit, the grouped folds and the pooled metrics of the default run (FOLDS=2 on the fixture)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm


def relative(path, fixture):
    return str(path).removeprefix(f"{fixture.root}/")


@pytest.fixture(scope="module")
def index(notebook_run, fixture):
    return pd.read_csv(notebook_run / "index.csv").assign(rel=lambda f: f["path"].map(lambda p: relative(p, fixture)))


def test_groups_are_exactly_the_planted_copies(index, fixture):
    group = dict(zip(index["rel"], index["group"]))
    planted = fixture.planted_groups()
    for members in planted:
        assert len({group[path] for path in members}) == 1, members  # every rotated, resized, re-encoded copy
    assert len({group[next(iter(members))] for members in planted}) == len(planted)  # planted groups stay apart
    singles = index[~index["rel"].isin(set().union(*planted))]
    assert singles["group"].is_unique  # no false merges, look-alikes included
    assert group[fixture.look_alikes[0]] != group[fixture.look_alikes[1]]


def test_leakage_report_lists_verified_links_within_planted_groups_only(notebook_run, fixture):
    report = pd.read_csv(notebook_run / "leakage_report.csv")
    assert {"path_a", "path_b", "kind", "similarity", "angle", "mirrored"} <= set(report.columns)
    pairs = [frozenset((relative(a, fixture), relative(b, fixture)))
             for a, b in zip(report["path_a"], report["path_b"])]
    assert len(set(pairs)) == len(pairs), "a pair is listed twice"
    for pair, kind in zip(pairs, report["kind"]):
        assert any(pair <= group for group in fixture.planted_groups()), pair
        assert kind == "exact" or fixture.dup_pairs.get(pair, "near") == "near", pair
    exact = {pair for pair, kind in zip(pairs, report["kind"]) if kind == "exact"}
    assert exact == {pair for pair, kind in fixture.dup_pairs.items() if kind == "exact"}
    near = report[report["kind"] == "near"]
    assert (near["similarity"] >= json.loads((notebook_run / "metrics.json").read_text())["parameters"]
            ["near_dup_similarity"]).all()
    mirrored = report[report["path_b"].str.contains("mirror") | report["path_a"].str.contains("mirror")]
    assert mirrored["mirrored"].any()  # the mirrored copy was matched as a mirror image


def test_folds_hold_whole_groups_and_every_image_is_tested_once(notebook_run, index, metrics):
    folds = pd.read_csv(notebook_run / "folds.csv")
    used = index[index["note"].isna()]
    assert metrics["parameters"]["folds"] == 2 and set(folds["fold"]) == {1, 2}
    test = folds[folds["part"] == "test"]
    assert sorted(test["path"]) == sorted(used["path"])  # exactly one out-of-fold prediction per used image
    assert (test.groupby("group")["fold"].nunique() == 1).all()  # no group in two folds' test parts
    for _, run in folds.groupby("fold"):
        assert (run.groupby("group")["part"].nunique() == 1).all()  # nor in two parts of one fold
        assert set(run["path"]) == set(used["path"])
    assert dict(zip(test["path"], test["fold"])) == dict(zip(used["path"], used["fold"]))


def test_label_conflict_is_left_out_and_reported(notebook_run, index, fixture, metrics):
    conflict = index[index["rel"].isin(fixture.conflict)]
    assert len(conflict) == 2
    assert (conflict["note"] == "label conflict").all() and (conflict["fold"] == 0).all()
    assert not set(conflict["path"]) & set(pd.read_csv(notebook_run / "folds.csv")["path"])
    assert metrics["audit"]["label_conflicts"] == 1
    assert metrics["audit"]["label_conflict_images"] == 2


def test_published_leak_is_measured_and_the_folds_do_not_leak(metrics, fixture):
    for split in ("val", "test"):
        assert metrics["audit"]["published_leaked_share"][split] == pytest.approx(fixture.leaked_share(split), abs=1e-4)
    assert fixture.leaked_share("test") > 0
    assert metrics["audit"]["split_leaked_share"] == [{"val": 0.0, "test": 0.0}] * 2


def test_pooled_metrics_recompute_from_the_out_of_fold_predictions(notebook_run, metrics):
    predictions = pd.read_csv(notebook_run / "test_predictions.csv")
    assert list(predictions.columns) == ["path", "fold", "group", "label", "p_fractured", "predicted",
                                         "predicted_at_threshold"]
    test = metrics["test"]
    y = (predictions["label"] == "fractured").to_numpy()
    p = predictions["p_fractured"].to_numpy()
    assert len(predictions) == test["images"] == np.sum(test["confusion_matrix"])
    assert ((p >= 0) & (p <= 1)).all()
    assert (predictions["predicted"] == np.where(p >= 0.5, "fractured", "not_fractured")).all()
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


def test_per_fold_metrics_recompute_from_their_test_parts(notebook_run, metrics):
    predictions = pd.read_csv(notebook_run / "test_predictions.csv")
    folds = {row["fold"]: row for row in metrics["cv"]["folds"]}
    assert set(folds) == set(predictions["fold"])
    for k, run in predictions.groupby("fold"):
        y, p = (run["label"] == "fractured").to_numpy(), run["p_fractured"].to_numpy()
        assert folds[k]["images"] == len(run) and folds[k]["groups"] == run["group"].nunique()
        assert folds[k]["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
        assert folds[k]["accuracy"] == pytest.approx(((p >= 0.5) == y).mean())
        assert folds[k]["sensitivity"] == pytest.approx((p[y] >= metrics["test"]["threshold"]).mean())
    for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        assert metrics["cv"]["mean"][name] == pytest.approx(np.mean([f[name] for f in folds.values()]), abs=1e-6)
        assert metrics["cv"]["std"][name] == pytest.approx(np.std([f[name] for f in folds.values()]), abs=1e-6)


def test_threshold_comes_from_validation_predictions(notebook_run, metrics):
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
