"""Smoke tests of the benchmark scripts in their quick modes: they run, write their reports, and
every measured cell is finite (the figures themselves are measured on quiet machines, never here)."""
import csv
import math
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


def _run(args, tmp_path, timeout=300):
    r = subprocess.run([sys.executable, os.path.join(BENCH, args[0]), *args[1:]], capture_output=True,
                       text=True, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def test_compare_backends_quick(tmp_path):
    out = tmp_path / "cpu"
    _run(["compare_backends.py", "--quick", "--ops", "softmax", "cross_entropy", "add",
          "--out-dir", str(out)], tmp_path)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["op"] for r in rows} >= {"softmax", "log_softmax", "cross_entropy", "add", "mul"}
    assert {r["impl"] for r in rows} == {"torch", "cpu"}
    for r in rows:
        assert math.isfinite(float(r["ms"])) and float(r["ms"]) > 0, r
        if r["err"]:
            assert float(r["err"]) < 1e-4, r
    for name in ("report.md", "pct_of_roofline.png", "roofline.png"):
        assert (out / name).stat().st_size > 0


def test_compare_backends_reports_a_missing_gpu(tmp_path):
    pytest.importorskip("torch")
    import llmscratch as ls
    if ls.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "skipped" in _run(["compare_backends.py", "--device", "cuda"], tmp_path)


def test_train_throughput_quick(tmp_path):
    report = tmp_path / "train.md"
    _run(["train_throughput.py", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--seq-len", "16",
          "--out", str(report)], tmp_path)
    text = report.read_text()
    assert "| llmscratch |" in text and "eager" in text


def test_sanitizer_workload_dry_run(tmp_path):
    """The racecheck workload's calls, on the CPU in float32 (its GPU run is gpu_suite's)."""
    assert "every kernel family ran on cpu" in _run(
        ["sanitize_kernels.py", "--device", "cpu", "--dtypes", "float32"], tmp_path)
