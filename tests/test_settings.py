"""The parameters: every knob checked once into one frozen `settings` object, each invalid value refused with one
line naming the variable, the value and what is allowed, each documented spelling accepted.

The notebook's own cells are executed up to the one that makes `settings` (and decides TRAINING), found by what they
define, with one environment variable set.
"""

import dataclasses
import re

import pytest
from conftest import ROOT
from nbhelpers import cells_through, environment, notebook_namespace, parameter_names, parameters_table, run_cells


def settings_outcome(overrides):
    """Run the notebook's cells up to its parameter checks with BONE_FRACTURE_<name> set (None: unset); return
    (namespace, the error the notebook would show or None)."""
    namespace = {}
    with environment({f"BONE_FRACTURE_{name}": value for name, value in overrides.items()}):
        try:
            run_cells(cells_through("TRAINING"), namespace)
        except Exception as error:  # the error the notebook would show
            return namespace, error
    return namespace, None


@pytest.mark.parametrize(("name", "value"), [
    ("EPOCHS", "0"), ("EPOCHS", "ten"), ("BATCH_SIZE", "0"), ("IMG_SIZE", "8"), ("IMG_SIZE", "big"), ("SEEDS", "-1"),
    ("SEEDS", "7,7"), ("SEEDS", "7,x"), ("SEEDS", "4294967296"), ("FOLDS", "0"), ("VIEWS", "-1"), ("BALANCE", "group"),
    ("BACKBONE", "resnet50"), ("BACKBONE_WEIGHTS", "/no/such.weights.h5"), ("TTA", "maybe"), ("STANDARDIZE", "2"),
    ("TARGET_SENSITIVITY", "1.5"), ("NEAR_DUP_SIMILARITY", "2"), ("LEARNING_RATE", "-1"), ("BOOTSTRAP", "0"),
    ("DEDUPLICATE", "ture"), ("SPLIT", "random"), ("SPLIT_FRACTIONS", "0.7,0.3"), ("MAX_MEGAPIXELS", "big"),
    ("MODEL", "/no/such/model.keras"), ("SOURCE_BINS", "1"), ("FIT", "stretch"), ("WORKERS", "0"),
    ("RUN_ID", "cache"), ("RUN_ID", ".."), ("RUN_ID", "a/b"), ("ANNOTATIONS", "/no/such/annotations.csv"),
    ("ANNOTATIONS", "annotations/fracture_multi_region.csv,/no/such/annotations.csv"),
])
def test_each_invalid_parameter_is_refused_naming_variable_value_and_what_is_allowed(name, value):
    _, error = settings_outcome({name: value})
    assert type(error).__name__ == "DataError", error
    assert str(error).startswith(f"BONE_FRACTURE_{name}={value!r} is not valid: expected ")
    assert "\n" not in str(error)  # one line


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("DEDUPLICATE", "off", False), ("TTA", "Yes", True), ("EPOCHS", " 3 ", 3), ("FOLDS", "1", 1),
    ("EPOCHS", "Auto", "auto"), ("SEEDS", "3, 5", [3, 5]), ("SEEDS", "0", [0]), ("VIEWS", "0", 0),
    ("BALANCE", "class", "class"),
    ("TARGET_SENSITIVITY", "0.9", 0.9), ("SPLIT_FRACTIONS", "0.6,0.2,0.2", [0.6, 0.2, 0.2]), ("FIT", "pad", "pad"),
    ("RUN_ID", "seed-1_v3.2", "seed-1_v3.2"), ("TTA", "AUTO", "auto"), ("TTA", "off", False),
    ("BACKBONE", "cnn", "cnn"), ("BACKBONE", "auto", "auto"), ("BACKBONE", "", "auto"),  # empty: the default
    ("IMG_SIZE", "AUTO", "auto"), ("IMG_SIZE", "320", 320),
])
def test_documented_values_are_accepted_into_the_settings(name, value, expected):
    namespace, error = settings_outcome({name: value})
    assert error is None, error
    assert getattr(namespace["settings"], name.lower()) == expected


def test_an_unset_variable_takes_the_default_of_the_parameters_cell():
    namespace, error = settings_outcome({"EPOCHS": None, "SPLIT": None, "TARGET_SENSITIVITY": None, "IMG_SIZE": None})
    assert error is None, error
    settings = namespace["settings"]
    assert (settings.epochs, settings.split, settings.target_sensitivity, settings.img_size) == (
        "auto", "grouped", 0.95, "auto")


def test_the_first_seed_is_the_runs_seed():
    namespace, error = settings_outcome({"SEEDS": "11,2,5"})
    assert error is None, error
    assert namespace["settings"].seeds == [11, 2, 5] and namespace["settings"].seed == 11


def test_annotations_none_means_no_annotations_and_empty_means_the_shipped_table(tmp_path):
    """The parameters cell and docs/parameters.md: ANNOTATIONS=none reads no table; empty keeps the default."""
    from nbhelpers import notebook_namespace

    namespace = notebook_namespace(64, tmp_path, ANNOTATIONS="none")
    table, said = namespace["load_annotations"](namespace["settings"].annotations)
    assert table.empty and "ANNOTATIONS is 'none'" in said
    namespace, error = settings_outcome({"ANNOTATIONS": ""})
    assert error is None and namespace["settings"].annotations == namespace["SHIPPED_ANNOTATIONS"]


def test_a_model_without_images_to_predict_is_refused(tmp_path):
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    _, error = settings_outcome({"MODEL": str(model), "PREDICT": None})
    assert type(error).__name__ == "DataError"
    assert "BONE_FRACTURE_PREDICT and BONE_FRACTURE_EXTERNAL are empty" in str(error)
    namespace, error = settings_outcome({"MODEL": str(model), "PREDICT": str(tmp_path)})
    assert error is None and namespace["TRAINING"] is False
    namespace, error = settings_outcome({"MODEL": str(model), "PREDICT": None, "EXTERNAL": str(tmp_path)})
    assert error is None and namespace["TRAINING"] is False  # a saved model tested on labelled folders
    namespace, error = settings_outcome({"MODEL": None, "PREDICT": None})
    assert error is None and namespace["TRAINING"] is True


def test_every_knob_is_checked_once_into_one_frozen_settings_object(tmp_path):
    nb = notebook_namespace(64, tmp_path)
    assert sorted(nb["CHECKS"]) == sorted(nb["env"].defaults) == sorted(parameter_names())  # none unchecked, none gone
    settings = nb["settings"]
    assert [field.name for field in dataclasses.fields(settings)] == [name.lower() for name in nb["CHECKS"]]
    assert settings.img_size == 64 and isinstance(settings.img_size, int)  # converted, not the raw text
    assert settings.output_dir == str(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.img_size = 128


def test_setting_converts_the_raw_value_or_names_the_variable(tmp_path):
    nb = notebook_namespace(64, tmp_path)
    setting, whole = nb["setting"], nb["whole_number"]
    assert setting("EPOCHS", "12", *whole(1)) == 12
    assert setting("EPOCHS", 12, *whole(1)) == 12  # papermill injects numbers, not text
    assert setting("DOWNLOAD", "ON", *nb["CHECKS"]["DOWNLOAD"]) is True
    assert setting("DOWNLOAD", False, *nb["CHECKS"]["DOWNLOAD"]) is False
    with pytest.raises(nb["DataError"], match=r"^BONE_FRACTURE_FOLDS='21' is not valid: expected a whole number "
                                              r"from 1 to 20\.$"):
        setting("FOLDS", "21", *whole(1, 20))


@pytest.mark.parametrize(("variable", "said"), [
    ("BONE_FRACTURE_EPOCH", "did you mean BONE_FRACTURE_EPOCHS?"),
    ("BONE_FRACTURE_IMGSIZE", "did you mean BONE_FRACTURE_IMG_SIZE?"),
    ("BONE_FRACTURE_SEED", "replaced by SEEDS in 3.3"),
    ("BONE_FRACTURE_NEAR_DUP_DISTANCE", "replaced by NEAR_DUP_SIMILARITY"),
    ("BONE_FRACTURE_ZZZ", "no parameter is close"),
])
def test_a_variable_that_sets_no_parameter_stops_the_run_naming_it_and_what_to_set(variable, said):
    _, error = settings_outcome({variable.removeprefix("BONE_FRACTURE_"): "3"})
    assert type(error).__name__ == "DataError", error
    line = str(error).splitlines()[0]
    assert line.startswith(f"{variable} is not a parameter: ") and said in line, line


def test_every_unknown_variable_is_named_at_once():
    _, error = settings_outcome({"EPOCH": "3", "IMGSIZE": "128", "EPOCHS": "2"})
    assert [line.split(" is ")[0] for line in str(error).splitlines()[:2]] == [
        "BONE_FRACTURE_EPOCH", "BONE_FRACTURE_IMGSIZE"]


def test_a_mistyped_variable_stops_the_notebook_before_any_image_is_read(tmp_path):
    """The whole notebook, as the README's command runs it: one message, and no run folder made."""
    from conftest import failing_run

    output = tmp_path / "out"
    rendered = failing_run({"BONE_FRACTURE_EPOCH": "3", "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert "BONE_FRACTURE_EPOCH is not a parameter: did you mean BONE_FRACTURE_EPOCHS?" in rendered
    assert not output.exists()


def removed_in_changelog():
    """The knobs the CHANGELOG's "Removed knobs" lists name (a value such as `FIT=disc` is not a knob), less those a
    later version brought back as parameters."""
    blocks = [block.split("\n## ")[0] for block in (ROOT / "CHANGELOG.md").read_text().split("Removed knobs:")[1:]]
    entries = [line for block in blocks for line in block.splitlines() if line.startswith("- `")]
    return {name for entry in entries for name in re.findall(r"`([A-Z_]+)`", entry)} - set(parameter_names())


def test_the_notebook_knows_every_knob_the_changelog_says_was_removed(tmp_path):
    removed = run_cells(cells_through("REMOVED"))["REMOVED"]
    assert set(removed) == removed_in_changelog()
    assert not set(removed) & set(parameter_names())


def test_docs_parameters_md_is_the_table_the_notebook_makes():
    """Default (the parameters cell), values taken (CHECKS) and meaning (its comment) have one source: the notebook.
    To update the doc after changing a parameter: python tests/nbhelpers.py"""
    assert parameters_table() in (ROOT / "docs" / "parameters.md").read_text()
