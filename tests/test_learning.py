"""The network learns, from several data sets in one run, and what it learnt carries to an external one.

Every other test checks that the notebook's figures are consistent with what it wrote, which a network returning a
constant would pass too. Here the notebook trains on two data sets whose fractured radiographs carry a visible mark
that augmentation keeps (a bright band across the bone; `build_learnable_fixture`): one laid out as the renamed
Kaggle copy, one as FracAtlas unzips (with its dataset.csv). Its out-of-fold ROC-AUC per radiograph must reach 0.9;
so must the shipped model's on an external FracAtlas-like set it never saw, which also holds an exact copy of a
training image (named and left out). (Checked once by hand: with the model's output layer replaced by a constant,
the out-of-fold figure is 0.5 and this test fails.)"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, execute_notebook, failing_run, new_folder, readme_snippet, run_folder, tta_views_of
from fixture_data import build_learnable_fixture
from nbhelpers import notebook_namespace
from PIL import Image
from sklearn.metrics import roc_auc_score
from test_run_outputs import p_fractured

# 144 radiographs at 64 px (128 px for the pretrained trunk, whose maps would be 2 x 2 at 64 px: too coarse to point
# at a band), 3 folds of one seed, 8 epochs, an external set of 48: about two minutes on 2 CPU cores for each network.
# Casts read in a table of their own: one training FracAtlas radiograph, and two external ones, one of which
# (IMG0300005, every fourth) dataset.csv also marks with hardware.
CASTS = ["fractured/IMG0200003.jpg", "fractured/IMG0300003.jpg", "fractured/IMG0300005.jpg"]
LEARNING_RUN = {"BONE_FRACTURE_FOLDS": "3", "BONE_FRACTURE_EPOCHS": "8", "BONE_FRACTURE_IMG_SIZE": "64",
                "BONE_FRACTURE_BATCH_SIZE": "16", "BONE_FRACTURE_SEEDS": "7", "BONE_FRACTURE_BOOTSTRAP": "100",
                "BONE_FRACTURE_ANNOTATIONS": "none"}


@pytest.fixture(scope="module", params=["cnn", "auto"])
def learnt(request, tmp_path_factory):
    """The run folder of the notebook trained on two learnable data sets and tested on a third: once with the CNN
    from scratch, once with BACKBONE and TTA left to "auto", which with FracAtlas among the data train
    EfficientNet-Lite0's trunk on the four views; each also classifies the external set's fractured images
    (PREDICT)."""
    work = tmp_path_factory.mktemp("learnable")
    kaggle = build_learnable_fixture(work / "kaggle")
    fracatlas = build_learnable_fixture(work / "fracatlas", per_class=24, layout="fracatlas", seed=2)
    external = build_learnable_fixture(work / "external", per_class=24, layout="fracatlas", seed=3)
    copy = external / "FracAtlas" / "images" / "Fractured" / "copy_of_training.png"
    shutil.copy(kaggle / "train" / "fractured" / "f_000.png", copy)
    images = external / "FracAtlas" / "images"  # one fractured radiograph filed under both labels (no hardware)
    shutil.copy(images / "Fractured" / "IMG0300002.jpg", images / "Non_fractured" / "IMG0300002_refiled.jpg")
    casts = work / "casts.csv"  # read as the shipped reading of FracAtlas's casts is: by place, beside dataset.csv
    casts.write_text("sha256,file,marks\n" + "".join(f",all/{place},cast\n" for place in CASTS))
    network = {"BONE_FRACTURE_BACKBONE": request.param if request.param != "auto" else None,
               "BONE_FRACTURE_IMG_SIZE": "64" if request.param == "cnn" else "128"}
    _, error = execute_notebook({**LEARNING_RUN, **network, "BONE_FRACTURE_ANNOTATIONS": str(casts),
                                 "BONE_FRACTURE_DATA_DIR": f"{kaggle},{fracatlas}",
                                 "BONE_FRACTURE_EXTERNAL": str(external),
                                 "BONE_FRACTURE_PREDICT": str(images / "Fractured"),
                                 "BONE_FRACTURE_OUTPUT_DIR": str(work / "output")})
    assert error is None, error
    return {"folder": run_folder(work / "output"), "output": work / "output", "copy": copy, "external": external,
            "work": work, "asked": request.param, "size": int(network["BONE_FRACTURE_IMG_SIZE"]), "casts": casts}


def per_radiograph(predictions):
    return predictions.groupby("group").agg(label=("label", "first"), p=("p_fractured", "mean"),
                                            m=("p_metadata", "mean"))


def test_the_network_learns_a_visible_mark_out_of_fold(learnt):
    radiographs = per_radiograph(pd.read_csv(learnt["folder"] / "test_predictions.csv"))
    assert len(radiographs) >= 135  # each radiograph scored once (the audit may take a few look-alikes for copies)
    auc = roc_auc_score(radiographs["label"] == "fractured", radiographs["p"])
    assert auc >= 0.9, f"out-of-fold ROC-AUC per radiograph {auc:.3f}: the network did not learn the mark"
    metrics = json.loads((learnt["folder"] / "metrics.json").read_text())
    assert metrics["test"]["per_radiograph"]["cnn"]["roc_auc"] == pytest.approx(auc)


def test_the_network_is_the_one_asked_for_and_auto_takes_a_pretrained_trunk_with_fracatlas_among_the_data(
        learnt):
    parameters = json.loads((learnt["folder"] / "metrics.json").read_text())["parameters"]
    expected = ("efficientnet_lite0", True) if learnt["asked"] == "auto" else ("cnn", False)
    assert (parameters["backbone"], parameters["tta"]) == expected
    assert parameters["feature_precision"] == "float32"  # "auto": bfloat16 for HED's trunk only
    contract = json.loads((learnt["folder"] / "model.json").read_text())
    assert contract["backbone"] == {"efficientnet_lite0": "efficientnet_lite0", "cnn": "sequential cnn"}[
        parameters["backbone"]]
    assert contract["test_time_augmentation"] is parameters["tta"]
    external = json.loads((learnt["folder"] / "metrics.json").read_text())["external"]
    assert external["backbone"] == contract["backbone"] and external["as_trained"]["tta"] is parameters["tta"]
    assert (external["as_trained"]["img_size"], external["as_trained"]["fit"]) == (learnt["size"], contract["fit"])
    label = {"efficientnet_lite0": "EfficientNet-Lite0 trunk", "cnn": "CNN"}[parameters["backbone"]]  # as it ran
    card = (learnt["folder"] / "model_card.md").read_text()
    assert f"- The {label}: ROC-AUC" in card and f"radiographs): the {label} " in card


def test_both_data_sets_are_read_and_reported_each(learnt):
    metrics = json.loads((learnt["folder"] / "metrics.json").read_text())
    assert list(metrics["data"]["folders"]) == ["kaggle", "FracAtlas"]
    assert {"kaggle", "FracAtlas"} <= set(metrics["data_sets"])
    assert metrics["data_sets"]["FracAtlas"]["all radiographs"]["radiographs"] >= 45
    assert metrics["annotations"]["rows_matched_by_place"] == 48 + 1  # dataset.csv's and a cast, by published place
    assert metrics["annotations"]["marks"] | {"hardware": 12, "cast": 1} == metrics["annotations"]["marks"]
    fracatlas = metrics["data_sets"]["FracAtlas"]
    assert fracatlas["without hardware or cast"]["radiographs"] == fracatlas["all radiographs"]["radiographs"] - 13


def test_the_external_test_scores_every_radiograph_it_never_saw_and_leaves_the_copy_out(learnt):
    folder = learnt["folder"]
    metrics = json.loads((folder / "metrics.json").read_text())["external"]
    scored = pd.read_csv(folder / "external_predictions.csv", keep_default_na=False)
    assert set(scored.columns) >= {"path", "label", "group", "fold_group", "p_fractured", "p_metadata",
                                   "copy_of_training", "note"}
    unit = scored.set_index(scored["path"].str.rsplit("/", n=1).str[-1])["fold_group"]  # by file name
    assert unit["IMG0300002.jpg"] == unit["IMG0300019.jpg"] != unit["IMG0300020.jpg"]  # a block of 20 ids: one unit
    copy = scored[scored["path"] == str(learnt["copy"])]
    assert copy["copy_of_training"].iloc[0].endswith("f_000.png") and metrics["copies_of_training_left_out"] == 1
    one_label = scored.groupby("group")["label"].transform("nunique") == 1
    assert metrics["label_conflicts_left_out"] == 1 and (~one_label).sum() == 2  # the film and its refiled copy
    copying = scored.groupby("group")["copy_of_training"].transform(lambda copies: copies.ne("").any())
    assert scored["note"].eq("").equals(~copying & one_label)  # `note` says why a radiograph is left out
    assert set(scored.loc[copying, "note"]) == {"holds a copy of a training image"}
    tested = per_radiograph(scored[(scored["copy_of_training"] == "") & one_label])
    auc = roc_auc_score(tested["label"] == "fractured", tested["p"])  # an independent computation from the CSV
    assert metrics["views"]["all radiographs"]["cnn"]["roc_auc"] == pytest.approx(auc, abs=1e-9)
    assert metrics["views"]["all radiographs"]["radiographs"] == len(tested) == 47
    assert auc >= 0.9, f"external ROC-AUC {auc:.3f}: what the network learnt does not carry"
    contract = json.loads((folder / "model.json").read_text())
    called = tested["p"] >= contract["threshold"]
    fractured = tested["label"] == "fractured"
    at = metrics["at_threshold"]["all radiographs"]["cnn"]
    assert at["sensitivity"] == pytest.approx(called[fractured].mean())
    assert at["specificity"] == pytest.approx(1 - called[~fractured].mean())
    assert metrics["views"]["without hardware"]["radiographs"] == 35  # every fourth radiograph shows hardware
    hardware = pd.read_csv(learnt["external"] / "FracAtlas" / "dataset.csv").set_index("image_id")["hardware"]
    treated = hardware.index[hardware == 1].union([place.split("/")[1] for place in CASTS])
    untreated = tested[~scored.groupby("group")["path"].first().loc[tested.index].str.rsplit("/", n=1).str[-1].isin(
        treated)]
    assert metrics["views"]["without hardware or cast"]["radiographs"] == len(untreated) == 34  # IMG0300003's cast
    assert metrics["treated_marks"] == {"hardware": 12, "cast": 2}
    assert metrics["views"]["without hardware or cast"]["cnn"]["roc_auc"] == pytest.approx(
        roc_auc_score(untreated["label"] == "fractured", untreated["p"]), abs=1e-9)
    card = (folder / "model_card.md").read_text()
    assert card.index("On radiographs from elsewhere") < card.index("What this run shows")
    assert (folder / "external_roc.png").stat().st_size > 10_000


def numbers(value, key=""):
    """Every number inside nested dicts and lists, by its path (NaN as None, strings and booleans as they are)."""
    if isinstance(value, dict):
        return {k: v for name, item in value.items() for k, v in numbers(item, f"{key}/{name}").items()}
    if isinstance(value, list):
        return {k: v for n, item in enumerate(value) for k, v in numbers(item, f"{key}/{n}").items()}
    return {key: None if isinstance(value, float) and np.isnan(value) else value}


def test_the_saved_model_tested_without_retraining_gives_the_same_external_figures(learnt):
    """MODEL and EXTERNAL: no training; the saved model, its training images (from its run's index.csv, decoded
    again into a cache of the model's own input size) and the seeds and audit of its run give back the external
    figures and predictions of the training run."""
    output = learnt["work"] / "tested-later"  # an OUTPUT_DIR of its own: its cache is made at the model's size
    _, error = execute_notebook({"BONE_FRACTURE_MODEL": str(learnt["folder"] / "model.keras"),
                                 "BONE_FRACTURE_EXTERNAL": str(learnt["external"]), "BONE_FRACTURE_SEEDS": "1",
                                 "BONE_FRACTURE_ID_BLOCK": "0",  # the model's run's 20 must win: it sets the units
                                 "BONE_FRACTURE_ANNOTATIONS": str(learnt["casts"]),  # its run's tables
                                 "BONE_FRACTURE_OUTPUT_DIR": str(output)})
    assert error is None, error
    again = new_folder(output, {output / "cache"})
    caches = [folder.name for folder in (output / "cache").iterdir()]  # with a frozen trunk, its features beside
    assert caches and all(name.startswith(f"{learnt['size']}px-") for name in caches)  # the model's, not 224
    assert not (again / "history.csv").exists()  # nothing trained
    before = json.loads((learnt["folder"] / "metrics.json").read_text())["external"]
    after = json.loads((again / "metrics.json").read_text())["external"]
    assert (after["backbone"], after["as_trained"]) == (before["backbone"], before["as_trained"])  # size, fit, views
    for part in ("views", "at_threshold", "body_parts"):
        expected, found = numbers(before[part]), numbers(after[part])
        assert found.keys() == expected.keys()
        for key, value in expected.items():
            assert found[key] == (value if isinstance(value, str | bool) or value is None
                                  else pytest.approx(value, abs=1e-6)), key
    assert after["copies_of_training_left_out"] == before["copies_of_training_left_out"] == 1
    assert after["label_conflicts_left_out"] == before["label_conflicts_left_out"] == 1
    scored = [pd.read_csv(folder / "external_predictions.csv", keep_default_na=False).set_index("path")
              for folder in (learnt["folder"], again)]
    np.testing.assert_allclose(scored[1].loc[scored[0].index, "p_fractured"], scored[0]["p_fractured"], atol=1e-5)
    assert (again / "model_card.md").read_text().startswith("# External test of")


def test_it_looks_at_the_mark_where_the_data_set_outlines_it(learnt):
    """FracAtlas-like training radiographs outline their band as the fracture: the maps of the true positives must
    peak inside it more often than a uniform map would, and hold more of their heat there."""
    found = json.loads((learnt["folder"] / "metrics.json").read_text())["localisation"]
    assert found["radiographs"] >= 10
    assert found["hit"]["mean"] > found["uniform"]["mean"] and found["heat_inside"]["mean"] > found["uniform"]["mean"]
    for measured in ("hit", "heat_inside", "uniform"):
        low, high = found[measured]["ci95"]
        assert low <= found[measured]["mean"] <= high and low < high  # radiographs resampled by fold unit
    assert (learnt["folder"] / "localisation.png").stat().st_size > 10_000


def test_boxes_land_on_the_model_input_as_the_fit_places_the_image(tmp_path):
    import numpy as np
    from nbhelpers import notebook_namespace

    nb = notebook_namespace(64, tmp_path)
    squash = nb["box_mask"](100, 200, 100, [(100, 50, 100, 50)], "squash")  # the lower right quarter
    assert squash[50:, 50:].all() and squash.sum() == 50 * 50
    pad = nb["box_mask"](100, 200, 100, [(0, 0, 200, 100)], "pad")  # the whole image, between black bars
    assert pad[25:75].all() and not pad[:25].any() and not pad[75:].any()
    cam = np.zeros((4, 4))
    cam[3, 3] = 1.0
    hit, inside = nb["pointing"](cam, squash)
    assert hit == 1 and 0.5 < inside <= 1
    assert nb["pointing"](np.zeros((4, 4)), squash) == (0.25, 0.25)  # no heat: scored as a uniform map


def test_an_external_folder_inside_the_training_data_is_refused(tmp_path):
    data = build_learnable_fixture(tmp_path / "data", per_class=2, size=32)
    rendered = failing_run({"BONE_FRACTURE_DATA_DIR": str(data), "BONE_FRACTURE_EXTERNAL": str(data),
                            "BONE_FRACTURE_OUTPUT_DIR": str(tmp_path / "out")})
    assert "BONE_FRACTURE_EXTERNAL=" in rendered and "overlaps the training data" in rendered


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("learning-notebook"))


def frozen_trunk(learnt):
    """The run of `learnt` whose network is a frozen pretrained trunk (`auto`'s EfficientNet-Lite0 on the four views):
    its folder and its features' cache folder; the CNN's run, which has neither, is skipped."""
    if learnt["asked"] != "auto":
        pytest.skip("the CNN from scratch has no frozen trunk")
    (store,) = [p for p in (learnt["output"] / "cache").iterdir() if p.name.endswith("-features")]
    return learnt["folder"], store


def test_a_frozen_trunk_s_heads_each_kept_their_last_epoch(learnt):
    folder, _ = frozen_trunk(learnt)
    history = pd.read_csv(folder / "history.csv")
    last = history.groupby(["seed", "fold"])["epoch"].transform("max")
    # EPOCHS=8 of the head, then FINE_TUNE's 8 ("auto") of the last stage with it: every one trained
    assert (history["epoch"] == last).equals(history["kept"]) and (last == 16).all()
    folds = json.loads((folder / "metrics.json").read_text())["training"]["folds"]
    assert [(fold["epochs_run"], fold["kept_epoch"]) for fold in folds] == [(16, 16)] * 3
    peak = history.groupby(history["epoch"] > 8)["learning_rate"].max()  # LEARNING_RATE, then FINE_TUNE_RATE
    assert peak[False] == pytest.approx(1e-3, rel=0.05) and peak[True] == pytest.approx(3e-4, rel=0.05)


def test_the_features_of_each_image_s_views_are_computed_once_and_kept_in_the_cache(learnt):
    folder, store = frozen_trunk(learnt)
    assert store.name.endswith("-efficientnet_lite0-block11-maps-features")  # what the stage is fine-tuned on
    index = pd.read_csv(folder / "index.csv")
    used = index.loc[index["note"].isna(), "cache"].map(lambda path: path.rsplit("/", 1)[1].removesuffix(".png"))
    kept = {p.stem for p in store.glob("*.npy")}
    for suffix in ("", "-mirror", "-zoomed70", "-zoomed70-mirror"):
        assert {stem + suffix for stem in used} <= kept  # and the external images' (below)
    kept_maps = np.load(next(store.glob("*.npy")))
    assert kept_maps.shape == (4, 4, 192) and kept_maps.dtype == np.float16  # block 11's maps of a 128 px image


def test_the_saved_model_scores_images_as_the_cross_validation_did(nb, learnt):
    """The head was trained on cached features; the shipped model keeps the trunk once and every fold's head: each
    head on the trunk gives, on the cached images, the out-of-fold probabilities the run recorded."""
    import keras

    folder, _ = frozen_trunk(learnt)
    contract = json.loads((folder / "model.json").read_text())
    assert contract["backbone"] == "efficientnet_lite0" and contract["gradcam_layer"] == "last_conv"
    model = keras.models.load_model(folder / "model.keras")
    trunk, heads = nb["trunk_and_heads"](model)  # the part before the fine-tuned stage once, a stage in each head
    assert [layer.name for layer in trunk.layers] == ["grey_to_rgb", "lite_lower"]
    assert all(head.layers[0].name == "last_conv" for head in heads)
    parameters = trunk.count_params() + sum(head.count_params() for head in heads)  # float32, nothing saved twice
    assert (folder / "model.keras").stat().st_size < 1.1 * 4 * parameters
    members = {member.name: member for member in nb["ensemble_members"](model)}
    assert len(members) == contract["members"] == 3
    oof = pd.read_csv(folder / "test_predictions.csv")
    index = pd.read_csv(folder / "index.csv").set_index("path")
    for k, part in oof.groupby("fold"):
        pixels = np.stack([np.asarray(Image.open(index.at[path, "cache"]), np.float32)[..., None]
                           for path in part["path"]])
        member = members[f"seed_7_fold_{k}"]
        # cross-validation scored block 11's maps as kept, in float16; the member computes them in float32
        np.testing.assert_allclose(p_fractured(member, pixels, tta=True), part["p_fractured"], atol=1e-3)
        first_two = tta_views_of(pixels)[:2]
        only_two = np.mean([np.asarray(member(view, training=False))[:, 0] for view in first_two], axis=0)
        assert not np.allclose(only_two, part["p_fractured"], atol=5e-3)  # the zoomed views' maps were used


def test_the_external_images_are_scored_as_the_saved_model_scores_them(nb, learnt):
    """The external test runs the saved model's trunk once per image and view (their features kept beside the
    training images') and averages the heads on them: the probabilities of the whole saved model on the same images'
    views."""
    import keras

    folder, store = frozen_trunk(learnt)
    scored = pd.read_csv(folder / "external_predictions.csv")
    assert len(scored) == 50  # 48 radiographs, the copy of a training image, and a film filed under both labels
    model = keras.models.load_model(folder / "model.keras")
    pixels = np.stack([nb["model_input"](nb["load_xray"](path), learnt["size"], "squash") for path in scored["path"]])
    # scored on block 11's maps kept in float16, as cross-validation was; the whole model computes them in float32
    np.testing.assert_allclose(p_fractured(model, pixels, tta=True), scored["p_fractured"], atol=1e-3)
    used = pd.read_csv(folder / "index.csv").query("note.isna()")["cache"].nunique()
    # the training and external images' four views; the copy and the refiled film share their originals' features
    assert len(list(store.glob("*.npy"))) == 4 * (used + 48)


def test_predictions_average_the_saved_model_over_each_image_s_views(nb, learnt):
    import keras

    folder, _ = frozen_trunk(learnt)
    assert json.loads((folder / "model.json").read_text())["test_time_augmentation"] is True
    predicted = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    asked = learnt["external"] / "FracAtlas" / "images" / "Fractured"  # PREDICT: 24 radiographs and the copy
    assert len(predicted) == len(list(asked.iterdir())) == 25 and (predicted["error"] == "").all()
    model = keras.models.load_model(folder / "model.keras")
    pixels = np.stack([nb["model_input"](nb["load_xray"](path), learnt["size"], "squash")
                       for path in predicted["path"]])
    np.testing.assert_allclose(p_fractured(model, pixels, tta=True), predicted["p_fractured"], atol=1e-5)
    assert not np.allclose(np.asarray(model(pixels, training=False))[:, 0], predicted["p_fractured"], atol=1e-5)


def test_the_readme_snippet_averages_the_views_as_the_notebook_does(nb, learnt, tmp_path):
    import keras

    folder, _ = frozen_trunk(learnt)
    image = tmp_path / "xray.jpg"
    (tmp_path / "artifacts" / "latest").mkdir(parents=True)
    for name in ("model.keras", "model.json"):
        shutil.copy(folder / name, tmp_path / "artifacts" / "latest" / name)
    predicted = pd.read_csv(folder / "predictions.csv", keep_default_na=False)
    shutil.copy(predicted["path"].iloc[0], image)
    result = subprocess.run([sys.executable, "-c", readme_snippet(ROOT / "README.md")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-2]) == pytest.approx(predicted["p_fractured"].iloc[0], abs=1e-4)
    model = keras.models.load_model(folder / "model.keras")
    pixels = nb["model_input"](nb["load_xray"](predicted["path"].iloc[0]), learnt["size"], "squash")[None]
    first_two = np.mean([np.asarray(model(view))[0, 0] for view in tta_views_of(pixels)[:2]])
    assert abs(first_two - predicted["p_fractured"].iloc[0]) > 1e-3  # the zoomed views make the difference
