"""Every example in examples/ runs end to end as a subprocess on tiny settings (a random-weight
MobileNetV2 at 32 px, a few dozen synthetic images), and prints what it promises."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED_DATA

EXAMPLES = ROOT / "examples"
TINY = ["--backbone", "mobilenet_v2", "--weights", "none", "--input-size", "32"]
TINY_EMBEDDING = ["--embedding", "mobilenet_v2@32 + mobilenet_v2@40"]  # the demo's default is five real passes


def _run(script: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": "",
           # the checkout under test, not another one installed in editable mode
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_quickstart(tmp_path):
    out = _run("quickstart.py", "--n", "24", "--size", "64", "--out", str(tmp_path), *TINY)
    assert "macro AUC" in out
    assert (tmp_path / "embeddings.h5").is_file()
    assert (tmp_path / "roc.png").is_file()  # the figure of the docs gallery's first page


def test_chexpert_layout_compares_policies(tmp_path):
    out = _run("chexpert_layout.py", "--n", "40", "--size", "64", "--folds", "3", "--out", str(tmp_path), *TINY)
    assert "U-Ones" in out and "U-Ignore" in out
    assert (tmp_path / "fake" / "CheXpert-v1.0-small" / "train.csv").is_file()
    assert list((tmp_path / "fake" / "CheXpert-v1.0-small" / "train").glob("patient*/study*/view1_frontal.jpg"))


def test_nih_layout(tmp_path):
    out = _run("nih_layout.py", "--n", "40", "--size", "64", "--folds", "3", "--out", str(tmp_path), *TINY)
    assert "(nih)" in out and "grouped 3-fold CV" in out
    assert (tmp_path / "fake" / "Data_Entry_2017.csv").is_file()


def test_dicom_folder(tmp_path):
    out = _run("dicom_folder.py", "--n", "4", "--size", "64", "--out", str(tmp_path), *TINY)
    assert "8 DICOM files" in out
    assert "second run: 0 embedded, 8 from the cache" in out


def test_external_validation(tmp_path):
    out = _run("external_validation.py", "--n", "32", "--size", "64", "--folds", "3", "--classifiers", "logreg",
               "--out", str(tmp_path), *TINY)
    assert "internal" in out and "external" in out


def test_demo_quick(tmp_path):
    # two folds: the stack's inner folds then hold 12 rows, fewer than kNN's 15 neighbours (a crash once)
    out = _run("demo.py", "--quick", "--folds", "2", "--out", str(tmp_path), *TINY, *TINY_EMBEDDING)
    for stage in ("1. synthetic sites", "3. embeddings", "5. stacking", "6. three-way comparison", "8. report"):
        assert stage in out
    assert "stacking" in out and "fine-tuned" in out and "entropy-weighted" in out
    # the classifier stages use the composite embedding; the comparison has a row for each embedding
    assert "mobilenet_v2@32 + mobilenet_v2@40: X (36, 2560)" in out
    assert "mobilenet_v2@32 + mobilenet_v2@40 + logreg" in out and "mobilenet_v2 + logreg" in out
    assert (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "timings.csv").is_file()
    assert list((tmp_path / "saliency").glob("*_gradcam.png"))


@pytest.mark.slow
def test_demo_report_in_a_headless_browser(tmp_path):
    """The demo's report at 1280x800 in headless Chromium: no error, every image decodes, the summary
    and the forest plot above the fold (the screenshot stays in the test's folder)."""
    from _browser import check_report, find_chromium, inspect_page

    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    _run("demo.py", "--quick", "--out", str(tmp_path), "--n-explain", "2", *TINY, *TINY_EMBEDDING)
    index = tmp_path / "report" / "index.html"
    page = inspect_page(index, tmp_path / "demo_report_1280x800.png", browser=browser)
    check_report(page)
    overlays = [i for i in page["probe"]["images"] if i["mime"] == "image/jpeg"]
    assert len(overlays) == 4 and all("p = " in i["alt"] for i in overlays)
    assert "None" not in " ".join(i["alt"] for i in overlays)
    assert index.stat().st_size < 1_000_000


@pytest.mark.slow
def test_demo_second_run_reuses_data_and_embeddings(tmp_path):
    # pretrained (offline) weights: a random-weight backbone has a new fingerprint every run
    lite = ["--backbone", "efficientnet_lite0", "--input-size", "32", "--embedding", "efficientnet_lite0@32|40"]
    _run("demo.py", "--quick", "--out", str(tmp_path), "--n-explain", "0", *lite)
    again = _run("demo.py", "--quick", "--out", str(tmp_path), "--n-explain", "0", *lite)
    assert "reusing" in again
    done = [int(n) for n in re.findall(r"(\d+) embedded \(", again)]
    assert done == [0] * 6  # the composite embedding and the single backbone, three sites each


@pytest.mark.parametrize("script", ["real_data_comparison.py", "real_data_classifiers.py"])
def test_real_data_examples_skip_or_explain_without_data(script, tmp_path):
    out = _run(script, "--help")
    assert "usage" in out.lower()
    if not (SHARED_DATA / "nih_cxr14_pneumonia" / "labels.csv").is_file():
        out = _run(script, "--out", str(tmp_path))
        assert "skipping" in out.lower()
