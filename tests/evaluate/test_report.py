"""Tests of cxr_embed.evaluate.report: PNG plots without pyplot, one self-contained HTML file."""
from __future__ import annotations

import base64
import io
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
    code = ("import sys, cxr_embed.evaluate.report, cxr_embed.evaluate.figures, cxr_embed.evaluate.formatting, "
            "cxr_embed.evaluate.metrics, cxr_embed.learn.stacking; "
            "print('matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_plotting_never_imports_pyplot(tmp_path):
    """Checked in a fresh process: other tests (tf-keras-vis) may import pyplot in this one."""
    code = ("import sys, numpy as np, pandas as pd; "
            "from cxr_embed.evaluate.report import plot_roc, plot_calibration, plot_forest, write_report; "
            "y = np.array([0, 1, 0, 1]); p = np.array([.1, .8, .4, .6]); "
            f"plot_roc(y, p, path={str(tmp_path / 'r.png')!r}); plot_calibration(y, p, path={str(tmp_path / 'c.png')!r}); "
            "plot_forest(pd.DataFrame({'label': ['a'], 'auc': [.8], 'ci_low': [.7], 'ci_high': [.9]}), hue=None, panel=None); "
            f"write_report({str(tmp_path / 'rep')!r}, title='t', y_true=y, y_score=p); "
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


def _embedded(text):
    """(mime, bytes) of every data: URI of the page."""
    return [(m, base64.b64decode(b)) for m, b in re.findall(r'"data:([a-z/]+)[^",]*;base64,([A-Za-z0-9+/=]+)"', text)]


def test_write_report_is_self_contained(tmp_path, predictions):
    from PIL import Image

    y, p = predictions
    metrics = evaluate_predictions(y, p, labels=["effusion", "edema"], n_bootstrap=100, random_state=0)
    comparison = pd.DataFrame({"approach": ["stacking", "embeddings <rf>"], "auc": [0.81, 0.856],
                               "best": [False, True], "delong_p": [0.0004, np.nan]})
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
        images={"saliency overlay <x>": extra},
        notes=["Synthetic data; <script>alert(1)</script> is escaped."],
        summary="Effusion <is> found.",
    )
    assert index == tmp_path / "report" / "index.html"
    text = index.read_text(encoding="utf-8")
    # no external references of any kind: images and the CSV of the folded table are data: URIs
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\' >]+)', text, flags=re.I)
    assert refs and all(r.startswith(("data:image/", "data:text/csv;")) for r in refs), [r[:30] for r in refs]
    assert "url(" not in text and "@import" not in text and "<script" not in text
    # images: forest plot, ROC and calibration as palette PNGs, the overlay as a JPEG; all decode
    blobs = _embedded(text)
    images = [(m, b) for m, b in blobs if m.startswith("image/")]
    assert [m for m, _ in images] == ["image/png"] * 3 + ["image/jpeg"]
    for mime, data in images:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            assert im.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[mime]
            assert im.mode == ("P" if mime == "image/png" else "RGB")   # plots: a palette, few colours
    # the summary comes first, the forest plot is the first figure
    assert text.index('class="summary"') < text.index("<figure") < text.index("ROC curves")
    assert "Effusion &lt;is&gt; found." in text
    # tables formatted for people, escaped text
    assert "Transfer comparison" in text and "embeddings &lt;rf&gt;" in text and "0.856" in text
    assert "0.8560" not in text and ">True<" not in text and ">False<" not in text and "&lt;0.001" in text
    assert "Run &lt;1&gt; &amp; co" in text and "saliency overlay &lt;x&gt;" in text
    assert "&lt;script&gt;" in text
    assert "ROC AUC" in text and "All metrics" in text and "spec&gt;=0.90" in text
    auc = metrics.query("label == 'effusion' and metric == 'auc' and subgroup == 'all'").iloc[0]
    assert f"{auc.value:.3f} [{auc.ci_low:.3f}, {auc.ci_high:.3f}]" in text
    # the full metrics table is folded, its CSV attached at full precision
    assert re.search(r"<details[^>]*><summary>All metrics \(\d+ rows\): show</summary>", text)
    csv = [d for m, d in blobs if m == "text/csv"]
    assert len(csv) == 1
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(csv[0]), keep_default_na=False, na_values=[""]).drop(
        columns=["operating_point"]), metrics.drop(columns=["operating_point"]).reset_index(drop=True), check_dtype=False)
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
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="PNG, JPEG or GIF"):
        write_report(tmp_path, title="x", images={"text": tmp_path / "notes.txt"})
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="not a decodable image"):
        write_report(tmp_path, title="x", images={"fake": tmp_path / "fake.png"})


def test_report_builder_and_images_sized_for_the_page(tmp_path):
    from PIL import Image

    from cxr_embed.evaluate.report import PHOTO_WIDTH, Report, image_data_uri

    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)).save(big)
    uri = image_data_uri(big, kind="photo")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and im.width == PHOTO_WIDTH and im.height == round(1200 * PHOTO_WIDTH / 1600)
    with pytest.raises(ValueError, match="plot"):
        image_data_uri(big, kind="drawing")
    page = Report("A <b> page", subtitle="sub & title")
    page.add_summary(["first <1>", "second"])
    page.add_section("Numbers", text="some <text>")
    page.add_table(pd.DataFrame({"auc": [0.91234], "ci_low": [0.9], "ci_high": [0.95], "ok": [True]}), caption="T")
    page.add_gallery({"overlay <1>": big, "overlay 2": big})
    path = page.write(tmp_path / "out" / "page.html")
    text = path.read_text()
    assert path.name == "page.html" and "A &lt;b&gt; page" in text and "sub &amp; title" in text
    assert "first &lt;1&gt;" in text and "some &lt;text&gt;" in text and "0.912 [0.900, 0.950]" in text
    assert text.count('<figure><img alt="overlay') == 2 and 'class="grid"' in text
    assert "<figcaption>overlay &lt;1&gt;</figcaption>" in text
    assert len(text.encode()) < 120_000          # two 1600 px PNGs (11 MB raw) become two small JPEGs
    assert page._repr_html_().startswith('<div class="cxr">')
