"""ROC and calibration plots (PNG) and one self-contained HTML report per run.

Plots are drawn on :class:`matplotlib.figure.Figure` objects with an explicit
``FigureCanvasAgg``: no pyplot, no global backend switch, nothing happens on import,
and it works on headless machines. The HTML file embeds its images as base64 data URIs and
has no external references, so it can be mailed or archived as one file; the PNGs and a
``metrics.json`` (see :func:`cxr_embed.evaluate.metrics.metrics_to_json`) are written beside it.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .metrics import metrics_to_json

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_roc", "plot_calibration", "write_report"]

logger = logging.getLogger(__name__)


def _figure(figsize=(5.0, 5.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


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
        keep = np.isfinite(Y[:, j])
        out.append((str(name), Y[keep, j].astype(int), S[keep, j]))
    return out


def _save(fig, path) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", bbox_inches="tight")
        logger.info("wrote %s", path)


def plot_roc(y_true: ArrayLike, y_score: ArrayLike, *, labels: Sequence[str] | None = None,
             path: str | os.PathLike | None = None, title: str = "ROC curves") -> "Figure":
    """ROC curve of every label on one axes, AUC in the legend.

    Parameters
    ----------
    y_true : array-like of shape (n_images,) or (n_images, n_labels)
        0/1 with NaN for missing labels (dropped per label).
    y_score : array-like, same shape
    labels : list of str, optional
    path : str or Path, optional
        Where to save the PNG.
    title : str

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

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, y, s in _columns(y_true, y_score, labels):
        if y.size == 0 or y.min() == y.max():
            logger.warning("plot_roc: label %r has a single class; no curve drawn", name)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
    return fig


def plot_calibration(y_true: ArrayLike, y_prob: ArrayLike, *, labels: Sequence[str] | None = None, n_bins: int = 10,
                     path: str | os.PathLike | None = None, title: str = "Calibration") -> "Figure":
    """Reliability curve of every label (equal-width bins), with the diagonal.

    Parameters
    ----------
    y_true : array-like of shape (n_images,) or (n_images, n_labels)
    y_prob : array-like, same shape; probabilities in [0, 1]
    labels : list of str, optional
    n_bins : int, default=10
    path : str or Path, optional
    title : str

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

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect")
    for name, y, p in _columns(y_true, y_prob, labels):
        if y.size == 0:
            continue
        curve = reliability_curve(y, p, n_bins=n_bins)
        ece = expected_calibration_error(y, p, n_bins=n_bins)
        ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", markersize=3, linewidth=1.5,
                label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Mean predicted probability")
    ax.set_ylabel("Observed fraction of positives")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    _save(fig, path)
    return fig


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#555}
img{max-width:480px}.meta{color:#666;font-size:.85em}.notes p{margin:.3em 0}
"""


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, na_rep="", float_format=lambda v: f"{v:.4f}", escape=True)


def _img_html(png: Path, caption: str) -> str:
    suffix = Path(png).suffix.lower()
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(suffix)
    if mime is None:
        raise ValueError(f"{png}: report images must be PNG, JPEG or GIF; got suffix {suffix!r}.")
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    cap = html.escape(caption)
    return (f'<figure><img alt="{cap}" src="data:{mime};base64,{data}">'
            f"<figcaption>{cap}</figcaption></figure>")


def _auc_summary(metrics: pd.DataFrame) -> pd.DataFrame | None:
    need = {"label", "metric", "subgroup", "value"}
    if not need.issubset(metrics.columns):
        return None
    auc = metrics[(metrics["metric"] == "auc") & (metrics["subgroup"] == "all")]
    if auc.empty:
        return None
    cols = [c for c in ("label", "value", "ci_low", "ci_high", "n", "n_pos", "n_groups") if c in auc]
    return auc[cols].rename(columns={"value": "auc"})


def write_report(
    out_dir: str | os.PathLike,
    *,
    title: str,
    metrics: pd.DataFrame | None = None,
    y_true: ArrayLike | None = None,
    y_score: ArrayLike | None = None,
    labels: Sequence[str] | None = None,
    tables: Mapping[str, pd.DataFrame] | None = None,
    images: Mapping[str, Any] | None = None,
    notes: str | Sequence[str] | None = None,
) -> Path:
    """Write one self-contained HTML report with tables and plots.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed. Receives ``index.html``, ``metrics.json`` (when ``metrics`` is
        given), ``roc.png`` and ``calibration.png`` (when ``y_true``/``y_score`` are given).
    title : str
        Report heading (HTML-escaped, like every text).
    metrics : DataFrame, optional
        Tidy table from :func:`cxr_embed.evaluate.metrics.evaluate_predictions`; an AUC summary
        is shown first, then the full table.
    y_true, y_score : array-like of shape (n_images,) or (n_images, n_labels), optional
        Labels (NaN = missing) and probabilities for the ROC and calibration plots.
    labels : list of str, optional
        Label names for the plots.
    tables : dict of str -> DataFrame, optional
        Further tables (e.g. a model comparison), shown under their names.
    images : dict of str -> path, optional
        Further PNG files (e.g. saliency overlays), embedded under their names.
    notes : str or list of str, optional
        Free text paragraphs (e.g. data provenance, caveats).

    Returns
    -------
    Path
        Path of ``index.html``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from cxr_embed.evaluate.metrics import evaluate_predictions
    >>> y = np.array([0, 0, 1, 1, 0, 1]); p = np.array([.1, .4, .35, .8, .2, .9])
    >>> m = evaluate_predictions(y, p, n_bootstrap=50, random_state=0)
    >>> path = write_report(tempfile.mkdtemp(), title="demo", metrics=m, y_true=y, y_score=p)
    >>> path.name
    'index.html'
    """
    from .._version import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">cxr_embed {html.escape(__version__)} &middot; '
        f"{html.escape(_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}</p>",
    ]
    if notes:
        paras = [notes] if isinstance(notes, str) else list(notes)
        parts.append('<h2>Notes</h2><div class="notes">')
        parts += [f"<p>{html.escape(str(p))}</p>" for p in paras]
        parts.append("</div>")
    if metrics is not None:
        metrics_to_json(metrics, out / "metrics.json")
        summary = _auc_summary(metrics)
        if summary is not None:
            unit = metrics.attrs.get("bootstrap_unit")
            ci = metrics.attrs.get("ci")
            parts.append("<h2>ROC AUC</h2>")
            if unit and ci:
                parts.append(f'<p class="meta">{html.escape(f"{ci:.0%}")} CI by {html.escape(str(unit))}-level '
                             f'bootstrap ({html.escape(str(metrics.attrs.get("n_bootstrap")))} resamples).</p>')
            parts.append(_table_html(summary))
    figures = []
    if y_true is not None and y_score is not None:
        plot_roc(y_true, y_score, labels=labels, path=out / "roc.png")
        figures.append((out / "roc.png", "ROC curves"))
        S = np.asarray(y_score, dtype=float)
        if np.nanmin(S) >= 0 and np.nanmax(S) <= 1:
            plot_calibration(y_true, y_score, labels=labels, path=out / "calibration.png")
            figures.append((out / "calibration.png", "Calibration (reliability curve)"))
    if figures:
        parts.append("<h2>Plots</h2>")
        parts += [_img_html(p, cap) for p, cap in figures]
    for name, df in (tables or {}).items():
        parts.append(f"<h2>{html.escape(str(name))}</h2>")
        parts.append(_table_html(pd.DataFrame(df)))
    if images:
        parts.append("<h2>Images</h2>")
        for name, path in images.items():
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"{p}: image {name!r} for the report does not exist; pass an existing PNG path.")
            parts.append(_img_html(p, str(name)))
    if metrics is not None:
        parts.append("<h2>All metrics</h2>")
        parts.append(_table_html(metrics))
    parts.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    logger.info("wrote report %s", index)
    return index
