"""The notebook's duplicate matching: rotated and mirrored copies linked, look-alikes and flat images kept apart.

`real_families/` holds 42 real files of the Kaggle set in 7 families of rotated copies, with look-alikes
across families (see its README). The notebook's own functions are run on them, and on synthetic images.
"""

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixture_data import xray
from nbhelpers import notebook_namespace
from PIL import Image

FAMILIES = Path(__file__).resolve().parent / "real_families"
SAME_RADIOGRAPH = {frozenset({"not_fractured/29", "not_fractured/46"})}  # filed twice: a link is correct


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("matching"))


@pytest.fixture(scope="module")
def settings(nb):
    return nb["settings"]


def inspect(nb, path, cache):
    """The notebook's integrity check of one file, as a run with the default settings makes it."""
    return nb["inspect_image"](str(path), nb["settings"], cache)


@pytest.fixture(scope="module")
def real(nb, tmp_path_factory):
    truth = pd.read_csv(FAMILIES / "families.csv")
    cache = tmp_path_factory.mktemp("cache")
    records = pd.DataFrame([inspect(nb, FAMILIES / name, cache) for name in truth["file"]])
    assert records["reason"].isna().all()
    return records.assign(family=truth["family"], label=truth["label"], original_split="train")


def may_link(family_a, family_b):
    return family_a == family_b or frozenset({family_a, family_b}) in SAME_RADIOGRAPH


def test_verification_separates_copies_from_look_alikes_on_every_pair(nb, settings, real):
    """Every pair of rotated copies passes the coarse gate and the fine check; look-alikes (same layout, markers and
    black corners) fall well short of the fine check, whatever their coarse score."""
    distinct = real.drop_duplicates("sha1").reset_index(drop=True)
    spectra = np.fft.rfft(np.stack(distinct["signature"].to_list()), axis=2)
    every_pair = np.array(list(combinations(range(len(distinct)), 2)))
    coarse = nb["verify_pairs"](spectra, every_pair)["similarity"].to_numpy()
    detail = nb["fine_similarity"](np.stack(distinct["fine"].to_list()), distinct[["width", "height"]].to_numpy(),
                                   every_pair)
    same = np.array([distinct.at[a, "family"] == distinct.at[b, "family"] for a, b in every_pair])
    allowed = np.array([may_link(distinct.at[a, "family"], distinct.at[b, "family"]) for a, b in every_pair])
    assert coarse[same].min() >= settings.near_dup_similarity  # every rotated copy gets the fine check
    assert detail[same].min() >= settings.near_dup_detail  # and passes it, whatever its angles
    assert detail[~allowed].max() < settings.near_dup_detail - 0.3  # look-alikes fall far short of it


def test_candidate_search_and_verification_give_one_group_per_radiograph(nb, settings, real):
    distinct, _, linked = nb["linked_copies"](real, settings)
    groups = real.assign(group=nb["duplicate_groups"](real, nb["duplicate_pairs"](real, distinct, linked)))
    assert (groups.groupby("family")["group"].nunique() == 1).all()  # no family is split
    for _, members in groups.groupby("group"):
        families = set(members["family"])
        assert len(families) == 1 or frozenset(families) in SAME_RADIOGRAPH, families


def test_the_angle_found_undoes_the_rotation(nb, tmp_path):
    rng = np.random.default_rng(0)
    source = Image.fromarray(xray(rng, 224, 224, fractured=True))
    turned = source.rotate(37, Image.Resampling.BILINEAR, fillcolor=0)
    mirrored = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(-20, Image.Resampling.BILINEAR, fillcolor=0)
    signatures = np.stack([nb["disc_signature"](image) for image in (source, turned, mirrored)])
    found = nb["verify_pairs"](np.fft.rfft(signatures, axis=2), np.array([[0, 1], [0, 2]]))
    assert (found["similarity"] > 0.98).all()
    assert list(found["mirrored"]) == [False, True]
    assert min(abs(found.at[0, "angle"] - 37), abs(found.at[0, "angle"] - (360 - 37))) <= 2


def write_image(path, array, fmt="PNG"):
    Image.fromarray(array).save(path, fmt)
    return path


def test_same_pixels_in_another_format_hash_alike_and_a_quarter_turn_is_a_near_copy(nb, tmp_path):
    array = np.random.default_rng(1).integers(0, 255, (80, 100), dtype=np.uint8)
    png = inspect(nb, write_image(tmp_path / "a.png", array), tmp_path / "cache")
    bmp = inspect(nb, write_image(tmp_path / "a.bmp", array, "BMP"), tmp_path / "cache")
    turned = inspect(nb, write_image(tmp_path / "b.png", np.rot90(array).copy()), tmp_path / "cache")
    assert png["sha1"] == bmp["sha1"] != turned["sha1"]  # pixels, not files: one cached copy for both
    assert png["sha256"] != bmp["sha256"] and png["cache"] == bmp["cache"]
    spectra = np.fft.rfft(np.stack([png["signature"], turned["signature"]]), axis=2)
    found = nb["verify_pairs"](spectra, np.array([[0, 1]]))
    assert found.at[0, "similarity"] > 0.98 and found.at[0, "angle"] in (90.0, 270.0)


def test_a_flat_image_is_linked_to_nothing(nb):
    flat = nb["disc_signature"](Image.new("L", (50, 50), 128))
    other = nb["disc_signature"](Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 50), dtype=np.uint8)))
    found = nb["verify_pairs"](np.fft.rfft(np.stack([flat, other]), axis=2), np.array([[0, 1]]))
    assert abs(found.at[0, "similarity"]) < 1e-3
