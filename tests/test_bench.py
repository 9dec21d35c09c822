"""Smoke tests of the benchmarks in bench/: they run end to end and print the JSON they promise (slow set, but for
bench/manifests.py on the smallest real table)."""
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


@pytest.mark.slow
def test_bench_reading_runs_and_prints_json():
    from pydicom.data import get_testdata_file

    if get_testdata_file("RG1_UNCR.dcm", download=False) is None:
        pytest.skip("pydicom-data is not installed")
    if not (ROOT.parent / "shared" / "data" / "nih_cxr14_1024_sample").is_dir():
        pytest.skip("../shared/data/nih_cxr14_1024_sample is absent")
    cmd = [sys.executable, str(ROOT / "bench" / "reading.py"), "--quick", "--n-png", "4", "--input-size", "64",
           "--batch-size", "4", "--workers", "0"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    rg1 = result["formats"]["RG1_J2KR.dcm"]
    assert rg1["read_prepared"]["cpu_ms"] > 0 and rg1["speedup_reduced_vs_full_decode_cpu"] > 1
    assert result["formats"]["nih_png_1024"]["n_files"] == 4
    assert result["extract"]["efficientnet_lite0"]["ratio_png_to_model"] > 0
    assert any(k.startswith("RG1_UNCR.dcm") for k in result["goals"])


def test_gpu_check_dry_run_parts():
    """bench/gpu_check.sh refuses unknown options and reports a missing TensorFlow as JSON, quickly."""
    script = ROOT / "bench" / "gpu_check.sh"
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "unknown option" in json.loads(bad.stdout)["error"]
    no_tf = subprocess.run(["bash", str(script), "--python", "/bin/false"], capture_output=True, text=True, timeout=30)
    assert no_tf.returncode == 3 and "make install" in json.loads(no_tf.stdout)["error"]


def test_bench_manifests_runs_and_prints_json():
    if not (ROOT.parent / "shared" / "data" / "label_tables" / "google2019_nih-chest-xray-labels.csv.gz").is_file():
        pytest.skip("../shared/data/label_tables is absent")
    cmd = [sys.executable, str(ROOT / "bench" / "manifests.py"), "--tables", "google2019"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads(out.stdout)["tables"]
    assert row["table"] == "google2019" and row["shape"][0] == 4376 and row["label_dtypes"] == ["float32"]
    assert row["cpu_s"] >= 0 and row["peak_rss_mib"] >= row["baseline_rss_mib"] > 0 and row["tracemalloc_peak_mib"] > 0


@pytest.mark.slow
def test_bench_localization_box_head_runs_and_prints_json():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "nih_cxr14_pneumonia" / "bboxes.csv").is_file():
        pytest.skip("../shared/data/nih_cxr14_pneumonia is not here")
    cmd = [sys.executable, str(ROOT / "bench" / "localization_box_head.py"), "--bootstrap", "50"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), CXR_EMBED_SHARED_DATA=str(SHARED_DATA))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["n_images"] == 29 and 0 <= result["box_head"]["pointing"][0] <= 1
    assert 0.5 < result["image_auc_max_cell"] <= 1 and result["differences"]


@pytest.mark.slow
def test_bench_localization_finetuned_runs_and_prints_json():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "nih_cxr14_pneumonia" / "bboxes.csv").is_file():
        pytest.skip("../shared/data/nih_cxr14_pneumonia is not here")
    cmd = [sys.executable, str(ROOT / "bench" / "localization_finetuned.py"), "--input-size", "96", "--epochs", "1",
           "--trainable-layers", "2", "--methods", "auto", "--bootstrap", "50"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), CXR_EMBED_SHARED_DATA=str(SHARED_DATA))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["n_images"] == 29 and result["unfrozen_layers"] == 2 and 0 <= result["val_auc"] <= 1
    assert 0 <= result["gradcam"]["pointing"][0] <= 1 and result["gradcam"]["deletion_auc"][0] > 0
    assert 0 <= result["lungs"]["pointing"][0] <= 1 and result["seconds"]["finetune"] > 0
