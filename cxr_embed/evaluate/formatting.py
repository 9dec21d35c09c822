"""Tables for people: numbers as text, and HTML tables that collapse when long.

The statistics of :mod:`cxr_embed.evaluate.metrics` are tidy DataFrames of floats: right for
code, hard to read. This module turns them into what a reader expects: three decimals,
``"0.868 [0.821, 0.910]"`` cells for an estimate with its confidence interval, p-values as
``"<0.001"``, booleans as words, and HTML tables (every cell escaped) that fold into a
``<details>`` element when long, with the full-precision table attached as a CSV download
(a ``data:`` URI, so the page stays one self-contained file).

The same :class:`FormattedTable` is what the HTML report shows and what Jupyter renders
(``_repr_html_``): ``format_metrics_table(df)`` in a notebook cell shows the report's table.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .._utils import require_int

__all__ = [
    "format_number",
    "format_ci",
    "format_p",
    "format_table",
    "format_metrics_table",
    "FormattedTable",
    "table_html",
]

#: Column names of the library's tables, as a reader should see them.
COLUMN_NAMES: dict[str, str] = {
    "delong_p": "DeLong p",
    "wall_time_s": "time (s)",
    "seconds": "time (s)",
    "n": "images",
    "n_pos": "positives",
    "n_groups": "patients",
    "n_patients": "patients",
    "operating_point": "operating point",
}

_P_COLUMN = re.compile(r"^(p|p_value|pvalue|.*_p|p\[.*\])$")
_NUMERIC_CELL = re.compile(r"^[<>]?[-+]?(\d|nan|inf)", re.I)


def _missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    try:
        return bool(isinstance(v, (float, np.floating)) and math.isnan(v))
    except TypeError:  # pragma: no cover - exotic scalars
        return False


def format_number(value: Any, decimals: int = 3) -> str:
    """A number as text: ``decimals`` places for floats, integers as integers, ``""`` for missing.

    Parameters
    ----------
    value : float, int or None
    decimals : int, default=3

    Returns
    -------
    str

    Examples
    --------
    >>> format_number(0.86849), format_number(12), format_number(float("nan"))
    ('0.868', '12', '')
    """
    if _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{decimals}f}"
    return str(value)


def format_ci(estimate: Any, low: Any, high: Any, decimals: int = 3) -> str:
    """An estimate with its interval: ``"0.868 [0.821, 0.910]"``; the estimate alone without one.

    Parameters
    ----------
    estimate, low, high : float
        NaN or None where unknown.
    decimals : int, default=3

    Returns
    -------
    str

    Examples
    --------
    >>> format_ci(0.86812, 0.8214, 0.90999)
    '0.868 [0.821, 0.910]'
    >>> format_ci(0.5, float("nan"), float("nan"))
    '0.500'
    """
    if _missing(estimate):
        return ""
    text = format_number(float(estimate), decimals)
    if _missing(low) or _missing(high):
        return text
    return f"{text} [{float(low):.{decimals}f}, {float(high):.{decimals}f}]"


def format_p(p: Any, decimals: int = 3) -> str:
    """A p-value as text: ``"<0.001"`` below 0.001 (for ``decimals=3``), else rounded; ``""`` if missing.

    Parameters
    ----------
    p : float
    decimals : int, default=3

    Returns
    -------
    str

    Examples
    --------
    >>> format_p(0.00004), format_p(0.0123), format_p(None)
    ('<0.001', '0.012', '')
    """
    if _missing(p):
        return ""
    p = float(p)
    floor = 10.0 ** -decimals
    if p < floor:
        return f"<{floor:.{decimals}f}"
    return f"{p:.{decimals}f}"


def _is_seconds(name: str) -> bool:
    return name == "seconds" or name.endswith("_s")


def _integral(col: pd.Series) -> bool:
    vals = col.dropna()
    return len(vals) > 0 and bool(np.all(np.isfinite(vals.to_numpy(float))) and np.all(vals % 1 == 0))


def _ci_estimate(df: pd.DataFrame) -> str | None:
    if not {"ci_low", "ci_high"}.issubset(df.columns):
        return None
    for name in ("auc", "value", "estimate"):
        if name in df.columns:
            return name
    cols = list(df.columns)
    i = cols.index("ci_low")
    return cols[i - 1] if i > 0 and pd.api.types.is_numeric_dtype(df[cols[i - 1]]) else None


def format_table(df: pd.DataFrame, *, decimals: int = 3, rename: Mapping[str, str] | None = None,
                 ci: float | None = None) -> pd.DataFrame:
    """The table as text for people: every cell a string, the index dropped.

    * an estimate column (``auc``, ``value`` or the column before ``ci_low``) and
      ``ci_low``/``ci_high`` become one ``"AUC [95% CI]"`` column of ``"0.868 [0.821, 0.910]"`` cells;
    * p-value columns (``p``, ``*_p``, ``p[...]``) read ``"<0.001"``, ``"0.012"``;
    * boolean columns become words: the column's name where True, empty where False
      (a ``best`` column marks the best row with "best");
    * seconds (``*_s``, ``seconds``) get one decimal, counts none, other floats ``decimals``;
    * missing values are empty cells; known column names read as words (:data:`COLUMN_NAMES`).

    Parameters
    ----------
    df : DataFrame
    decimals : int, default=3
    rename : dict of str -> str, optional
        Display names, applied after (and winning over) :data:`COLUMN_NAMES`.
    ci : float, optional
        Level of the intervals for the heading; default ``df.attrs["ci"]`` or 0.95.

    Returns
    -------
    DataFrame
        Same rows, all cells ``str``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"approach": ["rf", "logreg"], "auc": [0.8681, 0.849], "ci_low": [0.821, 0.801],
    ...                   "ci_high": [0.91, 0.891], "delong_p": [float("nan"), 0.0004], "best": [True, False]})
    >>> format_table(t).to_dict("records")[1]
    {'approach': 'logreg', 'AUC [95% CI]': '0.849 [0.801, 0.891]', 'DeLong p': '<0.001', 'best': ''}
    """
    require_int(decimals, "decimals", 0)
    level = ci if ci is not None else getattr(df, "attrs", {}).get("ci", 0.95)
    df = pd.DataFrame(df).reset_index(drop=True) if not isinstance(df.index, pd.RangeIndex) else pd.DataFrame(df)
    est = _ci_estimate(df)
    out: dict[str, list[str]] = {}
    for col in df.columns:
        name = str(col)
        s = df[col]
        if col in ("ci_low", "ci_high") and est is not None:
            continue
        if col == est:
            head = "AUC" if name == "auc" else name
            out[f"{head} [{float(level):.0%} CI]"] = [format_ci(e, lo, hi, decimals) for e, lo, hi in
                                                     zip(s, df["ci_low"], df["ci_high"])]
        elif pd.api.types.is_bool_dtype(s):
            out[name] = [name if bool(v) else "" for v in s]
        elif _P_COLUMN.match(name) and pd.api.types.is_numeric_dtype(s):
            out[name] = [format_p(v, decimals) for v in s]
        elif pd.api.types.is_numeric_dtype(s):
            if _is_seconds(name):
                out[name] = [format_number(float(v), 1) for v in s]
            elif pd.api.types.is_integer_dtype(s) or (name.startswith("n") and _integral(s)):
                out[name] = ["" if _missing(v) else str(int(v)) for v in s]
            else:
                out[name] = [format_number(float(v), decimals) for v in s]
        else:
            out[name] = ["" if _missing(v) else str(v) for v in s]
    names = {**COLUMN_NAMES, **dict(rename or {})}
    res = pd.DataFrame(out, index=range(len(df)))
    res.columns = [names.get(c, c) for c in res.columns]
    return res


def _csv_link(data: pd.DataFrame, name: str) -> str:
    payload = base64.b64encode(data.to_csv(index=False).encode("utf-8")).decode("ascii")
    return (f'<a class="csv" download="{html.escape(name)}" href="data:text/csv;charset=utf-8;base64,{payload}">'
            f"download the full table ({html.escape(name)})</a>")


def _rows_html(frame: pd.DataFrame) -> str:
    numeric = [all(c == "" or _NUMERIC_CELL.match(c) for c in frame[col]) and any(frame[col] != "")
               for col in frame.columns]
    head = "".join(f'<th{" class=num" if num else ""}>{html.escape(str(c))}</th>'
                   for c, num in zip(frame.columns, numeric))
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f'<td{" class=num" if num else ""}>{html.escape(str(v))}</td>' for v, num in zip(row, numeric))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def table_html(frame: pd.DataFrame, *, caption: str | None = None, data: pd.DataFrame | None = None,
               max_rows: int = 12, csv_name: str = "table.csv") -> str:
    """An HTML table of already formatted cells; folded into ``<details>`` beyond ``max_rows`` rows.

    Parameters
    ----------
    frame : DataFrame
        Cells to show (e.g. from :func:`format_table`); each is HTML-escaped.
    caption : str, optional
        Shown above the table (escaped).
    data : DataFrame, optional
        The full-precision table behind ``frame``; a long table links it as a CSV download
        (a base64 ``data:`` URI named ``csv_name``). Default ``frame`` itself.
    max_rows : int, default=12
        Longer tables are collapsed; 0 collapses every table, a negative value none.
    csv_name : str, default="table.csv"

    Returns
    -------
    str
        An HTML fragment.

    Examples
    --------
    >>> import pandas as pd
    >>> t = table_html(pd.DataFrame({"a": ["<b>", "1"]}), caption="x & y")
    >>> "&lt;b&gt;" in t and "x &amp; y" in t and "<details" not in t
    True
    >>> "<details" in table_html(pd.DataFrame({"a": range(20)}), max_rows=12)
    True
    """
    frame = frame.astype(str) if len(frame.columns) else frame
    table = _rows_html(frame)
    long = max_rows >= 0 and len(frame) > max_rows
    cap = html.escape(str(caption)) if caption else ""
    if not long:
        return f'<div class="tbl">{f"<p class=caption>{cap}</p>" if cap else ""}{table}</div>'
    link = _csv_link(frame if data is None else pd.DataFrame(data), csv_name)
    label = f"{cap} ({len(frame)} rows)" if cap else f"{len(frame)} rows"
    return f'<details class="tbl"><summary>{label}: show</summary>{table}<p class="meta">{link}</p></details>'


@dataclass
class FormattedTable:
    """A table formatted for people, rendered the same in the report and in Jupyter.

    Attributes
    ----------
    frame : DataFrame
        The cells as text (from :func:`format_table`).
    data : DataFrame
        The full-precision table behind them (the CSV download of a long table).
    caption : str or None
    max_rows : int
        Longer tables are folded into ``<details>`` (see :func:`table_html`).
    csv_name : str

    Examples
    --------
    >>> import pandas as pd
    >>> t = FormattedTable.from_frame(pd.DataFrame({"label": ["a"], "auc": [0.9], "ci_low": [0.8], "ci_high": [0.95]}))
    >>> t.frame.iloc[0, 1]
    '0.900 [0.800, 0.950]'
    >>> t._repr_html_().startswith('<div class="cxr">')
    True
    """

    frame: pd.DataFrame
    data: pd.DataFrame
    caption: str | None = None
    max_rows: int = 12
    csv_name: str = "table.csv"

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, caption: str | None = None, max_rows: int = 12,
                   csv_name: str = "table.csv", decimals: int = 3,
                   rename: Mapping[str, str] | None = None) -> "FormattedTable":
        """Format ``df`` with :func:`format_table` and keep it as the data behind the cells."""
        return cls(format_table(df, decimals=decimals, rename=rename), pd.DataFrame(df), caption, max_rows, csv_name)

    def to_html(self) -> str:
        """The HTML fragment (no page, no style) shown in the report."""
        return table_html(self.frame, caption=self.caption, data=self.data, max_rows=self.max_rows,
                          csv_name=self.csv_name)

    def _repr_html_(self) -> str:
        from .report import fragment_html

        return fragment_html([self.to_html()])

    def __repr__(self) -> str:
        head = f"{self.caption}\n" if self.caption else ""
        return head + self.frame.to_string(index=False)

    def __len__(self) -> int:
        return len(self.frame)


def _check_metrics_table(metrics: pd.DataFrame) -> None:
    """Raise :class:`~cxr_embed.InvalidInputError` unless ``metrics`` has rows and the columns
    ``label``, ``metric`` and ``value`` (a table of :func:`~cxr_embed.evaluate_predictions`)."""
    if len(metrics) == 0 or not {"label", "metric", "value"}.issubset(metrics.columns):
        from ..exceptions import InvalidInputError

        raise InvalidInputError(f"metrics has {len(metrics)} rows and columns {list(metrics.columns)}: a metrics "
                                "table from evaluate_predictions has rows and the columns label, metric, value")


def format_metrics_table(metrics: pd.DataFrame, *, auc_only: bool = False, decimals: int = 3,
                         max_rows: int = 12, caption: str | None = None) -> FormattedTable:
    """The tidy table of :func:`~cxr_embed.evaluate.metrics.evaluate_predictions` for people.

    Columns that say nothing are dropped (an empty ``operating_point``; ``subgroup``/``level``
    when every row is ``all``); ``value``, ``ci_low`` and ``ci_high`` become one
    ``"value [95% CI]"`` column. In Jupyter the result renders as the report's table.

    Parameters
    ----------
    metrics : DataFrame
        Columns of :data:`~cxr_embed.evaluate.metrics.METRICS_COLUMNS`.
    auc_only : bool, default=False
        Only the overall AUC of each label (and the macro AUC): the report's summary table.
    decimals : int, default=3
    max_rows : int, default=12
        Longer tables fold into ``<details>`` with a CSV download.
    caption : str, optional
        Default "ROC AUC" or "All metrics".

    Returns
    -------
    FormattedTable

    Raises
    ------
    InvalidInputError
        An empty table, or one without the ``label``, ``metric`` and ``value`` columns.

    Examples
    --------
    >>> import numpy as np
    >>> from cxr_embed.evaluate.metrics import evaluate_predictions
    >>> m = evaluate_predictions(np.array([0, 0, 1, 1, 0, 1]), np.array([.1, .4, .35, .8, .2, .9]),
    ...                          n_bootstrap=50, random_state=0)
    >>> list(format_metrics_table(m, auc_only=True).frame.columns)
    ['label', 'AUC [95% CI]', 'images', 'positives', 'patients']
    """
    m = pd.DataFrame(metrics)
    _check_metrics_table(m)
    if auc_only:
        m = m[(m["metric"] == "auc") & (m["subgroup"] == "all")]
        m = m[[c for c in ("label", "value", "ci_low", "ci_high", "n", "n_pos", "n_groups") if c in m]]
        m = m.rename(columns={"value": "auc"})
    else:
        if "operating_point" in m and (m["operating_point"].fillna("") == "").all():
            m = m.drop(columns="operating_point")
        if {"subgroup", "level"}.issubset(m.columns) and (m["subgroup"] == "all").all() and (m["level"] == "all").all():
            m = m.drop(columns=["subgroup", "level"])
    m.attrs = dict(metrics.attrs)
    frame = format_table(m, decimals=decimals)
    cap = caption if caption is not None else ("ROC AUC" if auc_only else "All metrics")
    return FormattedTable(frame, pd.DataFrame(metrics), cap, max_rows, "metrics.csv" if not auc_only else "auc.csv")
