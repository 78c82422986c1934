"""What the default (grouped) run on the fixture wrote in its run folder: reports, model, metrics, figures."""

import fnmatch
import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import tta_views_of
from PIL import Image

CLASSES = ["fractured", "not_fractured"]

FIGURES = ["class_distribution", "sample_images", "near_duplicate_similarity", "duplicate_pairs",
           "augmentation_examples", "training_curves", "confusion_matrix", "roc_pr_calibration", "gradcam",
           "body_part_roc_auc", "label_issues", "gallery_fractured_01", "gallery_not_fractured_01"]
ONLY_WITH_PREDICT = {"predictions.csv", "predictions.png"}  # checked on the published run, which sets PREDICT
ONLY_WITH_EXTERNAL = {"external_predictions.csv", "external_roc.png", "localisation.png"}  # test_learning.py


def p_fractured(model, pixels, tta):
    """A model's probability of `fractured` for a batch of model inputs: with `tta`, the mean over their four views
    (as model.json's `test_time_augmentation` says)."""
    views = tta_views_of(pixels) if tta else [pixels]
    return np.mean([np.asarray(model(view, training=False))[:, CLASSES.index("fractured")] for view in views], axis=0)


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
    assert metrics["data"]["folders"] == {fixture.root.name: str(fixture.root.resolve())}
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


def test_history_has_one_row_per_seed_fold_and_epoch(notebook_run, metrics):
    history = pd.read_csv(notebook_run / "history.csv")
    assert list(history.columns[:3]) == ["seed", "fold", "epoch"]
    assert {"loss", "val_loss", "val_roc_auc", "learning_rate", "seconds", "kept"} <= set(history.columns)
    assert (history.groupby(["seed", "fold"])["kept"].sum() == 1).all()  # one epoch kept per fold model
    assert history["seed"].unique().tolist() == metrics["parameters"]["seeds"]  # every seed trained the same way
    folds = metrics["training"]["folds"]  # the first seed's
    first = history[history["seed"] == metrics["parameters"]["seeds"][0]]
    assert [f["fold"] for f in folds] == sorted(first["fold"].unique()) == [1, 2]
    for summary in folds:
        run = first[first["fold"] == summary["fold"]]
        assert run["epoch"].tolist() == list(range(1, summary["epochs_run"] + 1))
        assert summary["kept_epoch"] == int(run.loc[run["kept"], "epoch"].iloc[0])
        assert summary["kept_epoch"] == int(run.loc[run["val_loss"].idxmin(), "epoch"])  # the CNN: early-stopped


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_saved_as_non_empty_pngs(notebook_run, name):
    path = notebook_run / f"{name}.png"
    assert path.stat().st_size > 5_000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) > 100
        assert np.asarray(image.convert("L")).std() > 5  # not blank


def test_saved_model_is_the_average_of_the_fold_models_that_made_the_out_of_fold_predictions(notebook_run, metrics):
    import keras

    model = keras.models.load_model(notebook_run / "model.keras")
    members = {layer.name: layer for layer in model.layers if isinstance(layer, keras.Sequential)}
    seeds, folds = metrics["parameters"]["seeds"], metrics["parameters"]["folds"]
    assert sorted(members) == sorted(f"seed_{seed}_fold_{k}" for seed in seeds for k in range(1, folds + 1))
    size = metrics["parameters"]["img_size"]
    batch = np.random.default_rng(0).random((3, size, size, 1), dtype=np.float32) * 255
    predictions = np.asarray(model(batch, training=False))
    assert predictions.shape == (3, 2)
    assert np.allclose(predictions.sum(axis=1), 1, atol=1e-5)
    mean = np.mean([np.asarray(member(batch, training=False)) for member in members.values()], axis=0)
    np.testing.assert_allclose(predictions, mean, atol=1e-6)
    oof = pd.read_csv(notebook_run / "test_predictions.csv")  # each fold model scored its own test part
    index = pd.read_csv(notebook_run / "index.csv").set_index("path")
    tta = json.loads((notebook_run / "model.json").read_text())["test_time_augmentation"]
    assert tta == metrics["parameters"]["tta"]
    first_seed = {k: members[f"seed_{seeds[0]}_fold_{k}"] for k in range(1, folds + 1)}
    for k, part in oof.groupby("fold"):
        pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None]  # 0-255, as fed
                           for path in part["path"]])
        np.testing.assert_allclose(p_fractured(first_seed[k], pixels, tta), part["p_fractured"], atol=1e-5)
        if tta:  # the views change the figures: the test would see a model scored without them
            assert not np.allclose(p_fractured(first_seed[k], pixels, False), part["p_fractured"], atol=1e-5)


def test_the_model_carries_its_contract(notebook_run, metrics):
    contract = json.loads((notebook_run / "model.json").read_text())
    test, parameters = metrics["test"], metrics["parameters"]
    assert contract["classes"] == CLASSES and contract["positive_class"] == "fractured"
    assert contract["image_size"] == parameters["img_size"] and contract["fit"] == parameters["fit"]
    assert contract["input"] == f"float32 (batch, {parameters['img_size']}, {parameters['img_size']}, 1)"
    assert contract["threshold"] == test["threshold"]
    assert contract["target_sensitivity"] == test["target_sensitivity"] == parameters["target_sensitivity"]
    assert contract["gradcam_layer"] == "last_conv"
    assert contract["members"] == parameters["folds"] * len(parameters["seeds"])  # the fold models of every seed
    assert contract["test_time_augmentation"] == parameters["tta"]
    assert (parameters["backbone"], parameters["tta"]) == ("cnn", False)  # "auto" on the Kaggle layout
    assert contract["backbone"] == "sequential cnn"  # its name in model.json since 3.0
    assert contract["evaluation"]["radiographs"] == test["per_radiograph"]["cnn"]["n"]  # every radiograph scored
    assert "out of fold" in contract["evaluation"]["scope"]
    assert contract["notebook_version"] == metrics["notebook_version"] and contract["run"] == metrics["run"]
    assert contract["run"] == notebook_run.name and contract["parameters"] == parameters
    assert any("EXIF" in step for step in contract["preprocessing"])


def test_a_training_run_without_predict_classifies_nothing_else(notebook_run, metrics):
    assert metrics["parameters"]["predict"] == ""
    assert not any((notebook_run / name).exists() for name in ONLY_WITH_PREDICT)


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


def test_metrics_json_records_every_parameter_versions_and_the_documented_keys(notebook_run, metrics):
    from nbhelpers import parameter_names

    assert set(metrics["parameters"]) == {name.lower() for name in parameter_names()}
    assert metrics["parameters"]["run_id"] == metrics["run"] == notebook_run.name
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
    assert metrics["seeds"]["seeds"] == metrics["parameters"]["seeds"] and len(metrics["seeds"]["seeds"]) >= 2
    for row in metrics["seeds"]["figures"]:  # each headline figure per seed, with its mean and range
        values = [row[f"seed {seed}"] for seed in metrics["seeds"]["seeds"]]
        assert row["mean"] == pytest.approx(np.mean(values), abs=1e-5)
        assert row["range"] == pytest.approx(max(values) - min(values), abs=1e-5)
    first = {(row["view"], row["model"]): row[f"seed {metrics['parameters']['seeds'][0]}"]
             for row in metrics["seeds"]["figures"]}
    assert first["all radiographs", "cnn"] == pytest.approx(metrics["test"]["per_radiograph"]["cnn"]["roc_auc"],
                                                            abs=1e-5)  # the first seed is the run shown in full
    assert {"views", "body_parts", "one_class_body_parts"} <= set(metrics["anatomy"])
    assert metrics["anatomy"]["views"]["all radiographs"]["cnn"]["roc_auc"] == pytest.approx(
        metrics["test"]["per_radiograph"]["cnn"]["roc_auc"])  # the same radiographs, the same figure
    json.dumps(metrics)  # round-trips


def test_each_seed_and_the_seeds_together_recompute_from_seed_predictions_csv(notebook_run, metrics):
    from sklearn.metrics import roc_auc_score

    scored = pd.read_csv(notebook_run / "seed_predictions.csv")
    seeds = metrics["seeds"]["seeds"]
    assert scored["seed"].unique().tolist() == seeds and scored.groupby("seed")["group"].nunique().nunique() == 1
    figures = {(row["view"], row["model"]): row for row in metrics["seeds"]["figures"]}
    for model, column in (("cnn", "p_fractured"), ("metadata", "p_metadata")):
        for seed, frame in scored.groupby("seed"):
            assert roc_auc_score(frame["label"] == "fractured", frame[column]) == pytest.approx(
                figures["all radiographs", model][f"seed {seed}"], abs=1e-5)
        together = scored.groupby("group").agg(label=("label", "first"), p=(column, "mean"))
        expected = roc_auc_score(together["label"] == "fractured", together["p"])
        assert figures["all radiographs", model]["seeds together"] == pytest.approx(expected, abs=1e-5)
        found = metrics["seeds"]["together"]["all radiographs"][model]
        assert found["roc_auc"] == pytest.approx(expected, abs=1e-5)
        assert found["ci95"][0] <= expected <= found["ci95"][1]
    contract = json.loads((notebook_run / "model.json").read_text())
    assert contract["members"] == metrics["parameters"]["folds"] * len(seeds)  # the fold models of every seed


def test_model_json_scores_the_seeds_ensemble_at_the_shipped_threshold(notebook_run, metrics):
    """The shipped model averages every seed's fold models: its figures are the seeds' ensemble out of fold, at the
    threshold it ships with, recomputed from seed_predictions.csv."""
    from sklearn.metrics import roc_auc_score

    scored = pd.read_csv(notebook_run / "seed_predictions.csv")
    together = scored.groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"))
    contract = json.loads((notebook_run / "model.json").read_text())
    found, fractured = contract["evaluation"], together["label"] == "fractured"
    called = together["p"] >= contract["threshold"]
    assert found == metrics["shipped"] and found["radiographs"] == len(together)
    assert found["roc_auc"] == pytest.approx(roc_auc_score(fractured, together["p"]), abs=1e-6)
    assert found["sensitivity"] == pytest.approx(called[fractured].mean())
    assert found["specificity"] == pytest.approx(1 - called[~fractured].mean())
    assert found["roc_auc_ci95"][0] <= found["roc_auc"] <= found["roc_auc_ci95"][1]


def documented_outputs():
    """The file names in the first column of the table in docs/outputs.md, `<...>` placeholders as `*`."""
    from conftest import ROOT

    text = (ROOT / "docs" / "outputs.md").read_text()
    first_cells = re.findall(r"^\| ([^|]+) \|", text, flags=re.M)
    names = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    return {re.sub(r"<[^>]+>", "*", name) for name in names}


def test_every_output_docs_outputs_md_lists_is_written_and_nothing_else(notebook_run):
    listed = documented_outputs()
    reports = {name for name in listed if name.endswith(".html")}  # written by the README's command, not the notebook
    assert len(listed - reports) >= 20
    for name in sorted(listed - reports - ONLY_WITH_PREDICT - ONLY_WITH_EXTERNAL):
        assert list(notebook_run.glob(name)), name
    unlisted = [p.name for p in notebook_run.iterdir() if not any(fnmatch.fnmatch(p.name, name) for name in listed)]
    assert unlisted == []  # nothing the table does not list
