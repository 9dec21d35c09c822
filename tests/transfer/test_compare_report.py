"""The comparison's page: the answer first (summary + forest plot), tables for people, one palette,
images light enough; and the same tables in Jupyter (``_repr_html_``). No Keras: the result is faked."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest

from _fake_comparison import APPROACHES, fake_comparison, overlays

CI = r"0\.\d{3} \[0\.\d{3}, (0\.\d{3}|1\.000)\]"


@pytest.fixture(scope="module")
def result():
    return fake_comparison()


def test_summary_names_the_best_internally_and_externally(result):
    from cxr_embed.transfer._report import summary_sentences

    internal, external = summary_sentences(result)
    s_in, s_ex = result.summary("internal"), result.summary("external")
    assert internal.startswith(f"Internally (out-of-fold), {s_in['approach'].iloc[0]} is best: macro AUC ")
    assert external.startswith(f"Externally (on the external set), {s_ex['approach'].iloc[0]} is best: macro AUC ")
    for sentence, s in ((internal, s_in), (external, s_ex)):
        assert len(re.findall(CI, sentence)) == 2, sentence          # best and runner-up, with their CIs
        assert f"; the runner-up, {s['approach'].iloc[1]}, reaches " in sentence
        for lab in result.labels:                                     # DeLong p of the runner-up, per label
            p = s[f"p[{lab}]"].iloc[1]
            assert f"{'<0.001' if p < 0.001 else f'{p:.3f}'} for {lab}" in sentence
        assert sentence.count(".") >= 1 and "nan" not in sentence.lower()


def test_summary_of_one_label_one_approach_and_no_external_set():
    from cxr_embed.transfer._report import summary_sentences

    one = fake_comparison(["opacity"], external=False)
    (sentence,) = summary_sentences(one)
    assert re.search(rf"is best: AUC {CI}; the runner-up, .*, reaches {CI} \(DeLong p (<0\.001|\d\.\d{{3}})\)\.$",
                     sentence), sentence
    alone = fake_comparison(["opacity"], approaches={"rf": "embeddings"}, strength=[1.0])
    assert summary_sentences(alone)[0].endswith("(the only approach).")
    # a hopeless runner-up: p is printed the way people read it
    sure = fake_comparison(["opacity"], external=False, n=200, approaches={"good": "embeddings", "bad": "stacking"},
                           strength=[3.0, 0.0])
    assert summary_sentences(sure)[0].endswith("(DeLong p <0.001).")


def test_repr_html_shows_the_report_tables(result):
    html = result._repr_html_()
    assert html.startswith('<div class="cxr"><style>') and "body{" not in html
    assert html.index('class="summary"') < html.index("<img") < html.index("<table")
    assert html.count("<table") == 2 and "<details" not in html          # one table per setting, short
    assert "Internal: out-of-fold" in html and "External: refitted" in html
    assert "macro AUC [95% CI]" in html and "p vs best: opacity" in html
    assert "meta &lt;logreg&gt;" in html and "<logreg>" not in html
    assert not re.search(r">(True|False|nan)<", html)
    assert re.search(rf"<td class=num>{CI}</td>", html)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    """The report of the demo-shaped result, written once; the colours every plot was given are recorded."""
    import cxr_embed.evaluate.figures as figures
    import cxr_embed.evaluate.report as report

    tmp = tmp_path_factory.mktemp("cmp_report")
    seen = []
    mp = pytest.MonkeyPatch()
    for mod, name in ((report, "plot_roc"), (report, "plot_calibration"), (figures, "plot_forest"),
                      (report, "plot_forest")):
        orig = getattr(mod, name)

        def spy(*a, _orig=orig, _name=name, **kw):
            seen.append((_name, kw.get("colors")))
            return _orig(*a, **kw)

        mp.setattr(mod, name, spy)
    try:
        index = result.write_report(tmp / "report", images=overlays(tmp), n_bootstrap=30,
                                    tables={"Extra <table>": pd.DataFrame({"x": [0.12345], "ok": [False]})})
    finally:
        mp.undo()
    return index, seen


def test_write_report_reads_top_down_with_one_palette(result, written):
    from PIL import Image

    index, seen = written
    text = index.read_text()
    folder = index.parent
    # one palette: every figure of the comparison got the same mapping, approach -> colour
    palette = result.colors()
    assert set(palette) == set(APPROACHES)
    compared = [c for name, c in seen if c is not None]
    assert len(compared) == 1 + 2 * 2 * len(result.labels) and all(c == palette for c in compared)
    # reading order
    order = [text.index(s) for s in ('class="summary"', "<h2>Comparison</h2>", "<img", "Internal: out-of-fold",
                                     "External: refitted", "Every approach, setting and label",
                                     "ROC and calibration, internal", "ROC and calibration, external",
                                     "Best internal approach", "Extra &lt;table&gt;", "<h2>Images</h2>",
                                     "Run details", "All metrics of")]
    assert order == sorted(order)
    # ROC beside calibration for each (setting, label)
    assert len(re.findall(r'<div class="row"><figure>.*?</figure><figure>', text)) == 2 * len(result.labels)
    # the 48-row table and all metrics are folded, with their CSV
    assert len(re.findall(r"<details", text)) == 2
    assert re.search(r"Every approach, setting and label \(\d+ rows\): show", text)
    # overlays: a grid of small JPEGs with their captions (escaped)
    grid = text[text.index('<div class="grid">'):]
    assert grid.count("data:image/jpeg;base64,") == 2
    assert "Grad-CAM &lt;model 0&gt;; white outline: the true lesion" in grid
    # people's numbers, never True/False/NaN
    assert not re.search(r">(True|False|nan|NaN)<", text) and ">0.123<" in text
    # every image decodes; the page is light
    for mime, b64 in re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', text):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
    assert index.stat().st_size < 700_000
    for name in ("comparison.csv", "oof.csv", "forest.png", "metrics.json", "roc_internal_opacity.png",
                 "calibration_external_cardiomegaly.png"):
        assert (folder / name).is_file(), name
    assert len(pd.read_csv(folder / "comparison.csv")) == len(result.table)
    assert np.isfinite(pd.read_csv(folder / "oof.csv").filter(like=":").to_numpy()).any()


def test_report_in_headless_chromium(written, tmp_path):
    """What a reader sees at 1280x800 in a real browser: no error, every image, the answer above the fold."""
    from _browser import find_chromium, inspect_page, check_report

    browser = find_chromium()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    index, _ = written
    page = inspect_page(index, tmp_path / "report_1280x800.png", browser=browser)
    check_report(page)
