"""Tests of cxr_embed.evaluate.report: PNG plots without pyplot, one self-contained HTML file."""
from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxr_embed.evaluate.metrics import evaluate_predictions, metrics_from_json
from cxr_embed.evaluate.report import plot_calibration, plot_roc, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (120, 2)).astype(float)
    y[:10, 1] = np.nan
    p = 1 / (1 + np.exp(-(2 * np.nan_to_num(y) - 1 + rng.normal(0, 1, (120, 2)))))
    return y, p


def test_importing_report_leaves_matplotlib_state_alone():
    code = ("import sys, cxr_embed.evaluate.report, cxr_embed.evaluate.metrics, cxr_embed.learn.stacking; "
            "print('matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_plotting_never_imports_pyplot(tmp_path):
    """Checked in a fresh process: other tests (tf-keras-vis) may import pyplot in this one."""
    code = ("import sys, numpy as np; from cxr_embed.evaluate.report import plot_roc, plot_calibration; "
            "y = np.array([0, 1, 0, 1]); p = np.array([.1, .8, .4, .6]); "
            f"plot_roc(y, p, path={str(tmp_path / 'r.png')!r}); plot_calibration(y, p, path={str(tmp_path / 'c.png')!r}); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


def test_plots_write_png_and_do_not_use_pyplot(tmp_path, predictions):
    y, p = predictions
    fig = plot_roc(y, p, labels=["effusion", "edema"], path=tmp_path / "roc.png")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("effusion (AUC ") for t in legend) and any(t.startswith("edema") for t in legend)
    plot_calibration(y, p, labels=["effusion", "edema"], path=tmp_path / "sub" / "cal.png")
    assert (tmp_path / "roc.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "sub" / "cal.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="must match"):
        plot_roc(y, p[:, :1])


def test_write_report_is_self_contained(tmp_path, predictions):
    y, p = predictions
    metrics = evaluate_predictions(y, p, labels=["effusion", "edema"], n_bootstrap=100, random_state=0)
    comparison = pd.DataFrame({"approach": ["stacking", "embeddings <rf>"], "auc": [0.81, 0.856]})
    extra = tmp_path / "overlay.png"
    plot_roc(y[:, 0], p[:, 0], path=extra)
    index = write_report(
        tmp_path / "report",
        title="Run <1> & co",
        metrics=metrics,
        y_true=y,
        y_score=p,
        labels=["effusion", "edema"],
        tables={"Transfer comparison": comparison},
        images={"saliency overlay": extra},
        notes=["Synthetic data; <script>alert(1)</script> is escaped."],
    )
    assert index == tmp_path / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    # no external references of any kind
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]+)', text, flags=re.I)
    assert refs and all(r.startswith("data:image/") for r in refs), refs
    assert "url(" not in text and "@import" not in text
    # images are valid base64 PNGs: ROC, calibration and the extra one
    blobs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(blobs) == 3
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in blobs)
    # tables and escaped text
    assert "Transfer comparison" in text and "embeddings &lt;rf&gt;" in text and "0.8560" in text
    assert "Run &lt;1&gt; &amp; co" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "ROC AUC" in text and "All metrics" in text and "spec&gt;=0.90" in text
    auc_eff = metrics.query("label == 'effusion' and metric == 'auc' and subgroup == 'all'")["value"].item()
    assert f"{auc_eff:.4f}" in text
    # side files
    for name in ("roc.png", "calibration.png", "metrics.json"):
        assert (tmp_path / "report" / name).is_file()
    back = metrics_from_json(tmp_path / "report" / "metrics.json")
    pd.testing.assert_frame_equal(back, metrics, check_dtype=False)


def test_write_report_minimal_and_missing_image(tmp_path):
    index = write_report(tmp_path, title="empty", notes="nothing measured yet")
    text = index.read_text(encoding="utf-8")
    assert "nothing measured yet" in text and "<img" not in text
    assert not (tmp_path / "metrics.json").exists()
    with pytest.raises(FileNotFoundError, match="missing.png"):
        write_report(tmp_path, title="x", images={"gone": tmp_path / "missing.png"})
