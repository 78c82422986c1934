"""Annotations in, stratified figures out: what a person saw in each radiograph (body part, modality, marks), the
checks of a bad table, and the body-part figures the default run on the fixture reports."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import failing_run
from fixture_data import build_fixture
from nbhelpers import notebook_namespace

HEADER = "sha256,file,body_part,modality,marks,exclude,note"
SHA = "a" * 64


@pytest.fixture(scope="module")
def nb(tmp_path_factory):
    return notebook_namespace(64, tmp_path_factory.mktemp("annotations"))


@pytest.fixture(scope="module")
def radiographs(notebook_run):
    return pd.read_csv(notebook_run / "radiographs.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def index(notebook_run):
    return pd.read_csv(notebook_run / "index.csv", keep_default_na=False)


def group_of(index, fixture, key):
    return int(index.loc[index["path"] == str(fixture.disk(key)), "group"].iloc[0])


def write(tmp_path, *rows, header=HEADER):
    path = tmp_path / "annotations.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(("row", "said"), [
    (f"{SHA[:63]},a.jpg,hand,xray,,0,", "is not 64 hexadecimal digits"),
    (f"{SHA},a.jpg,hand,x-ray,,0,", "modality 'x-ray' is not one of xray, ct, mri, other"),
    (f"{SHA},a.jpg,hand,xray,arrow+circle,0,", "marks 'circle' not among arrow, text, panels, hardware, cast"),
    (f"{SHA},a.jpg,hand,xray,,yes,", "exclude 'yes' is not 0 or 1"),
])
def test_a_bad_row_is_named_by_its_line_before_anything_is_read(nb, tmp_path, row, said):
    path = write(tmp_path, f"{'b' * 64},b.jpg,knee,xray,,0,", row)
    with pytest.raises(nb["DataError"]) as error:
        nb["read_annotations"](path)
    lines = str(error.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("line 3: ") and said in lines[1]  # one problem, named by line


def test_an_unknown_column_and_two_rows_that_disagree_about_one_file_are_refused(nb, tmp_path):
    with pytest.raises(nb["DataError"]) as unknown:
        nb["read_annotations"](write(tmp_path, f"{SHA},hand", header="sha256,bodypart"))
    assert "unknown column(s) 'bodypart'" in str(unknown.value)
    with pytest.raises(nb["DataError"]) as clash:
        nb["read_annotations"](write(tmp_path, f"{SHA},a.jpg,hand,xray,,0,", f"{'c' * 64},c.jpg,knee,xray,,0,",
                                     f"{SHA.upper()},a copy.jpg,wrist,xray,,0,"))
    assert "lines 2, 4: sha256 aaaaaaaaaaaaaaaa... is annotated differently" in str(clash.value)


def test_a_good_table_is_normalised_and_a_filled_in_radiographs_csv_is_read(nb, tmp_path):
    table = nb["read_annotations"](write(tmp_path, f" {SHA.upper()} ,a.jpg, Hand ,XRAY,hardware+arrow,,note",
                                         f"{SHA},a.jpg,hand,xray,arrow+hardware,0,the same again"))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["sha256"], row["body_part"], row["modality"], row["marks"], row["exclude"]) == (
        SHA, "hand", "xray", "arrow+hardware", 0)
    columns = ",".join(nb["RADIOGRAPH_COLUMNS"])
    filled = nb["read_annotations"](write(tmp_path, ",".join(
        {"sha256": SHA, "body_part": "knee", "exclude": "1"}.get(c, "") for c in nb["RADIOGRAPH_COLUMNS"]),
        header=columns))
    assert filled.iloc[0]["body_part"] == "knee" and filled.iloc[0]["exclude"] == 1


def test_a_missing_annotation_file_is_refused_unless_it_is_the_shipped_one(tmp_path):

    with pytest.raises(Exception, match="BONE_FRACTURE_ANNOTATIONS='nowhere.csv' is not valid"):
        notebook_namespace(64, tmp_path, ANNOTATIONS="nowhere.csv")
    nb = notebook_namespace(64, tmp_path, ANNOTATIONS=None)
    missing = str(tmp_path / "annotations" / "fracture_multi_region.csv")
    table, said = nb["load_annotations"](missing)
    assert table.empty and f"{missing} is not beside the notebook" in said and f"put {missing} from the" in said


def test_tables_fill_each_others_gaps_and_a_data_sets_own_may_describe_one_radiograph_twice(nb, tmp_path):
    """ANNOTATIONS names two tables, and a FracAtlas folder carries its dataset.csv: a radiograph (two FracAtlas
    files, IMG1 and IMG2, one film) takes its body part from the first table that gives one, every table's marks (a
    cast read in one table, hardware from dataset.csv); a later table's other body part
    does not stop the run, nor do dataset.csv's two rows that disagree (counted); every table's notes are kept, and
    one table's exclude excludes."""
    root = tmp_path / "FracAtlas"
    root.mkdir()
    (root / "dataset.csv").write_text("image_id,hand,leg,hip,shoulder,mixed,hardware,fractured\n"
                                      "IMG1.jpg,1,0,0,0,0,1,1\nIMG2.jpg,0,1,0,0,0,0,1\nIMG3.jpg,0,1,0,0,0,0,0\n")
    first = write(tmp_path, f"{SHA},elsewhere/IMG2.jpg,wrist,,,0,")
    second = first.with_name("casts.csv")
    second.write_text("sha256,file,body_part,marks,exclude,note\n,all/fractured/IMG1.jpg,forearm,cast,,splint\n"
                      ",all/not_fractured/IMG3.jpg,,,1,bracelet\n")
    annotations, said = nb["all_annotations"](f"{first}, {second}", {"FracAtlas": root})
    assert said.count(" rows from ") == 3 and "FracAtlas: 3 rows from its own" in said
    good = pd.DataFrame({"sha256": ["b" * 64, SHA, "c" * 64], "group": [0, 0, 1],
                         "place": ["all/fractured/IMG1.jpg", "all/fractured/IMG2.jpg", "all/not_fractured/IMG3.jpg"]})
    annotated, counts = nb["annotate_groups"](good, annotations)
    assert annotated.loc[0, ["body_part", "modality", "marks", "exclude", "note"]].tolist() == [
        "wrist", "xray", "hardware+cast", 0, "splint; projections:"]  # dataset.csv's note, its views (none here)
    assert annotated.loc[1, ["body_part", "marks", "exclude", "note"]].tolist() == [
        "leg", "", 1, "bracelet; projections:"]  # one table excludes it: excluded
    assert counts == {"by_sha256": 1, "by_place": 5, "unmatched": 0, "data_set_disagreements": 1}
    untreated = ~nb["has_mark"](annotated, nb["TREATED_MARKS"])
    assert untreated.tolist() == [False, True]


def test_the_shipped_tables_read_cleanly_and_mark_what_their_readme_counts(nb):
    """Both tables the notebook reads by default pass its checks; the FracAtlas one keys each image by its place
    (all/<class>/IMG<id>.jpg), once, and marks only casts: 93, of which 89 fractured (annotations/README.md)."""
    table, said = nb["load_annotations"](nb["SHIPPED_ANNOTATIONS"])
    assert said.count(" rows from ") == 2 and "not beside" not in said
    kaggle, casts = (table[table["source"] == path] for path in nb["SHIPPED_ANNOTATIONS"].split(","))
    assert len(kaggle) == 315 and kaggle["marks"].str.contains("cast").sum() == 12
    assert len(casts) == 2342 and casts["file"].is_unique and (casts["sha256"] == "").all()
    assert casts["file"].str.fullmatch(r"all/(fractured|not_fractured)/IMG\d{7}\.jpg").all()
    assert casts["file"].map(nb["published_place"]).equals(casts["file"])  # matched as the notebook lists FracAtlas
    assert set(casts["marks"]) == {"", "cast"} and (casts["body_part"] == "").all()
    marked = casts.loc[casts["marks"] == "cast", "file"].str.split("/").str[1]
    assert marked.value_counts().to_dict() == {"fractured": 89, "not_fractured": 4}


def test_copies_that_disagree_stop_the_run_before_training_naming_both_lines(tmp_path):
    data = build_fixture(tmp_path / "data", with_odd_forms=False)
    original, copy = next(sorted(pair) for pair, kind in data.dup_pairs.items() if kind == "near")
    digest = {key: hashlib.sha256(data.disk(key).read_bytes()).hexdigest() for key in (original, copy)}
    path = write(tmp_path, f"{digest[original]},a,knee,xray,,0,", f"{digest[copy]},b,foot,xray,,0,")
    output = tmp_path / "out"
    message = failing_run({"BONE_FRACTURE_DATA_DIR": str(data.folder), "BONE_FRACTURE_OUTPUT_DIR": str(output),
                           "BONE_FRACTURE_ANNOTATIONS": str(path)})
    assert "annotated differently by rows for copies of it" in message and "lines 2, 3" in message
    assert not list(output.rglob("model.keras")) and not list(output.rglob("history.csv"))


def test_radiographs_csv_has_one_row_per_group_with_its_annotation(radiographs, index, fixture, annotations):
    assert sorted(radiographs["group"]) == sorted(index["group"].unique())
    by_group = radiographs.set_index("group")
    for key, part in annotations.body_part.items():
        assert by_group.at[group_of(index, fixture, key), "body_part"] == part, key
    family = {group_of(index, fixture, key) for key in fixture.families[0]}
    assert len(family) == 1 and by_group.at[family.pop(), "body_part"] == "wrist"  # one file annotated them all
    annotated = {group_of(index, fixture, key) for key in annotations.body_part}
    assert (by_group.drop(index=list(annotated))["body_part"] == "").all()  # the others are left for a person
    assert set(by_group.loc[list(annotated), "sha256"]) <= set(index["sha256"])


def test_label_quality_comes_from_the_out_of_fold_probabilities(radiographs, index):
    scored = radiographs[radiographs["p_fractured"] != ""].astype({"p_fractured": float, "label_quality": float})
    assert len(scored) == index.loc[index["note"] == "", "group"].nunique()
    given = np.where(scored["label"] == "fractured", scored["p_fractured"], 1 - scored["p_fractured"])
    np.testing.assert_allclose(scored["label_quality"], given, atol=1e-6)  # cleanlab's self-confidence
    assert set(scored["label_issue"].astype(str)) <= {"True", "False"}


def test_the_excluded_radiograph_is_left_out_with_its_note(index, fixture, annotations, metrics):
    row = index[index["path"] == str(fixture.disk(annotations.excluded))].iloc[0]
    assert row["note"] == "excluded by annotation: not a radiograph" and row["fold"] == 0
    found = metrics["annotations"]
    assert found["groups_excluded"] == 1 and found["rows_matching_no_file"] == annotations.unmatched_rows
    assert found["groups_annotated"] == len(annotations.body_part) and found["rows"] == len(annotations.body_part) + 1


def test_a_row_whose_sha256_matches_no_file_is_matched_by_its_published_place(metrics, radiographs, index, fixture,
                                                                               annotations):
    """A copy of the set with other bytes (downsized, re-encoded) is still annotated: by split, class folder, name."""
    found = metrics["annotations"]
    assert found["rows_matched_by_place"] == 1
    assert found["rows_matched_by_sha256"] == found["rows"] - 1 - annotations.unmatched_rows
    group = group_of(index, fixture, annotations.by_place)
    assert radiographs.set_index("group").at[group, "body_part"] == annotations.body_part[annotations.by_place]


def test_body_parts_with_one_class_are_left_out_of_matching_and_said_so(metrics, radiographs):
    scored = radiographs[(radiographs["p_fractured"] != "") & (radiographs["body_part"] != "")]
    classes = scored.groupby("body_part")["label"].nunique()
    anatomy = metrics["anatomy"]
    assert sorted(anatomy["one_class_body_parts"]) == sorted(classes[classes == 1].index) and "spine" in classes.index
    assert anatomy["views"]["body-part-matched"]["strata"] == (classes == 2).sum() >= 2
    assert anatomy["views"]["body-part-matched"]["radiographs"] == scored["body_part"].isin(
        classes[classes == 2].index).sum()


def test_the_body_part_matched_figure_recomputes_from_radiographs_csv(metrics, radiographs):
    scored = radiographs[(radiographs["p_fractured"] != "") & (radiographs["body_part"] != "")].astype(
        {"p_fractured": float, "p_metadata": float})
    aucs, weights = [], []
    for _, part in scored.groupby("body_part"):
        if part["label"].nunique() == 2:
            y = part["label"] == "fractured"
            ranks = part["p_fractured"].rank()
            aucs.append((ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))
            weights.append(part["label"].value_counts().min())
    view = metrics["anatomy"]["views"]["body-part-matched"]["cnn"]
    assert view["roc_auc"] == pytest.approx(np.average(aucs, weights=weights))
    low, high = view["ci95"]
    assert 0 <= low <= high <= 1


def test_plain_radiographs_are_the_xray_ones_without_figure_marks(metrics, index, fixture, annotations):
    used = set(index.loc[index["note"] == "", "group"])
    plain = {group_of(index, fixture, key) for key in annotations.plain} & used
    assert metrics["anatomy"]["views"]["plain radiographs"]["radiographs"] == len(plain)


def test_without_hardware_or_cast_leaves_out_the_radiographs_in_a_cast(metrics, index, fixture, annotations):
    used = set(index.loc[index["note"] == "", "group"])
    treated = {group_of(index, fixture, key) for key in annotations.treated} & used
    views = metrics["anatomy"]["views"]
    assert treated and metrics["annotations"]["marks"]["cast"] == len(annotations.treated)
    assert views["without hardware or cast"]["radiographs"] == views["all radiographs"]["radiographs"] - len(treated)


def test_the_model_card_leads_with_the_most_controlled_figure_that_rests_on_enough_radiographs(notebook_run, metrics):
    """The fixture's matched views rest on a handful of annotated radiographs: the card says they are too few to
    judge and leads with the first view that has MIN_PER_CLASS radiographs of each class."""
    card = (notebook_run / "model_card.md").read_text()
    findings = card.split("**What this run shows**", 1)[1].split("\n- ")[1:]
    views = metrics["seeds"]["together"]
    order = ["body part and source matched", "without hardware or cast, body-part-matched", "body-part-matched",
             "source-matched", "all radiographs"]
    assert not views["body part and source matched"]["judged"] and views["all radiographs"]["judged"]
    leading = next(view for view in order if views[view]["judged"])
    assert min(views[leading]["per_class"].values()) >= 20
    assert f"({views[leading]['radiographs']} radiographs)" in findings[0] and "too few" not in findings[0]
    assert "Where anatomy and source are the same" in "".join(findings[1:5])
    said_too_few = [line for line in findings if "too few to judge" in line]
    assert len(said_too_few) == sum(not views[view]["judged"] for view in order)
    assert any("one class only, left out: " in line for line in findings)
    contract = json.loads((notebook_run / "model.json").read_text())["evaluation"]
    views = metrics["seeds"]["together"] or metrics["anatomy"]["views"]  # the seeds' ensemble: what is shipped
    assert contract["body_part_matched_roc_auc"] == views["body-part-matched"]["cnn"]["roc_auc"]


def test_the_gallery_shows_every_radiograph_once_in_pages_per_class(notebook_run, radiographs):
    for label, rows in radiographs.groupby("label"):
        pages = sorted(p.name for p in notebook_run.glob(f"gallery_{label}_*.png"))
        assert pages == [f"gallery_{label}_{n:02d}.png" for n in range(1, -(-len(rows) // 48) + 1)]
    assert (notebook_run / "label_issues.png").stat().st_size > 10_000
    assert (notebook_run / "body_part_roc_auc.png").stat().st_size > 10_000
