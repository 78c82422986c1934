"""The notebook's own helpers, executed from the notebook, on inputs the fixture cannot plant.

The notebook's parameters, setup and definitions cells are executed (see nbhelpers.py), so these tests
exercise the same functions the notebook runs, not copies.
"""

from pathlib import Path

import numpy as np
import pytest
from nbhelpers import notebook_namespace
from PIL import Image


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("helpers"))


def write_image(path, array, fmt="PNG"):
    Image.fromarray(array).save(path, fmt)
    return str(path)


def test_unreadable_file_is_reported_not_fatal(nb, tmp_path, monkeypatch):
    path = write_image(tmp_path / "locked.png", np.zeros((20, 20), np.uint8))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(nb["Image"], "open", refuse)  # root can read any file, so refuse at the open call
    record = nb["inspect_image"](path)
    assert record["reason"] == "unreadable" and "Permission denied" in record["detail"]


def test_image_over_the_pixel_limit_is_reported_without_decoding(nb, tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", np.zeros((200, 300), np.uint8))
    monkeypatch.setitem(nb, "MAX_MEGAPIXELS", 0.05)
    record = nb["inspect_image"](path)
    assert record["reason"] == "too large" and "300x200" in record["detail"]
    assert "sha1" not in record


def test_good_image_is_hashed_signed_and_cached_at_model_size(nb, tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (90, 120), dtype=np.uint8)
    record = nb["inspect_image"](write_image(tmp_path / "ok.png", array))
    assert record["reason"] is None
    assert (record["width"], record["height"]) == (120, 90)
    assert len(record["sha1"]) == 40
    assert record["signature"].shape == (nb["RINGS"], nb["ANGLES"])
    assert np.linalg.norm(record["signature"]) == pytest.approx(1, abs=1e-5)
    assert Image.open(record["cache"]).size == (64, 64)


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("padded"), FIT="pad")


@pytest.mark.parametrize("size", [(120, 60), (30, 90), (64, 64), (300, 299)])
def test_the_model_input_is_stretched_by_default_and_keeps_the_aspect_ratio_when_padded(nb, padded, size):
    image = Image.new("L", size, 200)  # a bright image: the model input is bright exactly where it lies
    assert (np.asarray(nb["to_model_size"](image)) == 200).all()  # FIT=squash: stretched over the whole square
    square = np.asarray(padded["to_model_size"](image))
    assert square.shape == (64, 64)
    left, top, right, bottom = Image.fromarray(square).getbbox()
    assert (square[top:bottom, left:right] == 200).all()
    padding = np.ones_like(square, bool)
    padding[top:bottom, left:right] = False
    assert (square[padding] == 0).all()  # the rest is black padding
    assert (right - left) / (bottom - top) == pytest.approx(size[0] / size[1], rel=0.05)
    assert max(right - left, bottom - top) == 64


def test_same_pixels_in_another_format_hash_alike_and_a_quarter_turn_is_a_near_copy(nb, tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (80, 100), dtype=np.uint8)
    png = nb["inspect_image"](write_image(tmp_path / "a.png", array))
    bmp = nb["inspect_image"](write_image(tmp_path / "a.bmp", array, "BMP"))
    turned = nb["inspect_image"](write_image(tmp_path / "b.png", np.rot90(array).copy()))
    assert png["sha1"] == bmp["sha1"] != turned["sha1"]
    spectra = np.fft.rfft(np.stack([png["signature"], turned["signature"]]), axis=2)
    found = nb["verify_pairs"](spectra, np.array([[0, 1]]))
    assert found.at[0, "similarity"] > 0.98 and found.at[0, "angle"] in (90.0, 270.0)


def test_a_flat_image_is_linked_to_nothing(nb):
    flat = nb["disc_signature"](Image.new("L", (50, 50), 128))
    other = nb["disc_signature"](Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 50), dtype=np.uint8)))
    found = nb["verify_pairs"](np.fft.rfft(np.stack([flat, other]), axis=2), np.array([[0, 1]]))
    assert abs(found.at[0, "similarity"]) < 1e-3


def test_flat_sixteen_bit_image_does_not_divide_by_zero(nb):
    flat = Image.fromarray(np.full((10, 10), 3000, np.uint16))
    grey = nb["to_grey8"](flat)
    assert grey.mode == "L" and np.asarray(grey).max() == 0


def test_threshold_is_the_highest_reaching_the_target_sensitivity(nb):
    import pandas as pd

    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.05])
    table = pd.DataFrame({"label": np.where(y == 1, "fractured", "not_fractured"), "p": p})
    table = table.sample(frac=1, random_state=0)  # the order of the rows does not matter
    assert nb["threshold_for_sensitivity"](table, "p", 0.75) == pytest.approx(0.4)
    assert nb["threshold_for_sensitivity"](table, "p", 1.0) == pytest.approx(0.3)
    found = nb["scores"](table, "p", 0.4)
    assert [found[name] for name in ("sensitivity", "specificity", "accuracy", "precision")] == [0.75] * 4


def test_single_split_never_cuts_a_group_and_follows_the_fractions(nb):
    import pandas as pd

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(300), rng.integers(1, 4, 300))
    frame = pd.DataFrame({"group": groups, "label": np.where(groups % 3 == 0, "fractured", "not_fractured")})
    parts = nb["single_split"](frame, [0.7, 0.15, 0.15], seed=0)
    assert sum(len(part) for part in parts.values()) == len(frame)
    sides = [set(part["group"]) for part in parts.values()]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])  # no group on two sides
    shares = {name: len(part) / len(frame) for name, part in parts.items()}
    assert shares["train"] == pytest.approx(0.7, abs=0.03) and shares["test"] == pytest.approx(0.15, abs=0.03)
    again = nb["single_split"](frame, [0.7, 0.15, 0.15], seed=0)
    assert all(parts[name].index.equals(again[name].index) for name in parts)


def test_fold_assignment_keeps_groups_whole_stratified_seeded_and_repeatable(nb):
    import pandas as pd

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), rng.integers(1, 6, 200))
    frame = pd.DataFrame({"group": groups, "label": np.where(groups % 3 == 0, "fractured", "not_fractured")})
    fold = nb["grouped_folds"](frame, 5, seed=3)
    frame["fold"] = fold
    assert set(fold) == {1, 2, 3, 4, 5}
    assert (frame.groupby("group")["fold"].nunique() == 1).all()  # whole groups
    shares = frame.groupby("fold")["label"].apply(lambda labels: (labels == "fractured").mean())
    assert shares.max() - shares.min() < 0.1  # stratified by class
    assert (fold == nb["grouped_folds"](frame, 5, seed=3)).all()  # repeatable
    assert not (fold == nb["grouped_folds"](frame, 5, seed=4)).all()  # seeded
    for k in range(1, 6):
        parts = nb["fold_parts"](frame, k, seed=3, val_splits=4)
        assert (parts["test"]["fold"] == k).all()
        assert sum(len(part) for part in parts.values()) == len(frame)
        sides = [set(part["group"]) for part in parts.values()]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])  # no group on two sides
        assert 0.15 < len(parts["val"]) / len(frame) < 0.25


def test_prediction_input_equals_what_the_training_batches_feed(nb, tmp_path):
    import pandas as pd

    rng = np.random.default_rng(2)
    array = (rng.integers(0, 4000, (150, 110)) + 500).astype(np.uint16)  # 16-bit, odd size
    path = write_image(tmp_path / "scan16.png", array)
    record = nb["inspect_image"](path)
    frame = pd.DataFrame({"cache": [record["cache"]], "label": ["fractured"]})
    fed = nb["XrayBatches"](frame, 1)[0][0][0]
    assert fed.shape == (64, 64, 1) and fed.max() > 1  # 0-255: the model scales its input itself
    np.testing.assert_allclose(nb["model_input"](nb["load_xray"](path)), fed, atol=1e-6)


def test_training_batches_do_not_depend_on_which_thread_builds_them(nb, tmp_path, monkeypatch):
    """Augmented batches built by 8 threads at once equal the same batches built one by one, every time."""
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd

    rng = np.random.default_rng(3)
    paths = [write_image(tmp_path / f"x{i}.png", rng.integers(0, 255, (40, 40), dtype=np.uint8)) for i in range(64)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured", "not_fractured"] * 32})
    monkeypatch.setitem(nb, "WORKERS", 8)

    def training_batches():
        return nb["XrayBatches"](frame, 2, augment=True)

    one_by_one = training_batches()
    expected = [one_by_one[i][0] for i in range(len(one_by_one))]
    assert not np.array_equal(expected[0][0], expected[1][0])  # augmentation differs from image to image
    for _ in range(10):
        batches = training_batches()
        with ThreadPoolExecutor(8) as pool:
            built = list(pool.map(lambda i, b=batches: b[i][0], range(len(batches))))
        for want, got in zip(expected, built):
            np.testing.assert_array_equal(want, got)
    batches.on_epoch_end()  # a new epoch: a new order and new transforms
    assert not np.array_equal(batches[0][0], expected[0])


def test_benchmark_script_runs_and_reports_every_figure(tmp_path):
    """A tiny smoke run of tests/benchmark.py (its real measurement is run by hand; see README)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "benchmark.json"
    script = Path(__file__).with_name("benchmark.py")
    result = subprocess.run([sys.executable, str(script), "--images", "8", "--repeats", "1", "--train-batches", "1",
                             "--img-size", "32", "--batch-size", "4", "--audit-images", "300", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in ["integrity_img_per_s", "pipeline_img_per_s", "model_train_img_per_s", "inference_img_per_s",
                "reference_train_img_per_s", "fit_img_per_s", "audit_total_seconds"]:
        assert figures[key] > 0, key
    assert figures["audit_groups"] == figures["audit_planted_groups"]  # every rotated copy found, nothing merged
    assert figures["machine"]["cores"] >= 1 and figures["machine"]["tensorflow"].startswith("2.21")
    assert "integrity_img_per_s" in result.stdout  # the printed table


def make_archive(folder, negative="not fractured", splits=("train", "val", "test")):
    """Lay out empty class folders as the Kaggle archive unzips under `folder`; return the folder holding the splits."""
    root = folder / "Bone_Fracture_Binary_Classification" / "Bone_Fracture_Binary_Classification"
    for split in splits:
        for label in ("fractured", negative):
            (root / split / label).mkdir(parents=True)
    return root


@pytest.mark.parametrize("name", ["fractured", "Fractured", "FRACTURED "])
def test_the_positive_class_folder_is_read_by_meaning(nb, name):
    assert nb["class_of"](name) == "fractured"


@pytest.mark.parametrize("name", ["not fractured", "not_fractured", "Not Fractured", "not-fractured", "NOT__FRACTURED",
                                  "not - fractured"])
def test_every_spelling_of_the_negative_class_folder_is_accepted(nb, name):
    assert nb["class_of"](name) == "not_fractured"


@pytest.mark.parametrize("name", ["fracture", "notfractured", "normal", "not fractured 2", "other_class"])
def test_other_folder_names_mean_no_class(nb, name):
    assert nb["class_of"](name) is None


def test_class_folders_are_found_by_meaning_and_an_unknown_or_doubled_one_is_refused(nb, tmp_path):
    root = make_archive(tmp_path)
    found = nb["class_folders"](root)
    assert sorted(zip(found["split"], found["label"], found["folder"].map(lambda f: f.name))) == sorted(
        (split, label, folder) for split in ("train", "val", "test")
        for label, folder in [("fractured", "fractured"), ("not_fractured", "not fractured")])
    (root / "val/not_fractured").mkdir()
    with pytest.raises(nb["DataError"]) as doubled:
        nb["class_folders"](root)
    assert "'fractured', 'not fractured', 'not_fractured'" in str(doubled.value)
    assert "two of them mean the same class" in str(doubled.value) and "any case" in str(doubled.value)
    (root / "val/not_fractured").rmdir()
    (root / "test/normal").mkdir()
    with pytest.raises(nb["DataError"]) as unknown:
        nb["class_folders"](root)
    assert "'normal' means neither class" in str(unknown.value) and str(root / "test") in str(unknown.value)
    assert list(root.rglob("*")) and not any(p.is_file() for p in root.rglob("*"))  # nothing written, nothing moved


def namespace_with(tmp_path, monkeypatch, **overrides):
    """The notebook's namespace with overrides, run from an empty folder (the notebook's own folder is searched)."""
    here = tmp_path / "notebook_folder"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    return notebook_namespace(64, tmp_path / "out", **overrides)


@pytest.mark.parametrize("mount", ["bone-fracture-data", "datasets/bmadushanirodrigo/fracture-multi-region-x-ray-data"])
def test_an_attached_kaggle_dataset_is_found_when_data_dir_is_left_empty(tmp_path, monkeypatch, mount):
    kaggle_input = tmp_path / "kaggle" / "input"
    root = make_archive(kaggle_input / mount)
    (kaggle_input / "another-dataset" / "train" / "cats").mkdir(parents=True)  # attached beside it: not ours
    nb = namespace_with(tmp_path, monkeypatch, DATA_DIR=None, KAGGLE_INPUT=str(kaggle_input))
    assert nb["DATA_DIR"] == "" and nb["locate_data"]() == root
    nb = namespace_with(tmp_path / "b", monkeypatch, DATA_DIR=str(tmp_path / "elsewhere"),
                        KAGGLE_INPUT=str(kaggle_input))
    with pytest.raises(nb["DataError"]) as given:  # a DATA_DIR that was set is never swapped for Kaggle's input
        nb["locate_data"]()
    assert str(tmp_path / "elsewhere") in str(given.value) and "not found" in str(given.value)


def test_the_archive_unzipped_next_to_the_notebook_is_found(tmp_path, monkeypatch):
    nb = namespace_with(tmp_path, monkeypatch, DATA_DIR=None, KAGGLE_INPUT=str(tmp_path / "no_kaggle"))
    root = make_archive(Path.cwd() / "data")
    assert nb["locate_data"]().resolve() == root.resolve()


def test_a_successful_download_is_used_as_kagglehub_lays_it_out(tmp_path, monkeypatch):
    """kagglehub is replaced by a stub that 'downloads' the archive's real layout (no network in tests)."""
    import sys
    import types

    archive = tmp_path / "kagglehub/datasets/bmadushanirodrigo/fracture-multi-region-x-ray-data/versions"
    root = make_archive(archive / "1")
    calls = []
    stub = types.SimpleNamespace(dataset_download=lambda handle: calls.append(handle) or str(archive / "1"))
    monkeypatch.setitem(sys.modules, "kagglehub", stub)
    nb = namespace_with(tmp_path, monkeypatch, DATA_DIR=None, KAGGLE_INPUT=str(tmp_path / "none"), DOWNLOAD="1")
    assert nb["locate_data"]() == root
    assert calls == ["bmadushanirodrigo/fracture-multi-region-x-ray-data"]
    assert nb["class_folders"](root)["label"].value_counts().to_dict() == {"fractured": 3, "not_fractured": 3}


def test_an_older_stack_is_named_with_what_to_do(monkeypatch):
    import importlib.metadata

    import nbformat
    from nbhelpers import NOTEBOOK

    code = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
    check = "\n".join(c.source for c in code[:next(i for i, c in enumerate(code) if "too_old" in c.source) + 1])
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"tensorflow": "2.15.1", "keras": "2.15.0"}.get(
        name) or real(name))
    with pytest.raises(Exception) as stopped:
        exec(compile(check, "<cells>", "exec"), {})
    message = str(stopped.value)
    assert type(stopped.value).__name__ == "DataError"
    assert "tensorflow 2.15.1 (needs 2.19 or newer)" in message and "keras 2.15.0 (needs 3.10 or newer)" in message
    assert "Kaggle" in message and "Colab" in message and "numpy" not in message
    monkeypatch.setattr(importlib.metadata, "version", real)
    exec(compile(check, "<cells>", "exec"), {})  # this environment is supported: the check passes


def test_every_knob_is_checked_once(nb):
    assert sorted(nb["CHECKS"]) == sorted(nb["env"].knobs)  # no knob unchecked, no check of a knob that is gone
