"""What the default (grouped) run on the fixture wrote: reports, model, metrics, figures."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

FIGURES = ["class_distribution", "sample_images", "near_duplicate_distances", "duplicate_pairs",
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
    assert {"path", "label", "original_split", "split", "group"} <= set(index.columns)
    indexed = {path.removeprefix(f"{fixture.root}/"): label for path, label in zip(index["path"], index["label"])}
    assert indexed == fixture.good
    assert set(index["split"]) <= {"train", "val", "test", "excluded"}


def test_counts_match_the_index(notebook_run, metrics):
    index = pd.read_csv(notebook_run / "index.csv")
    used = index[index["split"] != "excluded"]
    for split, by_class in metrics["data"]["counts"].items():
        for label, count in by_class.items():
            assert count == ((used["split"] == split) & (used["label"] == label)).sum()
    assert metrics["data"]["excluded"] == 4


def test_confusion_matrix_and_accuracy_are_consistent(notebook_run, metrics):
    index = pd.read_csv(notebook_run / "index.csv")
    test = metrics["test"]
    confusion = np.array(test["confusion_matrix"])
    assert confusion.shape == (2, 2)
    assert test["class_order"] == ["fractured", "not_fractured"]
    assert confusion.sum() == (index["split"] == "test").sum() == test["images"]
    assert test["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # Rows are the true class: they add up to the test images of each class.
    test_rows = index[index["split"] == "test"]
    assert confusion.sum(axis=1).tolist() == [(test_rows["label"] == c).sum() for c in test["class_order"]]
    report = test["classification_report"]
    assert {"fractured", "not_fractured", "accuracy", "macro avg"} <= set(report)
    assert report["accuracy"] == pytest.approx(test["accuracy"])


def test_history_has_one_row_per_epoch(notebook_run, metrics):
    history = pd.read_csv(notebook_run / "history.csv")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(history.columns)
    assert len(history) == metrics["training"]["epochs_run"] >= 1
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert metrics["training"]["best_epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_saved_as_non_empty_pngs(notebook_run, name):
    path = notebook_run / f"{name}.png"
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100
        assert np.asarray(image.convert("L")).std() > 5  # not blank


def test_saved_model_loads_and_predicts_two_class_probabilities(notebook_run):
    import keras

    model = keras.models.load_model(notebook_run / "model.keras")
    batch = np.random.default_rng(0).random((3, 64, 64, 1), dtype=np.float32)
    predictions = np.asarray(model(batch, training=False))
    assert predictions.shape == (3, 2)
    assert np.allclose(predictions.sum(axis=1), 1, atol=1e-5)


def test_metrics_json_has_the_documented_keys(metrics):
    assert metrics["split"] == "grouped"
    for key in ["accuracy", "confusion_matrix", "classification_report", "roc_auc", "average_precision",
                "sensitivity", "specificity", "threshold", "brier", "ci95"]:
        assert key in metrics["test"], key
    for key in ["files", "distinct", "groups", "published_leaked_share", "label_conflicts", "metadata_auc"]:
        assert key in metrics["audit"], key
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
