"""The duplicate audit, the grouped folds and the pooled metrics of the default run (FOLDS=2 on the fixture)."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm


def relative(path, fixture):
    return fixture.key(path)


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
    assert list(predictions.columns) == ["path", "label", "group", "fold_group", "fold", "p_metadata", "p_fractured",
                                         "predicted"]
    per_image = metrics["test"]["per_image"]
    y = (predictions["label"] == "fractured").to_numpy()
    p = predictions["p_fractured"].to_numpy()
    assert len(predictions) == per_image["cnn"]["n"] == per_image["metadata"]["n"]
    assert ((p >= 0) & (p <= 1)).all()
    assert skm.roc_auc_score(y, p) == pytest.approx(per_image["cnn"]["roc_auc"], abs=1e-6)
    assert skm.average_precision_score(y, p) == pytest.approx(per_image["cnn"]["average_precision"], abs=1e-6)
    assert skm.brier_score_loss(y, p) == pytest.approx(per_image["cnn"]["brier"], abs=1e-6)
    assert skm.roc_auc_score(y, predictions["p_metadata"]) == pytest.approx(per_image["metadata"]["roc_auc"], abs=1e-6)


def test_fold_means_and_spreads_recompute_from_the_folds(metrics):
    folds = metrics["cv"]["folds"]
    assert [f["fold"] for f in folds] == [1, 2]
    for name in ("roc_auc", "accuracy", "sensitivity", "specificity"):
        values = [f[name] for f in folds]
        assert metrics["cv"]["mean"][name] == pytest.approx(np.nanmean(values), abs=1e-6, nan_ok=True)
        assert metrics["cv"]["std"][name] == pytest.approx(np.nanstd(values), abs=1e-6, nan_ok=True)


def check_threshold(folder, metrics):
    """Check that a run's threshold is the highest reaching the target sensitivity it was given, on the validation
    radiographs of every seed's fold models (a radiograph once per fold model), recomputed from its files."""
    val = pd.read_csv(folder / "validation_predictions.csv")
    folds = pd.read_csv(folder / "folds.csv")  # the first seed's
    assert val["seed"].unique().tolist() == metrics["parameters"]["seeds"]
    first = val[val["seed"] == metrics["parameters"]["seeds"][0]]
    for k, run in first.groupby("fold"):  # each fold's model predicted exactly its own validation part
        assert sorted(run["path"]) == sorted(folds[(folds["fold"] == k) & (folds["part"] == "val")]["path"])
    radiographs = val.groupby(["seed", "fold", "group"]).agg(label=("label", "first"), p=("p_fractured", "mean"))
    target = metrics["parameters"]["target_sensitivity"]
    assert metrics["test"]["target_sensitivity"] == target
    positives = np.sort(radiographs.loc[radiographs["label"] == "fractured", "p"].to_numpy())[::-1]
    needed = next(k for k in range(1, len(positives) + 1) if k / len(positives) >= target)  # fractured to catch
    threshold = metrics["test"]["threshold"]
    assert threshold == pytest.approx(min(1.0, positives[needed - 1]), rel=1e-9)  # the needed-th highest p
    assert (positives >= threshold).mean() >= target  # it reaches the target on validation
    assert (positives > threshold).mean() < target  # and nothing higher does


def test_threshold_is_chosen_on_the_validation_radiographs_for_the_target_sensitivity(notebook_run, metrics):
    check_threshold(notebook_run, metrics)


@pytest.mark.parametrize("unit", ["per_radiograph", "per_image"])
def test_every_confidence_interval_contains_its_estimate(metrics, unit):
    for model in ("cnn", "metadata"):
        found = metrics["test"][unit][model]
        assert {"roc_auc", "average_precision"} <= set(found["ci95"])
        for name, (low, high) in found["ci95"].items():
            if not np.isnan(found[name]):
                assert low <= found[name] + 1e-9 and found[name] <= high + 1e-9, (name, low, found[name], high)
                assert 0 <= low <= high <= 1
