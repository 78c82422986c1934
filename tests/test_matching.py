"""The notebook's duplicate matching on real radiographs: rotated copies linked, look-alikes kept apart.

`real_families/` holds 42 real files of the Kaggle set in 7 families of rotated copies, with look-alikes
across families (see its README). The notebook's own functions are run on them.
"""

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nbhelpers import notebook_namespace

FAMILIES = Path(__file__).resolve().parent / "real_families"
SAME_RADIOGRAPH = {frozenset({"not_fractured/29", "not_fractured/46"})}  # filed twice: a link is correct


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("matching"))


@pytest.fixture(scope="module")
def real(nb):
    truth = pd.read_csv(FAMILIES / "families.csv")
    records = pd.DataFrame([nb["inspect_image"](str(FAMILIES / name)) for name in truth["file"]])
    assert records["reason"].isna().all()
    return records.assign(family=truth["family"], label=truth["label"], original_split="train")


def may_link(family_a, family_b):
    return family_a == family_b or frozenset({family_a, family_b}) in SAME_RADIOGRAPH


def test_verification_separates_copies_from_look_alikes_on_every_pair(nb, real):
    distinct = real.drop_duplicates("sha1").reset_index(drop=True)
    spectra = np.fft.rfft(np.stack(distinct["signature"].to_list()), axis=2)
    every_pair = np.array(list(combinations(range(len(distinct)), 2)))
    scores = nb["verify_pairs"](spectra, every_pair)["similarity"].to_numpy()
    same = np.array([distinct.at[a, "family"] == distinct.at[b, "family"] for a, b in every_pair])
    allowed = np.array([may_link(distinct.at[a, "family"], distinct.at[b, "family"]) for a, b in every_pair])
    threshold = nb["NEAR_DUP_SIMILARITY"]
    assert scores[same].min() >= threshold  # every rotated copy verified, whatever its angles
    assert scores[~allowed].max() < threshold - 0.03  # look-alikes fall well short of the threshold


def test_candidate_search_and_verification_give_one_group_per_radiograph(nb, real):
    distinct = real.drop_duplicates("sha1").reset_index(drop=True)
    verified = nb["verified_candidates"](distinct, nb["NEAR_DUP_CANDIDATES"])
    linked = verified[verified["similarity"] >= nb["NEAR_DUP_SIMILARITY"]]
    groups = real.assign(group=nb["duplicate_groups"](real, nb["duplicate_pairs"](real, distinct, linked)))
    assert (groups.groupby("family")["group"].nunique() == 1).all()  # no family is split
    for _, members in groups.groupby("group"):
        families = set(members["family"])
        assert len(families) == 1 or frozenset(families) in SAME_RADIOGRAPH, families


def test_the_angle_found_undoes_the_rotation(nb, tmp_path):
    rng = np.random.default_rng(0)
    from fixture_data import xray
    from PIL import Image

    source = Image.fromarray(xray(rng, 224, 224, fractured=True))
    turned = source.rotate(37, Image.Resampling.BILINEAR, fillcolor=0)
    mirrored = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(-20, Image.Resampling.BILINEAR, fillcolor=0)
    signatures = np.stack([nb["disc_signature"](image) for image in (source, turned, mirrored)])
    found = nb["verify_pairs"](np.fft.rfft(signatures, axis=2), np.array([[0, 1], [0, 2]]))
    assert (found["similarity"] > 0.98).all()
    assert list(found["mirrored"]) == [False, True]
    assert min(abs(found.at[0, "angle"] - 37), abs(found.at[0, "angle"] - (360 - 37))) <= 2
