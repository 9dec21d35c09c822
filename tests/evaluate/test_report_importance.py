"""The report's importance section: a precomputed importance table (each clinical variable and the
image block) shown as bars with CIs and as a table, just before the images (saliency maps)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cxr_embed.evaluate.metrics import evaluate_predictions
from cxr_embed.evaluate.report import Report, check_importance, importance_table, write_report
from cxr_embed.exceptions import InvalidInputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _importance(shift=0.0):
    """The shape of cxr_embed.clinical_importance's table (built here: evaluate never imports learn)."""
    t = pd.DataFrame({"feature": ["image", "wbc", "sex"], "kind": ["image", "numeric", "categorical"],
                      "n_columns": [1280, 1, 1], "importance": [0.31 + shift, 0.052, -0.001],
                      "ci_low": [0.25, 0.011, -0.004], "ci_high": [0.37, 0.093, 0.002], "std": [0.03, 0.02, 0.002],
                      "n_folds": [5, 5, 5], "baseline_auc": [0.874, 0.874, 0.874]})
    t.attrs.update({"ci": 0.95, "n_folds": 5, "n_permutations": 7, "metric": "roc_auc drop"})
    return t


@pytest.fixture
def evaluation(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80).astype(float)
    p = 1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, 80))))
    overlay = tmp_path / "overlay.png"
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(overlay)
    return y, p, evaluate_predictions(y, p, n_bootstrap=20, random_state=0), overlay


def test_importance_section_sits_before_the_saliency_maps(tmp_path, evaluation):
    y, p, metrics, overlay = evaluation
    out = tmp_path / "report"
    index = write_report(out, title="clinical model", metrics=metrics, y_true=y, y_score=p,
                         images={"saliency: image 1": overlay}, notes="n", importance=_importance())
    html = index.read_text()
    heading = html.index("<h2>Importance of the image and of each clinical variable</h2>")
    assert html.index("<h2>ROC and calibration</h2>") < heading < html.index("<h2>Images</h2>") \
        < html.index("<h2>Notes</h2>")
    section = html[heading:html.index("<h2>Images</h2>")]
    assert "5 folds, 7 shuffles per block and fold" in section and "Nadeau" in section
    assert "AUC lost [95% CI]" in section and "held-out AUC" in section
    assert "0.052 [0.011, 0.093]" in section and "0.310 [0.250, 0.370]" in section
    assert section.index(">image<") < section.index(">wbc<") < section.index(">sex<")  # most important first
    assert section.count("<img") == 1 and "data:image/png;base64," in section
    assert (out / "importance.png").read_bytes()[:8] == PNG_MAGIC
    saved = pd.read_csv(out / "importance.csv")
    assert saved["feature"].tolist() == ["image", "wbc", "sex"]
    assert "http" not in section  # self-contained


def test_one_table_per_label(tmp_path, evaluation):
    _, _, metrics, _ = evaluation
    out = tmp_path / "r"
    html = write_report(out, title="t", metrics=metrics,
                        importance={"opacity": _importance(), "effusion <b>": _importance(-0.2)}).read_text()
    assert "<h3>opacity</h3>" in html and "<h3>effusion &lt;b&gt;</h3>" in html
    assert (out / "importance_opacity.png").is_file() and (out / "importance_effusion_b.csv").is_file()


def test_bad_importance_tables_fail_before_anything_is_written(tmp_path, evaluation):
    _, _, metrics, _ = evaluation
    for bad, match in ((_importance().drop(columns=["ci_low"]), "ci_low"), (_importance().iloc[:0], "no rows"),
                       ({"a": "table"}, "must be a DataFrame"), ({}, "empty"), ([1, 2], "DataFrame")):
        out = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        with pytest.raises(InvalidInputError, match=match):
            write_report(out, title="t", metrics=metrics, importance=bad)
        assert not out.exists()
    assert list(check_importance(_importance())) == [None]


def test_the_builder_embeds_the_figure_without_files_and_formats_for_people():
    page = Report("t")
    page.add_importance(_importance(), text="measured elsewhere")
    html = page.to_html(fragment=True)
    assert "measured elsewhere" in html and "<img" in html
    frame = importance_table(_importance()).frame
    assert frame.columns.tolist() == ["block", "kind", "columns", "AUC lost [95% CI]", "held-out AUC", "folds"]
    assert frame["columns"].tolist() == ["1280", "1", "1"]


def test_plot_importance_never_imports_pyplot(tmp_path):
    code = ("import sys, pandas as pd; from cxr_embed.evaluate.figures import plot_importance; "
            "t = pd.DataFrame({'feature': ['image', 'age'], 'kind': ['image', 'numeric'], 'importance': [0.2, 0.0], "
            "'ci_low': [0.1, -0.01], 'ci_high': [0.3, 0.01]}); "
            f"fig = plot_importance(t, {str(tmp_path / 'imp.png')!r}); "
            "print(fig.axes[0].get_xlabel(), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ROC", "AUC", "lost", "False"]
    assert (tmp_path / "imp.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="ci_high"):
        from cxr_embed.evaluate.figures import plot_importance

        plot_importance(pd.DataFrame({"feature": ["a"], "importance": [0.1], "ci_low": [0.0]}))
