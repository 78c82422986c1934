"""A tiny smoke run of tests/benchmark.py (its real measurement is run by hand; see docs/speed.md): it runs the
notebook's own functions end to end and reports every figure, on this machine's TensorFlow."""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path


def test_benchmark_script_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "benchmark.json"
    script = Path(__file__).with_name("benchmark.py")
    result = subprocess.run([sys.executable, str(script), "--images", "8", "--repeats", "1", "--train-batches", "1",
                             "--img-size", "32", "--batch-size", "4", "--audit-images", "300", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    for key in ["integrity_img_per_s", "integrity_1_thread_img_per_s", "pipeline_img_per_s", "model_train_img_per_s",
                "inference_img_per_s", "reference_train_img_per_s", "fit_img_per_s", "audit_total_seconds"]:
        assert figures[key] > 0, key
    assert (figures["images"], figures["img_size"], figures["batch_size"]) == (8, 32, 4)  # as asked
    assert figures["audit_groups"] == figures["audit_planted_groups"]  # every rotated copy found, nothing merged
    assert figures["machine"]["cores"] >= 1
    assert figures["machine"]["tensorflow"] == importlib.metadata.version("tensorflow")  # the installed one
    assert "integrity_img_per_s" in result.stdout  # the printed table
