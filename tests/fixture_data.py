"""Build the tiny, deterministic fixture dataset the tests run the notebook on.

The fixture is laid out like the Kaggle archive as it unzips
(``<folder>/Bone_Fracture_Binary_Classification/Bone_Fracture_Binary_Classification/{train,val,test}/
{fractured,not fractured}/``: nested twice, a space in the negative class's folder), or like the renamed
copies some guides use (``<folder>/{train,val,test}/{fractured,not_fractured}/``), and is generated at
test time from a fixed seed, so nothing binary is committed. It holds:

* synthetic X-ray-like radiographs (a bright bone on soft tissue; the
  ``fractured`` class has a visible dark gap with a displaced fragment) in
  several sizes, modes and formats;
* planted bad files: a zero-byte ``.jpg``, a truncated JPEG, a text file
  named ``.png``, a broken symlink, and hidden/system files that must be
  skipped (``.DS_Store``, ``Thumbs.db``);
* planted duplicates: an exact copy, a re-encoded copy, a resized copy, a
  90-degree rotated copy, one image filed under both classes, and a family of
  copies rotated by arbitrary angles (once, twice, mirrored) with black corners,
  next to two look-alikes that are not copies;
* the odd-but-valid forms real folders hold: 16-bit PNG, CMYK JPEG, a JPEG
  with an EXIF orientation tag, upper-case extensions, palette and RGBA PNG,
  BMP, TIFF, a GIF behind a ``.jpg`` name, a large image and an image in a
  nested sub-folder.

``build_fixture`` returns a :class:`Fixture` describing what was planted, so
the tests assert against facts, not against the notebook's own output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image

SPLITS = ("train", "val", "test")
CLASSES = ("fractured", "not_fractured")
BASE_COUNTS = {"train": 16, "val": 6, "test": 6}
SEED = 1234
ARCHIVE = "Bone_Fracture_Binary_Classification/Bone_Fracture_Binary_Classification"  # as the Kaggle archive unzips
NEGATIVE = {"archive": "not fractured", "renamed": "not_fractured"}  # the negative class's folder in each layout


@dataclass
class Fixture:
    """What ``build_fixture`` wrote. Paths are keys relative to the split root, with the negative class's folder
    spelled ``not_fractured`` whatever its name on disk (``key`` maps a path on disk to its key)."""

    folder: Path  # what BONE_FRACTURE_DATA_DIR points at: the unzipped archive's folder
    root: Path  # the folder holding train/ val/ test/
    negative: str = "not_fractured"  # the negative class's folder name on disk
    bad: dict[str, str] = field(default_factory=dict)  # path -> kind of defect
    skipped: list[str] = field(default_factory=list)  # hidden / system files
    good: dict[str, str] = field(default_factory=dict)  # path -> label
    dup_pairs: dict[frozenset, str] = field(default_factory=dict)  # pair -> kind
    families: list[set[str]] = field(default_factory=list)  # rotated copies of one radiograph, source included
    look_alikes: tuple[str, str] = ("", "")  # two different radiographs with the same border and marker
    conflict: tuple[str, str] = ("", "")
    sixteen_bit: str = ""
    exif_rotated: str = ""
    exif_upright: np.ndarray | None = None

    def disk(self, key: str) -> Path:
        """Return the path on disk of a fixture key."""
        split, label, *rest = key.split("/")
        return self.root / split / (self.negative if label == "not_fractured" else label) / "/".join(rest)

    def key(self, path) -> str:
        """Return the fixture key of a path on disk (as the notebook reports it)."""
        split, label, *rest = str(path).removeprefix(f"{self.root}/").split("/")
        return "/".join([split, "not_fractured" if label == self.negative else label, *rest])

    def planted_groups(self) -> list[set[str]]:
        """Every planted set of copies of one radiograph: the duplicate pairs and the rotated families."""
        return [set(pair) for pair in self.dup_pairs] + self.families

    def leaked_share(self, split: str) -> float:
        """Share of the good images planted in published `split` that are copies of a train image."""
        copies = {path for group in self.planted_groups() if any(p.startswith("train/") for p in group)
                  for path in group if not path.startswith("train/")}
        in_split = [path for path in self.good if path.startswith(f"{split}/")]
        return sum(path in copies for path in in_split) / len(in_split)


def xray(rng: np.random.Generator, width: int, height: int, fractured: bool) -> np.ndarray:
    """Return an 8-bit greyscale array that looks like a plain radiograph.

    A long bone (bright cortex, slightly darker medulla) lies at a random angle
    over soft tissue made of a few random blurred blobs and film noise. A
    fractured bone is drawn as two fragments with a dark gap between them and
    the distal fragment displaced sideways.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    scale = min(width, height)
    tissue = np.full((height, width), 25.0, np.float32)
    for _ in range(rng.integers(3, 7)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        sigma = rng.uniform(0.15, 0.5) * scale
        tissue += rng.uniform(15, 60) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))

    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)], np.float32)
    normal = np.array([-direction[1], direction[0]], np.float32)
    centre = np.array([width, height], np.float32) / 2 + rng.uniform(-0.1, 0.1, 2) * scale
    half_length = rng.uniform(0.3, 0.45) * scale
    radius = rng.uniform(0.06, 0.1) * scale

    def bone(start: np.ndarray, end: np.ndarray) -> np.ndarray:
        seg = end - start
        t = ((xx - start[0]) * seg[0] + (yy - start[1]) * seg[1]) / float(seg @ seg)
        t = np.clip(t, 0, 1)
        dist = np.hypot(xx - (start[0] + t * seg[0]), yy - (start[1] + t * seg[1]))
        inside = np.clip(1 - (dist / radius) ** 2, 0, 1)
        cortex = np.exp(-(((dist - 0.8 * radius) / (0.18 * radius)) ** 2))
        return 110 * np.sqrt(inside) + 70 * cortex * (dist < radius)

    start, end = centre - half_length * direction, centre + half_length * direction
    if fractured:
        cut = rng.uniform(0.4, 0.6)
        gap = max(2.0, 0.05 * scale)
        shift = rng.choice([-1, 1]) * rng.uniform(0.4, 0.8) * radius * normal
        mid = start + cut * (end - start)
        image = np.maximum(bone(start, mid - gap / 2 * direction), bone(mid + gap / 2 * direction + shift, end + shift))
    else:
        image = bone(start, end)
    image = tissue + image + rng.normal(0, 6, (height, width))
    return np.clip(image, 0, 255).astype(np.uint8)


def _jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def build_fixture(folder: Path, with_odd_forms: bool = True, layout: str = "renamed") -> Fixture:
    """Write the fixture dataset under ``folder`` in the given layout ("archive" or "renamed") and describe it.

    ``with_odd_forms=False`` leaves out the odd-but-valid formats, for tests
    that need the plainest possible folder.
    """
    rng = np.random.default_rng(SEED)
    folder = Path(folder)
    fx = Fixture(folder=folder, root=folder / ARCHIVE if layout == "archive" else folder, negative=NEGATIVE[layout])

    def write(rel: str, data: bytes, label: str | None) -> str:
        path = fx.disk(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if label is not None:
            fx.good[rel] = label
        return rel

    def encode(array: np.ndarray, fmt: str, **options) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt, **options)
        return buffer.getvalue()

    def random_size() -> tuple[int, int]:
        return int(rng.integers(96, 320)), int(rng.integers(96, 320))

    # Base images: three encodings in turn, so sizes, modes and formats vary.
    base: dict[str, np.ndarray] = {}
    for split in SPLITS:
        for label in CLASSES:
            prefix = "f" if label == "fractured" else "n"
            for i in range(BASE_COUNTS[split]):
                array = xray(rng, *random_size(), fractured=label == "fractured")
                kind = i % 3
                if kind == 0:
                    rel = f"{split}/{label}/{prefix}_{i:03d}.png"
                    data = encode(array, "PNG")
                elif kind == 1:
                    rel = f"{split}/{label}/{prefix}_{i:03d}.jpg"
                    data = encode(array, "JPEG", quality=90)
                else:
                    rel = f"{split}/{label}/{prefix}_{i:03d}.jpeg"
                    data = encode(np.stack([array] * 3, -1), "JPEG", quality=90)
                base[write(rel, data, label)] = array

    # Planted duplicates of train images, one original each.
    original = "train/fractured/f_001.jpg"
    copy = write("test/fractured/exact_copy.jpg", fx.disk(original).read_bytes(), "fractured")
    fx.dup_pairs[frozenset((original, copy))] = "exact"

    original = "train/not_fractured/n_004.jpg"
    copy = write("val/not_fractured/reencoded.jpg", encode(base[original], "JPEG", quality=55), "not_fractured")
    fx.dup_pairs[frozenset((original, copy))] = "near"

    original = "train/not_fractured/n_007.jpg"
    h, w = base[original].shape
    smaller = Image.fromarray(base[original]).resize((int(w * 0.9), int(h * 0.9)), Image.Resampling.BILINEAR)
    copy = write("test/not_fractured/resized.jpg", _jpeg_bytes(smaller), "not_fractured")
    fx.dup_pairs[frozenset((original, copy))] = "near"

    original = "train/fractured/f_010.jpg"
    copy = write("val/fractured/rotated.jpg", encode(np.rot90(base[original]).copy(), "JPEG", quality=90), "fractured")
    fx.dup_pairs[frozenset((original, copy))] = "near"

    data = encode(xray(rng, *random_size(), fractured=True), "JPEG", quality=90)
    fx.conflict = (write("train/fractured/conflict.jpg", data, "fractured"),
                   write("train/not_fractured/conflict.jpg", data, "not_fractured"))
    fx.dup_pairs[frozenset(fx.conflict)] = "exact"

    _add_rotated_family(rng, fx, write, encode)

    # Planted bad files: never deleted, listed in corrupt_images.csv.
    fx.bad[write("train/fractured/empty.jpg", b"", None)] = "empty"
    whole = encode(xray(rng, 200, 240, fractured=False), "JPEG", quality=90)
    fx.bad[write("train/not_fractured/truncated.jpg", whole[: len(whole) * 2 // 3], None)] = "truncated"
    fx.bad[write("val/not_fractured/notes.png", b"radiology notes, not an image\n", None)] = "not an image"
    fx.skipped.append(write("test/fractured/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(64), None))
    fx.skipped.append(write("val/fractured/Thumbs.db", bytes(128), None))

    if with_odd_forms:
        _add_odd_forms(rng, fx, write, encode, random_size)
    return fx


def _add_odd_forms(rng, fx, write, encode, random_size) -> None:
    """Add the valid-but-unusual files real radiograph folders contain."""
    # 16-bit greyscale with a 12-bit range: naive conversion clips it to white.
    array = xray(rng, *random_size(), fractured=True).astype(np.uint16) * 16 + 1000
    fx.sixteen_bit = write("train/fractured/sixteen_bit.png", _save(Image.fromarray(array), "PNG"), "fractured")

    cmyk = Image.fromarray(xray(rng, *random_size(), fractured=False)).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=90)
    write("train/not_fractured/cmyk.jpg", buffer.getvalue(), "not_fractured")

    # Stored rotated by 90 degrees with EXIF Orientation 6 ("rotate 90 CW to view").
    upright = xray(rng, 160, 260, fractured=True)
    stored = Image.fromarray(np.rot90(upright, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    fx.exif_rotated = write("train/fractured/exif_rotated.jpg", buffer.getvalue(), "fractured")
    fx.exif_upright = upright

    write("test/not_fractured/UPPER_CASE.JPG", encode(xray(rng, *random_size(), False), "JPEG", quality=90),
          "not_fractured")
    write("val/fractured/UPPER_CASE.PNG", encode(xray(rng, *random_size(), True), "PNG"), "fractured")
    write("val/not_fractured/palette.png",
          _save(Image.fromarray(xray(rng, *random_size(), False)).convert("P"), "PNG"), "not_fractured")
    rgba = Image.fromarray(xray(rng, *random_size(), True)).convert("RGBA")
    write("test/fractured/rgba.png", _save(rgba, "PNG"), "fractured")
    write("train/fractured/scan.bmp", _save(Image.fromarray(xray(rng, *random_size(), True)), "BMP"), "fractured")
    write("train/not_fractured/scan.tiff", _save(Image.fromarray(xray(rng, *random_size(), False)), "TIFF"),
          "not_fractured")
    write("train/not_fractured/gif_named.jpg", _save(Image.fromarray(xray(rng, *random_size(), False)), "GIF"),
          "not_fractured")
    write("train/not_fractured/large.jpg", encode(xray(rng, 3000, 3000, False), "JPEG", quality=80),
          "not_fractured")
    write("train/fractured/nested/inner.jpg", encode(xray(rng, *random_size(), True), "JPEG", quality=90),
          "fractured")

    os.symlink(fx.disk("train/fractured/does_not_exist.jpg"), fx.disk("train/fractured/broken_link.jpg"))
    fx.bad["train/fractured/broken_link.jpg"] = "broken symlink"


def _add_rotated_family(rng, fx, write, encode) -> None:
    """Plant copies as the Kaggle set makes them, and two look-alikes that are not copies.

    The family: one radiograph, squashed to 224x224 and rotated about the centre by 7, 23 and 41 degrees,
    by 23 then 41, and mirrored then rotated by 300, each with black corners and re-encoded as JPEG. The
    look-alikes: two different radiographs with the same marker, rotated by the same angle (so the same
    black corners), filed under different labels.
    """
    source = xray(rng, 300, 220, fractured=True)
    square = Image.fromarray(source).resize((224, 224), Image.Resampling.BILINEAR)
    family = {write("train/fractured/family_source.png", encode(source, "PNG"), "fractured")}
    for rel, angles, mirror in [("val/fractured/family_rot7.jpg", [7], False),
                                ("test/fractured/family_rot23.jpg", [23], False),
                                ("train/fractured/family_rot41.jpg", [41], False),
                                ("test/fractured/family_rot23_41.jpg", [23, 41], False),
                                ("val/fractured/family_mirror_rot300.jpg", [300], True)]:
        image = square.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else square
        for angle in angles:
            image = image.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0)
        family.add(write(rel, _jpeg_bytes(image), "fractured"))
    fx.families.append(family)

    look_alikes = []
    for rel, label in [("train/fractured/lookalike_a.jpg", "fractured"), ("test/not_fractured/lookalike_b.jpg",
                                                                          "not_fractured")]:
        array = xray(rng, 224, 224, fractured=label == "fractured")
        array[40:70, 150:180] = 235  # the same bright marker box with a dark letter stroke
        array[45:65, 160:166] = 20
        look_alikes.append(write(rel, _jpeg_bytes(Image.fromarray(array).rotate(30, fillcolor=0)), label))
    fx.look_alikes = tuple(look_alikes)


def _save(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def snapshot(root: Path) -> dict[str, tuple]:
    """Map every entry under ``root`` to its bytes (or link target) and mode."""
    state = {}
    for path in sorted(Path(root).rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_file():
            state[rel] = ("file", path.read_bytes(), path.stat().st_mode)
        else:
            state[rel] = ("dir", path.stat().st_mode)
    return state


@dataclass
class FixtureAnnotations:
    """What ``write_annotations`` wrote: the table's path and the facts the tests check against."""

    path: Path
    body_part: dict[str, str]  # fixture key -> body part of every radiograph annotated (one file each)
    excluded: str  # the key of the one radiograph marked exclude
    family_file: str  # the one file of the rotated family that was annotated (it annotates the whole family)
    unmatched_rows: int  # rows that match no file of the fixture, by sha256 or published place
    by_place: str  # the key of the one radiograph whose row has another sha256 (a re-encoded copy's) and its place
    plain: set[str]  # keys of the radiographs annotated as plain radiographs (xray, no figure marks)
    treated: set[str]  # keys of the radiographs annotated with a cast (the table marks no hardware)


def write_annotations(fx: Fixture, path: Path) -> FixtureAnnotations:
    """Write an annotation table for the fixture: one row per independent radiograph outside the planted duplicates
    (body parts `hand` and `knee` hold both classes, `spine` only fractured MRI figures), one file of the rotated
    family (`wrist`), one radiograph marked exclude, one row whose sha256 is another copy's (matched by its `file`,
    the published place split/class folder/name) and one row that matches no file; some hands and knees wear a
    cast."""
    planted = {key for group in fx.planted_groups() for key in group} | set(fx.look_alikes) | set(fx.conflict)
    singles = sorted(key for key in fx.good if key not in planted)
    rows, body_part, plain, treated = [], {}, set(), set()
    spines = [key for key in singles if fx.good[key] == "fractured"][:2]
    excluded = [key for key in singles if fx.good[key] == "not_fractured"][-1]
    for n, key in enumerate(singles):
        part = "spine" if key in spines else "hand" if n % 2 else "knee"
        modality, marks = ("mri", "text") if part == "spine" else (
            "xray", "arrow" if n % 5 == 0 else "cast" if n % 7 == 3 else "")
        rows.append([key, part, modality, marks, int(key == excluded), "not a radiograph" * (key == excluded)])
        body_part[key] = part
        if modality == "xray" and marks in ("", "cast"):
            plain.add(key)
        if marks == "cast":
            treated.add(key)
    family_file = sorted(fx.families[0])[1]
    rows.append([family_file, "wrist", "xray", "", 0, "one file annotates its family"])
    body_part[family_file], unmatched = "wrist", 1
    by_place = singles[3]  # its row keys the bytes of a copy of the set that this fixture does not hold

    def sha256(key):
        data = fx.disk(key).read_bytes()
        return hashlib.sha256(data + b"another copy" * (key == by_place)).hexdigest()

    text = ["sha256,file,body_part,modality,marks,exclude,note"]
    text += [f"{sha256(key)},{fx.key(fx.disk(key)).replace('not_fractured', fx.negative)},{part},{modality},{marks},"
             f"{exclude},{note}" for key, part, modality, marks, exclude, note in rows]
    text.append(f"{'0' * 64},train/fractured/missing.jpg,knee,xray,,0,a radiograph of another copy of the set")
    path.write_text("\n".join(text) + "\n")
    return FixtureAnnotations(path, body_part, excluded, family_file, unmatched, by_place, plain | {family_file},
                              treated)


def build_learnable_fixture(folder: Path, per_class: int = 48, size: int = 96, layout: str = "renamed",
                            seed: int = 1) -> Path:
    """Write distinct synthetic radiographs that a network can learn to tell apart and return ``folder``: every image
    is a bone over soft tissue (``xray``) with a fine texture of its own (so that the audit's fine check tells them
    apart), and each fractured one also carries a bright band across it, a mark that rotation, shifts, zoom and
    flips keep. ``layout`` "renamed": ``folder/train/{fractured,not_fractured}/``;
    "fracatlas": FracAtlas's own, ``folder/FracAtlas/images/{Fractured,Non_fractured}/`` with its ``dataset.csv``
    (every third radiograph a hand, the others legs; every fourth with hardware) and the band of each fractured one
    outlined as its fracture in ``Annotations/COCO JSON/COCO_fracture_masks.json``."""
    rng = np.random.default_rng(SEED + seed)
    rows, table = np.arange(size)[:, None], ["image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,"
                                             "fracture_count,frontal,lateral,oblique"]
    coco = {"images": [], "annotations": [], "categories": [{"id": 0, "name": "fractured"}]}
    for label in CLASSES:
        for i in range(per_class):
            image = xray(rng, size, size, fractured=False).astype(np.float32)
            image += 75 * scipy.ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5)  # its own fine detail
            if label == "fractured":
                centre, half_width = rng.uniform(0.3, 0.7) * size, 0.06 * size
                image += 120 * (np.abs(rows - centre) < half_width)
            if layout == "fracatlas":
                name = f"IMG{seed:02d}{len(table):05d}.jpg"
                folder_name = "Fractured" if label == "fractured" else "Non_fractured"
                path = Path(folder) / "FracAtlas" / "images" / folder_name / name
                hand, hardware, fractured = int(i % 3 == 0), int(i % 4 == 0), int(label == "fractured")
                table.append(f"{name},{hand},{1 - hand},0,0,0,{hardware},0,{fractured},{fractured},1,0,0")
                if fractured:
                    coco["images"].append({"id": len(coco["images"]), "width": size, "height": size, "file_name": name})
                    coco["annotations"].append({"id": len(coco["annotations"]), "image_id": coco["images"][-1]["id"],
                                                "category_id": 0, "bbox": [0, centre - half_width, size,
                                                                           2 * half_width]})
            else:
                path = Path(folder) / "train" / label / f"{label[0]}_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=95)
    if layout == "fracatlas":
        (Path(folder) / "FracAtlas" / "dataset.csv").write_text("\n".join(table) + "\n")
        outlines = Path(folder) / "FracAtlas" / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
        outlines.parent.mkdir(parents=True, exist_ok=True)
        outlines.write_text(json.dumps(coco))
    return Path(folder)


def lite_reference(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference of the ``backbone`` EfficientNet-Lite (``<backbone>_reference.json``, written by its PyTorch
    model): the fixed image it was computed on, ``(row * 7 + column * 13) % 256`` at 64 x 64 px as a batch of one
    greyscale image, and the mean over the map of each channel of the trunk's last block (Lite0's block 14, 192
    channels; Lite2's block 19, 208)."""
    row, column = np.mgrid[0:64, 0:64]
    image = ((row * 7 + column * 13) % 256).astype(np.float32)[None, ..., None]
    reference = json.loads((Path(__file__).parent / f"{backbone}_reference.json").read_text())
    return image, np.array(reference["mean_over_map"])
