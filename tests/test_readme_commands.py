"""The README's commands do what it says: each is one line a person can type; the run command (`bin/run-notebook`)
executes the notebook into an HTML report in the run's folder (or ends with the notebook's one message), and the test
command is exactly what CI (`.ci/run`) runs."""

import ast
import json
import os
import re
import subprocess

from conftest import ROOT, run_folder
from nbhelpers import tagged


def readme_block(marker, language="sh"):
    """Return the code block that follows <!-- marker --> in the README, as written."""
    after = (ROOT / "README.md").read_text().split(f"<!-- {marker} -->", 1)[1]
    return after.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_readme_commands_are_one_line_each():
    for marker in ("run-command", "test-command", "predict-command"):
        block = readme_block(marker)
        assert len(block.strip().splitlines()) == 1 and "\\\n" not in block, (marker, block)
    assert "bin/run-notebook" in readme_block("run-command") and (ROOT / "bin/run-notebook").is_file()


def test_readme_run_command_executes_the_notebook_into_an_html_report_in_the_run_folder(fixture, tmp_path):
    output = tmp_path / "run"
    env = {**os.environ, "BONE_FRACTURE_DATA_DIR": str(fixture.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
           "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_SEEDS": "7"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("run-command")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = run_folder(output)
    pages = sorted(output.rglob("*.html"))
    assert len(pages) == 1 and pages[0].parent == folder, pages  # the report lands beside what the run wrote
    html = pages[0].read_text()
    assert html.count("data:image/png;base64") >= 10  # self-contained: every figure embedded
    assert "Model card" in html and "Traceback" not in html
    assert "Traceback" not in result.stdout + result.stderr
    helper = next(node.name for cell in tagged("definitions") for node in ast.parse(cell.source).body
                  if isinstance(node, ast.FunctionDef))
    assert f"def {helper}(" not in html  # the helpers' code is folded away: the report reads as results
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["run"] == folder.name and [fold["epochs_run"] for fold in metrics["training"]["folds"]] == [1, 1]


def test_readme_run_command_ends_a_failed_run_with_the_one_message(tmp_path):
    output = tmp_path / "o"
    env = {**os.environ, "BONE_FRACTURE_EPOCHS": "0", "BONE_FRACTURE_OUTPUT_DIR": str(output)}
    result = subprocess.run(["bash", "-c", readme_block("run-command")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == ("DataError: BONE_FRACTURE_EPOCHS='0' is not valid: expected 'auto', or a whole number of at "
                         "least 1.")
    assert len(lines) <= 3 and "Traceback" not in result.stderr
    assert not [path for path in output.rglob("*") if path.is_file()]  # nothing written


def test_readme_test_command_is_what_ci_runs(tmp_path):
    """.ci/run takes its command from the README with awk: run that very extraction and compare."""
    ci = (ROOT / ".ci/run").read_text()
    (program,) = re.findall(r"\$\(awk '(.+?)' README\.md\)", ci)
    extracted = subprocess.run(["awk", program, "README.md"], cwd=ROOT, capture_output=True, text=True, check=True)
    block = readme_block("test-command")
    assert extracted.stdout == block and block.strip()
    assert block.strip().endswith("python -m pytest")  # the whole suite, with pyproject.toml's options
    # .ci/run runs what it extracted: a README whose test command only leaves a mark shows it.
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci/run").write_text(ci)
    (tmp_path / "README.md").write_text("# x\n\n<!-- test-command -->\n```sh\necho ran > mark.txt\n```\n\n"
                                        "```sh\necho not this one > other.txt\n```\n")
    ran = subprocess.run(["bash", str(tmp_path / ".ci/run")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "mark.txt").read_text() == "ran\n" and not (tmp_path / "other.txt").exists()
