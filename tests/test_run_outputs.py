"""What the default (grouped) run on the fixture wrote: reports, model, metrics, figures."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

CLASSES = ["fractured", "not_fractured"]

FIGURES = ["class_distribution", "sample_images", "near_duplicate_similarity", "duplicate_pairs",
           "augmentation_examples", "training_curves", "confusion_matrix", "roc_pr_calibration", "gradcam",
           "predictions"]


def test_corrupt_report_lists_exactly_the_planted_bad_files(notebook_run, fixture):
    report = pd.read_csv(notebook_run / "corrupt_images.csv")
    listed = {fixture.key(path): reason for path, reason in zip(report["path"], report["reason"])}
    expected = {"empty": "empty file", "truncated": "truncated", "not an image": "not an image",
                "broken symlink": "broken symlink"}
    assert listed == {path: expected[kind] for path, kind in fixture.bad.items()}


def test_hidden_files_are_skipped_not_indexed(notebook_run, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    report = pd.read_csv(notebook_run / "corrupt_images.csv")
    mentioned = {fixture.key(path) for path in set(index["path"]) | set(report["path"])}
    assert sorted(fixture.skipped) == ["test/fractured/.DS_Store", "val/fractured/Thumbs.db"]
    assert mentioned.isdisjoint(fixture.skipped)


def test_index_holds_every_good_image_once(notebook_run, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    assert {"path", "label", "original_split", "fold", "group", "note"} <= set(index.columns)
    indexed = {fixture.key(path): label for path, label in zip(index["path"], index["label"])}
    assert indexed == fixture.good
    assert set(index["fold"]) <= {0, 1, 2}
    assert (index["note"].isna() == (index["fold"] > 0)).all()  # left-out images are in no fold


def test_the_archive_layout_is_found_below_the_unzip_folder_and_read_by_meaning(metrics, fixture):
    assert fixture.folder != fixture.root and fixture.negative == "not fractured"
    assert metrics["data"]["folder"] == str(fixture.root.resolve())
    assert metrics["parameters"]["data_dir"] == str(fixture.folder)
    index_labels = {label for by_class in metrics["data"]["good_in_published_folders"].values() for label in by_class}
    assert index_labels == {"fractured", "not_fractured"}  # labels keep their canonical names in every output


def test_counts_match_the_index(notebook_run, metrics, fixture):
    index = pd.read_csv(notebook_run / "index.csv")
    assert metrics["data"]["used"] == index["note"].isna().sum() == metrics["test"]["per_image"]["cnn"]["n"]
    assert metrics["data"]["excluded"] == 4
    assert sum(metrics["data"]["left_out"].values()) == index["note"].notna().sum()
    good = metrics["data"]["good_in_published_folders"]
    assert sum(n for by_class in good.values() for n in by_class.values()) == len(index) == len(fixture.good)


@pytest.mark.parametrize("unit", ["per_image", "per_radiograph"])
def test_confusion_matrix_report_and_rates_are_at_the_one_threshold(notebook_run, metrics, unit):
    oof = pd.read_csv(notebook_run / "test_predictions.csv")
    if unit == "per_radiograph":
        oof = oof.groupby("group").agg(label=("label", "first"), p_fractured=("p_fractured", "mean"))
    test, found = metrics["test"], metrics["test"][unit]["cnn"]
    assert found["threshold"] == test["threshold"]
    called = np.where(oof["p_fractured"] >= test["threshold"], "fractured", "not_fractured")
    confusion = np.array(found["confusion_matrix"])  # rows true, columns called, in class order
    expected = pd.crosstab(oof["label"], called).reindex(index=CLASSES, columns=CLASSES, fill_value=0).to_numpy()
    np.testing.assert_array_equal(confusion, expected)
    assert confusion.sum() == len(oof) == found["n"]
    assert found["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert found["sensitivity"] == pytest.approx(confusion[0, 0] / confusion[0].sum())
    assert found["specificity"] == pytest.approx(confusion[1, 1] / confusion[1].sum())
    report = found["classification_report"]
    assert report["fractured"]["recall"] == pytest.approx(found["sensitivity"])
    assert report["accuracy"] == pytest.approx(found["accuracy"])
    if unit == "per_image":  # the CSV's decisions are the same rule
        assert (pd.read_csv(notebook_run / "test_predictions.csv")["predicted"] == called).all()


def test_history_has_one_row_per_fold_and_epoch(notebook_run, metrics):
    history = pd.read_csv(notebook_run / "history.csv")
    assert list(history.columns[:2]) == ["fold", "epoch"]
    assert {"loss", "val_loss", "val_roc_auc", "learning_rate", "seconds"} <= set(
        history.columns)
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
    batch = np.random.default_rng(0).random((3, 64, 64, 1), dtype=np.float32) * 255
    predictions = np.asarray(model(batch, training=False))
    assert predictions.shape == (3, 2)
    assert np.allclose(predictions.sum(axis=1), 1, atol=1e-5)
    mean = np.mean([np.asarray(member(batch, training=False)) for member in members], axis=0)
    np.testing.assert_allclose(predictions, mean, atol=1e-6)
    saved = pd.read_csv(notebook_run / "predictions.csv", keep_default_na=False)  # the notebook's own calls
    index = pd.read_csv(notebook_run / "index.csv").set_index("path")
    pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None]  # 0-255: scaled inside
                       for path in saved["path"]])
    np.testing.assert_allclose(np.asarray(model(pixels, training=False))[:, 0], saved["p_fractured"], atol=1e-5)


def test_the_model_carries_its_contract(notebook_run, metrics):
    contract = json.loads((notebook_run / "model.json").read_text())
    test = metrics["test"]
    assert contract["classes"] == CLASSES and contract["positive_class"] == "fractured"
    assert contract["image_size"] == 64 == metrics["parameters"]["img_size"]
    assert contract["threshold"] == test["threshold"] and contract["target_sensitivity"] == 0.95
    assert contract["gradcam_layer"] == "last_conv" and contract["members"] == 2
    assert contract["evaluation"]["roc_auc"] == test["per_radiograph"]["cnn"]["roc_auc"]
    assert contract["notebook_version"] == metrics["notebook_version"] and contract["run"] == metrics["run"]
    assert any("EXIF" in step for step in contract["preprocessing"])
    saved = pd.read_csv(notebook_run / "predictions.csv", keep_default_na=False)
    expected = np.where(saved["p_fractured"] >= contract["threshold"], "fractured", "not_fractured")
    assert (saved["decision"] == expected).all()  # new images are called by the model's own threshold


def test_per_radiograph_metrics_count_each_duplicate_group_once(notebook_run, metrics):
    from sklearn.metrics import roc_auc_score

    oof = pd.read_csv(notebook_run / "test_predictions.csv")
    by_group = oof.groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"), m=("p_metadata", "mean"))
    assert (oof.groupby("group")["label"].nunique() == 1).all()  # label conflicts were left out
    assert len(by_group) < len(oof)  # the fixture's rotated family makes the two figures differ
    per_radiograph = metrics["test"]["per_radiograph"]
    fractured = by_group["label"] == "fractured"
    assert per_radiograph["cnn"]["roc_auc"] == pytest.approx(roc_auc_score(fractured, by_group["p"]))
    assert per_radiograph["metadata"]["roc_auc"] == pytest.approx(roc_auc_score(fractured, by_group["m"]))
    assert metrics["test"]["per_image"]["cnn"]["roc_auc"] == pytest.approx(
        roc_auc_score(oof["label"] == "fractured", oof["p_fractured"]))
    called = by_group["p"] >= metrics["test"]["threshold"]
    assert per_radiograph["cnn"]["sensitivity"] == pytest.approx(called[fractured].mean())
    assert per_radiograph["cnn"]["specificity"] == pytest.approx(1 - called[~fractured].mean())
    for found in (per_radiograph["cnn"], per_radiograph["metadata"]):
        low, high = found["ci95"]["roc_auc"]
        assert low <= found["roc_auc"] <= high


def test_the_metadata_baseline_is_scored_on_the_same_out_of_fold_test_parts(notebook_run):
    oof = pd.read_csv(notebook_run / "test_predictions.csv")
    folds = pd.read_csv(notebook_run / "folds.csv")
    tested = folds[folds["part"] == "test"].set_index("path")["fold"]
    assert oof["p_metadata"].between(0, 1).all() and len(oof) == len(tested)
    assert (oof["fold"].to_numpy() == tested.loc[oof["path"]].to_numpy()).all()


def test_per_fold_figures_recompute_from_the_predictions(notebook_run, metrics):
    from sklearn.metrics import roc_auc_score

    oof = pd.read_csv(notebook_run / "test_predictions.csv")
    assert metrics["cv"]["unit"] == "radiograph"
    for fold in metrics["cv"]["folds"]:
        run = oof[oof["fold"] == fold["fold"]].groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"))
        assert fold["radiographs"] == len(run)
        assert fold["roc_auc"] == pytest.approx(roc_auc_score(run["label"] == "fractured", run["p"]))


def test_metrics_json_records_every_parameter_versions_and_the_documented_keys(metrics):
    import re

    import nbformat
    from conftest import NOTEBOOK

    source = next(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
                  if "parameters" in c.metadata.get("tags", []))
    knobs = {name.lower() for name in re.findall(r"^([A-Z_]+) = env\(", source, flags=re.M)}
    assert set(metrics["parameters"]) == knobs
    assert {"python", "tensorflow", "keras"} <= set(metrics["versions"])
    assert metrics["split"] == "grouped"
    for unit in ("per_radiograph", "per_image"):
        for key in ["roc_auc", "average_precision", "sensitivity", "specificity", "precision", "accuracy", "brier",
                    "confusion_matrix", "classification_report", "ci95", "threshold", "n"]:
            assert key in metrics["test"][unit]["cnn"], key
        assert {"roc_auc", "average_precision", "ci95"} <= set(metrics["test"][unit]["metadata"])
    for key in ["good", "distinct", "groups", "candidate_pairs", "published_leaked_share", "label_conflicts"]:
        assert key in metrics["audit"], key
    assert {"strata", "radiographs", "cnn", "metadata", "added_information"} <= set(metrics["beyond_source"])
    assert set(metrics["cv"]) == {"unit", "folds", "mean", "std"}
    json.dumps(metrics)  # round-trips


def test_every_output_the_readme_lists_is_written(notebook_run):
    import re

    from conftest import ROOT

    table = (ROOT / "README.md").read_text().split("## Outputs", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\| ([^|]+) \|", table, flags=re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    listed -= {"bone_fracture_classifier.html", "bone_fracture_predictions.html"}  # written by the README's commands
    assert len(listed) >= 20
    for name in sorted(listed):
        assert any(notebook_run.glob(name.rstrip("/").replace("<key>", "*"))), name
    written = {p.name for p in notebook_run.iterdir()}
    assert written <= {n.split("/")[0] for n in listed}, written - listed  # nothing unlisted
