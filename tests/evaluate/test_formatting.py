"""Tests of cxr_embed.evaluate.formatting: numbers as people read them, escaped HTML tables that fold."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest

from cxr_embed.evaluate.formatting import (
    FormattedTable,
    format_ci,
    format_metrics_table,
    format_number,
    format_p,
    format_table,
    table_html,
)
from cxr_embed.evaluate.metrics import evaluate_predictions

NAN = float("nan")


@pytest.mark.parametrize("p, text", [(0.00004, "<0.001"), (0.0009999, "<0.001"), (0.001, "0.001"), (0.0123, "0.012"),
                                     (0.0499, "0.050"), (1.0, "1.000"), (NAN, ""), (None, "")])
def test_p_values(p, text):
    assert format_p(p) == text


def test_numbers_and_intervals():
    assert format_number(0.86849) == "0.868" and format_number(np.float32(0.5)) == "0.500"
    assert format_number(12) == "12" and format_number(np.int64(7)) == "7"
    assert format_number(NAN) == "" and format_number(None) == "" and format_number(True) == "yes"
    assert format_ci(0.86812, 0.8214, 0.90999) == "0.868 [0.821, 0.910]"
    assert format_ci(0.5, NAN, NAN) == "0.500" and format_ci(NAN, 0.1, 0.2) == ""
    assert format_ci(0.91234, 0.8, 0.95, decimals=2) == "0.91 [0.80, 0.95]"


@pytest.fixture
def comparison():
    return pd.DataFrame({
        "setting": ["internal"] * 3,
        "approach": ["rf <b>", "logreg", "fine-tuned"],
        "label": ["opacity"] * 3,
        "auc": [0.86812, 0.849, np.nan],
        "ci_low": [0.8214, 0.801, np.nan],
        "ci_high": [0.90999, 0.891, np.nan],
        "delong_p": [np.nan, 0.00004, 0.2271],
        "best": [True, False, False],
        "wall_time_s": [20.923, 4.79412, 292.0],
        "n": [120, 120, 120],
        "n_pos": [50.0, 50.0, np.nan],
    })


def test_format_table_reads_like_a_paper(comparison):
    t = format_table(comparison)
    assert list(t.columns) == ["setting", "approach", "label", "AUC [95% CI]", "DeLong p", "best", "time (s)",
                               "images", "positives"]
    assert t["AUC [95% CI]"].tolist() == ["0.868 [0.821, 0.910]", "0.849 [0.801, 0.891]", ""]
    assert t["DeLong p"].tolist() == ["", "<0.001", "0.227"]
    assert t["best"].tolist() == ["best", "", ""]          # booleans become words, never True/False
    assert t["time (s)"].tolist() == ["20.9", "4.8", "292.0"]
    assert t["images"].tolist() == ["120"] * 3 and t["positives"].tolist() == ["50", "50", ""]
    assert all(isinstance(v, str) for v in t.to_numpy().ravel())
    text = t.to_string()
    assert "True" not in text and "False" not in text and "nan" not in text.lower()
    # the interval level comes from the table, names can be overridden
    ninety = comparison.copy()
    ninety.attrs["ci"] = 0.9
    assert "AUC [90% CI]" in format_table(ninety, rename={"delong_p": "p vs best"}).columns
    assert "p vs best" in format_table(ninety, rename={"delong_p": "p vs best"}).columns


def test_format_table_other_estimates_and_p_columns():
    t = format_table(pd.DataFrame({"value": [0.1234], "ci_low": [0.1], "ci_high": [0.2], "p[opacity]": [0.5],
                                   "score": [1.23456]}))
    assert t.iloc[0].tolist() == ["0.123 [0.100, 0.200]", "0.500", "1.235"]
    assert list(t.columns)[0] == "value [95% CI]"
    # an index that is not a range is dropped, not lost silently into a column
    assert format_table(pd.DataFrame({"auc": [0.5]}, index=["x"])).index.tolist() == [0]


def test_table_html_escapes_and_folds_long_tables(comparison):
    short = table_html(format_table(comparison), caption="A & <B>")
    assert "<details" not in short and "A &amp; &lt;B&gt;" in short
    assert "rf &lt;b&gt;" in short and "<b>" not in short
    assert 'class=num>0.868 [0.821, 0.910]' in short      # numbers right-aligned
    long = pd.concat([comparison] * 6, ignore_index=True)
    html = table_html(format_table(long), caption="Every row", data=long, csv_name="all.csv")
    assert html.startswith('<details class="tbl"><summary>Every row (18 rows): show</summary>')
    href = re.search(r'download="all.csv" href="data:text/csv;charset=utf-8;base64,([A-Za-z0-9+/=]+)"', html)
    back = pd.read_csv(io.StringIO(base64.b64decode(href.group(1)).decode("utf-8")))
    assert len(back) == 18 and back["auc"].iloc[0] == pytest.approx(0.86812)   # full precision in the CSV
    assert "<details" in table_html(format_table(comparison), max_rows=0)
    assert "<details" not in table_html(format_table(long), max_rows=-1)


def test_formatted_table_renders_in_jupyter(comparison):
    t = FormattedTable.from_frame(comparison, caption="Comparison")
    html = t._repr_html_()
    assert html.startswith('<div class="cxr"><style>') and html.endswith("</div>")
    assert "body{" not in html                     # the notebook's own page is never restyled
    assert "Comparison" in html and "0.868 [0.821, 0.910]" in html and "&lt;0.001" in html
    assert "<script" not in html
    assert len(t) == 3 and "0.868 [0.821, 0.910]" in repr(t)


def test_format_metrics_table():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (80, 2)).astype(float)
    p = np.clip(y * 0.4 + rng.uniform(0, 0.6, y.shape), 0, 1)
    m = evaluate_predictions(y, p, labels=["a", "b"], n_bootstrap=50, random_state=0)
    auc = format_metrics_table(m, auc_only=True)
    assert auc.frame["label"].tolist() == ["a", "b", "macro"]
    assert list(auc.frame.columns) == ["label", "AUC [95% CI]", "images", "positives", "patients"]
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, (0\.\d{3}|1\.000)\]", auc.frame["AUC [95% CI]"].iloc[0])
    full = format_metrics_table(m)
    assert "subgroup" not in full.frame.columns        # every row is "all": the column says nothing
    assert "operating point" in full.frame.columns and "value [95% CI]" in full.frame.columns
    assert len(full) == len(m) and full.caption == "All metrics"
    assert "<details" in full._repr_html_()            # long: folded, with the CSV of the tidy table
    csv = re.search(r'base64,([A-Za-z0-9+/=]+)"', full.to_html()).group(1)
    assert len(pd.read_csv(io.StringIO(base64.b64decode(csv).decode()))) == len(m)
