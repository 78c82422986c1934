"""Checks of the committed notebook file itself: clean, linted, parameterised, documented."""

import re
import subprocess
import sys

import nbformat
from conftest import NOTEBOOK, ROOT


def load():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_without_outputs_or_counts():
    notebook = load()
    dirty = [i for i, cell in enumerate(notebook.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert dirty == [], f"cells with outputs or execution counts: {dirty} (run nbstripout)"


def test_notebook_metadata_is_clean():
    notebook = load()
    assert set(notebook.metadata) <= {"kernelspec", "language_info"}, notebook.metadata.keys()
    for cell in notebook.cells:
        assert set(cell.metadata) <= {"tags"}, cell.metadata
    result = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(NOTEBOOK)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean_notebook_included():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "All checks passed!"


def test_one_parameters_cell_and_every_knob_reads_the_environment():
    cells = [c for c in load().cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    source = cells[0].source
    knobs = re.findall(r"^([A-Z_]+) = env\(\"([A-Z_]+)\"", source, flags=re.M)
    assert knobs and all(name == variable for name, variable in knobs)
    assignments = re.findall(r"^([A-Z_]+) = ", source, flags=re.M)
    assert sorted(assignments) == sorted(name for name, _ in knobs), "every knob must read BONE_FRACTURE_<NAME>"


def test_readme_documents_every_parameter():
    readme = (ROOT / "README.md").read_text()
    source = next(c for c in load().cells if "parameters" in c.metadata.get("tags", [])).source
    for name in re.findall(r"^([A-Z_]+) = env\(", source, flags=re.M):
        assert f"`BONE_FRACTURE_{name}`" in readme, name


def test_no_path_is_hard_coded_outside_the_parameters_cell():
    for cell in load().cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            assert "artifacts" not in cell.source and "dataset_bone_fracture" not in cell.source, cell.source[:80]


def test_every_section_opens_with_markdown():
    cells = load().cells
    headings = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, len(headings) + 1)]
    assert len(headings) >= 8


def test_code_cells_are_short():
    long_cells = {i: len(c.source.splitlines()) for i, c in enumerate(load().cells)
                  if c.cell_type == "code" and len(c.source.splitlines()) > 40}
    assert long_cells == {}, "split these cells or move logic into small functions"
    code = [c.source for c in load().cells if c.cell_type == "code"]
    sizes = sorted(sum(1 for line in source.splitlines() if line.strip()) for source in code)
    assert sizes[len(sizes) // 2] <= 12, "the typical code cell should stay short enough to read at a glance"
    assert sum(sizes) <= 1000, f"{sum(sizes)} non-blank code lines: the notebook should read in one sitting"


def test_helpers_are_defined_once_with_docstrings():
    import ast

    names = []
    for cell in load().cells:
        if cell.cell_type == "code":
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.FunctionDef | ast.ClassDef):
                    names.append(node.name)
                    assert ast.get_docstring(node), f"{node.name} has no docstring"
    assert len(names) == len(set(names)), "a helper is defined twice"


def test_definitions_cells_only_define():
    """Cells tagged `definitions` are run by the tests and the benchmark: they must not do the notebook's work."""
    import ast

    cells = [c for c in load().cells if "definitions" in c.metadata.get("tags", [])]
    assert cells
    for cell in cells:
        for node in ast.parse(cell.source).body:
            defines = isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom | ast.Assign)
            defines |= isinstance(node, ast.Expr) and "mkdir" in ast.unparse(node)  # the cache folder
            assert defines, ast.unparse(node)[:80]
