"""Checks of the committed notebook file itself: clean, linted, parameterised, documented, and written so that its
functions take what they use as arguments and its `definitions` cells only define."""

import ast
import re
import subprocess
import sys

import nbformat
from conftest import NOTEBOOK, ROOT
from nbhelpers import code_cells, module_bindings, parameter_names, tagged, tags


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
    nbformat.validate(notebook)  # its format's schema: no cell ids in nbformat 4.4, which Jupyter would call invalid


def test_ruff_is_clean_notebook_included():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "All checks passed!"


def test_one_parameters_cell_and_every_knob_reads_the_environment():
    cells = tagged("parameters")
    assert len(cells) == 1
    body = ast.parse(cells[0].source).body
    knobs = {}
    for node in body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id",
                                                                                          None) == "env":
            (target,) = node.targets
            knobs[target.id] = node.value.args[0].value
    assert knobs and all(name == variable for name, variable in knobs.items()), "NAME = env('NAME', default)"
    assert list(knobs) == parameter_names()
    assigned = [name for node in body if isinstance(node, ast.Assign) for name in module_bindings(ast.unparse(node))]
    assert sorted(assigned) == sorted(knobs), "every assignment in the parameters cell must read BONE_FRACTURE_<NAME>"


def test_the_documentation_names_every_parameter():
    documented = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    for name in parameter_names():
        assert f"`BONE_FRACTURE_{name}`" in documented, name


EXTERNAL = {"~/.kaggle/kaggle.json"}  # where the Kaggle API keeps the user's token: named in advice, never opened
PATH_WORDS = {"artifacts", "data", "annotations", "kaggle"}
OUTPUT_SUFFIXES = (".csv", ".png", ".json", ".keras", ".md", ".html")


def path_like(text):
    """The words of a string that look like a hard-coded path: with a '/', not a URL, and naming a data, output,
    annotation or Kaggle folder, or a file an output is named like; and any mention of the default output folder."""
    found = []
    for word in text.split():
        bare = word.strip("()[]{}'\"`,;:.!?")
        parts = [part.strip(".").lower() for part in bare.split("/")]
        if bare in EXTERNAL or "://" in bare:
            continue
        if "artifacts" in word or ("/" in bare and (PATH_WORDS & set(parts) or bare.lower().endswith(OUTPUT_SUFFIXES))):
            found.append(bare)
    return found


def string_constants(source):
    """Every string constant of a cell's code (docstrings and the literal parts of f-strings included), except the
    value of SHIPPED_ANNOTATIONS, the one path a cell outside the parameters cell may hold."""
    tree = ast.parse(source)
    exempt = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "SHIPPED_ANNOTATIONS" for t in node.targets)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exempt]


def test_the_path_finder_finds_paths_and_passes_prose():
    assert path_like("put annotations/table.csv here") == ["annotations/table.csv"]
    assert path_like("/kaggle/input") == ["/kaggle/input"] and path_like("data/train") == ["data/train"]
    assert path_like("out/model.keras") == ["out/model.keras"] and path_like("artifacts") == ["artifacts"]
    assert path_like("see https://www.kaggle.com/datasets/x, train/, val/ and test/; 0/1; true/false") == []
    assert path_like("bmadushanirodrigo/fracture-multi-region-x-ray-data (~/.kaggle/kaggle.json)") == []


def test_no_path_is_hard_coded_outside_the_parameters_cell():
    """Paths are knobs: every data, output or annotation path comes from the parameters cell (or SHIPPED_ANNOTATIONS,
    the parameters' own default, which the checks compare with), never from a literal elsewhere."""
    found = {}
    for number, cell in enumerate(code_cells()):
        if "parameters" not in tags(cell):
            for text in string_constants(cell.source):
                if paths := path_like(text):
                    found.setdefault(number, []).extend(paths)
    assert found == {}, f"hard-coded paths, by code cell: {found}"
    shipped = [node.value.value for cell in code_cells() for node in ast.parse(cell.source).body if isinstance(
        node, ast.Assign) and any(getattr(target, "id", "") == "SHIPPED_ANNOTATIONS" for target in node.targets)]
    (parameters,) = tagged("parameters")
    defaults = {node.targets[0].id: node.value.args[1].value for node in ast.parse(parameters.source).body
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and getattr(node.value.func, "id", None) == "env"}
    assert shipped == [defaults["ANNOTATIONS"]]  # the parameter's own default, and nothing else


def test_every_section_opens_with_markdown():
    cells = load().cells
    headings = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, len(headings) + 1)]
    assert len(headings) >= 8


def test_the_table_of_contents_links_every_section_heading():
    """Cell 0's table links each section by the anchor Jupyter and nbconvert give its heading (spaces as '-')."""
    cells = load().cells
    anchors = [c.source.splitlines()[0][3:].replace(" ", "-") for c in cells
               if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert re.findall(r"\]\(#([^)]+)\)", cells[0].source) == anchors


def test_code_cells_are_short():
    long_cells = {i: len(c.source.splitlines()) for i, c in enumerate(code_cells())
                  if len(c.source.splitlines()) > 40 and "parameters" not in c.metadata.get("tags", [])}
    assert long_cells == {}, "split these cells or move logic into small functions"


def test_helpers_are_defined_once_with_docstrings():
    names = []
    for cell in code_cells():
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                names.append(node.name)
                assert ast.get_docstring(node), f"{node.name} has no docstring"
    assert len(names) == len(set(names)), "a helper is defined twice"


def work_in_definitions(source):
    """The top-level statements of a cell that do more than define: anything but imports, function and class
    definitions, and assignments whose every target is an UPPER_CASE name."""
    def upper(target):
        if isinstance(target, ast.Tuple | ast.List):
            return all(upper(element) for element in target.elts)
        return isinstance(target, ast.Name) and re.fullmatch(r"[A-Z][A-Z0-9_]*", target.id) is not None

    allowed = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.Assign) and all(upper(target) for target in node.targets):
            continue
        if isinstance(node, ast.AnnAssign) and upper(node.target):
            continue
        allowed.append(ast.unparse(node).splitlines()[0][:100])
    return allowed


def test_definitions_cells_only_define():
    """Cells tagged `definitions` are run by the tests and the benchmark: they may hold imports, functions, classes and
    UPPER_CASE constants, nothing that does the notebook's work (no calls, no lower-case globals, no folders made)."""
    assert work_in_definitions("import os\nX, Y = 1, 2\nZ: int = 3\ndef f():\n    return os.getcwd()\n") == []
    assert work_in_definitions("Path('x').mkdir()\nlower = 1\nif X:\n    pass\n") == ["Path('x').mkdir()", "lower = 1",
                                                                                     "if X:"]
    cells = tagged("definitions")
    assert cells
    found = {number: work for number, cell in enumerate(code_cells()) if "definitions" in tags(cell)
             if (work := work_in_definitions(cell.source))}
    assert found == {}, f"statements that are not definitions, by code cell: {found}"


def free_names(function):
    """The names a function (or method) loads that it neither takes as arguments nor binds itself, nested functions,
    lambdas, comprehensions, imports and exception names included as part of it."""
    bound, loaded = set(), set()
    for node in ast.walk(function):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            arguments = node.args
            bound |= {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                      *filter(None, [arguments.vararg, arguments.kwarg])]}
            if node is not function and not isinstance(node, ast.Lambda):
                bound.add(node.name)
        elif isinstance(node, ast.ClassDef) and node is not function:
            bound.add(node.name)
        elif isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def functions(source):
    """The top-level functions of a cell and the methods of its top-level classes."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{member.name}", member


def test_no_function_reads_a_parameter_global():
    """Functions take what they use as arguments: none reads a parameter (a name the parameters cell assigns from
    env("...")) or the `settings` object from the notebook's globals."""
    forbidden = set(parameter_names()) | {"settings"}
    knob = parameter_names()[0]
    example = (f"def f(x, settings):\n    g = lambda y: y + {knob}\n    def h(z):\n        return z + x\n"
               "    return g, h, k")
    assert {name: free_names(node) for name, node in functions(example)} == {"f": {knob, "k"}}  # the check works
    found = {}
    for cell in code_cells():
        for name, function in functions(cell.source):
            if read := sorted(free_names(function) & forbidden):
                found[name] = read
    assert found == {}, f"functions reading parameter globals: {found}"


def test_one_function_trains_a_fold_and_every_seed_goes_through_one_cross_validation():
    """One code path per job: train_fold is called in one place (cross_validate), Keras's fit in one (fitted, which
    train_fold alone calls, for each of its passes), and cross_validate by one cell, for every seed."""
    calls = {}
    for cell in code_cells():
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                owner = getattr(getattr(node.func, "value", None), "id", "")  # model.fit: Keras's, not a scaler's
                calls.setdefault(f"{owner}.{name}" if name == "fit" else name, []).append(cell.source)
    assert len(calls["train_fold"]) == 1 and "def cross_validate(" in calls["train_fold"][0]
    assert len(calls["model.fit"]) == 1 and "def fitted(" in calls["model.fit"][0]
    assert {source.split("(")[0] for source in calls["fitted"]} == {"def train_fold"}
    (caller,) = calls["cross_validate"]
    assert "for seed in settings.seeds" in caller


def test_a_reader_reaches_the_first_picture_of_the_data_in_the_first_fifth_of_the_code():
    """The story follows the data: set-up and infrastructure before the first figure stay under a fifth of the code."""
    cells = code_cells()
    lines = [len([line for line in cell.source.splitlines() if line.strip()]) for cell in cells]
    first = next(i for i, cell in enumerate(cells) if "save_figure(" in cell.source and "def " not in cell.source)
    assert sum(lines[:first]) <= 0.2 * sum(lines), (sum(lines[:first]), sum(lines))
