"""Reading one image: what is unusable is reported, never fatal; what is usable is decoded upright to 8-bit
greyscale, hashed, signed for the duplicate audit and cached at the model's size, fitted as FIT says.

The notebook's parameters, setup and definitions cells are executed (see nbhelpers.py), so these tests exercise the
same functions the notebook runs, not copies.
"""

import dataclasses
import hashlib

import numpy as np
import pytest
from nbhelpers import notebook_namespace
from PIL import Image


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("image-loading"))


def write_image(path, array, fmt="PNG"):
    Image.fromarray(array).save(path, fmt)
    return str(path)


def test_unreadable_file_is_reported_not_fatal(nb, tmp_path, monkeypatch):
    path = write_image(tmp_path / "locked.png", np.zeros((20, 20), np.uint8))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(nb["Image"], "open", refuse)  # root can read any file, so refuse at the open call
    record = nb["inspect_image"](path, nb["settings"], tmp_path / "cache")
    assert record["reason"] == "unreadable" and "Permission denied" in record["detail"]
    assert "sha1" not in record and not (tmp_path / "cache").exists()


def test_image_over_the_pixel_limit_is_reported_without_decoding(nb, tmp_path, monkeypatch):
    path = write_image(tmp_path / "big.png", np.zeros((200, 300), np.uint8))
    monkeypatch.setattr(nb["Image"].Image, "load", lambda self: pytest.fail("a too large image was decoded"))
    record, image = nb["read_image"](path, 0.05)
    assert record["reason"] == "too large" and "300x200 exceeds MAX_MEGAPIXELS=0.05" in record["detail"]
    assert image is None and (record["width"], record["height"]) == (300, 200)
    monkeypatch.undo()
    record, image = nb["read_image"](path, 0.07)  # 0.06 megapixels: under this limit, decoded
    assert record["reason"] is None and image.size == (300, 200)


@pytest.mark.parametrize(("content", "reason"), [(b"", "empty file"), (b"not an image\n", "not an image")])
def test_an_empty_file_and_a_text_file_are_reported_by_reason(nb, tmp_path, content, reason):
    path = tmp_path / "scan.png"
    path.write_bytes(content)
    record, image = nb["read_image"](path, 200)
    assert record["reason"] == reason and image is None


def test_good_image_is_hashed_signed_and_cached_at_the_settings_size(nb, tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (90, 120), dtype=np.uint8)
    path = write_image(tmp_path / "ok.png", array)
    settings = dataclasses.replace(nb["settings"], img_size=48)
    record = nb["inspect_image"](path, settings, tmp_path / "cache")
    assert record["reason"] is None
    assert (record["width"], record["height"]) == (120, 90)
    assert record["sha256"] == hashlib.sha256((tmp_path / "ok.png").read_bytes()).hexdigest()  # the file's bytes
    assert len(record["sha1"]) == 40
    assert record["signature"].shape == (nb["RINGS"], nb["ANGLES"])
    assert np.linalg.norm(record["signature"]) == pytest.approx(1, abs=1e-5)
    cached = Image.open(record["cache"])
    assert cached.size == (48, 48) and record["cache"].startswith(str(tmp_path / "cache"))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(nb["to_model_size"](Image.fromarray(array), 48,
                                                                                     settings.fit)))


def test_the_cache_folder_is_shared_in_the_output_folder_and_keyed_by_size_and_fit(nb, tmp_path):
    folder = nb["cache_folder"](tmp_path, 64, "squash")
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("64px-")
    assert nb["cache_folder"](tmp_path, 64, "squash") == folder  # the same inputs: the same folder, for every run
    others = {nb["cache_folder"](tmp_path, 64, "pad"), nb["cache_folder"](tmp_path, 96, "squash")}
    assert folder not in others and len(others) == 2


@pytest.mark.parametrize("size", [(120, 60), (30, 90), (64, 64), (300, 299)])
def test_the_model_input_is_stretched_when_squashed_and_keeps_the_aspect_ratio_when_padded(nb, size):
    image = Image.new("L", size, 200)  # a bright image: the model input is bright exactly where it lies
    assert (np.asarray(nb["to_model_size"](image, 64, "squash")) == 200).all()  # stretched over the whole square
    square = np.asarray(nb["to_model_size"](image, 64, "pad"))
    assert square.shape == (64, 64)
    left, top, right, bottom = Image.fromarray(square).getbbox()
    assert (square[top:bottom, left:right] == 200).all()
    padding = np.ones_like(square, bool)
    padding[top:bottom, left:right] = False
    assert (square[padding] == 0).all()  # the rest is black padding
    assert (right - left) / (bottom - top) == pytest.approx(size[0] / size[1], rel=0.05)
    assert max(right - left, bottom - top) == 64


def test_the_model_input_is_greyscale_0_255_at_the_size_asked(nb):
    image = Image.fromarray(np.arange(0, 250, 2, dtype=np.uint8).reshape(5, 25))
    pixels = nb["model_input"](image, 40, "squash")
    assert pixels.shape == (40, 40, 1) and pixels.dtype == np.float32
    assert 0 <= pixels.min() < 10 and 240 < pixels.max() <= 255  # not scaled to 0-1: the model does that itself


def test_flat_sixteen_bit_image_does_not_divide_by_zero(nb):
    flat = Image.fromarray(np.full((10, 10), 3000, np.uint16))
    grey = nb["to_grey8"](flat)
    assert grey.mode == "L" and np.asarray(grey).max() == 0


def test_sixteen_bit_image_is_stretched_over_the_eight_bit_range(nb):
    ramp = Image.fromarray(np.arange(100, dtype=np.uint16).reshape(10, 10) * 16 + 1000)
    grey = np.asarray(nb["to_grey8"](ramp))
    assert grey.min() == 0 and grey.max() == 255 and (np.diff(grey.ravel().astype(int)) >= 0).all()
