"""What the default (grouped) run on the fixture wrote: reports, model, metrics, figures."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

FIGURES = ["class_distribution", "sample_images", "near_duplicate_similarity", "duplicate_pairs",
           "augmentation_examples", "training_curves", "confusion_matrix", "roc_pr_calibration", "gradcam",
           "confident_mistakes", "predictions"]


def test_corrupt_report_lists_exactly_the_planted_bad_files(notebook_run, fixture):
    report = pd.read_csv(notebook_run / "corrupt_images.csv")
    listed = {path.removeprefix(f"{fixture.root}/"): reason for path, reason in zip(report["path"], report["reason"])}
    expected = {"empty": "empty file", "truncated": "truncated", "not an image": "not an image",
                "broken symlink": "broken symlink"}
    assert listed == {path: expected[kind] for path, kind in fixture.bad.items()}


def test_hidden_files_are_skipped_not_indexed(notebook_run, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    report = pd.read_csv(notebook_run / "corrupt_images.csv")
    mentioned = {path.removeprefix(f"{fixture.root}/") for path in set(index["path"]) | set(report["path"])}
    assert sorted(fixture.skipped) == ["test/fractured/.DS_Store", "val/fractured/Thumbs.db"]
    assert mentioned.isdisjoint(fixture.skipped)


def test_index_holds_every_good_image_once(notebook_run, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    assert {"path", "label", "original_split", "fold", "group", "note"} <= set(index.columns)
    indexed = {path.removeprefix(f"{fixture.root}/"): label for path, label in zip(index["path"], index["label"])}
    assert indexed == fixture.good
    assert set(index["fold"]) <= {0, 1, 2}
    assert (index["note"].isna() == (index["fold"] > 0)).all()  # left-out images are in no fold


def test_counts_match_the_index(notebook_run, metrics, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    assert metrics["data"]["used"] == index["note"].isna().sum() == metrics["test"]["images"]
    assert metrics["data"]["excluded"] == 4
    assert sum(metrics["data"]["left_out"].values()) == index["note"].notna().sum()
    good = metrics["data"]["good_in_published_folders"]
    assert sum(n for by_class in good.values() for n in by_class.values()) == len(index) == len(fixture.good)


def test_confusion_matrix_and_accuracy_are_consistent(notebook_run, metrics):
    index = pd.read_csv(notebook_run / "index.csv")
    test = metrics["test"]
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (2, 2)
    assert test["class_order"] == ["fractured", "not_fractured"]
    assert confusion.sum() == index["note"].isna().sum() == test["images"]
    assert test["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # Rows are the true class: they add up to the images of each class (each predicted out of fold once).
    test_rows = index[index["note"].isna()]
    assert confusion.sum(axis=1).tolist() == [(test_rows["label"] == c).sum() for c in test["class_order"]]
    report = test["classification_report"]
    assert {"fractured", "not_fractured", "accuracy", "macro avg"} <= set(report)
    assert report["accuracy"] == pytest.approx(test["accuracy"])


def test_history_has_one_row_per_fold_and_epoch(notebook_run, metrics):
    history = pd.read_csv(notebook_run / "history.csv")
    assert list(history.columns[:2]) == ["fold", "epoch"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds"} <= set(history.columns)
    folds = metrics["training"]["folds"]
    assert [f["fold"] for f in folds] == sorted(history["fold"].unique()) == [1, 2]
    for summary in folds:
        run = history[history["fold"] == summary["fold"]]
        assert run["epoch"].tolist() == list(range(1, summary["epochs_run"] + 1))
        assert summary["best_epoch"] == int(run.loc[run["val_loss"].idxmin(), "epoch"])


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_saved_as_non_empty_pngs(notebook_run, name):
    path = notebook_run / f"{name}.png"
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100
        assert np.asarray(image.convert("L")).std() > 5  # not blank


def test_saved_model_is_the_average_of_the_fold_models_and_reproduces_the_predictions(notebook_run):
    import keras

    model = keras.models.load_model(notebook_run / "model.keras")
    members = [layer for layer in model.layers if isinstance(layer, keras.Sequential)]
    assert len(members) == 2
    batch = np.random.default_rng(0).random((3, 64, 64, 1), dtype=np.float32)
    predictions = np.asarray(model(batch, training=False))
    assert predictions.shape == (3, 2)
    assert np.allclose(predictions.sum(axis=1), 1, atol=1e-5)
    mean = np.mean([np.asarray(member(batch, training=False)) for member in members], axis=0)
    np.testing.assert_allclose(predictions, mean, atol=1e-6)
    saved = pd.read_csv(notebook_run / "predictions.csv", keep_default_na=False)  # the notebook's own calls
    index = pd.read_csv(notebook_run / "index.csv").set_index("path")
    pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None] / 255
                       for path in saved["path"]])
    np.testing.assert_allclose(np.asarray(model(pixels, training=False))[:, 0], saved["p_fractured"], atol=1e-5)


def test_per_radiograph_metrics_count_each_duplicate_group_once(notebook_run, metrics):
    from sklearn.metrics import roc_auc_score

    oof = pd.read_csv(notebook_run / "test_predictions.csv")
    by_group = oof.groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"))
    assert (oof.groupby("group")["label"].nunique() == 1).all()  # label conflicts were left out
    assert len(by_group) < len(oof)  # the fixture's rotated family makes the two figures differ
    per_radiograph = metrics["test"]["per_radiograph"]
    expected = roc_auc_score(by_group["label"] == "fractured", by_group["p"])
    assert per_radiograph["roc_auc"] == pytest.approx(expected)
    called = by_group["p"] >= metrics["test"]["threshold"]
    fractured = by_group["label"] == "fractured"
    assert per_radiograph["sensitivity"] == pytest.approx(called[fractured].mean())
    assert per_radiograph["specificity"] == pytest.approx(1 - called[~fractured].mean())
    low, high = per_radiograph["ci95"]["roc_auc"]
    assert low <= per_radiograph["roc_auc"] <= high


def test_metrics_json_has_the_documented_keys(metrics):
    assert metrics["split"] == "grouped"
    for key in ["accuracy", "confusion_matrix", "classification_report", "roc_auc", "average_precision",
                "sensitivity", "specificity", "threshold", "brier", "ci95"]:
        assert key in metrics["test"], key
    for key in ["good", "distinct", "groups", "candidate_pairs", "published_leaked_share", "label_conflicts",
                "metadata_auc"]:
        assert key in metrics["audit"], key
    assert set(metrics["cv"]) == {"folds", "mean", "std"}
    json.dumps(metrics)  # round-trips


def test_every_output_the_readme_lists_is_written(notebook_run):
    import re

    from conftest import ROOT

    table = (ROOT / "README.md").read_text().split("## Outputs", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, flags=re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    listed -= {"bone_fracture_classifier.html"}  # written by the README's run command (tested there)
    assert len(listed) >= 20
    for name in sorted(listed):
        path = notebook_run / name.replace("<size>", "64")
        assert path.exists(), name
    written = {p.name for p in notebook_run.iterdir()}
    assert written <= {n.split("/")[0] for n in listed}, written - listed  # nothing unlisted
