"""Further notebook runs: published split with papermill parameters, bad data folders, and the fixture's safety."""

import json
import os
import shutil
import subprocess
import time

import nbformat
import pandas as pd
import papermill
import pytest
from conftest import FIXTURE_BEFORE, NOTEBOOK, ROOT, WORK, execute_notebook
from fixture_data import build_fixture, snapshot
from nbhelpers import environment


@pytest.fixture(scope="module")
def published_run(notebook_run, fixture):
    """A second run, in published mode, with parameters injected by name through papermill."""
    output = WORK / "published"
    to_predict = f"{fixture.root}/test/fractured,{fixture.disk('val/not_fractured/notes.png')}"
    papermill.execute_notebook(
        str(NOTEBOOK), str(WORK / "published.ipynb"), cwd=str(ROOT), kernel_name="python3", progress_bar=False,
        parameters={"OUTPUT_DIR": str(output), "SPLIT": "published", "PREDICT": to_predict, "WORKERS": 1})
    return output


def test_published_mode_reports_the_planted_leak_next_to_the_metrics(published_run, fixture):
    metrics = json.loads((published_run / "metrics.json").read_text())
    assert metrics["split"] == "published"
    for split in ("val", "test"):
        expected = fixture.leaked_share(split)
        assert metrics["audit"]["published_leaked_share"][split] == pytest.approx(expected, abs=1e-4)
        assert metrics["audit"]["split_leaked_share"][0][split] == pytest.approx(expected, abs=1e-4)
    executed = (WORK / "published.ipynb").read_text()
    assert f"{fixture.leaked_share('test'):.0%} of test" in executed and "[published split:" in executed
    index = pd.read_csv(published_run / "index.csv").set_index("path")
    folds = pd.read_csv(published_run / "folds.csv")
    assert set(folds["fold"]) == {1}
    assert (folds["part"] == index.loc[folds["path"], "original_split"].to_numpy()).all()


def test_prediction_section_classifies_exactly_the_given_images(published_run, fixture):
    predictions = pd.read_csv(published_run / "predictions.csv", keep_default_na=False)
    folder = fixture.root / "test/fractured"
    expected = sorted(str(p) for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    expected.append(str(fixture.disk("val/not_fractured/notes.png")))
    assert predictions["path"].tolist() == expected
    readable = predictions[predictions["error"] == ""]
    assert len(readable) == len(expected) - 1
    assert readable["p_fractured"].astype(float).between(0, 1).all()
    assert set(readable["decision"]) <= {"fractured", "not_fractured"}
    assert predictions.set_index("path").at[expected[-1], "error"].startswith("not an image")


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
    assert f"threshold {test['threshold']:.3f}" in card
    assert f"Brier {cnn['brier']:.3f}" in card
    assert "[published split:" in card


def test_runs_leave_the_users_files_byte_for_byte_unchanged(published_run, fixture):
    assert snapshot(fixture.folder) == FIXTURE_BEFORE


def readme_command(marker):
    """Return the shell command in the README's code block after <!-- marker -->."""
    after = (ROOT / "README.md").read_text().split(f"<!-- {marker} -->", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0].strip()


def test_readme_run_command_executes_the_notebook_into_an_html_report(fixture, tmp_path):
    output = tmp_path / "run"
    env = {**os.environ, "BONE_FRACTURE_DATA_DIR": str(fixture.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
           "BONE_FRACTURE_EPOCHS": "1"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_command("run-command")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    html = (output / "bone_fracture_classifier.html").read_text()
    assert html.count("data:image/png;base64") >= 10  # self-contained: every figure embedded
    assert "Model card" in html and "Traceback" not in html
    assert "Traceback" not in result.stdout + result.stderr
    folds = json.loads((output / "metrics.json").read_text())["training"]["folds"]
    assert [fold["epochs_run"] for fold in folds] == [1, 1]


def test_readme_run_command_ends_a_failed_run_with_the_one_message(tmp_path):
    env = {**os.environ, "BONE_FRACTURE_SEED": "-1", "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")}
    result = subprocess.run(["bash", "-c", readme_command("run-command")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "DataError: BONE_FRACTURE_SEED='-1' is not valid: expected a whole number from 0 to 4294967295."
    assert len(lines) <= 3 and "Traceback" not in result.stderr


def test_readme_test_command_is_what_ci_runs():
    command = readme_command("test-command")
    assert command.endswith("python -m pytest")
    ci = (ROOT / ".ci/run").read_text()
    assert "<!-- test-command -->" in ci and 'bash -euo pipefail -c "$command"' in ci


def failing_run(env):
    """Run the notebook expecting a DataError; return the executed notebook's error output."""
    notebook, error = execute_notebook(env, timeout=300)
    assert error is not None and error.startswith("DataError"), error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
               if o.output_type == "error"]
    assert len(outputs) == 1
    rendered = "\n".join(outputs[0]["traceback"])
    assert "Traceback" not in rendered and len(rendered.splitlines()) < 15  # one message, no traceback wall
    return rendered


def test_missing_data_folder_stops_with_one_clear_message(tmp_path):
    missing = tmp_path / "no_such_folder"
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(missing), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert str(missing) in message
    assert "bmadushanirodrigo/fracture-multi-region-x-ray-data" in message
    assert "train/fractured" in message and "BONE_FRACTURE_DOWNLOAD" in message
    assert not missing.exists()


def test_download_failure_without_network_is_clean_and_fast(tmp_path):
    missing = tmp_path / "no_such_folder"
    started = time.monotonic()
    message = failing_run({
        "BONE_FRACTURE_DATA_DIR": str(missing), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
        "BONE_FRACTURE_DOWNLOAD": "1", "KAGGLEHUB_CACHE": str(tmp_path / "cache"),
        # Nothing listens on port 9: every request is refused at once, as offline.
        "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
        "KAGGLE_USERNAME": "nobody", "KAGGLE_KEY": "0" * 32})
    assert time.monotonic() - started < 90  # kernel start and imports included: no retry loop, no hang
    assert str(missing) in message and "download failed" in message.lower()
    assert "bmadushanirodrigo/fracture-multi-region-x-ray-data" in message


def test_a_folder_that_means_neither_class_is_named_with_the_accepted_names(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False).root
    (data / "val/other_class").mkdir()
    (data / "val/other_class/x.jpg").write_bytes(b"")
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert "'fractured', 'not_fractured', 'other_class'" in message and str(data / "val") in message
    assert "'other_class' means neither class" in message and "not fractured" in message
    assert (data / "val/other_class/x.jpg").exists() and not (tmp_path / "o").exists()


def test_copies_without_val_and_with_an_empty_class_folder_run_grouped_but_not_published(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False, layout="archive")
    shutil.rmtree(data.root / "val")
    for path in (data.root / "test/not fractured").iterdir():
        path.unlink()
    env = {"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o"),
           "BONE_FRACTURE_EPOCHS": "1"}
    _, error = execute_notebook(env, timeout=600)
    assert error is None, error
    metrics = json.loads((tmp_path / "o/metrics.json").read_text())
    assert set(metrics["data"]["good_in_published_folders"]) == {"train", "test"}
    message = failing_run({**env, "BONE_FRACTURE_SPLIT": "published", "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "p")})
    assert "val part holds 0 image(s)" in message and "SPLIT=published needs train/, val/ and test/" in message
    assert str(data.root.resolve()) in message


def settings_outcome(name, value):
    """Run the notebook's cells up to its parameter checks with one variable set; return (namespace, error)."""
    code = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    cells = code[:next(i for i, c in enumerate(code) if "TRAINING = not MODEL" in c.source) + 1]
    namespace = {}
    with environment({f"BONE_FRACTURE_{name}": value}):
        try:
            for cell in cells:
                exec(compile(cell.source, "<cell>", "exec"), namespace)
        except Exception as error:  # the error the notebook would show
            return namespace, error
    return namespace, None


@pytest.mark.parametrize(("name", "value"), [
    ("EPOCHS", "0"), ("EPOCHS", "ten"), ("BATCH_SIZE", "0"), ("IMG_SIZE", "8"), ("SEED", "-1"), ("FOLDS", "0"),
    ("TARGET_SENSITIVITY", "1.5"), ("NEAR_DUP_SIMILARITY", "2"), ("LEARNING_RATE", "-1"), ("BOOTSTRAP", "0"),
    ("DEDUPLICATE", "ture"), ("SPLIT", "random"), ("SPLIT_FRACTIONS", "0.7,0.3"), ("MAX_MEGAPIXELS", "big"),
    ("MODEL", "/no/such/model.keras"), ("SOURCE_BINS", "1"), ("FIT", "stretch"),
])
def test_each_invalid_parameter_is_refused_naming_variable_value_and_what_is_allowed(name, value):
    _, error = settings_outcome(name, value)
    assert type(error).__name__ == "DataError", error
    assert str(error).startswith(f"BONE_FRACTURE_{name}={value!r} is not valid: expected ")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("DEDUPLICATE", "off", False), ("CLASS_WEIGHTS", "Yes", True), ("EPOCHS", " 3 ", 3), ("FOLDS", "1", 1),
    ("TARGET_SENSITIVITY", "0.9", 0.9), ("SPLIT_FRACTIONS", "0.6,0.2,0.2", [0.6, 0.2, 0.2]),
])
def test_documented_values_are_accepted(name, value, expected):
    namespace, error = settings_outcome(name, value)
    assert error is None and namespace[name] == expected


def test_an_invalid_value_stops_the_notebook_at_once_with_one_line(tmp_path):
    started = time.monotonic()
    message = failing_run({"BONE_FRACTURE_EPOCHS": "ten", "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert time.monotonic() - started < 60
    assert "BONE_FRACTURE_EPOCHS='ten' is not valid" in message
    assert not (tmp_path / "o").exists()  # stopped before anything was written


def test_an_output_folder_that_is_a_file_gets_one_clear_message(tmp_path):
    (tmp_path / "taken").write_text("a file")
    message = failing_run({"BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "taken")})
    assert "BONE_FRACTURE_OUTPUT_DIR" in message and "cannot be the output folder" in message


def test_a_dataset_of_one_image_copied_everywhere_names_the_real_cause(tmp_path):
    data = tmp_path / "data"
    image = next(p for p in sorted(build_fixture(tmp_path / "src", False).root.rglob("*.png")))
    for split in ("train", "val", "test"):
        for label in ("fractured", "not_fractured"):
            for i in range(3):
                (data / split / label).mkdir(parents=True, exist_ok=True)
                shutil.copy(image, data / split / label / f"{i}.png")
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "o")})
    assert "Too little data" in message and "label-conflict" in message and "18 fall into" in message


@pytest.fixture(scope="module")
def single_split_runs(tmp_path_factory):
    """FOLDS=1 in the renamed layout, with the output folder inside a class folder holding a file of the user's.

    Run twice: the first classifies a readable image too; the second only bad PREDICT entries. The second run must
    not count the first run's files as images, and must remove the first run's figure (its own) but not the notes.
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
    env = {"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(output), "BONE_FRACTURE_FOLDS": "1"}
    runs = []
    for extra in [f",{data / 'test/fractured/f_000.png'}", ""]:
        _, error = execute_notebook({**env, "BONE_FRACTURE_PREDICT": f"{fifo},{broken},{work / 'missing.png'}{extra}"},
                                    timeout=600)
        assert error is None, error
        runs.append({"metrics": json.loads((output / "metrics.json").read_text()),
                     "predictions": pd.read_csv(output / "predictions.csv", keep_default_na=False),
                     "written": sorted(p.name for p in output.iterdir())})
    return runs, output


def test_single_split_tests_only_its_test_part(single_split_runs):
    runs, output = single_split_runs
    folds = pd.read_csv(output / "folds.csv")
    assert set(folds["fold"]) == {1} and set(folds["part"]) == {"train", "val", "test"}
    assert (folds.groupby("group")["part"].nunique() == 1).all()
    predictions = pd.read_csv(output / "test_predictions.csv")
    assert sorted(predictions["path"]) == sorted(folds.loc[folds["part"] == "test", "path"])
    assert runs[0]["metrics"]["parameters"]["folds"] == 1


def test_output_folder_inside_the_data_is_never_counted_as_data(single_split_runs):
    runs, _ = single_split_runs
    assert runs[0]["metrics"]["data"] == runs[1]["metrics"]["data"]
    assert runs[0]["metrics"]["audit"] == runs[1]["metrics"]["audit"]


def test_a_rerun_removes_its_own_earlier_results_and_keeps_the_users_files(single_split_runs):
    runs, output = single_split_runs
    assert "predictions.png" in runs[0]["written"]
    assert "predictions.png" not in runs[1]["written"]  # no readable PREDICT image: no figure, and not the old one
    assert all("my_notes.txt" in run["written"] for run in runs)
    assert (output / "my_notes.txt").read_text() == "the user's own file"
    assert ".bone_fracture.lock" not in runs[1]["written"]  # given up at the end


def test_a_pipe_a_broken_png_and_a_missing_file_in_predict_are_listed_not_fatal(single_split_runs):
    runs, _ = single_split_runs
    for run in runs:
        errors, decisions = run["predictions"]["error"].tolist(), run["predictions"]["decision"].tolist()
        assert errors[0] == "not a regular file"
        assert errors[1].startswith(("corrupt", "truncated", "not an image"))
        assert errors[2] == "file not found"
        assert decisions[:3] == ["", "", ""]
    assert runs[0]["predictions"]["error"].iloc[3] == "" and runs[0]["predictions"]["decision"].iloc[3] != ""
