"""The notebook on the oldest stack it supports (what Kaggle and Colab preinstall), as CI runs it.

`requirements-oldest.txt` pins those versions. This test builds that environment once in `.venv-oldest/`
(a no-op when it is already installed) and executes the whole notebook there on a small fixture.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
from conftest import NOTEBOOK, ROOT
from fixture_data import build_fixture

OLDEST = ROOT / "requirements-oldest.txt"
VENV = ROOT / ".venv-oldest"


def pins():
    """The versions requirements-oldest.txt pins, by package name."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", OLDEST.read_text(), flags=re.M))


def test_the_oldest_supported_versions_are_the_ones_the_notebook_checks():
    first = next(c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    literal = first.source.split("OLDEST_SUPPORTED = ", 1)[1].split("}")[0]
    checked = dict(re.findall(r'"([a-z-]+)": "([\d.]+)"', literal))
    pinned = pins()
    for name, oldest in checked.items():
        if name != "python":
            assert pinned[name].startswith(oldest + ".") or pinned[name] == oldest, (name, pinned[name], oldest)
    assert set(checked) - {"python"} <= set(pinned)
    requires = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert requires == checked["python"]


def test_the_notebook_runs_on_the_oldest_supported_stack(tmp_path):
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(OLDEST)], capture_output=True,
                             text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    code = "import tensorflow, keras, numpy, pandas as p; print(tensorflow.__version__, keras.__version__, " \
           "numpy.__version__, p.__version__)"
    versions = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert versions == [pins()[name] for name in ("tensorflow", "keras", "numpy", "pandas")]
    data = build_fixture(tmp_path / "data", with_odd_forms=True, layout="archive")
    output = tmp_path / "out"
    env = {**os.environ, "BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
           "BONE_FRACTURE_FOLDS": "2", "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_IMG_SIZE": "64",
           "BONE_FRACTURE_BATCH_SIZE": "8", "BONE_FRACTURE_BOOTSTRAP": "200"}
    run = subprocess.run([str(VENV / "bin" / "jupyter"), "nbconvert", "--to", "html", "--execute", str(NOTEBOOK),
                          "--ExecutePreprocessor.timeout=-1", "--output-dir", str(output)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["versions"]["tensorflow"] == pins()["tensorflow"]
    assert metrics["test"]["per_radiograph"]["cnn"]["n"] > 0 and (output / "model.keras").exists()
    assert Path(output / "bone_fracture_classifier.html").stat().st_size > 100_000
