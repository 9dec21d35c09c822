"""The report's figures: one palette for every plot, the forest plot, ROC and calibration curves,
the importance bars of the image and the clinical variables.

Every function draws on a :class:`matplotlib.figure.Figure` with an explicit
``FigureCanvasAgg``: no pyplot, no global backend switch, nothing happens on import, and it
works on headless machines. Each returns the figure and writes a PNG when given ``path``.

Colours follow one mapping, name -> colour (:func:`color_map`), built once per report and
passed to every plot as ``colors=``, so an approach has the same colour in the forest plot,
the ROC curves and the calibration curves. Legends sit outside the axes, under them, so
they never cover a curve.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["PALETTE", "color_map", "plot_forest", "plot_roc", "plot_calibration", "plot_importance"]

logger = logging.getLogger(__name__)

#: Qualitative colours, in the order names receive them: Okabe & Ito's colour-blind-safe set
#: (without its yellow, too pale on white), then further distinct hues.
PALETTE: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                            "#8C564B", "#7F7F7F", "#9467BD", "#BCBD22", "#17BECF")


def color_map(names: Iterable[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """One colour per name, stable across figures: pass the result to every plot as ``colors=``.

    Parameters
    ----------
    names : iterable of str
        In the order they should take the palette's colours (duplicates ignored).
    colors : dict of str -> str, optional
        Colours already fixed (kept); new names take the first palette colours not yet used,
        cycling when there are more names than colours.

    Returns
    -------
    dict of str -> str

    Examples
    --------
    >>> color_map(["rf", "logreg"])
    {'rf': '#0072B2', 'logreg': '#D55E00'}
    >>> color_map(["rf", "knn"], colors={"rf": "#000000"})
    {'rf': '#000000', 'knn': '#0072B2'}
    """
    out = dict(colors or {})
    free = [c for c in PALETTE if c not in out.values()] or list(PALETTE)
    k = 0
    for name in names:
        name = str(name)
        if name not in out:
            out[name] = free[k % len(free)]
            k += 1
    return out


def _figure(figsize=(5.0, 5.0), dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
        logger.info("wrote %s", path)


def _columns(y_true, y_score, labels) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, y, score) per label with missing labels dropped."""
    Y = np.asarray(y_true.to_numpy() if hasattr(y_true, "to_numpy") else y_true, dtype=float)
    S = np.asarray(y_score.to_numpy() if hasattr(y_score, "to_numpy") else y_score, dtype=float)
    if Y.ndim == 1:
        Y, S = Y[:, None], S.reshape(-1, 1)
    if Y.shape != S.shape:
        raise ValueError(f"y_true has shape {Y.shape} but y_score has {S.shape}; they must match.")
    if labels is None:
        labels = [str(c) for c in y_true.columns] if hasattr(y_true, "columns") else (
            ["y"] if Y.shape[1] == 1 else [f"label_{j}" for j in range(Y.shape[1])])
    if len(labels) != Y.shape[1]:
        raise ValueError(f"{len(labels)} label names for {Y.shape[1]} label columns.")
    out = []
    for j, name in enumerate(labels):
        keep = np.isfinite(Y[:, j]) & np.isfinite(S[:, j])
        out.append((str(name), Y[keep, j].astype(int), S[keep, j]))
    return out


def _legend_below(ax, n: int) -> None:
    """The axes' legend under the axes (outside them), one entry per line."""
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.13), fontsize="small", frameon=False,
              ncols=1 if n > 3 else max(n, 1), borderaxespad=0.0)


def plot_roc(y_true: ArrayLike, y_score: ArrayLike, *, labels: Sequence[str] | None = None,
             path: str | os.PathLike | None = None, title: str = "ROC curves",
             colors: Mapping[str, str] | None = None) -> "Figure":
    """ROC curve of every column on one axes; AUC in the legend, under the axes.

    Parameters
    ----------
    y_true : array-like of shape (n_images,) or (n_images, n_labels)
        0/1 with NaN for missing labels (dropped per column).
    y_score : array-like, same shape
    labels : list of str, optional
        Name of each column (a label, or an approach when the columns are approaches).
    path : str or Path, optional
        Where to save the PNG.
    title : str
    colors : dict of str -> str, optional
        Colour per name (:func:`color_map`); default the palette in column order.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_roc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fig.axes[0].get_xlabel()
    'False positive rate (1 - specificity)'
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    cols = _columns(y_true, y_score, labels)
    colors = color_map([c[0] for c in cols], colors)
    fig = _figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, y, s in cols:
        if y.size == 0:
            logger.warning("plot_roc: %r has no row with both a label and a finite score; no curve drawn", name)
            continue
        if y.min() == y.max():
            logger.warning("plot_roc: %r has a single class; no curve drawn", name)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, color=colors[name], label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(True, color="0.92", linewidth=0.6)
    _legend_below(ax, len(cols) + 1)
    _save(fig, path)
    return fig


def plot_calibration(y_true: ArrayLike, y_prob: ArrayLike, *, labels: Sequence[str] | None = None, n_bins: int = 10,
                     path: str | os.PathLike | None = None, title: str = "Calibration",
                     colors: Mapping[str, str] | None = None) -> "Figure":
    """Reliability curve of every column (equal-width bins), with the diagonal; legend under the axes.

    Parameters
    ----------
    y_true : array-like of shape (n_images,) or (n_images, n_labels)
    y_prob : array-like, same shape; probabilities in [0, 1]
    labels : list of str, optional
    n_bins : int, default=10
    path : str or Path, optional
    title : str
    colors : dict of str -> str, optional
        Colour per name (:func:`color_map`).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_calibration([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9], n_bins=2)
    >>> fig.axes[0].get_ylabel()
    'Observed fraction of positives'
    """
    from .metrics import expected_calibration_error, reliability_curve

    cols = _columns(y_true, y_prob, labels)
    colors = color_map([c[0] for c in cols], colors)
    fig = _figure((5.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect")
    for name, y, p in cols:
        if y.size == 0:
            continue
        curve = reliability_curve(y, p, n_bins=n_bins)
        ece = expected_calibration_error(y, p, n_bins=n_bins)
        ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", markersize=3, linewidth=1.5,
                color=colors[name], label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Mean predicted probability")
    ax.set_ylabel("Observed fraction of positives")
    ax.set_title(title)
    ax.grid(True, color="0.92", linewidth=0.6)
    _legend_below(ax, len(cols) + 1)
    _save(fig, path)
    return fig


def _forest_frame(table: pd.DataFrame, estimate: str) -> tuple[pd.DataFrame, str]:
    """Accept the tidy metrics table too: its overall AUC rows, ``value`` as the estimate."""
    if estimate in table.columns or "metric" not in table.columns or "value" not in table.columns:
        return table, estimate
    t = table[table["metric"] == "auc"]
    if "subgroup" in t.columns:
        t = t[t["subgroup"] == "all"]
    return t, "value"


def _ordered(values: Iterable, first: Sequence[str] = ()) -> list[str]:
    seen = list(dict.fromkeys(str(v) for v in values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def plot_forest(table: pd.DataFrame, *, estimate: str = "auc", low: str = "ci_low", high: str = "ci_high",
                row: str = "label", hue: str | None = "approach", panel: str | None = "setting",
                colors: Mapping[str, str] | None = None, order: Sequence[str] | None = None,
                color: str | None = None, reference: float | None = 0.5, xlabel: str = "ROC AUC [95% CI]",
                title: str | None = None,
                width: float = 10.5, path: str | os.PathLike | None = None) -> "Figure":
    """Estimates with their intervals, one line per (row, hue), panels side by side.

    The comparison's answer at a glance: with the table of
    :func:`~cxr_embed.transfer.compare.compare_transfer`, one panel per setting (internal,
    external), one group of lines per label (``macro`` first), one coloured line per approach.
    Rows or panels missing from the table are left out; an estimate without an interval is a
    dot alone.

    Parameters
    ----------
    table : DataFrame
        One row per estimate with columns ``estimate``, ``low``, ``high``, ``row`` and, when
        not None, ``hue`` and ``panel``. The tidy table of
        :func:`~cxr_embed.evaluate.metrics.evaluate_predictions` is accepted as is (its overall
        ``auc`` rows, ``value`` as the estimate).
    estimate, low, high : str
        Column names of the estimate and its interval.
    row : str, default="label"
        Grouping of the lines (y axis); a ``macro`` group comes first.
    hue : str or None, default="approach"
        Colour of the lines (one per value, with a legend right of the panels); None: one colour.
    panel : str or None, default="setting"
        One panel per value, side by side, sharing the y axis; None: one panel.
    colors : dict of str -> str, optional
        Colour per hue value (:func:`color_map`), the same as the other figures'.
    color : str, optional
        The colour of every line when ``hue`` is None (default the palette's first).
    order : list of str, optional
        Order of the hue values within a group (top to bottom); default that of ``colors``,
        then of the table.
    reference : float or None, default=0.5
        A dashed vertical line (chance for an AUC).
    xlabel : str
    title : str, optional
    width : float, default=10.5
        Figure width in inches; the height follows the number of lines.
    path : str or Path, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"setting": ["internal", "internal", "external", "external"],
    ...                   "approach": ["rf", "logreg"] * 2, "label": "opacity",
    ...                   "auc": [0.87, 0.85, 0.80, 0.84], "ci_low": [0.82, 0.80, 0.72, 0.77],
    ...                   "ci_high": [0.91, 0.89, 0.87, 0.90]})
    >>> fig = plot_forest(t)
    >>> [ax.get_title() for ax in fig.axes]
    ['internal', 'external']
    """
    t, estimate = _forest_frame(pd.DataFrame(table), estimate)
    missing = [c for c in (estimate, low, high, row, hue, panel) if c is not None and c not in t.columns]
    if missing:
        raise ValueError(f"plot_forest: the table has no column(s) {missing}; it has {list(t.columns)}. "
                         "Pass estimate=, low=, high=, row=, hue=, panel= (None for no hue or panel).")
    if t.empty:
        raise ValueError("plot_forest: no rows to draw.")
    rows = _ordered(t[row], first=("macro",))
    hues = [None] if hue is None else _ordered(list(order or []) + list(colors or {}) + list(t[hue]))
    if hue is not None:
        present = set(t[hue].astype(str))
        hues = [h for h in hues if h in present]
    panels = [None] if panel is None else _ordered(t[panel], first=("internal", "external"))
    colors = color_map([h for h in hues if h is not None], colors)
    step = len(hues) + 1  # a blank line between groups
    n_lines = len(rows) * step - 1
    legend = hue is not None and len(hues) > 1
    height = 0.75 + 0.115 * n_lines + (0.25 if title else 0)
    fig = _figure((width, height))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    lo_all = np.nanmin(pd.to_numeric(t[low], errors="coerce").fillna(t[estimate]).to_numpy(float))
    x_min = min(lo_all, reference if reference is not None else lo_all) - 0.03
    y_of = {(r, h): -(gi * step + hi) for gi, r in enumerate(rows) for hi, h in enumerate(hues)}
    for ax, p in zip(axes, panels):
        sub = t if panel is None else t[t[panel].astype(str) == p]
        for gi in range(0, len(rows), 2):  # shaded bands tell the groups apart
            top = -(gi * step) + 0.5
            ax.axhspan(top - len(hues), top, color="0.95", zorder=0, linewidth=0)
        for rec in sub.itertuples(index=False):
            d = dict(zip(sub.columns, rec))
            h = None if hue is None else str(d[hue])
            y = y_of.get((str(d[row]), h))
            est = float(d[estimate]) if pd.notna(d[estimate]) else np.nan
            if y is None or not np.isfinite(est):
                continue
            c = colors.get(h, PALETTE[0]) if h is not None else (color or PALETTE[0])
            lo, hi_ = d[low], d[high]
            if pd.notna(lo) and pd.notna(hi_):
                ax.plot([float(lo), float(hi_)], [y, y], color=c, linewidth=1.5, solid_capstyle="butt")
            ax.plot([est], [y], marker="D" if str(d[row]) == "macro" else "o", markersize=4.5, color=c,
                    linestyle="none")
        if reference is not None:
            ax.axvline(reference, color="0.55", linestyle="--", linewidth=0.8)
        ax.set_xlim(x_min, 1.0)
        ax.set_ylim(-(n_lines - 1) - 0.6, 0.6)
        ax.set_xlabel(xlabel, fontsize="small")
        ax.tick_params(axis="both", labelsize="small", length=2)
        ax.grid(True, axis="x", color="0.88", linewidth=0.6)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if p is not None:
            ax.set_title(p, fontsize="medium", pad=3)
    axes[0].set_yticks([-(gi * step + (len(hues) - 1) / 2) for gi in range(len(rows))])
    axes[0].set_yticklabels(rows)
    for lab in axes[0].get_yticklabels():
        if lab.get_text() == "macro":
            lab.set_fontweight("bold")
    right = 0.98
    if legend:
        import textwrap

        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colors[h], marker="o", linewidth=1.5, markersize=4.5) for h in hues]
        names = [textwrap.fill(h, 30) for h in hues]
        right = 1 - 2.6 / width
        fig.legend(handles, names, loc="center left", bbox_to_anchor=(right + 0.01, 0.5), fontsize="small",
                   frameon=False, title=hue, title_fontsize="small", alignment="left")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.subplots_adjust(left=0.11 * 10.5 / width, right=right, top=1 - (0.3 + (0.25 if title else 0)) / height,
                        bottom=0.45 / height, wspace=0.05)
    _save(fig, path)
    return fig


def plot_importance(table: pd.DataFrame, path: str | os.PathLike | None = None, *,
                    title: str = "Importance (AUC lost when shuffled)") -> "Figure":
    """Horizontal bars with CIs of an importance table, most important on top.

    The table of :func:`cxr_embed.learn.clinical.clinical_importance`: one bar per block (the
    image as a whole, each clinical variable), its mean held-out AUC lost when shuffled and the
    interval. The image block takes the palette's first colour, clinical variables its second.

    Parameters
    ----------
    table : DataFrame of shape (n_blocks, >= 4)
        Columns ``feature``, ``importance``, ``ci_low``, ``ci_high`` (and ``kind``, optional:
        ``"image"`` rows are coloured apart), most important first.
    path : str or Path, optional
        Write a PNG there (no pyplot state is touched).
    title : str

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        A required column is missing, or the table is empty.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"feature": ["image", "age"], "importance": [0.2, 0.01],
    ...                   "ci_low": [0.1, -0.01], "ci_high": [0.3, 0.03]})
    >>> plot_importance(t).axes[0].get_xlabel()
    'ROC AUC lost'
    """
    t = pd.DataFrame(table)
    missing = [c for c in ("feature", "importance", "ci_low", "ci_high") if c not in t.columns]
    if missing:
        raise ValueError(f"plot_importance: the table has no column(s) {missing}; it has {list(t.columns)}. "
                         "Pass the table of cxr_embed.clinical_importance.")
    if t.empty:
        raise ValueError("plot_importance: no rows to draw.")
    t = t.iloc[::-1]
    fig = _figure(figsize=(5.5, 0.45 * len(t) + 1.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    est = t["importance"].to_numpy(dtype=float)
    lo = np.clip(est - t["ci_low"].to_numpy(dtype=float), 0, None)
    hi = np.clip(t["ci_high"].to_numpy(dtype=float) - est, 0, None)
    image = (t["kind"] == "image").to_numpy() if "kind" in t.columns else (t["feature"] == "image").to_numpy()
    ax.barh(t["feature"].astype(str), est, xerr=np.vstack([np.nan_to_num(lo), np.nan_to_num(hi)]),
            color=np.where(image, PALETTE[0], PALETTE[1]), capsize=3)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("ROC AUC lost")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return fig
