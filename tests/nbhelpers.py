"""Run the notebook's own code outside the notebook, and find its cells, for the tests and the benchmark.

The notebook tags its cells: ``parameters`` (the knobs), ``setup`` (the version check, the checked ``settings``,
imports, seeds) and ``definitions`` (functions, classes and the constants they use). Executing those cells, in order,
gives the same functions the notebook runs, not copies. Any other cell is found by what it defines (the names its
top-level statements bind, read from its syntax tree), never by a piece of its text.
"""

from __future__ import annotations

import ast
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


def code_cells(notebook: nbformat.NotebookNode | None = None) -> list[nbformat.NotebookNode]:
    """The code cells of `notebook` (the committed notebook if None), in order."""
    notebook = notebook or nbformat.read(NOTEBOOK, as_version=4)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def tags(cell: nbformat.NotebookNode) -> set[str]:
    return set(cell.metadata.get("tags", []))


def tagged(tag: str, notebook: nbformat.NotebookNode | None = None) -> list[nbformat.NotebookNode]:
    """The code cells tagged `tag`, in order."""
    return [cell for cell in code_cells(notebook) if tag in tags(cell)]


def _targets(node: ast.AST) -> set[str]:
    """The names an assignment target binds (a name, or names inside tuples, lists and starred targets)."""
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Tuple | ast.List):
        return set().union(*(_targets(element) for element in node.elts))
    if isinstance(node, ast.Starred):
        return _targets(node.value)
    return set()  # an attribute or a subscript binds no name


def module_bindings(source: str) -> set[str]:
    """The global names a cell binds: its assignments, imports, functions and classes, also inside its top-level
    `if`, `for`, `with` and `try` blocks (which run at module level), not inside functions or classes."""
    found: set[str] = set()
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
            continue
        if isinstance(node, ast.Assign):
            found |= set().union(*(_targets(target) for target in node.targets))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
            found |= _targets(node.target)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.With | ast.AsyncWith):
            found |= set().union(*(_targets(item.optional_vars) for item in node.items if item.optional_vars))
        pending += [child for field in ("body", "orelse", "finalbody") for child in getattr(node, field, [])]
        pending += [child for handler in getattr(node, "handlers", []) for child in handler.body]
    return found


def defining(name: str, notebook: nbformat.NotebookNode | None = None) -> int:
    """The position, among the code cells, of the one cell that binds the global `name`."""
    found = [i for i, cell in enumerate(code_cells(notebook)) if name in module_bindings(cell.source)]
    assert len(found) == 1, f"{name} is bound by code cells {found}, not by exactly one"
    return found[0]


def cells_through(name: str, notebook: nbformat.NotebookNode | None = None) -> list[nbformat.NotebookNode]:
    """The code cells from the first up to and including the one that binds `name`."""
    return code_cells(notebook)[: defining(name, notebook) + 1]


def parameter_names(notebook: nbformat.NotebookNode | None = None) -> list[str]:
    """The names the `parameters` cell assigns from env("NAME", default), in order."""
    (cell,) = tagged("parameters", notebook)
    return [target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "env" for target in node.targets if isinstance(target, ast.Name)]


def run_cells(cells: list[nbformat.NotebookNode], namespace: dict | None = None) -> dict:
    """Execute `cells` in order in `namespace` (a new one if None); return it."""
    namespace = {"__name__": "bone_fracture_notebook"} if namespace is None else namespace
    for cell in cells:
        exec(compile(cell.source, "<notebook cell>", "exec"), namespace)
    return namespace


def notebook_namespace(img_size: int, output_dir: Path, **overrides: str | None) -> dict:
    """Execute the notebook's parameters, setup and definitions cells in order; return their namespace.

    The checked parameters are in its `settings`. Each override sets (or, with None, unsets) BONE_FRACTURE_<name>
    while the cells run."""
    cells = [cell for cell in code_cells() if TAGS & tags(cell)]
    env = {"BONE_FRACTURE_IMG_SIZE": str(img_size), "BONE_FRACTURE_OUTPUT_DIR": str(output_dir),
           **{f"BONE_FRACTURE_{name}": value for name, value in overrides.items()}}
    with environment(env):
        return run_cells(cells)


def pooling_split(nb: dict, model):
    """(trunk, head): a notebook `model` cut after its global pooling, as the notebook cuts a frozen trunk's head off
    (`nb`: notebook_namespace's)."""
    return nb["split_model"](model, nb["after_pooling"](model))


def parameter_meanings(notebook: nbformat.NotebookNode | None = None) -> dict[str, str]:
    """Each parameter's meaning: the comment after its line in the `parameters` cell, with the comment lines that
    continue it."""
    (cell,) = tagged("parameters", notebook)
    meanings: dict[str, str] = {}
    name = None
    for line in cell.source.splitlines():
        code, _, comment = line.partition("#")
        if code.strip():
            name = code.split("=")[0].strip()
            meanings[name] = comment.strip()
        elif name and comment:
            meanings[name] += " " + comment.strip()
    return meanings


def parameters_table() -> str:
    """docs/parameters.md's table, made from the notebook: each parameter's default (the `parameters` cell), the
    values it takes (`CHECKS`) and its meaning (the cell's comment)."""
    namespace = run_cells(cells_through("REMOVED"))
    meanings, defaults, checks = parameter_meanings(), namespace["env"].defaults, namespace["CHECKS"]
    rows = ["| Environment variable | Default | Takes | Meaning |", "|---|---|---|---|"]
    for name, default in defaults.items():
        shown = "*(empty)*" if default == "" else f"`{int(default) if isinstance(default, bool) else default}`"
        rows.append(f"| `BONE_FRACTURE_{name}` | {shown} | {checks[name][1]} | {meanings[name]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python tests/nbhelpers.py: rewrite docs/parameters.md's table from the notebook
    doc = NOTEBOOK.parent / "docs" / "parameters.md"
    before, _, rest = doc.read_text().partition("| Environment variable |")
    after = rest[rest.index("\n\n"):]
    doc.write_text(before + parameters_table() + after.removeprefix("\n"))
