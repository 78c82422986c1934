"""Shared set-up: build the fixture dataset and point the notebook at it.

pytest collects the notebook first (see ``testpaths`` in pyproject.toml): nbval starts a kernel that
inherits this process's environment, so the ``BONE_FRACTURE_*`` variables set in ``pytest_configure``
make it run on the fixture, quickly. The tests in this folder then check what that run wrote. In a process
that did not run the notebook's cells (``pytest tests/``), the ``notebook_run`` fixture executes the notebook itself,
with the same settings; with pytest-xdist, the tests that read that run are dealt to the process that runs the
notebook's cells (``pytest_xdist_make_scheduler``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
from fixture_data import build_fixture, snapshot, write_annotations
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbhelpers import environment
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "bone_fracture_classifier.ipynb"
WORK = Path(tempfile.mkdtemp(prefix="bone-fracture-tests-"))
FIXTURE = build_fixture(WORK / "data", layout="archive")  # as the Kaggle archive unzips: nested, "not fractured"
FIXTURE_BEFORE = snapshot(FIXTURE.folder)
ANNOTATIONS = write_annotations(FIXTURE, WORK / "annotations.csv")  # body parts, an exclusion, an unmatched row
OUTPUT = WORK / "output"
RUN_ID = "fixture-run"  # the default run's folder in OUTPUT, named so that the tests find it
# The modules whose tests read the default run (the `notebook_run` fixture), dealt to the process that runs the
# notebook's cells, and those whose runs differ by the parameter of their tests (pytest_xdist_make_scheduler).
DEFAULT_RUN_READERS = {"test_annotations.py", "test_audit.py", "test_inputs.py", "test_other_layouts_and_splits.py",
                       "test_rerun.py", "test_run_outputs.py"}
PARALLEL_PARAMETERS = {"test_learning.py"}

# Small and fast: 2 folds, 2 epochs at 64x64 px.
RUN_ENV = {
    "BONE_FRACTURE_FOLDS": "2",
    "BONE_FRACTURE_DATA_DIR": str(FIXTURE.folder),  # the unzip folder: the notebook finds the splits below it
    "BONE_FRACTURE_OUTPUT_DIR": str(OUTPUT),
    "BONE_FRACTURE_EPOCHS": "2",
    "BONE_FRACTURE_IMG_SIZE": "64",
    "BONE_FRACTURE_BATCH_SIZE": "8",
    "BONE_FRACTURE_BOOTSTRAP": "300",
    "BONE_FRACTURE_SEEDS": "7,8",
    "BONE_FRACTURE_ANNOTATIONS": str(ANNOTATIONS.path),
    "BONE_FRACTURE_RUN_ID": RUN_ID,
}


def pytest_configure(config):
    """Point every notebook run of this session at the fixture (nbval's kernel inherits os.environ)."""
    os.environ.update(RUN_ENV)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown when it is not loaded
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's scheduler for `--dist loadscope` (the default here): whole modules to each process, but with
    the notebook's cells and the modules that read their run (DEFAULT_RUN_READERS) dealt as one, so that the process
    nbval runs the notebook in makes that run once, for all of them; and a module of PARALLEL_PARAMETERS dealt as one
    unit per parameter of its tests, so that the two processes can share its runs. Any other `--dist`: its own."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class DefaultRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            """The unit of work the test `nodeid` is dealt in."""
            module, _, test = nodeid.partition("::")
            if module.endswith(".ipynb") or Path(module).name in DEFAULT_RUN_READERS:
                return "the default run"
            if Path(module).name in PARALLEL_PARAMETERS and test.endswith("]"):
                return f"{module}[{test.rsplit('[', 1)[1]}"
            return module

    return DefaultRunScheduling(config, log)


def pytest_runtest_setup(item):
    """Fail a test that reads the default run from a module that pytest_xdist_make_scheduler deals apart from the
    notebook's cells: in that process the run would be made a second time."""
    if "notebook_run" in getattr(item, "fixturenames", ()) and item.path.name not in DEFAULT_RUN_READERS:
        pytest.fail(f"{item.path.name} reads the default run: add it to DEFAULT_RUN_READERS in tests/conftest.py")


def pytest_unconfigure(config):
    """Remove the session's temporary folder unless KEEP_TEST_OUTPUT is set."""
    if not os.environ.get("KEEP_TEST_OUTPUT"):
        shutil.rmtree(WORK, ignore_errors=True)


def pytest_report_header(config):
    return f"bone-fracture fixture: {FIXTURE.root} ({len(FIXTURE.good)} good images); output: {OUTPUT}"


def execute_notebook(env: dict[str, str | None], timeout: int = 900, cwd: Path = ROOT,
                     notebook: nbformat.NotebookNode | None = None) -> tuple[nbformat.NotebookNode, str | None]:
    """Run the notebook (or a variant of it) headless in `cwd` with extra environment variables (None unsets one).

    Each run gets a folder of its own (BONE_FRACTURE_RUN_ID unset) unless `env` names one, and one seed unless
    `env` says otherwise (the default run's two seeds exercise the repetition already). Returns the executed
    notebook and the error name and message of the failing cell (or None).
    """
    notebook = notebook or nbformat.read(NOTEBOOK, as_version=4)
    try:
        # the kernel inherits this process's environment
        with environment({"BONE_FRACTURE_RUN_ID": None, "BONE_FRACTURE_SEEDS": "7", **env}):
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(cwd)}}).execute()
        error = None
    except CellExecutionError as failure:
        error = f"{failure.ename}: {failure.evalue}"
    return notebook, error


@pytest.fixture(scope="session")
def fixture():
    """The planted facts of the fixture dataset."""
    return FIXTURE


@pytest.fixture(scope="session")
def annotations():
    """The facts of the fixture's annotation table."""
    return ANNOTATIONS


def failing_run(env: dict[str, str | None]) -> str:
    """Run the notebook expecting a DataError; return its one rendered message (no traceback wall)."""
    notebook, error = execute_notebook(env, timeout=300)
    assert error is not None and error.startswith("DataError"), error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
               if o.output_type == "error"]
    assert len(outputs) == 1
    rendered = "\n".join(outputs[0]["traceback"])
    assert "Traceback" not in rendered and len(rendered.splitlines()) < 20
    return rendered


def tta_views_of(pixels: np.ndarray) -> list[np.ndarray]:
    """The four TTA views of a batch of square 8-bit model inputs (n x size x size x 1), written out here as the
    README says them: the image, its mirror, its central 70 % of each side (15 % cut off each edge) enlarged back
    with Pillow's bilinear resize, and that one's mirror."""
    zoomed = []
    for array in pixels[..., 0].astype(np.uint8):
        image, margin = Image.fromarray(array), round(0.15 * len(array))
        kept = image.crop((margin, margin, len(array) - margin, len(array) - margin))
        zoomed.append(np.asarray(kept.resize(image.size, Image.Resampling.BILINEAR), np.float32)[..., None])
    zoomed = np.stack(zoomed)
    return [pixels, pixels[:, :, ::-1], zoomed, zoomed[:, :, ::-1]]


def readme_snippet(readme: Path) -> str:
    """The Python snippet under `<!-- predict-snippet -->` in the README: how to classify one image outside the
    notebook."""
    snippet = readme.read_text().split("<!-- predict-snippet -->", 1)[1]
    return snippet.split("```python\n", 1)[1].split("```", 1)[0]


def new_folder(output: Path, before: set[Path]) -> Path:
    """The one run folder that appeared in `output` since `before` (a listing of it)."""
    (folder,) = {p for p in output.iterdir() if p.is_dir() and not p.is_symlink()} - before
    return folder


def run_folder(output: Path) -> Path:
    """The one run folder a single run wrote in `output` (what `latest` points at)."""
    latest = output / "latest"
    assert latest.is_symlink(), sorted(p.name for p in output.iterdir())
    return output / os.readlink(latest)


@pytest.fixture(scope="session")
def notebook_run():
    """The run folder of the default (grouped) run on the fixture: nbval's, or one made here."""
    if not (OUTPUT / RUN_ID / "model_card.md").exists():
        seeds = RUN_ENV["BONE_FRACTURE_SEEDS"]  # execute_notebook's quick runs take one seed; this one is nbval's
        _, error = execute_notebook({"BONE_FRACTURE_RUN_ID": RUN_ID, "BONE_FRACTURE_SEEDS": seeds})
        assert error is None, error
    return OUTPUT / RUN_ID


@pytest.fixture(scope="session")
def metrics(notebook_run):
    return json.loads((notebook_run / "metrics.json").read_text())
