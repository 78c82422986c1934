"""The analysis scripts under docs/analysis measure what docs/results.md reports: their pieces that place the
fracture outlines, cut the maps into windows and score patches are checked here on small made-up inputs."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from nbhelpers import notebook_namespace
from sklearn.metrics import roc_auc_score

SCRIPT = Path(__file__).resolve().parent.parent / "docs" / "analysis" / "hed_heads.py"


@pytest.fixture(scope="module")
def heads():
    spec = importlib.util.spec_from_file_location("hed_heads", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
