"""Run the notebook's own code outside the notebook, for the tests and the benchmark.

The notebook tags its cells: ``parameters`` (the knobs), ``setup`` (checks, imports, output folder,
seeds) and ``definitions`` (helper functions, classes and the constants they use). Executing those
cells, in order, gives the same functions the notebook runs, not copies.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parent.parent / "bone_fracture_classifier.ipynb"
TAGS = {"parameters", "setup", "definitions"}


@contextlib.contextmanager
def environment(overrides: dict[str, str | None]):
    """Set (or, with None, unset) environment variables for the duration of a `with` block, then restore them."""
    saved = {key: os.environ.get(key) for key in overrides}
    for key, value in overrides.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def notebook_namespace(img_size: int, output_dir: Path, **overrides: str | None) -> dict:
    """Execute the notebook's parameters, setup and definitions cells in order; return their namespace.

    Each override sets (or, with None, unsets) BONE_FRACTURE_<name> while the cells run."""
    cells = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells
             if c.cell_type == "code" and TAGS & set(c.metadata.get("tags", []))]
    namespace: dict = {"__name__": "bone_fracture_notebook"}
    env = {"BONE_FRACTURE_IMG_SIZE": str(img_size), "BONE_FRACTURE_OUTPUT_DIR": str(output_dir),
           **{f"BONE_FRACTURE_{name}": value for name, value in overrides.items()}}
    with environment(env):
        for cell in cells:
            exec(compile(cell.source, "<notebook cell>", "exec"), namespace)
    return namespace
