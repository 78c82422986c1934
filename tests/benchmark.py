"""Measure the notebook's speed on this machine: integrity check, input pipeline, training, inference.

Usage (not part of the default test run)::

    .venv/bin/python tests/benchmark.py --images 200 --out artifacts/benchmark.json

It generates N synthetic radiographs of realistic sizes (300-2,000 px, mixed modes and formats) in a
temporary folder and measures, in one run:

* ``integrity_img_per_s``: the notebook's ``inspect_image`` (verify, full decode, hashes, cache) on
  ``settings.workers`` threads, and on one thread;
* ``pipeline_img_per_s``: augmented training batches from the notebook's ``XrayBatches``, built on
  ``settings.workers`` threads as Keras does, and on one;
* ``model_train_img_per_s`` and ``inference_img_per_s`` of the notebook's own ``build_model`` (training
  steps on in-memory batches), and ``fit_img_per_s``: ``model.fit`` on the augmenting batches, end to
  end, with ``settings.workers`` threads building batches and with one;
* ``reference_train_img_per_s`` of a seed-style CNN (three Conv 32/64/128 + MaxPool + BatchNorm blocks,
  Flatten, Dense 128, Dropout, Dense 2 softmax), on the same input;
* with ``--accuracy-epochs E``, both models trained E epochs on the generated images through the
  notebook's pipeline, with their best validation accuracy.

* with ``--audit-images N``, the integrity check plus duplicate audit on N generated images shaped like
  the Kaggle set (91 % rotated 224x224 copies of few sources, with black corners).

The notebook's functions are taken from the notebook itself (its ``parameters``, ``setup`` and
``definitions`` cells, see ``nbhelpers.py``) and given what they use as arguments, from the notebook's checked
``settings`` (its defaults, or the ``BONE_FRACTURE_*`` variables set) with ``--img-size`` and ``--batch-size``.
Each figure is the median of ``--repeats`` timed repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_data import xray  # the fixture's synthetic radiograph
from nbhelpers import notebook_namespace


def reference_model(img_size: int, channels: int = 1):
    """The seed-style CNN most public notebooks for this dataset train (about 11 M parameters at 224 px)."""
    import keras

    layers = [keras.Input((img_size, img_size, channels))]
    for filters in (32, 64, 128):
        layers += [keras.layers.Conv2D(filters, 3, activation="relu"), keras.layers.MaxPooling2D(),
                   keras.layers.BatchNormalization()]
    layers += [keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"), keras.layers.Dropout(0.5),
               keras.layers.Dense(2, activation="softmax")]
    model = keras.Sequential(layers, name="reference_cnn")
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def generate_images(folder: Path, count: int, seed: int) -> list[tuple[Path, str]]:
    """Write `count` synthetic radiographs, 300-2,000 px, as 8-bit and 16-bit PNG, grey and RGB JPEG."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        label = "fractured" if i % 2 == 0 else "not_fractured"
        width, height = (int(v) for v in rng.integers(300, 2001, 2))
        small = xray(rng, max(64, width // 4), max(64, height // 4), fractured=label == "fractured").astype(float)
        small += 75 * scipy.ndimage.gaussian_filter(rng.normal(0, 1, small.shape), 1.5)  # a texture of its own
        image = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                Image.Resampling.BILINEAR)
        kind = i % 4
        path = folder / label / f"{i:05d}.{'png' if kind in (0, 3) else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        if kind == 0:
            image.save(buffer, "PNG")
        elif kind == 1:
            image.save(buffer, "JPEG", quality=90)
        elif kind == 2:
            image.convert("RGB").save(buffer, "JPEG", quality=90)
        else:
            Image.fromarray(np.asarray(image).astype(np.uint16) * 200).save(buffer, "PNG")
        path.write_bytes(buffer.getvalue())
        files.append((path, label))
    return files


def timed(function, repeats: int) -> float:
    """Run `function` once to warm up, then `repeats` times; return the median seconds."""
    function()
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic images to generate")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON file to write")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-batches", type=int, default=6, help="batches per timed training repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--audit-images", type=int, default=0,
                        help="also time integrity check + duplicate audit on a Kaggle-shaped set of this size")
    parser.add_argument("--accuracy-epochs", type=int, default=0, help="also compare validation accuracy")
    parser.add_argument("--keep", action="store_true", help="keep the generated images and caches")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bone-fracture-benchmark-"))
    ns = notebook_namespace(args.img_size, work / "output")
    settings = ns["settings"]
    import pandas as pd
    import tensorflow as tf

    print(f"Generating {args.images} images in {work} ...", flush=True)
    files = generate_images(work / "images", args.images, seed=0)
    paths = [str(p) for p, _ in files]
    workers = settings.workers
    result: dict = {"images": args.images, "img_size": args.img_size, "batch_size": args.batch_size,
                    "workers": workers, "repeats": args.repeats}

    def integrity(threads: int) -> float:
        def run() -> None:
            cache = Path(tempfile.mkdtemp(dir=work))  # fresh cache: every repeat writes every copy
            with ThreadPoolExecutor(threads) as pool:
                records = list(pool.map(lambda path: ns["inspect_image"](path, settings, cache), paths))
            assert all(r["reason"] is None for r in records), [r for r in records if r["reason"]][:1]
        return args.images / timed(run, args.repeats)

    result["integrity_img_per_s"] = integrity(workers)
    result["integrity_1_thread_img_per_s"] = integrity(1)

    records = [ns["inspect_image"](p, settings, work / "cache") for p in paths]
    frame = pd.DataFrame({"cache": [r["cache"] for r in records], "label": [label for _, label in files],
                          "group": range(len(records))})  # every generated image a radiograph of its own

    def training_batches(threads: int):
        return ns["XrayBatches"](frame, args.batch_size, threads, augment=True)  # batches built on `threads`

    def pipeline(threads: int) -> float:
        batches = training_batches(threads)

        def run() -> None:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(batches.__getitem__, range(len(batches))))
        return len(frame) / timed(run, args.repeats)

    result["pipeline_img_per_s"] = pipeline(workers)
    result["pipeline_1_thread_img_per_s"] = pipeline(1)

    x, y = training_batches(1)[0]
    x = np.concatenate([x] * (args.batch_size // len(x) + 1))[: args.batch_size]
    y = np.concatenate([y] * (args.batch_size // len(y) + 1))[: args.batch_size]

    def train_speed(model) -> float:
        def run() -> None:
            for _ in range(args.train_batches):
                model.train_on_batch(x, y)
        return args.train_batches * args.batch_size / timed(run, args.repeats)

    model = ns["compiled"](ns["build_model"](args.img_size), max(1, args.train_batches), 1, settings.learning_rate)
    reference = reference_model(args.img_size)
    result["model_parameters"] = int(model.count_params())
    result["reference_parameters"] = int(reference.count_params())
    result["model_train_img_per_s"] = train_speed(model)
    result["reference_train_img_per_s"] = train_speed(reference)
    result["inference_img_per_s"] = args.train_batches * args.batch_size / timed(
        lambda: [model.predict_on_batch(x) for _ in range(args.train_batches)], args.repeats)
    result["speedup_vs_reference"] = result["model_train_img_per_s"] / result["reference_train_img_per_s"]

    def fit_speed(threads: int) -> float:
        training = training_batches(threads)  # the notebook's training batches
        return len(frame) / timed(lambda: model.fit(training, epochs=1, verbose=0), args.repeats)

    result["fit_img_per_s"] = fit_speed(workers)  # end to end: augmenting pipeline and training together
    result["fit_1_worker_img_per_s"] = fit_speed(1)
    if args.audit_images:
        result.update(audit_speed(ns, work / "rotated", args.audit_images))

    if args.accuracy_epochs:
        result.update(compare_accuracy(ns, frame, args))

    result["machine"] = {"cores": os.cpu_count(), "tensorflow": tf.__version__, "python": platform.python_version(),
                         "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"Wrote {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def compare_accuracy(ns: dict, frame, args) -> dict:
    """Train both models on the same generated images with the notebook's pipeline; best val accuracy."""
    import keras

    settings = ns["settings"]
    shuffled = frame.sample(frac=1, random_state=0).reset_index(drop=True)
    cut = int(len(shuffled) * 0.75)
    steps = max(1, -(-cut // args.batch_size))
    outcome = {}
    for name, build in [("model", lambda: ns["compiled"](ns["build_model"](args.img_size), steps, args.accuracy_epochs,
                                                        settings.learning_rate)),
                        ("reference", lambda: reference_model(args.img_size))]:
        keras.utils.set_random_seed(0)
        train = ns["XrayBatches"](shuffled[:cut], args.batch_size, settings.workers, augment=True)
        val = ns["XrayBatches"](shuffled[cut:], args.batch_size, settings.workers)
        network = build()
        start = time.perf_counter()
        history = network.fit(train, validation_data=val, epochs=args.accuracy_epochs, verbose=0)
        outcome[f"{name}_val_accuracy"] = max(history.history["val_accuracy"])
        outcome[f"{name}_fit_seconds"] = time.perf_counter() - start
    return outcome


def generate_rotated_set(folder: Path, count: int, seed: int) -> list[Path]:
    """Write a set shaped like the Kaggle one.

    91 % are 224x224 copies of 1 % of sources, squashed to a square and rotated by arbitrary angles (up to
    three times) with black corners; the rest are originals of any size.
    """
    rng = np.random.default_rng(seed)
    copies = int(count * 0.91)
    sources = [Image.fromarray(xray(rng, *(int(v) for v in rng.integers(200, 900, 2)), fractured=bool(i % 2)))
               for i in range(max(1, count // 100))]
    paths = []
    for i in range(count):
        if i < copies:
            image = sources[i % len(sources)].resize((224, 224), Image.Resampling.BILINEAR)
            for angle in rng.uniform(5, 355, int(rng.integers(1, 4))):
                image = image.rotate(float(angle), Image.Resampling.BILINEAR, fillcolor=0)
        else:
            image = Image.fromarray(xray(rng, *(int(v) for v in rng.integers(200, 1200, 2)), fractured=bool(i % 2)))
        path = folder / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def audit_speed(ns: dict, folder: Path, count: int) -> dict:
    """Time the notebook's integrity check and duplicate audit (candidates, verification, fine check, groups) end to
    end."""
    import pandas as pd

    settings, cache = ns["settings"], folder / "cache"
    paths = [str(p) for p in generate_rotated_set(folder, count, seed=1)]
    start = time.perf_counter()
    with ThreadPoolExecutor(settings.workers) as pool:
        records = list(pool.map(lambda path: ns["inspect_image"](path, settings, cache), paths))
    good = pd.DataFrame(records).assign(original_split="train", label="fractured")
    checked = time.perf_counter()
    distinct, verified, linked = ns["linked_copies"](good, settings)
    groups = ns["duplicate_groups"](good, ns["duplicate_pairs"](good, distinct, linked))
    done = time.perf_counter()
    planted = max(1, count // 100) + count - int(count * 0.91)  # sources, plus originals without copies
    return {"audit_images": count, "audit_integrity_seconds": checked - start,
            "audit_duplicates_seconds": done - checked, "audit_total_seconds": done - start,
            "audit_candidate_pairs": len(verified), "audit_groups": int(len(set(groups))),
            "audit_planted_groups": planted}


def print_table(result: dict) -> None:
    rows = [(key, value) for key, value in result.items() if isinstance(value, int | float)]
    width = max(len(key) for key, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value:>12,.1f}" if isinstance(value, float) else f"{key:<{width}}  {value:>12,}")
    machine = result["machine"]
    print(f"machine: {machine['cores']} cores, {machine['processor']}, TensorFlow {machine['tensorflow']}")


if __name__ == "__main__":
    main()
