"""One self-contained HTML report per run: a summary first, then figures, tables and images.

:class:`Report` assembles the page from sections: a summary box, figures (embedded as
compressed images: plots as palette PNGs, photographs such as saliency overlays as JPEGs,
both sized for the page), tables formatted for people (:mod:`cxr_embed.evaluate.formatting`;
long ones folded with their CSV attached) and image grids with captions. Every text is
HTML-escaped; the page has no external reference (no script, no remote font or image), so it
can be mailed or archived as one file and read offline. :func:`write_report` writes the page
of one model's evaluation; :meth:`cxr_embed.transfer.compare.ComparisonResult.write_report`
that of a comparison. The same fragments render in Jupyter (:func:`fragment_html`).

The figures themselves live in :mod:`cxr_embed.evaluate.figures` (re-exported here:
:func:`plot_roc`, :func:`plot_calibration`, :func:`plot_forest`, :func:`plot_importance`).

A model that used clinical variables beside the embeddings gets an importance section
(:meth:`Report.add_importance`, ``write_report(..., importance=table)``) before the images
(saliency maps): the table of :func:`cxr_embed.learn.clinical.clinical_importance`, computed by
the caller (this module knows no estimator), as bars with CIs and as a table.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..exceptions import InvalidInputError
from .figures import color_map, plot_calibration, plot_forest, plot_importance, plot_roc
from .formatting import FormattedTable, _check_metrics_table, format_metrics_table
from .metrics import metrics_to_json

__all__ = ["Report", "write_report", "fragment_html", "image_data_uri", "check_image", "check_importance",
           "importance_table", "plot_roc", "plot_calibration", "plot_forest", "plot_importance"]

logger = logging.getLogger(__name__)

#: Widest image of the page, in CSS pixels (the page is at most 1100 px wide).
PAGE_WIDTH = 1060
#: Photographs (saliency overlays) are shown in a grid; they are stored at most this wide.
PHOTO_WIDTH = 360
_MAX_IMAGE_BYTES = 50 * 1024 * 1024

_CSS = """
body{margin:1em auto;max-width:1100px;padding:0 1em;background:#fff}
.cxr{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;line-height:1.4}
.cxr h1{font-size:1.5em;margin:.3em 0 .1em}
.cxr h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.15em;margin:1.3em 0 .4em}
.cxr h3{font-size:1em;margin:1em 0 .3em}
.cxr .summary{background:#f2f7fb;border-left:4px solid #0072B2;padding:.4em 1em;margin:.5em 0}
.cxr .summary p{margin:.3em 0}
.cxr table{border-collapse:collapse;font-size:.85em;margin:.3em 0;font-variant-numeric:tabular-nums}
.cxr th,.cxr td{border-bottom:1px solid #e4e4e4;padding:.2em .6em;text-align:left;vertical-align:top}
.cxr th{background:#f3f3f3;font-weight:600}
.cxr .num{text-align:right;white-space:nowrap}
.cxr .tbl{margin:.5em 0 .9em}
.cxr .caption{font-weight:600;margin:.2em 0}
.cxr details summary{cursor:pointer;color:#005a9c;margin:.3em 0}
.cxr figure{margin:.3em 0;display:inline-block;vertical-align:top}
.cxr figcaption{font-size:.85em;color:#555;max-width:100%}
.cxr img{max-width:100%;height:auto;display:block}
.cxr .row{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.cxr .row figure{flex:1 1 420px;max-width:520px}
.cxr .grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:.8em}
.cxr .grid figure{margin:0}
.cxr .meta{color:#666;font-size:.85em}
.cxr .notes p{margin:.3em 0}
"""


# --------------------------------------------------------------------------- images
def _close(fig) -> None:
    """Drop the figure's canvas references (figures made here never touch pyplot's registry)."""
    fig.clf()


def _plot_bytes(image: bytes) -> tuple[bytes, str]:
    """A plot as a palette PNG (lines and text need few colours)."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        rgb = im.convert("RGB")
        if rgb.width > PAGE_WIDTH * 1.25:
            rgb = rgb.resize((int(PAGE_WIDTH * 1.25), round(rgb.height * PAGE_WIDTH * 1.25 / rgb.width)),
                             Image.Resampling.LANCZOS)
        pal = rgb.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        colours = pal.getpalette() or []
        # the octree rounds white to 254: keep the background the page's white
        pal.putpalette([255 if min(colours[i - i % 3:i - i % 3 + 3]) >= 250 else v for i, v in enumerate(colours)])
        out = io.BytesIO()
        pal.save(out, format="PNG", optimize=True)
    return out.getvalue(), "image/png"


def _photo_bytes(image: bytes, width: int = PHOTO_WIDTH) -> tuple[bytes, str]:
    """A photograph (an overlay on a radiograph) as a JPEG at most ``width`` pixels wide."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        rgb = im.convert("RGB")
        if rgb.width > width:
            rgb = rgb.resize((width, max(1, round(rgb.height * width / rgb.width))), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        rgb.save(out, format="JPEG", quality=82, optimize=True, progressive=True)
    return out.getvalue(), "image/jpeg"


def check_image(path: str | os.PathLike) -> Path:
    """The path of an image the report can embed, or an error saying what is wrong with it.

    Parameters
    ----------
    path : str or Path
        A regular PNG, JPEG or GIF file of at most 50 MB.

    Returns
    -------
    Path

    Raises
    ------
    FileNotFoundError
        Missing, or not a regular file.
    ValueError
        Another suffix, or too large.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image for the report does not exist (or is not a regular file); "
                                "pass an existing PNG or JPEG path.")
    if p.suffix.lower() not in (".png", ".jpg", ".jpeg", ".gif"):
        raise ValueError(f"{p}: report images must be PNG, JPEG or GIF; got suffix {p.suffix!r}.")
    if p.stat().st_size > _MAX_IMAGE_BYTES:
        raise ValueError(f"{p}: {p.stat().st_size} bytes is too large for a report image "
                         f"(limit {_MAX_IMAGE_BYTES}); save it smaller.")
    return p


def _read_image(path) -> bytes:
    return check_image(path).read_bytes()


def _figure_bytes(fig, dpi: int | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or fig.dpi, bbox_inches="tight")
    return buf.getvalue()


def image_data_uri(image: Any, *, kind: str = "plot") -> str:
    """A ``data:`` URI of a figure or an image file, compressed and sized for the page.

    Parameters
    ----------
    image : matplotlib.figure.Figure, str or Path
        A figure, or a PNG/JPEG/GIF file.
    kind : {"plot", "photo"}, default="plot"
        ``"plot"``: a palette PNG at most 1.25 x the page width; ``"photo"``: a JPEG at most
        :data:`PHOTO_WIDTH` pixels wide (saliency overlays, radiographs).

    Returns
    -------
    str

    Examples
    --------
    >>> from cxr_embed.evaluate.figures import plot_roc
    >>> image_data_uri(plot_roc([0, 1, 0, 1], [.2, .7, .4, .6])).startswith("data:image/png;base64,")
    True
    """
    if kind not in ("plot", "photo"):
        raise ValueError(f"kind must be 'plot' or 'photo', got {kind!r}")
    raw = _figure_bytes(image) if hasattr(image, "savefig") else _read_image(image)
    try:
        data, mime = _plot_bytes(raw) if kind == "plot" else _photo_bytes(raw)
    except OSError as e:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"{image}: not a decodable image ({e}); pass a PNG or JPEG file.") from e
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_html(image: Any, caption: str | None, *, kind: str = "plot", alt: str | None = None) -> str:
    uri = image_data_uri(image, kind=kind)
    cap = html.escape(caption) if caption else ""
    alt_text = html.escape(alt if alt is not None else (caption or "figure"))
    return (f'<figure><img alt="{alt_text}" src="{uri}">'
            + (f"<figcaption>{cap}</figcaption>" if cap else "") + "</figure>")


def fragment_html(parts: Sequence[str]) -> str:
    """HTML fragments wrapped for Jupyter: the report's style, scoped to a ``.cxr`` element.

    Parameters
    ----------
    parts : list of str
        Trusted HTML built by this package (already escaped).

    Returns
    -------
    str

    Examples
    --------
    >>> fragment_html(["<p>x</p>"]).startswith('<div class="cxr"><style>')
    True
    """
    css = _CSS.replace("body{", ".cxr-page{")  # never restyle the notebook's body
    return f'<div class="cxr"><style>{css}</style>' + "".join(parts) + "</div>"


# --------------------------------------------------------------------------- importance
_IMPORTANCE_COLUMNS = ("feature", "importance", "ci_low", "ci_high")


def check_importance(importance: Any) -> dict[str | None, pd.DataFrame]:
    """Importance tables by label (``None`` for a single table), checked before anything is written.

    Parameters
    ----------
    importance : DataFrame or dict of str -> DataFrame
        The table of :func:`cxr_embed.learn.clinical.clinical_importance` (one label), or one
        table per label.

    Returns
    -------
    dict of str or None -> DataFrame

    Raises
    ------
    InvalidInputError
        Not a table (or a dict of tables), empty, or without the columns ``feature``,
        ``importance``, ``ci_low``, ``ci_high``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"feature": ["image"], "importance": [0.2], "ci_low": [0.1], "ci_high": [0.3]})
    >>> list(check_importance(t)), list(check_importance({"opacity": t}))
    ([None], ['opacity'])
    """
    if isinstance(importance, pd.DataFrame):
        tables: dict[str | None, Any] = {None: importance}
    elif isinstance(importance, Mapping):
        tables = {str(k): v for k, v in importance.items()}
    else:
        raise InvalidInputError(f"importance must be a DataFrame from cxr_embed.clinical_importance or a dict label -> "
                                f"DataFrame; got {type(importance).__name__}")
    if not tables:
        raise InvalidInputError("importance is an empty dict; pass None for no importance section")
    for label, t in tables.items():
        where = "importance" if label is None else f"importance[{label!r}]"
        if not isinstance(t, pd.DataFrame):
            raise InvalidInputError(f"{where} must be a DataFrame, got {type(t).__name__}")
        missing = [c for c in _IMPORTANCE_COLUMNS if c not in t.columns]
        if missing or t.empty:
            raise InvalidInputError(f"{where} has no column(s) {missing} or no rows (it has {list(t.columns)}); "
                                    "fix: pass the table of cxr_embed.clinical_importance")
    return tables


def importance_table(table: pd.DataFrame, *, caption: str | None = None, csv_name: str = "importance.csv",
                     max_rows: int = 20) -> FormattedTable:
    """An importance table for people: block, kind, AUC lost [CI], held-out AUC, folds.

    Parameters
    ----------
    table : DataFrame of shape (n_blocks, n_columns)
        From :func:`cxr_embed.learn.clinical.clinical_importance`.
    caption : str, optional
    csv_name : str, default="importance.csv"
        Name of the attached CSV (the unformatted numbers).
    max_rows : int, default=20
        Longer tables fold.

    Returns
    -------
    FormattedTable

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"feature": ["image", "age"], "kind": ["image", "numeric"], "importance": [0.2, 0.0],
    ...                   "ci_low": [0.1, -0.01], "ci_high": [0.3, 0.01], "n_folds": [5, 5]})
    >>> importance_table(t).frame.columns.tolist()
    ['block', 'kind', 'AUC lost [95% CI]', 'folds']
    """
    cols = [c for c in ("feature", "kind", "n_columns", "importance", "ci_low", "ci_high", "baseline_auc", "n_folds")
            if c in table.columns]
    t = table[cols].copy()
    t.attrs = dict(table.attrs)
    level = float(table.attrs.get("ci", 0.95))
    rename = {"feature": "block", "n_columns": "columns", f"importance [{level:.0%} CI]": f"AUC lost [{level:.0%} CI]",
              "baseline_auc": "held-out AUC", "n_folds": "folds"}
    return FormattedTable.from_frame(t, caption=caption, max_rows=max_rows, csv_name=csv_name, rename=rename)


def _importance_text(table: pd.DataFrame) -> str:
    a = table.attrs
    how = (f" ({a['n_folds']} folds, {a['n_permutations']} shuffles per block and fold)"
           if "n_folds" in a and "n_permutations" in a else "")
    ci = f"{float(a.get('ci', 0.95)):.0%}"
    return (f"Permutation importance on held-out patient-grouped folds{how}: the ROC AUC the model loses when one "
            "block is shuffled among the test images. The image is one block (all its embedding columns move "
            f"together). {ci} CI: t interval over the folds with the Nadeau & Bengio correction. Near zero or "
            "below: the model does not rely on it; correlated blocks share importance.")


# --------------------------------------------------------------------------- page
class Report:
    """An HTML report, built section by section and written as one self-contained file.

    Parameters
    ----------
    title : str
        Page title and heading.
    subtitle : str, optional
        A line under the heading (default: the library version and the time, UTC).

    Examples
    --------
    >>> import tempfile, pandas as pd
    >>> page = Report("demo <1>")
    >>> page.add_summary(["Model A is best."])
    >>> page.add_section("Tables")
    >>> page.add_table(pd.DataFrame({"auc": [0.91234]}), caption="AUC")
    >>> path = page.write(tempfile.mkdtemp())
    >>> text = path.read_text()
    >>> "demo &lt;1&gt;" in text and "0.912" in text
    True
    """

    def __init__(self, title: str, *, subtitle: str | None = None):
        from .._version import __version__

        self.title = str(title)
        if subtitle is None:
            now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            subtitle = f"cxr_embed {__version__} · {now}"
        self.parts: list[str] = [f"<h1>{html.escape(self.title)}</h1>", f'<p class="meta">{html.escape(subtitle)}</p>']

    def add_summary(self, sentences: str | Sequence[str]) -> None:
        """The answer first: a highlighted box of one paragraph per sentence."""
        paras = [sentences] if isinstance(sentences, str) else list(sentences)
        if paras:
            self.parts.append('<div class="summary">' + "".join(f"<p>{html.escape(str(s))}</p>" for s in paras)
                              + "</div>")

    def add_section(self, heading: str, *, text: str | None = None) -> None:
        """A new section heading (``<h2>``), with an optional line of text under it."""
        self.parts.append(f"<h2>{html.escape(str(heading))}</h2>")
        if text:
            self.parts.append(f'<p class="meta">{html.escape(str(text))}</p>')

    def add_subsection(self, heading: str) -> None:
        """A heading inside a section (``<h3>``)."""
        self.parts.append(f"<h3>{html.escape(str(heading))}</h3>")

    def add_text(self, paragraphs: str | Sequence[str], *, css_class: str = "notes") -> None:
        """Paragraphs of text (escaped)."""
        paras = [paragraphs] if isinstance(paragraphs, str) else list(paragraphs)
        self.parts.append(f'<div class="{html.escape(css_class)}">'
                          + "".join(f"<p>{html.escape(str(p))}</p>" for p in paras) + "</div>")

    def add_figure(self, figure: Any, caption: str | None = None, *, kind: str = "plot") -> None:
        """One figure (a matplotlib ``Figure`` or an image path) across the page."""
        self.parts.append(_figure_html(figure, caption, kind=kind))

    def add_figures(self, figures: Sequence[tuple[Any, str]], *, kind: str = "plot") -> None:
        """Figures side by side (e.g. ROC beside calibration), wrapping on narrow screens."""
        self.parts.append('<div class="row">' + "".join(_figure_html(f, c, kind=kind) for f, c in figures) + "</div>")

    def add_gallery(self, images: Mapping[str, Any]) -> None:
        """Photographs (saliency overlays) in a grid, each with its caption; stored as small JPEGs."""
        if images:
            self.parts.append('<div class="grid">'
                              + "".join(_figure_html(p, str(c), kind="photo") for c, p in images.items()) + "</div>")

    def add_table(self, table: pd.DataFrame | FormattedTable, caption: str | None = None, *,
                  max_rows: int = 12, csv_name: str | None = None) -> None:
        """A table formatted for people (:func:`~cxr_embed.evaluate.formatting.format_table`), folded when long.

        A :class:`~cxr_embed.evaluate.formatting.FormattedTable` is shown as it is (its own
        caption unless ``caption`` is given).
        """
        if not isinstance(table, FormattedTable):
            name = csv_name or (_slug(caption) + ".csv" if caption else "table.csv")
            table = FormattedTable.from_frame(pd.DataFrame(table), caption=caption, max_rows=max_rows, csv_name=name)
        elif caption is not None:
            table = FormattedTable(table.frame, table.data, caption, table.max_rows, table.csv_name)
        self.parts.append(table.to_html())

    def add_html(self, fragment: str) -> None:
        """Raw HTML built by this package's helpers (never user text: escape that first)."""
        self.parts.append(fragment)

    def add_evaluation(self, metrics: pd.DataFrame, *, heading: str = "ROC AUC", color: str | None = None,
                       text: str | None = None) -> None:
        """The evaluation of one model: a forest plot of its AUC per label first, then the AUC table."""
        self.add_section(heading, text=text)
        auc = metrics[(metrics["metric"] == "auc") & (metrics["subgroup"] == "all")] if len(metrics) else metrics
        if auc["value"].notna().any():
            fig = plot_forest(auc.rename(columns={"value": "auc"}), hue=None, panel=None, width=7.0, color=color)
            self.add_figure(fig, "AUC per label with its confidence interval (dashed: chance)")
            _close(fig)
        unit, ci = metrics.attrs.get("bootstrap_unit"), metrics.attrs.get("ci")
        if unit and ci:
            self.add_text(f"{ci:.0%} CI by {unit}-level bootstrap ({metrics.attrs.get('n_bootstrap')} resamples).",
                          css_class="meta")
        self.add_table(format_metrics_table(metrics, auc_only=True))

    def add_importance(self, importance: pd.DataFrame | Mapping[str, pd.DataFrame], *,
                       heading: str = "Importance of the image and of each clinical variable",
                       text: str | None = None, out: str | os.PathLike | None = None) -> None:
        """A section on what the model relies on: bars with CIs, then the table, per label.

        Parameters
        ----------
        importance : DataFrame or dict of str -> DataFrame
            The table of :func:`cxr_embed.learn.clinical.clinical_importance` (computed by the
            caller, on held-out folds), or one per label.
        heading : str
        text : str, optional
            A line under the heading; default: how the importance was measured (from the
            table's ``attrs``: folds, shuffles, CI level).
        out : str or Path, optional
            Folder that receives ``importance.png`` and ``importance.csv`` (one per label,
            ``importance_<label>.*``, for a dict of several).

        Raises
        ------
        InvalidInputError
            See :func:`check_importance`.
        """
        tables = check_importance(importance)
        first = next(iter(tables.values()))
        self.add_section(heading, text=text if text is not None else _importance_text(first))
        for label, t in tables.items():
            stem = "importance" if len(tables) == 1 else f"importance_{_slug(label)}"
            if label is not None and len(tables) > 1:
                self.add_subsection(str(label))
            title = "AUC lost when shuffled" + ("" if label is None else f": {label}")
            path = None if out is None else Path(out) / f"{stem}.png"
            fig = plot_importance(t, path, title=title)
            base = t.attrs.get("baseline_auc", t["baseline_auc"].iloc[0] if "baseline_auc" in t.columns else None)
            caption = ("Held-out ROC AUC lost when each block is shuffled, with its CI (0: not used)"
                       + (f"; held-out AUC {float(base):.3f} unshuffled" if base is not None and np.isfinite(base)
                          else ""))
            self.add_figure(path if path is not None else fig, caption)
            _close(fig)
            if out is not None:
                t.to_csv(Path(out) / f"{stem}.csv", index=False)
            self.add_table(importance_table(t, csv_name=f"{stem}.csv"))

    def to_html(self, *, fragment: bool = False) -> str:
        """The page (or, with ``fragment=True``, the body for Jupyter) as a string."""
        if fragment:
            return fragment_html(self.parts)
        return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>",
            '<body><div class="cxr">',
            *self.parts,
            "</div></body></html>",
        ])

    def _repr_html_(self) -> str:
        return self.to_html(fragment=True)

    def write(self, out: str | os.PathLike) -> Path:
        """Write the page: ``out`` is a folder (receives ``index.html``) or an ``.html`` path.

        Returns
        -------
        Path
            The HTML file.
        """
        out = Path(out)
        path = out if out.suffix.lower() in (".html", ".htm") else out / "index.html"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        logger.info("wrote report %s (%d bytes)", path, path.stat().st_size)
        return path


def _slug(text: str) -> str:
    s = "".join(c.lower() if c.isalnum() else "_" for c in str(text)).strip("_")
    return "_".join(filter(None, s.split("_")))[:60] or "table"


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
    summary: str | Sequence[str] | None = None,
    importance: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
    importance_note: str | None = None,
) -> Path:
    """Write one self-contained HTML report of one model's evaluation.

    The page reads top to bottom: the summary (when given); the AUC per label as a forest
    plot, then as a table; the ROC and calibration plots side by side; further tables; the
    importance of the image and of each clinical variable (when given); images (saliency
    maps) in a grid with their captions; notes; and the full metrics table, folded.

    Parameters
    ----------
    out_dir : str or Path
        Created if needed. Receives ``index.html``, ``metrics.json`` (when ``metrics`` is
        given), ``roc.png`` and ``calibration.png`` (when ``y_true``/``y_score`` are given).
    title : str
        Report heading (HTML-escaped, like every text).
    metrics : DataFrame, optional
        Tidy table from :func:`cxr_embed.evaluate.metrics.evaluate_predictions`.
    y_true, y_score : array-like of shape (n_images,) or (n_images, n_labels), optional
        Labels (NaN = missing) and probabilities for the ROC and calibration plots.
    labels : list of str, optional
        Label names for the plots.
    tables : dict of str -> DataFrame, optional
        Further tables (e.g. a model comparison), shown under their names, formatted for
        people (:func:`~cxr_embed.evaluate.formatting.format_table`); long ones fold.
    images : dict of str -> path, optional
        Further images (e.g. saliency overlays): caption -> PNG/JPEG path, shown in a grid as
        small JPEGs.
    notes : str or list of str, optional
        Free text paragraphs (e.g. data provenance, caveats).
    summary : str or list of str, optional
        Sentences shown first, in a box (the answer the reader came for).
    importance : DataFrame or dict of str -> DataFrame, optional
        For a model that used clinical variables beside the embeddings: the table of
        :func:`cxr_embed.learn.clinical.clinical_importance` (each clinical variable and the
        image block, AUC lost on held-out folds with CIs), or one per label. The caller computes
        it (this module fits nothing); shown as bars (:func:`plot_importance`, written to
        ``importance.png``) and a table (``importance.csv``), just before the images.
    importance_note : str, optional
        The line under the importance heading (default: how it was measured, from the table's
        ``attrs``), e.g. which data and folds it comes from.

    Returns
    -------
    Path
        Path of ``index.html``.

    Raises
    ------
    InvalidInputError
        ``importance`` is not an importance table (see :func:`check_importance`); ``y_true`` and
        ``y_score`` are not both given, or have no rows or different numbers of rows; ``metrics``
        is empty or not a metrics table.
    FileNotFoundError, ValueError
        An image is missing or unusable (see :func:`check_image`).

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
    if importance is not None:
        check_importance(importance)  # a malformed table fails before anything is written
    for path in (images or {}).values():
        check_image(path)
    if metrics is not None:
        _check_metrics_table(pd.DataFrame(metrics))  # an empty or foreign table fails before anything is written
    if (y_true is None) != (y_score is None):
        raise InvalidInputError("y_true and y_score go together: pass both for the ROC and calibration plots, or neither")
    if y_true is not None and (len(y_true) == 0 or len(y_true) != len(y_score)):
        raise InvalidInputError(f"y_true has {len(y_true)} rows and y_score {len(y_score)}: the plots need the same, "
                                "non-zero number of rows (no rows: pass neither)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = Report(title)
    if summary:
        page.add_summary(summary)
    if metrics is not None:
        metrics_to_json(metrics, out / "metrics.json")
        if {"label", "metric", "subgroup", "value"}.issubset(metrics.columns) and \
                ((metrics["metric"] == "auc") & (metrics["subgroup"] == "all")).any():
            page.add_evaluation(metrics)
    if y_true is not None and y_score is not None:
        page.add_section("ROC and calibration")
        names = _label_names(y_true, y_score, labels)
        colors = color_map(names)
        _close(plot_roc(y_true, y_score, labels=labels, path=out / "roc.png", colors=colors))
        figs = [(out / "roc.png", "ROC curves")]
        S = np.asarray(y_score, dtype=float)
        if np.nanmin(S) >= 0 and np.nanmax(S) <= 1:
            _close(plot_calibration(y_true, y_score, labels=labels, path=out / "calibration.png", colors=colors))
            figs.append((out / "calibration.png", "Calibration (reliability curve)"))
        page.add_figures(figs)
    for name, df in (tables or {}).items():
        page.add_section(str(name))
        page.add_table(df if isinstance(df, FormattedTable) else pd.DataFrame(df), csv_name=_slug(name) + ".csv")
    if importance is not None:
        page.add_importance(importance, text=importance_note, out=out)
    if images:
        page.add_section("Images")
        page.add_gallery(images)
    if notes:
        page.add_section("Notes")
        page.add_text(notes)
    if metrics is not None:
        page.add_section("All metrics")
        page.add_table(format_metrics_table(metrics, max_rows=0, caption="All metrics"))
    return page.write(out)


def _label_names(y_true, y_score, labels) -> list[str]:
    if labels is not None:
        return [str(x) for x in labels]
    if hasattr(y_true, "columns"):
        return [str(c) for c in y_true.columns]
    n = np.asarray(y_score, dtype=float).reshape(len(y_score), -1).shape[1]
    return ["y"] if n == 1 else [f"label_{j}" for j in range(n)]
