"""Real-world inputs: odd but valid image forms load correctly; odd entries are reported, never fatal."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ODD_GOOD = ["train/fractured/sixteen_bit.png", "train/not_fractured/cmyk.jpg", "train/fractured/exif_rotated.jpg",
            "test/not_fractured/UPPER_CASE.JPG", "val/fractured/UPPER_CASE.PNG", "val/not_fractured/palette.png",
            "test/fractured/rgba.png", "train/fractured/scan.bmp", "train/not_fractured/scan.tiff",
            "train/not_fractured/gif_named.jpg", "train/not_fractured/large.jpg", "train/fractured/nested/inner.jpg"]


@pytest.fixture(scope="module")
def index(notebook_run, fixture):
    frame = pd.read_csv(notebook_run / "index.csv")
    frame["rel"] = frame["path"].map(fixture.key)
    return frame.set_index("rel")


@pytest.mark.parametrize("rel", ODD_GOOD)
def test_odd_but_valid_images_are_good(index, rel, metrics, notebook_run):
    assert rel in index.index
    size = metrics["parameters"]["img_size"]
    cache = index.at[rel, "cache"]
    assert Image.open(cache).size == (size, size)
    assert Path(cache).parent.parent == notebook_run.parent / "cache"  # shared by runs, outside the run's folder


def test_formats_and_modes_are_recorded(index):
    assert index.at["train/fractured/sixteen_bit.png", "mode"] == "I;16"
    assert index.at["train/not_fractured/cmyk.jpg", "mode"] == "CMYK"
    assert index.at["train/not_fractured/gif_named.jpg", "format"] == "GIF"
    assert index.at["train/not_fractured/large.jpg", "width"] == 3000


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    from nbhelpers import notebook_namespace

    return notebook_namespace(64, tmp_path_factory.mktemp("inputs"))


def generator_batch(nb, cache_path):
    """Load one cached image through the notebook's own batches, as training and evaluation read it."""
    frame = pd.DataFrame({"cache": [cache_path], "label": ["fractured"], "group": [0]})
    return nb["XrayBatches"](frame, 1, 1)[0][0][0, ..., 0]


def test_sixteen_bit_image_reaches_the_generator_with_its_contrast(nb, index):
    pixels = generator_batch(nb, index.at["train/fractured/sixteen_bit.png", "cache"]) / 255  # the model's scaling
    assert pixels.max() > 0.7 and pixels.min() < 0.3  # stretched over the 8-bit range
    assert 0.1 < pixels.mean() < 0.8 and pixels.std() > 0.08  # neither clipped to white nor crushed to black


def test_exif_rotated_image_is_trained_upright(nb, index, fixture, metrics):
    cached = np.asarray(Image.open(index.at["train/fractured/exif_rotated.jpg", "cache"]), dtype=float)
    size, fit = metrics["parameters"]["img_size"], metrics["parameters"]["fit"]  # as the run fitted its images

    def model_input(pixels):  # through the notebook's own resize
        return np.asarray(nb["to_model_size"](Image.fromarray(pixels), size, fit), float)

    upright = model_input(fixture.exif_upright)
    stored = model_input(np.rot90(fixture.exif_upright).copy())
    match_upright = np.corrcoef(cached.ravel(), upright.ravel())[0, 1]
    match_stored = np.corrcoef(cached.ravel(), stored.ravel())[0, 1]
    assert match_upright > 0.9 > match_stored


def test_alpha_image_is_composited_not_blanked(nb, index):
    pixels = generator_batch(nb, index.at["test/fractured/rgba.png", "cache"]) / 255
    assert pixels.std() > 0.05
