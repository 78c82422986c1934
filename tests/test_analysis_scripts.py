"""The analysis scripts under docs/analysis measure what docs/results.md reports: their pieces that place the
fracture outlines, cut the maps into windows and score patches are checked here on small made-up inputs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from fixture_data import lite_reference
from nbhelpers import notebook_namespace, pooling_split
from PIL import Image
from sklearn.metrics import roc_auc_score

ANALYSIS = Path(__file__).resolve().parent.parent / "docs" / "analysis"


def analysis_script(name, monkeypatch):
    """The analysis script `name` imported as a module (the folder on sys.path, as when it is run)."""
    monkeypatch.syspath_prepend(str(ANALYSIS))
    spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def heads(monkeypatch):
    return analysis_script("hed_heads", monkeypatch)


def write_outlines(folder, images):
    """Write FracAtlas-style COCO outlines for `images` ({file name: (width, height, [(x, y, w, h), ...])})."""
    coco = {"images": [], "annotations": []}
    for image_id, (name, (width, height, boxes)) in enumerate(images.items()):
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        coco["annotations"] += [{"image_id": image_id, "bbox": list(box)} for box in boxes]
    (folder / "Annotations" / "COCO JSON").mkdir(parents=True)
    (folder / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").write_text(json.dumps(coco))
    return folder


def test_the_script_places_boxes_on_the_maps_where_the_notebook_does(heads, tmp_path):
    images = {"wide.jpg": (454, 373, [(300, 20, 40, 30)]), "tall.jpg": (373, 454, [(10, 400, 60, 50), (200, 90, 5, 5)])}
    fracatlas = write_outlines(tmp_path / "FracAtlas", images)
    masks = heads.box_masks(fracatlas, ["wide.jpg", "tall.jpg", "plain.jpg"], 14)
    nb = notebook_namespace(32, tmp_path / "output")
    for mask, (width, height, boxes) in zip(masks, images.values()):
        pixels = nb["box_mask"](224, width, height, boxes, "squash")  # the notebook's default fit, as its cache
        cells = pixels.reshape(14, 16, 14, 16).any(axis=(1, 3))
        assert np.array_equal(mask.astype(bool), cells)
        assert 0 < cells.sum() < 14 * 14
    assert not masks[2].any()  # a file without outlines has no box


def test_windows_pool_each_window_half_a_window_apart(heads):
    maps = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3)
    means = heads.windows(maps, 4)
    assert means.shape == (2, 4, 3)  # windows start at cells 0 and 2 along each side
    for k, (row, column) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        assert np.allclose(means[:, k], maps[:, row:row + 4, column:column + 4].mean(axis=(1, 2)))
    mask = np.zeros((1, 6, 6, 1), np.float32)
    mask[0, 5, 0] = 1
    touched = heads.windows(mask, 4, tf.nn.max_pool2d)[..., 0]
    assert touched.tolist() == [[0, 0, 1, 0]]  # only the lower left window holds the marked cell


def test_patches_are_taught_what_their_windows_hold_and_rank_fractured_images_first(heads, monkeypatch):
    rng = np.random.default_rng(0)
    count, windows = 80, 9
    y = (np.arange(count) % 2).astype(np.float32)
    features = rng.normal(size=(count, windows, 8)).astype(np.float32)
    touched = np.zeros((count, windows), np.float32)
    boxed = rng.integers(0, windows, count)  # one window of each fractured image holds its fracture
    touched[y == 1, boxed[y == 1]] = 1
    features[y == 1, boxed[y == 1], 0] += 3.0
    train, test = np.arange(0, 60), np.arange(60, count)
    taught = []  # (windows fitted, windows taught 1) of each fit
    make_pipeline = heads.make_pipeline

    def recording_pipeline(*steps):
        pipeline = make_pipeline(*steps)
        fit = pipeline.fit

        def recorded_fit(x, label):
            taught.append((len(x), int(label.sum())))
            return fit(x, label)

        pipeline.fit = recorded_fit
        return pipeline

    monkeypatch.setattr(heads, "make_pipeline", recording_pipeline)
    fractured = int(y[train].sum())
    expected = {"boxes": ((len(train) - fractured) * windows + fractured, fractured),  # other windows left out
                "bone": (len(train) * windows, fractured),
                "image": (len(train) * windows, fractured * windows)}
    for teach, (fitted, ones) in expected.items():
        p = heads.patch_probabilities(features, touched, y, train, test, teach)
        assert taught[-1] == (fitted, ones)
        assert p.shape == (len(test),)
        if teach != "image":
            assert roc_auc_score(y[test], p) > 0.95


def test_views_turn_zoom_and_tilt_an_image_as_named(monkeypatch):
    layers = analysis_script("hed_layers", monkeypatch)
    grey = np.zeros((40, 60), np.uint8)
    grey[0:3, 0:4] = 255  # a bright mark in the top left corner, inside the margin zooming cuts off (3 x 4 px)
    grey[18:22, 28:32] = 200  # a square in the centre
    image = Image.fromarray(grey)
    assert np.array_equal(layers.seen_as(image, "image"), grey)
    assert np.array_equal(layers.seen_as(image, "mirror"), grey[:, ::-1])
    assert np.array_equal(layers.seen_as(image, "upside_down"), grey[::-1])
    assert np.array_equal(layers.seen_as(image, "rotated180"), grey[::-1, ::-1])
    zoomed = layers.seen_as(image, "zoomed")  # the central 85 % enlarged: the corner's mark is cut off
    assert zoomed.shape == grey.shape and zoomed.max() < 255
    assert (zoomed > 0).sum() > (grey == 200).sum()  # the centre's square enlarged
    assert np.array_equal(layers.seen_as(image, "zoomed_mirror"), zoomed[:, ::-1])
    assert (layers.seen_as(image, "zoomed70") > 0).sum() > (zoomed > 0).sum()  # its central 70 %: closer still
    assert layers.seen_as(image, "enlarged90").shape == (60, 90)  # its longest side 90 px
    tilted = layers.seen_as(image, "tilted")
    assert tilted.shape == grey.shape and tilted[0, 0] == tilted[-1, -1] == 0 and not np.array_equal(tilted, grey)
    assert np.array_equal(layers.seen_as(image, "tilted_mirror"), tilted[:, ::-1])


def test_the_notebook_s_tta_views_are_the_views_measured_here(monkeypatch, tmp_path):
    layers, nb = analysis_script("hed_layers", monkeypatch), notebook_namespace(32, tmp_path)
    grey = np.random.default_rng(0).integers(0, 256, (224, 224), dtype=np.uint8)
    for view, measured in zip(nb["TTA_VIEWS"], ("image", "mirror", "zoomed70", "zoomed70_mirror"), strict=True):
        seen = nb["seen_as"](grey[..., None].astype(np.float32), view)[..., 0]
        assert np.array_equal(seen, layers.seen_as(Image.fromarray(grey), measured)), view


def write_run(folder, probabilities, folds):
    """Write a run folder's radiographs.csv and seed_predictions.csv: radiograph k of FracAtlas (labels alternate,
    body parts hand and leg, the first radiograph with hardware) and one Kaggle radiograph, with each seed's
    probabilities ({seed: [p of each FracAtlas radiograph]})."""
    count = len(folds)
    radiographs = pd.DataFrame({
        "group": range(count + 1), "fold": [*folds, 1],
        "label": [["not_fractured", "fractured"][k % 2] for k in range(count)] + ["fractured"],
        "path": [f"/data/FracAtlas/images/IMG{k}.jpg" for k in range(count)] + ["/data/kaggle/fractured/1.jpg"],
        "body_part": [["hand", "leg"][k // 2 % 2] for k in range(count)] + ["hand"],
        "marks": ["hardware"] + [""] * count})
    folder.mkdir()
    radiographs.to_csv(folder / "radiographs.csv", index=False)
    pd.DataFrame([{"seed": seed, "group": k, "p_fractured": p} for seed, ps in probabilities.items()
                  for k, p in enumerate([*ps, 0.5])]).to_csv(folder / "seed_predictions.csv", index=False)
    return folder


def test_two_runs_are_averaged_on_one_data_set_and_refused_with_other_folds(monkeypatch, tmp_path, capsys):
    two_runs = analysis_script("two_runs", monkeypatch)
    rng = np.random.default_rng(0)
    folds = [k % 5 + 1 for k in range(40)]
    a_seeds = {42: rng.random(40), 1: rng.random(40)}
    run_a = write_run(tmp_path / "a", a_seeds, folds)
    run_b = write_run(tmp_path / "b", {42: rng.random(40)}, folds)
    a = two_runs.out_of_fold(run_a, "FracAtlas")
    assert len(a) == 40 and np.allclose(a["p_fractured"], (a_seeds[42] + a_seeds[1]) / 2)  # the Kaggle one left out
    y = a["label"].eq("fractured")
    hand, leg = a["body_part"].eq("hand"), a["body_part"].eq("leg")
    inside = (roc_auc_score(y[hand], a["p_fractured"][hand]) + roc_auc_score(y[leg], a["p_fractured"][leg])) / 2
    plain = a.index != 0
    assert np.allclose(two_runs.figures(a, a["p_fractured"]),
                       [roc_auc_score(y, a["p_fractured"]), inside, roc_auc_score(y[plain], a["p_fractured"][plain])])
    two_runs.main(run_a, run_b, "FracAtlas", 0.5, resamples=20)
    b = two_runs.out_of_fold(run_b, "FracAtlas")
    mean = roc_auc_score(y, (a["p_fractured"] + b["p_fractured"]) / 2)
    assert f"mean: all {mean:.3f}" in capsys.readouterr().out
    run_c = write_run(tmp_path / "c", {42: rng.random(40)}, folds[1:] + folds[:1])
    with pytest.raises(SystemExit, match="same folds"):
        two_runs.main(run_a, run_c, "FracAtlas", 0.5, resamples=20)


def test_each_view_s_windows_touch_the_boxes_as_that_view_shows_them(monkeypatch, tmp_path):
    patches = analysis_script("view_patches", monkeypatch)
    # a box in the top left corner of a 224 x 224 image (as the cache holds it: squash), inside the first window only
    fracatlas = write_outlines(tmp_path / "FracAtlas", {"a.jpg": (224, 224, [(10, 10, 20, 20)]),
                                                        "b.jpg": (224, 224, [])})
    masks = patches.box_masks(fracatlas, ["a.jpg", "b.jpg"], 224)
    touched = {view: patches.touched_windows(masks, view) for view in patches.VIEWS}
    grid = {view: rows[0].reshape(3, 3) for view, rows in touched.items()}  # 3 x 3 windows of 112 px, 56 apart
    assert grid["image"].tolist() == [[True, False, False], [False, False, False], [False, False, False]]
    assert np.array_equal(grid["mirror"], grid["image"][:, ::-1])  # the box on the right once mirrored
    assert not grid["zoomed70"].any()  # x 10-30 lies in the 34 px margin the zoom cuts off
    assert not any(rows[1].any() for rows in touched.values())  # no outline, no window touched


def test_patches_over_the_views_learn_from_every_view_and_average_their_largest_window(monkeypatch):
    patches = analysis_script("view_patches", monkeypatch)
    rng = np.random.default_rng(1)
    count, windows = 80, 9
    y = (np.arange(count) % 2).astype(np.float32)
    features, touched = {}, {}
    for k, view in enumerate(patches.VIEWS):
        boxed = rng.integers(0, windows, count)
        touched[view] = np.zeros((count, windows), bool)
        touched[view][y == 1, boxed[y == 1]] = True
        features[view] = rng.normal(size=(count, windows, 8)).astype(np.float32)
        features[view][y == 1, boxed[y == 1], k] += 4.0  # each view shows the fracture in its own feature
    train, test = np.arange(0, 60), np.arange(60, count)
    p = patches.over_views(patches.patch_probabilities, [features, touched], y, train, test, "boxes")
    assert p.shape == (len(test),) and roc_auc_score(y[test], p) > 0.95
    alone = {view: features["image"] for view in patches.VIEWS}  # the other views' evidence removed
    q = patches.over_views(patches.patch_probabilities, [alone, {view: touched["image"] for view in patches.VIEWS}],
                           y, train, test, "boxes")
    assert not np.allclose(p, q)


def test_the_learning_curve_s_shares_keep_whole_units_and_nest(monkeypatch):
    curve = analysis_script("learning_curve", monkeypatch)
    units = np.repeat(np.arange(40), 3)  # 40 units of three images each
    kept = curve.nested_shares(units, curve.SHARES, np.random.default_rng(0))
    assert [len(kept[share]) for share in curve.SHARES] == [5, 10, 20, 40]
    for smaller, larger in zip(curve.SHARES, curve.SHARES[1:]):
        assert set(kept[smaller]) <= set(kept[larger])


def test_the_learning_curve_learns_more_from_more_radiographs_and_reads_its_line(monkeypatch):
    curve = analysis_script("learning_curve", monkeypatch)
    rng = np.random.default_rng(1)
    count = 400
    y = (np.arange(count) % 4 == 0).astype(float)  # a quarter fractured
    features = rng.normal(0, 1, (count, 4, 6)) + 0.6 * y[:, None, None]  # four views, a weak signal in every feature
    unit, group = np.arange(count) // 2, np.arange(count)
    part, hardware = np.where(np.arange(count) % 3 == 0, "hand", "leg"), np.zeros(count, bool)
    figures = curve.learning_curve(features, y, unit, group, part, hardware)
    trained = [figures[share][0] for share in curve.SHARES]
    assert trained == sorted(trained) and trained[-1] == pytest.approx(0.8 * count, rel=0.05)
    assert figures[1.0][1] >= 0.9 and figures[1.0][1] >= figures[0.125][1]
    line = {share: (2.0 ** k, 0.7 + 0.02 * k, 0.6, 0.5 + 0.01 * k) for k, share in enumerate(curve.SHARES, start=6)}
    (slope, value), (flat, _), (_, hardware_free) = curve.extrapolated(line, 2.0 ** 12)
    assert slope == pytest.approx(0.02) and value == pytest.approx(0.7 + 0.24)
    assert flat == pytest.approx(0.0, abs=1e-12) and hardware_free == pytest.approx(0.62)


def test_the_learning_curve_never_trains_on_the_radiographs_it_scores(monkeypatch):
    """Each image's features name only itself (one-hot), and the labels are random: a regression that never saw an
    image gives it the same probability as every other unseen one (ROC-AUC 0.5); one trained on it would rank it."""
    curve = analysis_script("learning_curve", monkeypatch)
    count = 120
    features = np.repeat(np.eye(count)[:, None, :], 4, axis=1)
    y = np.random.default_rng(2).permutation(np.arange(count) % 2).astype(float)
    unit = group = np.arange(count)
    part, hardware = np.full(count, "leg"), np.zeros(count, bool)
    figures = curve.learning_curve(features, y, unit, group, part, hardware, seeds=(42,), shares=(0.5, 1.0))
    assert [figures[share][1] for share in (0.5, 1.0)] == pytest.approx([0.5, 0.5], abs=0.02)
    inside = curve.view_probabilities(features, y, np.arange(count), np.arange(count))  # trained on them: ranked
    assert roc_auc_score(y, inside) > 0.95


def test_the_learning_curve_reads_the_features_the_notebook_cached(monkeypatch, tmp_path):
    curve, nb = analysis_script("learning_curve", monkeypatch), notebook_namespace(32, tmp_path)
    cache = tmp_path / "cache" / "32px-key"
    cache.mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8)).save(cache / f"{i}.png")
        rows.append({"path": f"/data/IMG{i:07d}.jpg", "cache": str(cache / f"{i}.png"), "note": "", "group": i,
                     "label": ("fractured", "not_fractured")[i % 2]})
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).to_csv(run / "index.csv", index=False)
    trunk, _ = pooling_split(nb, nb["build_model"](32, backbone="hed"))
    computed = {}
    for precision in ("float32", "bfloat16"):  # both kept beside the cache: the run's metrics.json says which it used
        folder = nb["features_folder"](cache, "hed", trunk, precision)
        computed[precision] = nb["trunk_features"](trunk, pd.DataFrame(rows), 4, 1, folder, precision, nb["TTA_VIEWS"])
    stacked = {precision: np.stack([cached[row["cache"]] for row in rows]) for precision, cached in computed.items()}
    assert not np.array_equal(stacked["float32"], stacked["bfloat16"])  # so the folder read is told apart
    for precision, expected in stacked.items():
        (run / "metrics.json").write_text(json.dumps({"parameters": {"feature_precision": precision}}))
        images, features = curve.cached_features(run)
        assert list(images["cache"]) == [row["cache"] for row in rows]
        assert np.array_equal(features, expected)
    (run / "metrics.json").write_text(json.dumps({"parameters": {}}))  # a run before 3.13: float32
    assert np.array_equal(curve.cached_features(run)[1], stacked["float32"])


def test_each_training_recipe_keeps_fracatlas_and_the_other_images_it_names(monkeypatch):
    sources = analysis_script("training_sources", monkeypatch)
    fracatlas = np.array([True, True, False, False, False, False])
    plain = np.array([True, False, True, False, True, False])
    fractured = np.array([True, False, True, True, False, False])
    kept = {recipe: sources.kept_for(recipe, fracatlas, plain, fractured).tolist() for recipe in sources.RECIPES}
    assert kept == {"FracAtlas only": [True, True, False, False, False, False],
                    "every data set": [True] * 6,
                    "FracAtlas and plain radiographs": [True, True, True, False, True, False],
                    "FracAtlas and not fractured": [True, True, False, False, True, True]}


def test_a_data_set_whose_classes_differ_in_kind_misleads_a_head_trained_on_it(monkeypatch):
    """Made-up features: FracAtlas's fractured images are higher in feature 0; the other set's fractured images are
    lower there (another kind of picture). Trained on FracAtlas alone the regression ranks FracAtlas's fractures;
    trained on every image it learns the other set's direction too, and ranks them worse."""
    sources = analysis_script("training_sources", monkeypatch)
    rng = np.random.default_rng(3)
    count = 400
    fracatlas = np.arange(count) < count // 2
    y = (np.arange(count) % 3 == 0).astype(float)
    sign = np.where(fracatlas, 1.0, -3.0)
    features = rng.normal(0, 1, (count, 4, 5))
    features[:, :, 0] += (sign * y)[:, None]
    unit = np.arange(count)
    auc = {}
    for recipe in ("FracAtlas only", "every data set"):
        kept = sources.kept_for(recipe, fracatlas, np.ones(count, bool), y == 1)
        p = sources.recipe_probabilities(features, y, unit, kept, seeds=(42,))[0]
        auc[recipe] = roc_auc_score(y[fracatlas], p[fracatlas])
    assert auc["FracAtlas only"] > 0.8 and auc["every data set"] < auc["FracAtlas only"] - 0.1


def test_the_run_s_own_head_and_plain_marks_are_read_per_radiograph(monkeypatch, tmp_path):
    sources = analysis_script("training_sources", monkeypatch)
    pd.DataFrame({"seed": [42, 1, 42, 1], "group": [0, 0, 1, 1], "p_fractured": [0.2, 0.4, 0.9, 0.7]}).to_csv(
        tmp_path / "seed_predictions.csv", index=False)
    pd.DataFrame({"group": [0, 1, 2], "modality": ["xray", "xray", "ct"], "marks": ["hardware", "arrow+text", ""]}
                 ).to_csv(tmp_path / "radiographs.csv", index=False)
    group = np.array([1, 0, 0, 2])
    assert sources.run_head_probabilities(tmp_path, group)[:3] == pytest.approx([0.8, 0.3, 0.3])
    assert sources.plain_images(tmp_path, group).tolist() == [False, True, True, False]


def test_the_run_s_fold_heads_train_on_four_fifths_less_a_validation_quarter_of_whole_units(monkeypatch):
    refit = analysis_script("refit_heads", monkeypatch)
    count = 200
    y = (np.arange(count) % 4 == 0).astype(float)
    unit = np.arange(count) // 2  # two images a unit
    rows = np.arange(10, count)  # the run's training data: all but the first 10 images
    folds = refit.fold_training_rows(y, unit, rows)
    assert len(folds) == 5
    for part, whole in folds:
        assert set(part) < set(whole) <= set(rows)
        assert len(whole) == pytest.approx(0.8 * len(rows), rel=0.1)
        assert len(part) == pytest.approx(0.75 * len(whole), rel=0.1)
        left_out = np.setdiff1d(whole, part)
        assert not set(unit[left_out]) & set(unit[part])  # a unit is wholly in the quarter or wholly out of it


def test_the_shipped_heads_never_train_on_the_radiographs_held_back(monkeypatch):
    """Each image's features name only itself (one-hot), and the labels are random: a head that never saw an image
    gives it the same probability as every other unseen one (ROC-AUC 0.5), whichever way the model is made."""
    refit = analysis_script("refit_heads", monkeypatch)
    count = 100
    features = np.repeat(np.eye(count)[:, None, :], 4, axis=1)
    y = np.random.default_rng(5).permutation(np.arange(count) % 2).astype(float)
    probabilities = refit.held_out_probabilities(features, y, np.arange(count))
    assert set(probabilities) == set(refit.WAYS)
    for way, p in probabilities.items():
        assert roc_auc_score(y, p) == pytest.approx(0.5, abs=0.02), way


def test_the_held_back_split_keeps_id_blocks_whole_copies_each_image_once_and_changes_nothing(monkeypatch, tmp_path):
    split = analysis_script("held_back_split", monkeypatch)
    source = tmp_path / "FracAtlas"
    ids = [f"IMG{n:07d}.jpg" for n in range(0, 400, 4)]  # 100 images, 5 to a block of 20 ids
    table = pd.DataFrame({"image_id": ids, "hand": 1, "fractured": [int(n % 3 == 0) for n in range(100)]})
    for image_id, fractured in zip(ids, table["fractured"]):
        folder = source / "images" / ("Fractured" if fractured else "Non_fractured")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image_id).write_bytes(image_id.encode())
    table.to_csv(source / "dataset.csv", index=False)
    write_outlines(source, {image_id: (10, 10, [(1, 1, 2, 2)]) for image_id in ids[::3]})
    before = {path: path.read_bytes() for path in source.rglob("*") if path.is_file()}
    split.main(source, tmp_path / "out")
    parts = {name: pd.read_csv(tmp_path / "out" / name / "FracAtlas" / "dataset.csv") for name in ("train", "held")}
    assert sorted(parts["train"]["image_id"].tolist() + parts["held"]["image_id"].tolist()) == ids
    blocks = {name: set(part["image_id"].str[3:10].astype(int) // 20) for name, part in parts.items()}
    assert len(blocks["held"]) == 4 and not blocks["held"] & blocks["train"]  # a fifth of 20 blocks, none split
    assert parts["held"]["fractured"].nunique() == 2
    for name, part in parts.items():
        root = tmp_path / "out" / name / "FracAtlas"
        copied = sorted(path.name for path in (root / "images").rglob("*.jpg"))
        assert copied == sorted(part["image_id"])
        assert all((root / "images" / ("Fractured" if f else "Non_fractured") / i).read_bytes() == i.encode()
                   for i, f in zip(part["image_id"], part["fractured"]))
        coco = json.loads((root / split.OUTLINES).read_text())
        assert {image["file_name"] for image in coco["images"]} == set(part["image_id"]) & set(ids[::3])
        assert len(coco["annotations"]) == len(coco["images"])
    assert {path: path.read_bytes() for path in source.rglob("*") if path.is_file()} == before
    with pytest.raises(SystemExit, match="exists"):
        split.main(source, tmp_path / "out")


def test_the_held_back_images_features_regions_and_paired_difference_are_read_as_named(monkeypatch, tmp_path):
    heads = analysis_script("held_back_heads", monkeypatch)
    store = tmp_path / "features"
    store.mkdir()
    for stem, value in (("aaa", 1.0), ("bbb", 2.0)):
        for k, ending in enumerate(("", "-mirror", "-zoomed70", "-zoomed70-mirror")):
            np.save(store / f"{stem}{ending}.npy", np.full(3, value + k / 10, np.float32))
    index = pd.DataFrame({"path": ["/x/IMG0000001.jpg", "/x/IMG0000002.jpg", "/k/IMG0000001.jpg"],  # a Kaggle copy
                          "dataset": ["FracAtlas", "FracAtlas", "Kaggle"],
                          "cache": ["/c/aaa.png", "/c/bbb.png", "/c/z.png"]})
    features = heads.held_features(["/held/IMG0000002.jpg", "/held/IMG0000001.jpg"], index, store)
    assert features.shape == (2, 4, 3)
    np.testing.assert_allclose(features[:, :, 0], [[2.0, 2.1, 2.2, 2.3], [1.0, 1.1, 1.2, 1.3]])
    held = tmp_path / "held"
    held.mkdir()
    pd.DataFrame({"image_id": ["IMG0000001.jpg", "IMG0000002.jpg", "IMG0000003.jpg"], "hand": [0, 1, 0],
                  "leg": [1, 1, 0], "hip": 0, "shoulder": 0, "mixed": 0, "hardware": [0, 1, 0]}).to_csv(
        held / "dataset.csv", index=False)
    pd.DataFrame({"path": ["/train/IMG0000009.jpg"], "fold_group": [0]}).to_csv(tmp_path / "folds.csv", index=False)
    external = pd.DataFrame({"path": ["/h/IMG0000003.jpg", "/h/IMG0000002.jpg", "/h/IMG0000001.jpg"],
                             "label": ["not_fractured", "fractured", "fractured"], "group": [7, 8, 9]})
    _, y, _, group, region, hardware = heads.described(external, tmp_path, held)  # as main reads the held-back part
    assert y.tolist() == [0, 1, 1] and group.tolist() == [7, 8, 9]
    assert region.tolist() == ["mixed", "mixed", "leg"] and hardware.tolist() == [False, True, False]
    y = np.array([1, 0] * 20)
    group = np.arange(40)  # each image a radiograph
    better, worse = y + np.linspace(0, 0.5, 40), np.random.default_rng(0).random(40)
    difference, (low, high) = heads.paired_difference(y, group, worse, better)
    assert difference == pytest.approx(1.0 - roc_auc_score(y, worse)) and low <= difference <= high and low > 0
    written = tmp_path / "external_predictions.csv"  # as the notebook writes it: `note` says why a row is left out
    pd.DataFrame({"path": [f"/h/IMG000000{k}.jpg" for k in range(5)], "group": [0, 1, 1, 2, 2],
                  "note": ["", "holds a copy of a training image", "holds a copy of a training image",
                           "label conflict", "label conflict"]}).to_csv(written, index=False)
    assert heads.scored_rows(pd.read_csv(written))["path"].tolist() == ["/h/IMG0000000.jpg"]
    with pytest.raises(SystemExit, match="no `note` column"):  # written by a notebook before 3.18
        heads.scored_rows(pd.read_csv(written).drop(columns="note"))


def test_the_classes_weigh_the_same_inside_each_region_and_each_region_keeps_its_share(monkeypatch):
    weights = analysis_script("region_weights", monkeypatch)
    y = np.array([1, 0, 0, 0, 1, 1, 0, 0, 0, 0])
    part = np.array(["hand"] * 4 + ["leg"] * 3 + ["hip"] * 3)  # the hips hold one class
    weight = weights.class_weights(y, part)
    assert weight.mean() == pytest.approx(1)
    for region, share in (("hand", 4), ("leg", 3)):
        inside = part == region
        assert weight[inside & (y == 1)].sum() == pytest.approx(weight[inside & (y == 0)].sum())
        assert weight[inside].sum() / weight.sum() == pytest.approx(share / 10)
    assert weight[part == "hip"] == pytest.approx(np.full(3, weight[part == "hip"][0]))
    assert weight[part == "hip"].sum() / weight.sum() == pytest.approx(0.3)
    overall = weights.class_weights(y, weights.strata_of("classes", part))
    assert overall[y == 1].sum() == pytest.approx(overall[y == 0].sum())
    assert weights.strata_of("none", part) is None


def test_a_weighed_regression_learns_from_the_rows_that_weigh(monkeypatch):
    """Made-up features where two thirds of the training images are labelled against their feature: trained on
    evenly, the regression ranks the other images backwards; those images weighed at (nearly) nothing, it ranks them
    by the feature."""
    heads_module = analysis_script("hed_heads", monkeypatch)
    rng = np.random.default_rng(5)
    y = (np.arange(200) % 2).astype(float)
    means = rng.normal(0, 0.3, (200, 3))
    means[:, 0] += np.where(np.arange(200) < 100, 1 - y, y)  # the first 100 labelled against feature 0
    train, test = np.arange(150), np.arange(150, 200)
    weight = np.where(np.arange(200) < 100, 1e-6, 1.0)
    kept = heads_module.mean_lr_probabilities(means, y, train, test, weight)
    even = heads_module.mean_lr_probabilities(means, y, train, test)
    assert roc_auc_score(y[test], kept) > 0.95 and roc_auc_score(y[test], even) < 0.1


def test_unweighed_views_score_as_the_unweighted_regression_and_weights_follow_their_images(monkeypatch):
    """Weighing every image 1 gives hed_heads' regression over the views to the last digit; weights that make the
    classes weigh the same inside each of two strata give what those weights, tiled view by view, give."""
    weights, views = analysis_script("region_weights", monkeypatch), analysis_script("view_patches", monkeypatch)
    heads_module = analysis_script("hed_heads", monkeypatch)
    rng = np.random.default_rng(11)
    count = 120
    y = (np.arange(count) % 4 == 0).astype(float)
    features = rng.normal(0, 1, (count, len(views.VIEWS), 6))
    features[:, :, 0] += y[:, None]
    unit, strata = np.arange(count) // 2, np.where(np.arange(count) < count // 2, "hand", "leg")
    per_view = {view: features[:, k] for k, view in enumerate(views.VIEWS)}
    plain = weights.weighed_probabilities(features, y, unit, None, seeds=(42,))[0]
    weighed = weights.weighed_probabilities(features, y, unit, strata, seeds=(42,))[0]
    folds = list(weights.StratifiedGroupKFold(5, shuffle=True, random_state=42).split(y, y, unit))
    for train, test in folds:
        expected = views.over_views(heads_module.mean_lr_probabilities, [per_view], y, train, test)
        np.testing.assert_allclose(plain[test], expected, rtol=1e-6)
        weight = np.ones(count)
        weight[train] = weights.class_weights(y[train], strata[train])
        stacked = np.concatenate([features[:, k] for k in range(len(views.VIEWS))])
        rows = [np.concatenate([part + k * count for k in range(len(views.VIEWS))]) for part in (train, test)]
        direct = heads_module.mean_lr_probabilities(stacked, np.tile(y, len(views.VIEWS)), *rows,
                                                    np.tile(weight, len(views.VIEWS)))
        np.testing.assert_allclose(weighed[test], direct.reshape(len(views.VIEWS), len(test)).mean(axis=0), rtol=1e-6)
    assert not np.allclose(plain, weighed)


@pytest.mark.parametrize(("backbone", "channels"), [
    ("efficientnet_lite0", [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320, 1280]),
    ("efficientnet_lite2", [16, 24, 24, 24, 48, 48, 48, 88, 88, 88, 88, 120, 120, 120, 120, 208, 208, 208, 208, 208,
                            352, 1280])])
def test_every_lite_block_is_the_notebook_s_trunk_and_the_pytorch_model_s_last_block_and_head(monkeypatch, backbone,
                                                                                           channels):
    """lite_layers.py runs the notebook's own cells for an EfficientNet-Lite: the trunk's last block's features are
    the PyTorch model's (tests/<backbone>_reference.json), and the network's last block and head are added with their
    weights from the file."""
    lite = analysis_script("lite_layers", monkeypatch)
    notebook = lite.notebook_lite()
    model = lite.every_block(notebook, backbone)
    assert lite.every_block(notebook, backbone).count_params() == model.count_params()  # the namespace is as it was
    image, reference = lite_reference(backbone)
    pooled = model.predict(np.repeat(image, 3, -1), verbose=0)
    means, maxima = pooled[: len(channels)], pooled[len(channels) :]
    assert [vector.shape[1] for vector in means] == [vector.shape[1] for vector in maxima] == channels
    assert all((top >= mean - 1e-6).all() and (top > mean).any() for mean, top in zip(means, maxima))
    last = len(channels) - 2  # the block the trunk leaves out
    np.testing.assert_allclose(pooled[last - 1][0], reference, atol=3e-4)  # of values up to 30
    state = notebook["torch_state_dict"](notebook["trunk_weights_file"](backbone))
    for layer, name in [("head", "_conv_head"), (f"block{last}_project", f"_blocks.{last}._project_conv")]:
        np.testing.assert_array_equal(model.get_layer(layer).get_weights()[0], state[f"{name}.weight"].transpose(2, 3,
                                                                                                                  1, 0))


def test_the_fine_tuned_stage_is_the_notebook_s_trunk_and_trains_its_convolutions_only(monkeypatch):
    """lite_fine_tune.py takes the notebook's Lite0 trunk as lite_trunk cuts it after block 11: the two parts compute
    the features the PyTorch model computes (tests/efficientnet_lite0_reference.json), at 320 px block 11's maps are
    10 x 10, and of the stage only the convolutions train (batch normalization kept)."""
    tune = analysis_script("lite_fine_tune", monkeypatch)
    lite = tune.notebook_lite()
    lower, stage = tune.lower_and_stage(lite)
    image, reference = lite_reference("efficientnet_lite0")
    pooled = tune.stage_blocks(lite)(lower.predict(np.repeat(image, 3, -1), verbose=0)).numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(pooled[0], reference, atol=3e-4)
    maps = lower.predict(np.random.default_rng(0).uniform(0, 255, (2, 320, 320, 3)).astype(np.float32), verbose=0)
    assert maps.shape == (2, 10, 10, 192)
    assert not stage.trainable_variables  # as the notebook builds it: frozen
    trained = {variable.path.split("/")[0] for variable in tune.stage_blocks(lite).trainable_variables}
    assert trained == {f"block{block}_{part}" for block in (12, 13, 14) for part in ("expand", "depthwise", "project")}


def test_fine_tuning_learns_from_the_maps_and_changes_what_the_frozen_model_scores(monkeypatch):
    """On made-up block-11 maps whose fractured images carry a brighter channel, the frozen model and the fine-tuned
    one both rank the scored images' fractures first, and fine-tuning moves their probabilities."""
    tune = analysis_script("lite_fine_tune", monkeypatch)
    built = []
    stage_blocks = tune.stage_blocks
    monkeypatch.setattr(tune, "stage_blocks", lambda lite: built.append(stage_blocks(lite)) or built[-1])
    rng = np.random.default_rng(1)
    y = np.array([1, 0] * 30)
    maps = rng.normal(0, 1, (60, 4, 3, 3, 192)).astype(np.float16)
    maps[y == 1, ..., :8] += 2.0
    frozen, tuned = tune.frozen_and_fine_tuned(maps[:40], y[:40], maps[40:], seed=3, epochs=2, rate=1e-3)
    assert frozen.shape == tuned.shape == (20,) and ((tuned >= 0) & (tuned <= 1)).all()
    assert roc_auc_score(y[40:], frozen) > 0.9 and roc_auc_score(y[40:], tuned) > 0.9
    assert np.abs(tuned - frozen).max() > 1e-3
    (stage,) = built
    trunk = tune.lower_and_stage(tune.notebook_lite())[1]
    for layer in ("block12_expand", "block14_project"):  # the stage's convolutions moved, its normalization did not
        assert not np.allclose(stage.get_layer(layer).get_weights()[0], trunk.get_layer(layer).get_weights()[0])
    for got, kept in zip(stage.get_layer("block13_depthwise_bn").get_weights(),
                         trunk.get_layer("block13_depthwise_bn").get_weights()):
        np.testing.assert_array_equal(got, kept)
    with pytest.raises(ValueError, match="40 images' maps but 20 labels"):  # another set's labels
        tune.frozen_and_fine_tuned(maps[:40], y[40:], maps[40:], seed=3)


def test_the_fine_tuning_script_reads_the_run_s_folds_the_held_back_copies_and_the_treated_marks(monkeypatch, tmp_path):
    tune = analysis_script("lite_fine_tune", monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"path": ["/t/IMG0000155.jpg", "/t/IMG0000155b.jpg", "/t/IMG0000300.jpg", "/k/0.jpg"],
                  "dataset": ["FracAtlas", "FracAtlas", "FracAtlas", "Kaggle"], "note": ["", "", "truncated", ""],
                  "cache": ["/c/a.png", "/c/a.png", "/c/b.png", "/c/k.png"], "label": "fractured",
                  "group": [0, 0, 1, 2]}).to_csv(run / "index.csv", index=False)
    pd.DataFrame({"path": ["/t/IMG0000155.jpg"], "fold_group": [5]}).to_csv(run / "folds.csv", index=False)
    pd.DataFrame({"path": ["/h/IMG0000156.jpg", "/h/IMG0000157.jpg"], "label": ["fractured", "not_fractured"],
                  "group": [0, 1], "note": ["", "holds a copy of a training image"]}).to_csv(
        run / "external_predictions.csv", index=False)
    pd.DataFrame({"path": ["/all/IMG0000156.jpg", "/all/IMG0000157.jpg"], "dataset": "FracAtlas",
                  "cache": ["/c/h1.png", "/c/h2.png"]}).to_csv(tmp_path / "cached.csv", index=False)
    training, held = tune.images(run, tmp_path / "cached.csv")
    assert training["cache"].tolist() == ["/c/a.png"]  # one copy, usable
    assert held["cache"].tolist() == ["/c/h1.png"]  # the copy of a training image left out
    fracatlas = tmp_path / "FracAtlas"
    fracatlas.mkdir()
    pd.DataFrame({"image_id": ["IMG0000155.jpg", "IMG0000156.jpg", "IMG0000158.jpg"], "hand": [1, 0, 1], "leg": 0,
                  "hip": 0, "shoulder": 0, "mixed": [0, 1, 0], "hardware": [0, 0, 1]}).to_csv(
        fracatlas / "dataset.csv", index=False)
    frame = pd.DataFrame({"path": ["/x/IMG0000155.jpg", "/x/IMG0000156.jpg", "/x/IMG0000158.jpg"],
                          "label": ["fractured", "not_fractured", "fractured"], "group": [4, 5, 6]})
    assert tune.described(training, run, fracatlas)["unit"].tolist() == [5]  # its fold unit, from folds.csv
    d = tune.described(frame, run, fracatlas)  # IMG0000155 and IMG0000156 in a cast (annotations/fracatlas_casts.csv)
    assert d["y"].tolist() == [1, 0, 1] and d["part"].tolist() == ["hand", "mixed", "hand"]
    assert d["treated"].tolist() == [True, True, True]
    frame = frame.assign(path=["/x/IMG0000001.jpg", "/x/IMG0000002.jpg", "/x/IMG0000158.jpg"])
    assert tune.described(frame, run, fracatlas)["treated"].tolist() == [False, False, True]  # not in dataset.csv


def test_the_fine_tuning_report_pairs_the_two_models_radiograph_by_radiograph(monkeypatch, capsys):
    tune = analysis_script("lite_fine_tune", monkeypatch)
    d = {"y": np.array([1, 1, 0, 0, 1, 0]), "group": np.array([0, 0, 1, 2, 3, 4]),
         "part": np.array(["hand"] * 4 + ["leg"] * 2), "treated": np.array([False, False, False, False, True, False])}
    frozen = np.array([0.2, 0.4, 0.5, 0.1, 0.9, 0.3])
    radiographs = tune.per_radiograph(d, frozen, frozen[::-1])
    assert radiographs["frozen"].tolist() == pytest.approx([0.3, 0.5, 0.1, 0.9, 0.3])  # radiograph 0's two images
    assert radiographs["treated"].tolist() == [False, False, False, True, False]
    figures = tune.radiograph_figures(radiographs, "frozen")
    assert figures[0] == roc_auc_score(radiographs["y"], radiographs["frozen"])
    untreated = radiographs[~radiographs["treated"]]  # the leg in a cast left out
    assert figures[2] == roc_auc_score(untreated["y"], untreated["frozen"]) != figures[0]
    many = {key: np.tile(value, 20) for key, value in d.items()} | {"group": np.arange(120)}
    tune.report("same", many, np.tile(frozen, 20), np.tile(frozen, 20), resamples=50)
    assert "fine-tuned less frozen +0.000 (+0.000 to +0.000) +0.000 (+0.000 to +0.000)" in capsys.readouterr().out
