"""Splitting and deciding: grouped folds and the single split keep duplicate groups whole, the loss weights balance
groups and classes as the settings say, and the threshold is the highest reaching the target sensitivity.

The notebook's parameters, setup and definitions cells are executed (see nbhelpers.py), so these tests exercise the
same functions the notebook runs, not copies. The threshold the fixture run chose is checked in test_audit.py.
"""

import numpy as np
import pandas as pd
import pytest
from nbhelpers import notebook_namespace


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("folds"))


def grouped_frame(groups, seed=0):
    """A table of images in `groups` duplicate groups of 1 to 5 images, a third of the groups fractured."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups), rng.integers(1, 6, groups))
    return pd.DataFrame({"group": group, "label": np.where(group % 3 == 0, "fractured", "not_fractured"),
                         "fold_group": group})


def no_group_on_two_sides(parts):
    sides = [set(part["group"]) for part in parts.values()]
    return not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


@pytest.mark.parametrize(("target", "expected"), [(0.5, 0.8), (0.75, 0.4), (1.0, 0.3)])
def test_threshold_is_the_highest_reaching_the_target_sensitivity(nb, target, expected):
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.05])
    table = pd.DataFrame({"label": np.where(y == 1, "fractured", "not_fractured"), "p": p})
    table = table.sample(frac=1, random_state=0)  # the order of the rows does not matter
    threshold = nb["threshold_for_sensitivity"](table, "p", target)
    assert threshold == pytest.approx(expected)
    assert (p[y == 1] >= threshold).mean() >= target
    assert (p[y == 1] > threshold).mean() < target  # anything higher misses the target


def test_the_rates_at_a_threshold_count_it_as_fractured(nb):
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    table = pd.DataFrame({"label": np.where(y == 1, "fractured", "not_fractured"),
                          "p": [0.9, 0.8, 0.4, 0.3, 0.7, 0.2, 0.1, 0.05]})
    found = nb["prediction_scores"](table, "p", 0.4)
    assert [found[name] for name in ("sensitivity", "specificity", "accuracy", "precision")] == [0.75] * 4
    assert list(nb["decide"]([0.4, 0.39], 0.4)) == ["fractured", "not_fractured"]


def test_fold_groups_join_radiographs_of_one_block_of_fracatlas_ids_and_their_copies_elsewhere(nb):
    frame = pd.DataFrame({
        "path": ["a/IMG0000021.jpg", "a/IMG0000025.jpg", "a/IMG0000039.jpg", "a/IMG0000040.jpg",
                 "kaggle/IMG0000040.jpg", "kaggle/91-rotated1.jpg", "kaggle/5.png", "kaggle/6.png"],
        "group": [0, 1, 2, 3, 3, 4, 5, 5]})
    unit = nb["fold_groups"](frame, 20).to_list()
    assert unit[0] == unit[1] == unit[2]  # ids 21, 25 and 39: block 1 of 20 ids, three radiographs
    assert unit[3] == unit[4] and unit[3] != unit[0]  # id 40 opens block 2; the Kaggle copy follows its radiograph
    assert unit[6] == unit[7] and len({unit[3], unit[5], unit[6]}) == 3  # other files: their radiograph alone
    alone = nb["fold_groups"](frame, 0).to_list()
    assert len(set(alone)) == 6 and alone[3] == alone[4]  # ID_BLOCK=0: the radiographs as the audit found them
    blocks = pd.DataFrame({"path": [f"IMG{i:07d}.jpg" for i in range(400)], "group": range(400),
                           "label": np.where(np.arange(400) % 40 < 8, "fractured", "not_fractured")})
    blocks["fold_group"] = nb["fold_groups"](blocks, 20)
    blocks["fold"] = nb["grouped_folds"](blocks, 5, seed=0)
    assert blocks["fold_group"].nunique() == 20
    assert (blocks.groupby(np.arange(400) // 20)["fold"].nunique() == 1).all()  # every block in one fold


def test_the_bootstrap_draws_whole_fold_units_so_one_patient_s_views_are_drawn_together(nb):
    radiographs = pd.DataFrame({"group": range(6), "fold_group": [0, 0, 0, 1, 2, 2],  # unit 0: three radiographs
                                "label": ["fractured", "not_fractured"] * 3})

    def drawn(part):  # how often radiographs 0 and 2 were drawn, less radiograph 1's; and unit 2's two members'
        count = part["group"].value_counts().reindex(range(6), fill_value=0)
        return [count[0] - count[1], count[2] - count[1], count[4] - count[5], count[0]]

    (first, second, third, units) = nb["bootstrap"](radiographs, drawn, 200, seed=0)
    assert first == second == third == [0, 0]  # a unit's radiographs are drawn together or not at all
    assert units[0] == 0 and units[1] >= 2  # unit 0 is left out of some draws and drawn twice or more in others
    radiographs["fold_group"] = radiographs["group"]  # each radiograph its own unit: drawn alone
    assert nb["bootstrap"](radiographs, drawn, 200, seed=0)[0] != [0, 0]


def test_single_split_never_cuts_a_group_and_follows_the_fractions(nb):
    frame = grouped_frame(300)
    parts = nb["single_split"](frame, [0.7, 0.15, 0.15], seed=0)
    assert sum(len(part) for part in parts.values()) == len(frame)
    assert no_group_on_two_sides(parts)
    shares = {name: len(part) / len(frame) for name, part in parts.items()}
    assert shares["train"] == pytest.approx(0.7, abs=0.03) and shares["test"] == pytest.approx(0.15, abs=0.03)
    again = nb["single_split"](frame, [0.7, 0.15, 0.15], seed=0)
    assert all(parts[name].index.equals(again[name].index) for name in parts)
    other = nb["single_split"](frame, [0.5, 0.25, 0.25], seed=0)
    assert len(other["test"]) / len(frame) == pytest.approx(0.25, abs=0.04)


def test_fold_assignment_keeps_groups_whole_stratified_seeded_and_repeatable(nb):
    frame = grouped_frame(200)
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
        assert no_group_on_two_sides(parts)
        assert 0.15 < len(parts["val"]) / len(frame) < 0.25


def weighted_frame():
    """Images of radiographs (groups of 1 to 3 copies) in three annotated body parts and none: hands of both classes
    (fractured the minority), knees of both, spines all fractured, and unannotated radiographs of both classes."""
    rows = []
    for group, (part, label, copies) in enumerate(
            [("hand", "fractured", 1)] + [("hand", "not_fractured", n) for n in (1, 2, 3)]
            + [("knee", "fractured", 2), ("knee", "fractured", 1), ("knee", "not_fractured", 1)]
            + [("spine", "fractured", 3), ("spine", "fractured", 1)]
            + [(None, "fractured", 1), (None, "not_fractured", 2), (None, "not_fractured", 1)]):
        rows += [{"group": group, "label": label, "body_part": part, "dataset": "kaggle"}] * copies
    return pd.DataFrame(rows)


def per_radiograph_weight(frame, weights):
    """The weight each radiograph gets (every image of it carries the same one), with its label and body part."""
    table = frame.assign(weight=weights)
    assert (table.groupby("group")["weight"].nunique() == 1).all()  # copies share their radiograph's weight
    return table.drop_duplicates("group").set_index("group")


def test_body_part_balance_weighs_the_classes_alike_inside_each_body_part_and_one_class_parts_not_at_all(nb):
    frame = weighted_frame()
    radiographs = per_radiograph_weight(frame, nb["balanced_weights"](frame, "body_part", "radiograph"))
    weighing = radiographs[radiographs["weight"] > 0]
    assert weighing["weight"].mean() == pytest.approx(1)  # mean 1 over the radiographs that weigh
    assert (radiographs.loc[radiographs["body_part"] == "spine", "weight"] == 0).all()  # it teaches the picture
    for part in ("hand", "knee"):
        per_class = radiographs[radiographs["body_part"] == part].groupby("label")["weight"].sum()
        assert per_class["fractured"] == pytest.approx(per_class["not_fractured"], rel=1e-5), part
    unannotated = radiographs[radiographs["body_part"].isna()].groupby("label")["weight"].sum()
    assert unannotated["fractured"] == pytest.approx(unannotated["not_fractured"], rel=1e-5)  # kept, balanced
    hands = radiographs[radiographs["body_part"] == "hand"]
    assert hands.groupby("label")["weight"].nunique().tolist() == [1, 1]  # copies do not add weight


def test_class_balance_weighs_the_classes_alike_overall_and_every_radiograph_counts(nb):
    frame = weighted_frame()
    radiographs = per_radiograph_weight(frame, nb["balanced_weights"](frame, "class", "radiograph"))
    assert (radiographs["weight"] > 0).all() and radiographs["weight"].mean() == pytest.approx(1)
    per_class = radiographs.groupby("label")["weight"].sum()
    assert per_class["fractured"] == pytest.approx(per_class["not_fractured"], rel=1e-5)
    assert radiographs.groupby("label")["weight"].nunique().tolist() == [1, 1]


def test_the_classes_weigh_the_same_inside_each_data_set_which_keeps_its_share(nb):
    """A set mostly fractured and a set mostly not: weighed over both, the set would say the class; weighed inside
    each, it says nothing, and each set weighs as many radiographs as it holds."""
    rows = [{"group": g, "label": "fractured" if g % 4 == 0 else "not_fractured", "dataset": "clinical"}
            for g in range(40)]
    rows += [{"group": 40 + g, "label": "not_fractured" if g % 5 == 0 else "fractured", "dataset": "web"}
             for g in range(20)]
    frame = pd.DataFrame(rows).assign(body_part=None)
    radiographs = per_radiograph_weight(frame, nb["balanced_weights"](frame, "class", "radiograph"))
    assert radiographs["weight"].mean() == pytest.approx(1)
    per_set = radiographs.groupby(["dataset", "label"])["weight"].sum().unstack()
    assert per_set["fractured"].to_numpy() == pytest.approx(per_set["not_fractured"].to_numpy(), rel=1e-5)
    assert per_set.sum(axis=1).to_dict() == pytest.approx({"clinical": 40, "web": 20}, rel=1e-5)
    one_set = frame.assign(dataset="pooled")  # the same radiographs as one data set: the classes over all
    pooled = per_radiograph_weight(one_set, nb["balanced_weights"](one_set, "class", "radiograph"))
    assert pooled.groupby("label")["weight"].sum().nunique() == 1
    assert not np.allclose(pooled["weight"], radiographs["weight"])


def test_body_part_balance_falls_back_to_the_classes_when_no_body_part_holds_both(nb):
    frame = weighted_frame()
    frame = frame[frame["body_part"].isin(["spine"]) | (frame["label"] == "not_fractured")].assign(body_part="spine")
    frame.loc[frame["label"] == "not_fractured", "body_part"] = "knee"  # each body part one class: nothing to learn
    weights = nb["balanced_weights"](frame, "body_part", "radiograph")
    np.testing.assert_allclose(weights, nb["balanced_weights"](frame, "class", "radiograph"))
    assert (weights > 0).all()


def test_image_balance_weighs_the_classes_alike_over_images_as_an_epoch_of_every_image_shows_them(nb):
    frame = weighted_frame()
    weights = pd.Series(nb["balanced_weights"](frame, "class", "image"), index=frame.index)
    per_class = weights.groupby(frame["label"]).sum()
    assert per_class["fractured"] == pytest.approx(per_class["not_fractured"], rel=1e-5)
    assert weights.mean() == pytest.approx(1) and weights.groupby(frame["label"]).nunique().tolist() == [1, 1]
    np.testing.assert_allclose(nb["validation_weights"](frame, "class", "image"), weights.to_numpy(), rtol=1e-6)


def test_validation_weights_count_each_radiograph_once_however_many_copies(nb):
    frame = weighted_frame()
    weights = nb["validation_weights"](frame, "class", "radiograph")
    per_group = pd.Series(weights, index=frame.index).groupby(frame["group"]).sum()
    expected = per_radiograph_weight(frame, nb["balanced_weights"](frame, "class", "radiograph"))["weight"]
    np.testing.assert_allclose(per_group / per_group.mean(), expected / expected.mean(), rtol=1e-5)
    assert weights.mean() == pytest.approx(1)


def test_plain_training_keeps_the_plain_radiographs_and_refuses_a_part_left_with_one_class(nb):
    frame = grouped_frame(30).assign(modality="xray", marks="")
    frame.loc[frame["group"] % 5 == 0, "marks"] = "arrow+hardware"  # a teaching figure
    frame.loc[frame["group"] % 7 == 0, "modality"] = "mri"
    frame.loc[frame["group"] == 29, "modality"] = np.nan  # not annotated: not known to be plain
    parts = {"train": frame[frame["group"] < 20], "val": frame[frame["group"] >= 20], "test": frame.iloc[:0]}
    everything = nb["training_parts"](parts, "all", 1)
    assert all(everything[name].equals(parts[name]) for name in ("train", "val"))
    plain = nb["training_parts"](parts, "plain", 1)
    for name in ("train", "val"):
        kept = set(plain[name]["group"])
        assert kept == {g for g in parts[name]["group"] if g % 5 and g % 7 and g != 29}, name
        assert len(plain[name]) == parts[name]["group"].isin(kept).sum()  # every copy of a kept radiograph
    figures_only = {**parts, "val": parts["val"].assign(modality="ct")}
    with pytest.raises(nb["DataError"], match="TRAIN_ON=plain leaves fold 3 with .* BONE_FRACTURE_TRAIN_ON=all"):
        nb["training_parts"](figures_only, "plain", 3)


def test_validation_by_radiograph_watches_at_most_views_images_of_each_drawn_once(nb):
    frame = grouped_frame(40)
    watched = nb["views_per_radiograph"](frame, 2, 5)
    counts = watched.groupby("group").size()
    expected = frame.groupby("group").size().clip(upper=2)
    assert counts.equals(expected) and watched.index.is_monotonic_increasing
    same, other = nb["views_per_radiograph"](frame, 2, 5), nb["views_per_radiograph"](frame, 2, 6)
    assert watched.equals(same) and not watched.equals(other)
