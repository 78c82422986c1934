"""The batches training and evaluation read: the same input prediction makes, labels and weights in row order, and
augmentation that depends on the seed and the epoch only, never on which thread builds a batch.

The notebook's parameters, setup and definitions cells are executed (see nbhelpers.py), so these tests exercise the
same functions the notebook runs, not copies.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from conftest import tta_views_of
from nbhelpers import notebook_namespace
from PIL import Image


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("batches"))


def write_image(path, array):
    Image.fromarray(array).save(path, "PNG")
    return str(path)


def test_prediction_input_equals_what_the_training_batches_feed(nb, tmp_path):
    rng = np.random.default_rng(2)
    array = (rng.integers(0, 4000, (150, 110)) + 500).astype(np.uint16)  # 16-bit, odd size
    path = write_image(tmp_path / "scan16.png", array)
    settings = nb["settings"]
    record = nb["inspect_image"](path, settings, tmp_path / "cache")
    frame = pd.DataFrame({"cache": [record["cache"]], "label": ["fractured"], "group": [0]})
    fed = nb["XrayBatches"](frame, 1, 1)[0][0][0]
    assert fed.shape == (settings.img_size, settings.img_size, 1) and fed.max() > 1  # 0-255: the model scales it
    image, size, fit = nb["load_xray"](path), settings.img_size, settings.fit
    np.testing.assert_allclose(nb["model_input"](image, size, fit), fed, atol=1e-6)
    other = "pad" if fit == "squash" else "squash"
    assert not np.allclose(nb["model_input"](image, size, other), fed)  # the fit matters on this image


def test_batches_carry_one_hot_labels_and_the_weights_given_in_row_order(nb, tmp_path):
    rng = np.random.default_rng(4)
    paths = [write_image(tmp_path / f"x{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8)) for i in range(5)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured", "not_fractured", "not_fractured", "fractured",
                                                    "fractured"], "group": range(5)})
    weights = np.array([0.5, 1.0, 1.5, 2.0, 2.5], np.float32)
    batches = nb["XrayBatches"](frame, 2, 1, weights=weights)
    assert len(batches) == 3
    pixels, labels, given = batches[1]
    np.testing.assert_array_equal(labels, [[0, 1], [1, 0]])  # rows 2 and 3, columns in CLASSES order
    np.testing.assert_array_equal(given, weights[2:4])
    np.testing.assert_array_equal(pixels[0, ..., 0], np.asarray(Image.open(paths[2]), np.float32))
    assert len(batches[2][0]) == 1  # the last batch holds the rest
    assert len(nb["XrayBatches"](frame, 2, 1)[0]) == 2  # without weights: (pixels, labels)


def test_training_batches_do_not_depend_on_which_thread_builds_them(nb, tmp_path):
    """Augmented batches built by 8 threads at once equal the same batches built one by one, every time."""
    rng = np.random.default_rng(3)
    paths = [write_image(tmp_path / f"x{i}.png", rng.integers(0, 255, (40, 40), dtype=np.uint8)) for i in range(64)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured", "not_fractured"] * 32, "group": range(64)})

    def training_batches(seed=5):
        return nb["XrayBatches"](frame, 2, 8, augment=True, seed=seed)

    one_by_one = training_batches()
    expected = [one_by_one[i][0] for i in range(len(one_by_one))]
    assert not np.array_equal(expected[0][0], expected[1][0])  # augmentation differs from image to image
    for _ in range(10):
        batches = training_batches()
        with ThreadPoolExecutor(8) as pool:
            built = list(pool.map(lambda i, b=batches: b[i][0], range(len(batches))))
        for want, got in zip(expected, built):
            np.testing.assert_array_equal(want, got)
    assert not np.array_equal(training_batches(seed=6)[0][0], expected[0])  # another seed, other batches
    batches.on_epoch_end()  # a new epoch: a new order and new transforms
    assert not np.array_equal(batches[0][0], expected[0])


def test_evaluation_batches_are_neither_augmented_nor_reordered(nb, tmp_path):
    rng = np.random.default_rng(6)
    paths = [write_image(tmp_path / f"x{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8)) for i in range(6)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured"] * 6, "group": [0, 0, 1, 2, 2, 2]})
    batches = nb["XrayBatches"](frame, 4, 2)
    first = np.concatenate([batches[i][0] for i in range(len(batches))])
    batches.on_epoch_end()
    again = np.concatenate([batches[i][0] for i in range(len(batches))])
    expected = np.stack([np.asarray(Image.open(path), np.float32)[..., None] for path in paths])
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected)


def test_an_epoch_draws_the_same_number_of_views_of_every_radiograph(nb, tmp_path):
    groups = [0] * 6 + [1] + [2, 2]  # a radiograph with six copies, one alone, one with two
    paths = [write_image(tmp_path / f"x{i}.png", np.full((8, 8), i, np.uint8)) for i in range(len(groups))]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured"] * 7 + ["not_fractured"] * 2, "group": groups})
    batches = nb["XrayBatches"](frame, 4, 1, augment=True, seed=3, views=3)
    orders = []
    for _ in range(3):  # three epochs
        assert len(batches) == 3  # 3 radiographs x 3 views, in batches of 4
        labels = np.concatenate([batches[i][1] for i in range(len(batches))])
        assert labels[:, 0].sum() == 6 and labels[:, 1].sum() == 3  # 3 views of each, whatever its copies
        assert sorted(pd.Series([groups[row] for row in batches.order]).value_counts().tolist()) == [3, 3, 3]
        orders.append(list(batches.order))
        batches.on_epoch_end()
    assert orders[0] != orders[1] or orders[1] != orders[2]  # each epoch drawn anew
    plain = nb["XrayBatches"](frame, 4, 1, views=3)  # without augmentation: every image once, views or not
    assert sum(len(plain[i][1]) for i in range(len(plain))) == len(frame)


def test_image_batches_show_the_view_asked_for(nb, tmp_path):
    array = np.random.default_rng(8).integers(0, 255, (16, 16), dtype=np.uint8)
    frame = pd.DataFrame({"cache": [write_image(tmp_path / "x.png", array)], "label": ["fractured"], "group": [0]})
    seen = {view: nb["XrayBatches"](frame, 1, 1, shown=(view,))[0][0][0, ..., 0] for view in nb["TTA_VIEWS"]}
    np.testing.assert_array_equal(seen["image"], array)
    np.testing.assert_array_equal(seen["mirror"], array[:, ::-1])
    for view, expected in zip(nb["TTA_VIEWS"], tta_views_of(array[None, ..., None].astype(np.float32))):
        np.testing.assert_array_equal(seen[view], expected[0, ..., 0])


class Unchanged:
    """Stands in for the notebook's AUGMENTING: draws nothing, changes nothing."""

    def get_random_transform(self, shape, seed):
        return {}

    def apply_transform(self, pixels, transform):
        return pixels


def test_augmented_batches_show_each_image_as_one_of_the_views_drawn_at_random(nb, tmp_path, monkeypatch):
    monkeypatch.setitem(nb, "AUGMENTING", Unchanged())
    array = np.random.default_rng(9).integers(0, 255, (16, 16), dtype=np.uint8)
    frame = pd.DataFrame({"cache": [write_image(tmp_path / "x.png", array)] * 40, "label": ["fractured"] * 40,
                          "group": range(40)})
    views = {view: nb["seen_as"](array[..., None].astype(np.float32), view) for view in nb["TTA_VIEWS"]}
    shown = nb["XrayBatches"](frame, 40, 1, augment=True, seed=2, shown=nb["TTA_VIEWS"])[0][0]
    drawn = [next(view for view, pixels in views.items() if np.array_equal(pixels, image)) for image in shown]
    assert min(drawn.count(view) for view in views) >= 4  # each of the four, for some of the 40
    plain = nb["XrayBatches"](frame, 40, 1, augment=True, seed=2)[0][0]  # without TTA: the image alone
    assert all(np.array_equal(image, views["image"]) for image in plain)


def test_a_standardizing_cnn_ignores_brightness_and_contrast_and_reloads_as_saved(nb, tmp_path):
    """STANDARDIZE: the same prediction for an image and a brighter, flatter copy of it (not so without it), and
    the saved model, first layer included, predicts the same after loading."""
    import keras

    rng = np.random.default_rng(4)
    image = rng.uniform(20, 200, (4, 64, 64, 1)).astype(np.float32)
    flatter = 0.5 * image + 60  # brighter and lower in contrast, still inside 0-255
    keras.utils.set_random_seed(3)
    standardizing = nb["build_model"](64)  # the default
    np.testing.assert_allclose(standardizing(flatter, training=False), standardizing(image, training=False),
                               atol=1e-4)
    plain = nb["build_model"](64, standardize=False)
    assert not np.allclose(plain(flatter, training=False), plain(image, training=False), atol=1e-4)
    standardizing.save(tmp_path / "standardizing.keras")
    loaded = keras.saving.load_model(tmp_path / "standardizing.keras")
    assert loaded.layers[0].name == "standardize"
    np.testing.assert_allclose(loaded.predict(image, verbose=0), standardizing.predict(image, verbose=0), atol=1e-6)


def test_a_further_seeds_fold_is_summed_up_in_one_line_naming_the_epoch_kept(nb):
    history = pd.DataFrame({"loss": [0.9, 0.7, 0.6], "val_loss": [0.8, 0.5, 0.65], "val_roc_auc": [0.6, 0.75, 0.7],
                            "seconds": [10.2, 9.9, 10.1], "fold": 2, "epoch": [1, 2, 3], "kept": [False, True, False]})
    assert nb["fold_line"](2, history) == ("fold 2: 3 epochs in 30 s, kept epoch 2 (val loss 0.500, val ROC-AUC 0.750 "
                                            "per image)")
    last = history.assign(kept=[False, False, True])  # a frozen trunk's head keeps its last epoch
    assert nb["fold_line"](2, last).endswith("kept epoch 3 (val loss 0.650, val ROC-AUC 0.700 per image)")


def test_the_cnn_is_returned_with_the_weights_of_the_epoch_its_history_marks_as_kept(nb, tmp_path):
    """The CNN is early-stopped (PATIENCE=1) on images that teach nothing about the validation labels, and returned
    with the weights of its lowest validation loss, not its last epoch's: the epoch `kept` marks."""
    import dataclasses

    import tensorflow as tf

    rng = np.random.default_rng(8)
    paths = [write_image(tmp_path / f"n{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8)) for i in range(48)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured", "not_fractured"] * 24, "group": range(48),
                          "dataset": "made-up"})
    parts = {"train": frame[:32], "val": frame[32:], "test": frame[32:]}
    settings = dataclasses.replace(nb["settings"], backbone="cnn", tta=False, epochs=6, patience=1,
                                   learning_rate=0.05, workers=1)
    model, history = nb["train_fold"](1, parts, settings, tf.distribute.get_strategy(), 8, 0, False)
    kept = int(history["val_loss"].idxmin())
    assert history["kept"].tolist() == [row == kept for row in range(len(history))]
    assert kept != len(history) - 1  # so the last epoch's weights would differ
    p = nb["predict_fractured"](model, parts["val"], 8, 1)
    weights = nb["validation_weights"](parts["val"], settings.balance, "radiograph")
    loss = nb["validation_loss"](nb["compiled"](model, 1, 1, 1e-3), parts["val"], p, weights)
    assert loss == pytest.approx(history["val_loss"].iloc[kept], rel=1e-4)


def test_the_validation_loss_from_one_prediction_equals_keras_own_validation_pass(nb, tmp_path):
    """Early stopping watches validation_loss, computed from the epoch's one prediction of the validation images:
    it must be the weighted loss Keras's evaluate gives on the same batches and weights."""
    import keras

    rng = np.random.default_rng(6)
    paths = [write_image(tmp_path / f"v{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8)) for i in range(7)]
    frame = pd.DataFrame({"cache": paths, "label": ["fractured", "not_fractured"] * 3 + ["fractured"],
                          "group": [0, 1, 1, 2, 3, 3, 3], "dataset": "made-up"})
    weights = nb["validation_weights"](frame, "class", "radiograph")
    keras.utils.set_random_seed(5)
    model = nb["compiled"](nb["build_model"](64), 1, 2, 1e-3)
    p = nb["predict_fractured"](model, frame, 3, 1)
    expected = model.evaluate(nb["XrayBatches"](frame, 3, 1, weights=weights), verbose=0)
    assert nb["validation_loss"](model, frame, p, weights) == pytest.approx(expected, rel=1e-5)
    assert nb["validation_loss"](model, frame, p, np.ones(7, np.float32)) != pytest.approx(expected, rel=1e-3)
