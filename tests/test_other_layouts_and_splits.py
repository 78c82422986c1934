"""Runs other than the default one: the published split with parameters injected by papermill (and images to
predict), copies without val/ or with an empty class folder, and one train/val/test split (FOLDS=1) in the renamed
layout with the output folder inside the data, run twice."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import papermill
import pytest
from conftest import FIXTURE_BEFORE, NOTEBOOK, ROOT, WORK, execute_notebook, failing_run, run_folder
from fixture_data import build_fixture, snapshot
from PIL import Image
from test_audit import check_threshold
from test_run_outputs import CLASSES, p_fractured

PUBLISHED_TARGET = 0.8  # not the default 0.95: the threshold follows the target the run was given


@pytest.fixture(scope="module")
def published_run(notebook_run, fixture):
    """A second run, in published mode, with parameters injected by name through papermill; returns its folder."""
    output = WORK / "published"
    to_predict = f"{fixture.root}/test/fractured,{fixture.disk('val/not_fractured/notes.png')}"
    papermill.execute_notebook(
        str(NOTEBOOK), str(WORK / "published.ipynb"), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
        parameters={"OUTPUT_DIR": str(output), "RUN_ID": "published", "SPLIT": "published", "PREDICT": to_predict,
                    "WORKERS": 1, "TARGET_SENSITIVITY": PUBLISHED_TARGET, "SEEDS": 7})
    folder = run_folder(output)
    assert folder == output / "published"
    return folder


def planted_leak(fixture, folds, split):
    """Share of the images a run used in `split` that are planted copies of an image it used in train."""
    keys = folds.assign(key=folds["path"].map(fixture.key))
    trained = set(keys.loc[keys["part"] == "train", "key"])
    copied = {key for group in fixture.planted_groups() if group & trained for key in group}
    return keys.loc[keys["part"] == split, "key"].isin(copied).mean()


def test_published_mode_reports_the_planted_leak_next_to_the_metrics(published_run, fixture):
    metrics = json.loads((published_run / "metrics.json").read_text())
    assert metrics["split"] == "published" and metrics["parameters"]["workers"] == 1
    assert metrics["parameters"]["seeds"] == [7]  # injected as a number, read as the list of one seed
    index = pd.read_csv(published_run / "index.csv").set_index("path")
    folds = pd.read_csv(published_run / "folds.csv")
    assert set(folds["fold"]) == {1}
    assert (folds["part"] == index.loc[folds["path"], "original_split"].to_numpy()).all()
    for split in ("val", "test"):  # all good images of the folders; then the images used (exclusions left out)
        assert metrics["audit"]["published_leaked_share"][split] == pytest.approx(fixture.leaked_share(split), abs=1e-4)
        assert metrics["audit"]["split_leaked_share"][0][split] == pytest.approx(planted_leak(fixture, folds, split),
                                                                                 abs=1e-4)
    leaked = metrics["audit"]["split_leaked_share"][0]
    executed = (WORK / "published.ipynb").read_text()
    assert f"{leaked['test']:.0%} of test, {leaked['val']:.0%} of val have a copy in train" in executed


def test_the_threshold_follows_the_injected_target_sensitivity(published_run):
    metrics = json.loads((published_run / "metrics.json").read_text())
    assert metrics["test"]["target_sensitivity"] == metrics["parameters"]["target_sensitivity"] == PUBLISHED_TARGET
    check_threshold(published_run, metrics)
    contract = json.loads((published_run / "model.json").read_text())
    assert (contract["threshold"], contract["target_sensitivity"]) == (metrics["test"]["threshold"], PUBLISHED_TARGET)


def test_prediction_section_classifies_exactly_the_given_images(published_run, fixture):
    predictions = pd.read_csv(published_run / "predictions.csv", keep_default_na=False)
    folder = fixture.root / "test/fractured"
    expected = sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    expected.append(str(fixture.disk("val/not_fractured/notes.png")))
    assert predictions["path"].tolist() == expected
    readable = predictions[predictions["error"] == ""]
    assert len(readable) == len(expected) - 1
    assert readable["p_fractured"].astype(float).between(0, 1).all()
    assert predictions.set_index("path").at[expected[-1], "error"].startswith("not an image")
    with Image.open(published_run / "predictions.png") as figure:
        assert figure.format == "PNG" and min(figure.size) > 100


def test_predictions_are_the_saved_model_on_the_model_input_at_its_own_threshold(published_run):
    import keras

    model = keras.models.load_model(published_run / "model.keras")
    contract = json.loads((published_run / "model.json").read_text())
    saved = pd.read_csv(published_run / "predictions.csv", keep_default_na=False)
    saved = saved[saved["error"] == ""]
    index = pd.read_csv(published_run / "index.csv").set_index("path")
    pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None]  # 0-255: scaled inside
                       for path in saved["path"]])
    assert pixels.shape[1:] == (contract["image_size"], contract["image_size"], 1)
    assert contract["classes"] == CLASSES
    np.testing.assert_allclose(p_fractured(model, pixels, contract["test_time_augmentation"]),
                               saved["p_fractured"].astype(float), atol=1e-5)
    expected = np.where(saved["p_fractured"].astype(float) >= contract["threshold"], "fractured", "not_fractured")
    assert (saved["decision"] == expected).all()  # new images are called at the model's own threshold


def test_model_card_figures_equal_metrics_json(published_run):
    metrics = json.loads((published_run / "metrics.json").read_text())
    card = (published_run / "model_card.md").read_text()
    test, source = metrics["test"], metrics["beyond_source"]
    assert "not a medical device" in card.lower()
    cnn, meta = test["per_radiograph"]["cnn"], test["per_radiograph"]["metadata"]
    for found, name in [(cnn, "roc_auc"), (cnn, "sensitivity"), (cnn, "specificity"), (meta, "roc_auc"),
                        (test["per_image"]["cnn"], "roc_auc")]:
        low, high = found["ci95"][name]
        assert f"{found[name]:.3f} (95% CI {low:.3f}-{high:.3f})" in card, name
    for found in (source["cnn"], source["metadata"]):
        assert f"{found['roc_auc']:.3f} (95% CI {found['ci95'][0]:.3f}-{found['ci95'][1]:.3f})" in card
    assert f"{metrics['training']['parameters']:,} parameters" in card
    assert f"threshold {test['threshold']:.3f}" in card and f"sensitivity >= {PUBLISHED_TARGET}" in card
    assert f"Brier {cnn['brier']:.3f}" in card
    assert "[published split:" in card


def test_runs_leave_the_users_files_byte_for_byte_unchanged(published_run, fixture):
    assert snapshot(fixture.folder) == FIXTURE_BEFORE


def test_copies_without_val_and_with_an_empty_class_folder_run_grouped_but_not_published(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False, layout="archive")
    shutil.rmtree(data.root / "val")
    for path in (data.root / "test/not fractured").iterdir():
        path.unlink()
    env = {"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
           "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_SEEDS": "7"}
    _, error = execute_notebook(env, timeout=600)
    assert error is None, error
    metrics = json.loads((run_folder(tmp_path / "o") / "metrics.json").read_text())
    assert set(metrics["data"]["good_in_published_folders"]) == {"train", "test"}
    message = failing_run({**env, "BONE_FRACTURE_SPLIT": "published", "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "p")})
    assert "val part holds 0 image(s)" in message and "SPLIT=published needs train/, val/ and test/" in message
    assert str(data.root.resolve()) in message


@pytest.fixture(scope="module")
def single_split_runs(tmp_path_factory):
    """FOLDS=1 in the renamed layout, with the output folder inside a class folder holding a file of the user's.

    Run twice: the first classifies a readable image too; the second only bad PREDICT entries. The second run must
    not count the first run's files (nor the shared cache) as images, and must leave the first run's folder alone.
    """
    work = tmp_path_factory.mktemp("single")
    data = build_fixture(work / "data", with_odd_forms=False).root
    output = data / "train/fractured/results"
    output.mkdir()
    (output / "my_notes.txt").write_text("the user's own file")
    fifo, broken = work / "pipe.png", work / "broken.png"
    os.mkfifo(fifo)
    png = (data / "train/fractured/f_000.png").read_bytes()
    broken.write_bytes(png[:40] + b"\x00" * 16 + png[56:])  # a chunk with a broken CRC
    env = {"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(output), "BONE_FRACTURE_FOLDS": "1",
           "BONE_FRACTURE_SEEDS": "7"}
    runs = []
    for extra in [f",{data / 'test/fractured/f_000.png'}", ""]:
        _, error = execute_notebook({**env, "BONE_FRACTURE_PREDICT": f"{fifo},{broken},{work / 'missing.png'}{extra}"},
                                    timeout=600)
        assert error is None, error
        folder = run_folder(output)
        runs.append({"folder": folder, "snapshot": snapshot(folder),
                     "metrics": json.loads((folder / "metrics.json").read_text()),
                     "predictions": pd.read_csv(folder / "predictions.csv", keep_default_na=False),
                     "written": sorted(p.name for p in folder.iterdir())})
    return runs, output


def test_single_split_tests_only_its_test_part(single_split_runs):
    runs, _ = single_split_runs
    folder = runs[0]["folder"]
    folds = pd.read_csv(folder / "folds.csv")
    assert set(folds["fold"]) == {1} and set(folds["part"]) == {"train", "val", "test"}
    assert (folds.groupby("group")["part"].nunique() == 1).all()
    predictions = pd.read_csv(folder / "test_predictions.csv")
    assert sorted(predictions["path"]) == sorted(folds.loc[folds["part"] == "test", "path"])
    assert runs[0]["metrics"]["parameters"]["folds"] == 1


def test_output_folder_inside_the_data_is_never_counted_as_data(single_split_runs):
    runs, _ = single_split_runs
    assert runs[0]["metrics"]["data"] == runs[1]["metrics"]["data"]
    assert runs[0]["metrics"]["audit"] == runs[1]["metrics"]["audit"]
    index = pd.read_csv(runs[1]["folder"] / "index.csv")
    assert not index["path"].str.contains("/results/").any()


def test_a_second_run_writes_a_new_folder_and_leaves_the_first_and_the_users_file_alone(single_split_runs):
    runs, output = single_split_runs
    first, second = runs[0]["folder"], runs[1]["folder"]
    assert first != second and first.parent == second.parent == output
    assert snapshot(first) == runs[0]["snapshot"]  # byte for byte as the first run left it
    assert "predictions.png" in runs[0]["written"]
    assert "predictions.png" not in runs[1]["written"]  # no readable PREDICT image: no figure
    assert (output / "my_notes.txt").read_text() == "the user's own file"
    assert sorted(p.name for p in output.iterdir()) == sorted(["my_notes.txt", "cache", "latest", first.name,
                                                               second.name])
    assert os.readlink(output / "latest") == second.name


def test_a_pipe_a_broken_png_and_a_missing_file_in_predict_are_listed_not_fatal(single_split_runs):
    runs, _ = single_split_runs
    for run in runs:
        errors, decisions = run["predictions"]["error"].tolist(), run["predictions"]["decision"].tolist()
        assert errors[0] == "not a regular file"
        assert errors[1].startswith(("corrupt", "truncated", "not an image"))
        assert errors[2] == "file not found"
        assert decisions[:3] == ["", "", ""]
    assert runs[0]["predictions"]["error"].iloc[3] == "" and runs[0]["predictions"]["decision"].iloc[3] != ""
