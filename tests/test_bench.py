"""Smoke tests of bench/extract.py and bench/distributed.py: they run end to end and print the JSON they promise (slow set)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_extract_runs_and_prints_json():
    cmd = [sys.executable, str(ROOT / "bench" / "extract.py"), "--n", "16", "--repeats", "1", "--sizes", "20,40",
           "--naive-n", "4", "--image-size", "64", "--input-size", "64", "--backbones", "efficientnet_lite0,mobilenet_v2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    lite = result["backbones"]["efficientnet_lite0"]
    assert result["backbones"]["mobilenet_v2"]["weights"] is None  # offline: the fallback, and stdout stayed JSON
    assert lite["model_only_images_per_second"] > 0 and lite["extract_png_images_per_second"] > 0
    assert 0 < lite["ratio_png_to_model"] and 0 < lite["ratio_dicom_to_model"]
    assert [r["n"] for r in result["memory"]["runs"]] == [20, 40]
    assert set(result["goals"]) >= {"efficientnet_lite0: ratio_png_to_model>=0.9", "memory_flat(<1.1x)"}


@pytest.mark.slow
def test_bench_distributed_runs_and_prints_json():
    pytest.importorskip("ray")
    cmd = [sys.executable, str(ROOT / "bench" / "distributed.py"), "--n", "16", "--image-size", "64", "--input-size",
           "64", "--batch-size", "8", "--object-store-mb", "100"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["n"] == 16 and result["local_images_per_second"] > 0 and result["ray_images_per_second"] > 0
    assert result["bits_equal"] is True and result["ratio_ray_to_local"] > 0
    assert set(result["goals"]) == {"ratio_ray_to_local>=0.7", "bits_equal"}
