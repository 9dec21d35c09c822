"""Embedding audit: what else the embeddings encode, which shortcuts the label can ride on,
who the classifier fails, and whether an image's neighbours give its patient away.

Everything is computed from cached embeddings ``X`` and the manifest's metadata, with
patient-grouped cross-validation (no patient on both sides of a split) and patient-level
bootstrap confidence intervals (:func:`cxr_embed.evaluate.metrics.roc_auc_ci`). The probe
that reads attributes (and, by default, the label) from ``X`` is a ridge regression on
standardised features, fitted once per fold for all targets together, which keeps the audit
of 5,000 images x 1,280 dims well under a minute on two cores (``bench/audit.py``).
See ``docs/audit.md`` for what each number means and how to read a flag.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..exceptions import InvalidInputError, LeakageError, ManifestError
from ._audit_map import MAP_METHODS, embedding_map, plot_map
from ._audit_reid import reidentification
from ._audit_stats import _SHORTCUT_COLUMNS, _encoded_table, _fmt, _shortcuts
from .metrics import age_bands, subgroup_auc
from .metrics._bootstrap import _seed_from

__all__ = ["EmbeddingAudit", "audit_embeddings", "AUTO_ATTRIBUTES"]

logger = logging.getLogger(__name__)

#: Manifest columns audited by ``attributes="auto"`` when present with two or more values.
AUTO_ATTRIBUTES = ("sex", "age", "view", "site", "manufacturer", "modality", "frontal_lateral", "source")
_NUMERIC_NAMES = {"age"}
_MAX_LEVELS = 20
_MAP_COLOURS = ("label", "site", "view", "sex")


@dataclass(repr=False)
class EmbeddingAudit:
    """Result of :func:`audit_embeddings`: tidy tables and plain-language flags.

    Attributes
    ----------
    encoded : DataFrame
        How well the embeddings predict each attribute (out of fold): one row per
        ``(attribute, metric, level)`` with ``value, ci_low, ci_high, chance, shuffled, n,
        n_groups, encoded``. ``metric`` is ``auc`` (binary attribute), ``auc_ovr`` (one
        level vs the rest) and ``auc_macro`` (their mean; decides ``encoded``) for
        categorical attributes, ``r2`` (decides) and ``mae`` for numeric ones.
    shortcuts : DataFrame
        One row per attribute (and ``all attributes``): AUC of the label from the
        attribute alone (with CI), how well the embeddings encode the attribute, the
        classifier's AUC overall and within the attribute's strata, and ``flag``.
        Empty without a label.
    subgroups : DataFrame
        The classifier's out-of-fold AUC per level of each attribute, exactly
        :func:`~cxr_embed.evaluate.metrics.subgroup_auc` with ``random_state`` (columns
        ``attribute, level, auc, ci_low, ci_high, n, n_pos, n_groups``). Empty without a label.
    subgroup_gaps : DataFrame
        Largest AUC gap per attribute (``attribute, gap, best, worst, separated``;
        ``separated``: the two CIs do not overlap).
    reidentification : DataFrame
        Top-k rate at which an image's nearest cosine neighbour is another image of its
        patient, against chance (see ``docs/audit.md``).
    flags : list of str
        Plain-language warnings; empty when nothing crossed a threshold.
    predictions : DataFrame
        Per image: ``image_id`` (when the manifest has it), ``patient_id``, ``fold``,
        ``label`` and the classifier's out-of-fold ``score`` (NaN where unlabelled).
    map : DataFrame or None
        2-D map coordinates ``x, y`` with the colouring columns, or None.
    params : dict
        The settings the audit ran with (JSON-serialisable).
    """

    encoded: pd.DataFrame
    shortcuts: pd.DataFrame
    subgroups: pd.DataFrame
    subgroup_gaps: pd.DataFrame
    reidentification: pd.DataFrame
    flags: list = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    map: pd.DataFrame | None = None
    params: dict = field(default_factory=dict)

    _TABLES = ("encoded", "shortcuts", "subgroups", "subgroup_gaps", "reidentification")

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """The tables by name (``flags`` as a one-column table); predictions and map if present."""
        frames = {name: getattr(self, name) for name in self._TABLES}
        frames["flags"] = pd.DataFrame({"flag": list(self.flags)})
        if self.predictions is not None:
            frames["predictions"] = self.predictions
        if self.map is not None:
            frames["map"] = self.map
        return frames

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Tables (records), flags and params as JSON (NaN as null); also written to ``path``."""
        def records(df: pd.DataFrame) -> list:
            return json.loads(df.to_json(orient="records", double_precision=6))

        doc = {"format": "cxr_embed.audit", "version": 1, "params": self.params, "flags": list(self.flags)}
        doc.update({name: records(getattr(self, name)) for name in self._TABLES})
        text = json.dumps(doc, indent=1, default=str)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def write_maps(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``map_<colour>.png`` for label, site, view and sex (those present); returns paths."""
        if self.map is None:
            return {}
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        method = self.params.get("map_method", "")
        paths = {}
        for col in _MAP_COLOURS:
            if col in self.map.columns:
                path = out / f"map_{col}.png"
                plot_map(self.map[["x", "y"]].to_numpy(), self.map[col].to_numpy(),
                         title=f"{method} map coloured by {col}", path=path)
                paths[col] = path
        return paths

    def write(self, out_dir: str | os.PathLike, *, title: str = "Embedding audit") -> Path:
        """Write every table as CSV, ``audit.json``, the maps and an HTML page; returns ``index.html``.

        The page is built with :class:`cxr_embed.evaluate.report.Report` (one report style for the
        library): the flags first, then each part with its forest plot before its table.
        """
        from .figures import plot_forest
        from .report import Report, _close

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, df in self.to_frames().items():
            df.to_csv(out / f"{name}.csv", index=False)
        self.to_json(out / "audit.json")
        p = self.params
        page = Report(title)
        page.add_summary(self.flags or ["No flag: no attribute crossed the shortcut, subgroup-gap or "
                                        "re-identification thresholds (docs/audit.md)."])

        def forest(table, est, low, high, row, name, xlabel):
            t = table.dropna(subset=[est]).copy()
            if not len(t):
                return
            t["_row"] = t[row] if isinstance(row, str) else t[row].astype(str).agg(": ".join, axis=1).str.rstrip(": ")
            _close(plot_forest(t, estimate=est, low=low, high=high, row="_row", hue=None, panel=None,
                               xlabel=xlabel, width=7.5, path=out / name))
            page.add_figures([(out / name, xlabel)])

        page.add_section("What the embeddings encode")
        forest(self.encoded[self.encoded["metric"] == "auc"], "value", "ci_low", "ci_high",
               ["attribute", "level"], "forest_encoded.png", "AUC of the attribute from the embeddings [95% CI]")
        page.add_table(self.encoded, csv_name="encoded.csv")
        if len(self.shortcuts):
            page.add_section("Shortcut risk for the label")
            forest(self.shortcuts, "label_auc", "label_ci_low", "label_ci_high", "attribute",
                   "forest_shortcuts.png", "AUC of the label from the attribute alone [95% CI]")
            page.add_table(self.shortcuts, csv_name="shortcuts.csv")
            page.add_section("Subgroup performance")
            forest(self.subgroups, "auc", "ci_low", "ci_high", ["attribute", "level"],
                   "forest_subgroups.png", "Classifier AUC within the subgroup [95% CI]")
            page.add_table(self.subgroups, csv_name="subgroups.csv")
            page.add_table(self.subgroup_gaps, caption="Largest subgroup gaps", csv_name="subgroup_gaps.csv")
        page.add_section("Re-identification")
        page.add_table(self.reidentification, csv_name="reidentification.csv")
        maps = self.write_maps(out)
        if maps:
            page.add_section(f"2-D map ({p.get('map_method')})")
            page.add_figures([(path, f"coloured by {c}") for c, path in maps.items()])
        page.add_section("Notes")
        page.add_text([f"{p.get('n_images')} images of {p.get('n_patients')} patients, {p.get('dim')} dimensions; "
                       f"{p.get('cv')}-fold patient-grouped cross-validation (no patient on both sides), "
                       f"{p.get('ci', 0.95):.0%} CIs from {p.get('n_bootstrap')} patient-level bootstrap resamples.",
                       f"Probe: {p.get('probe')}; classifier of the label: {p.get('classifier')}.",
                       "How to read these tables: docs/audit.md."])
        return page.write(out)

    def _repr_html_(self) -> str:
        from html import escape

        parts = ["<div><strong>EmbeddingAudit</strong>"]
        parts.append("<ul>" + "".join(f"<li>{escape(f)}</li>" for f in self.flags) + "</ul>"
                     if self.flags else "<p>No flags.</p>")
        for name in self._TABLES:
            df = getattr(self, name)
            if len(df):
                parts.append(f"<h4>{escape(name)}</h4>")
                parts.append(df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3f}"))
        return "".join(parts) + "</div>"

    def __repr__(self) -> str:
        p = self.params
        return (f"EmbeddingAudit({p.get('n_images')} images, {p.get('n_patients')} patients, "
                f"attributes={p.get('attributes')}, label={p.get('label')!r}, flags={len(self.flags)})")


# --------------------------------------------------------------------------- inputs
def _column(manifest: pd.DataFrame, spec: Any, what: str, n: int) -> np.ndarray:
    if isinstance(spec, str):
        if spec not in manifest.columns:
            raise ManifestError(f"{what} column {spec!r} is not in the manifest; its columns are "
                                f"{list(manifest.columns)}; fix: pass {what}= one of them or an array of {n} values")
        return manifest[spec].to_numpy()
    arr = np.asarray(spec).ravel()
    if arr.shape[0] != n:
        raise ManifestError(f"{what} has {arr.shape[0]} values but X has {n} rows; pass one value per image")
    return arr


def _attribute_names(manifest: pd.DataFrame, attributes: Any, exclude: set) -> list[str]:
    if attributes == "auto":
        names = [c for c in AUTO_ATTRIBUTES if c in manifest.columns and c not in exclude
                 and manifest[c].dropna().nunique() >= 2]
    else:
        names = [attributes] if isinstance(attributes, str) else list(attributes)
        missing = [c for c in names if c not in manifest.columns]
        if missing:
            raise ManifestError(f"attribute column(s) {missing} are not in the manifest; its columns are "
                                f"{list(manifest.columns)}; fix: name existing columns or use attributes='auto'")
    return names


def _is_numeric(name: str, values: pd.Series) -> bool:
    num = pd.to_numeric(values, errors="coerce")
    if name in _NUMERIC_NAMES:
        return True
    return bool(num.notna().sum() == values.notna().sum() and num.nunique() > 10)


def _levels(values: pd.Series, min_count: int) -> pd.Series:
    """Categorical values as str, NaN kept, levels seen fewer than ``min_count`` times pooled as 'other'."""
    s = values.astype(object).where(values.notna(), None)
    s = s.map(lambda v: None if v is None else str(v))
    counts = s.value_counts()
    rare = set(counts[counts < min_count].index)
    if rare and len(counts) - len(rare) >= 1:
        s = s.map(lambda v: "other" if v in rare else v)
    return s


def _label_vector(manifest: pd.DataFrame, label: Any, n: int) -> tuple[np.ndarray, str]:
    name = label if isinstance(label, str) else "label"
    raw = pd.to_numeric(pd.Series(_column(manifest, label, "label", n)), errors="coerce").to_numpy(float)
    y = np.where(np.isin(raw, (0.0, 1.0)), raw, np.nan)  # uncertain (-1) and missing are left out
    known = y[np.isfinite(y)]
    if known.size == 0 or known.min() == known.max():
        raise ManifestError(f"label {name!r} needs images of both classes (0 and 1); got "
                            f"{int(np.nansum(known))} positives of {known.size} labelled images")
    return y, name


# --------------------------------------------------------------------------- folds and probe
def _folds(y: np.ndarray | None, groups: np.ndarray, cv: int, random_state: int) -> list:
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if not isinstance(cv, (int, np.integer)) or cv < 2:
        raise InvalidInputError(f"cv must be an int >= 2 (number of patient-grouped folds); got {cv!r}")
    if n_groups < cv:
        raise ManifestError(f"{n_groups} patients cannot fill {cv} patient-grouped folds; fix: lower cv")
    dummy = np.zeros((groups.shape[0], 1))
    if y is not None:
        strat = np.where(np.isfinite(y), y, -1.0)
        splitter = StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=random_state)
        folds = list(splitter.split(dummy, strat, groups))
    else:
        folds = list(GroupKFold(n_splits=cv, shuffle=True, random_state=random_state).split(dummy, None, groups))
    for tr, te in folds:
        shared = np.intersect1d(groups[tr], groups[te])
        if shared.size:  # a broken splitter must never reach the statistics
            raise LeakageError(f"{shared.size} patient(s) on both sides of a fold, e.g. {shared[:3].tolist()}; "
                               "fix: pass patient ids as groups")
    return folds


def _oof_ridge(X: np.ndarray, T: np.ndarray, folds: list, alpha: float) -> np.ndarray:
    """Out-of-fold predictions of one standardised ridge per fold and missingness pattern, all targets at once."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    P = np.full(T.shape, np.nan)
    observed = np.isfinite(T)
    patterns: dict[bytes, list[int]] = {}
    for j in range(T.shape[1]):
        patterns.setdefault(np.packbits(observed[:, j]).tobytes(), []).append(j)
    for tr, te in folds:
        for cols in patterns.values():
            rows = tr[observed[tr, cols[0]]]
            model = make_pipeline(StandardScaler(), Ridge(alpha=alpha * len(rows)))
            model.fit(X[rows], T[np.ix_(rows, cols)])
            P[np.ix_(te, cols)] = np.asarray(model.predict(X[te]), dtype=float).reshape(len(te), len(cols))
    return P


def _oof_estimator(estimator: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: list) -> np.ndarray:
    from sklearn.base import clone

    s = np.full(y.shape[0], np.nan)
    for tr, te in folds:
        tr = tr[np.isfinite(y[tr])]
        est = clone(estimator)
        if "groups" in inspect.signature(est.fit).parameters:
            est.fit(X[tr], y[tr].astype(int), groups=groups[tr])
        else:
            est.fit(X[tr], y[tr].astype(int))
        if hasattr(est, "predict_proba"):
            proba = np.asarray(est.predict_proba(X[te]), dtype=float)
            classes = list(getattr(est, "classes_", [0, 1]))
            s[te] = proba[:, classes.index(1)] if 1 in classes else 0.0
        else:
            s[te] = np.asarray(est.decision_function(X[te]), dtype=float).ravel()
    return s


def _strata(name: str, values: pd.Series, age_edges: Sequence[float]) -> np.ndarray:
    """Subgroup level per image: the value as str, age bands for age, quartiles for other numbers."""
    if _is_numeric(name, values):
        num = pd.to_numeric(values, errors="coerce")
        if name in _NUMERIC_NAMES:
            return age_bands(num.to_numpy(float), age_edges)
        bins = pd.qcut(num, 4, duplicates="drop")
        return bins.astype(str).where(num.notna(), "unknown").to_numpy(dtype=str)
    return values.astype(object).where(values.notna(), "unknown").astype(str).to_numpy()


# --------------------------------------------------------------------------- the audit
def audit_embeddings(
    X: ArrayLike,
    manifest: pd.DataFrame,
    *,
    label: str | ArrayLike | None = None,
    attributes: str | Sequence[str] = "auto",
    groups: str | ArrayLike = "patient_id",
    cv: int = 5,
    random_state: int = 0,
    estimator: Any = None,
    alpha: float = 2.0,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    margin: float = 0.05,
    encoded_auc: float = 0.7,
    encoded_r2: float = 0.1,
    min_level_count: int = 10,
    min_per_class: int = 5,
    age_edges: Sequence[float] = (0, 18, 40, 60, 80),
    reid_k: Sequence[int] = (1, 5),
    map: str | None = "pca",
) -> EmbeddingAudit:
    """Audit embeddings: encoded attributes, shortcut risk, subgroup AUCs, re-identification.

    Parameters
    ----------
    X : array-like of shape (n_images, dim)
        Embeddings, one row per manifest row, in the same order.
    manifest : DataFrame of shape (n_images, n_columns)
        Metadata (e.g. :func:`cxr_embed.load_manifest`): ``patient_id``, the attributes and the label.
    label : str or array-like of shape (n_images,), optional
        Label column (or values): 1/0, with -1 (uncertain) and NaN left out of every label
        statistic. Without a label only the encoded attributes and re-identification are computed.
    attributes : "auto" or list of str, default "auto"
        Metadata columns to audit; ``"auto"`` takes those of ``AUTO_ATTRIBUTES`` (sex, age,
        view, site, manufacturer, modality, frontal_lateral, source) that have two or more values.
        A column is numeric when it is ``age`` or has only numbers with more than 10 distinct values.
    groups : str or array-like of shape (n_images,), default "patient_id"
        Patient id column (or values): folds never split a patient, bootstraps resample patients.
    cv : int, default 5
        Patient-grouped folds (stratified on the label when there is one).
    random_state : int, default 0
        Seeds the folds, the attribute shuffles, the bootstraps and the map.
    estimator : scikit-learn classifier, optional
        Classifier of the label (cloned per fold, e.g. ``cxr_embed.make_classifier("logreg")``);
        default: the ridge probe that reads the attributes.
    alpha : float, default 2.0
        Ridge penalty per training image of the probe (standardised features); the fitted
        penalty is ``alpha * n_train``, so the shrinkage does not depend on the dataset size.
    n_bootstrap : int, default 1000
        Patient-level bootstrap resamples for every interval (0: no intervals, no flags).
    ci : float, default 0.95
        Coverage of the intervals.
    margin : float, default 0.05
        An attribute *predicts the label* when the lower CI bound of its AUC exceeds ``0.5 + margin``.
    encoded_auc, encoded_r2 : float, default 0.7 and 0.1
        The embeddings *encode* an attribute when the lower CI bound of its (macro) AUC exceeds
        ``encoded_auc`` (categorical) or that of its R² exceeds ``encoded_r2`` (numeric).
    min_level_count : int, default 10
        Categorical levels with fewer images are pooled as ``"other"`` for the probe and for
        the label-from-attribute scores (not for the subgroup table).
    min_per_class : int, default 5
        A subgroup needs this many positives and negatives for an AUC
        (``subgroup_auc(min_per_class=...)``); smaller ones are listed with NaN.
    age_edges : sequence of float, default (0, 18, 40, 60, 80)
        Age bands (:func:`cxr_embed.evaluate.metrics.age_bands`) for subgroups and shortcuts.
    reid_k : sequence of int, default (1, 5)
        Neighbour counts of the re-identification table.
    map : {"pca", "umap", "tsne", "auto"} or None, default "pca"
        2-D map of the embeddings (``"auto"``: UMAP when umap-learn is installed, else PCA);
        None skips it. See ``docs/audit.md`` for why PCA is the default.

    Returns
    -------
    EmbeddingAudit
        Tables ``encoded``, ``shortcuts``, ``subgroups``, ``subgroup_gaps``,
        ``reidentification``, the ``flags`` and the out-of-fold ``predictions``.

    Raises
    ------
    ManifestError
        When a named column is absent, lengths differ, the label has one class, or a
        categorical attribute has more than 20 levels.
    LeakageError
        If a fold ever put one patient on both sides (never with the built-in splitter).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> n = 300; patient = np.arange(n) // 2
    >>> view = np.where(rng.random(n // 2) < 0.5, "AP", "PA")[patient]
    >>> y = (rng.random(n) < np.where(view == "AP", 0.3, 0.7)).astype(float)
    >>> X = rng.normal(size=(n, 16)); X[:, 0] += 3 * (view == "AP")
    >>> m = pd.DataFrame({"patient_id": patient.astype(str), "view": view, "y": y})
    >>> audit = audit_embeddings(X, m, label="y", n_bootstrap=200, map=None)
    >>> bool(audit.shortcuts.set_index("attribute").loc["view", "flag"])
    True
    >>> audit.flags[0].startswith("Shortcut risk: view")
    True
    """
    if not isinstance(manifest, pd.DataFrame):
        raise ManifestError(f"manifest must be a pandas DataFrame (e.g. cxr_embed.load_manifest); got "
                            f"{type(manifest).__name__}")
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise InvalidInputError(f"X must be a 2-D array (n_images, dim) with at least 2 rows and 1 column; got shape "
                                f"{X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    if not np.all(np.isfinite(X)):
        raise InvalidInputError("X holds NaN or infinite values; re-extract those images or drop their rows")
    n = X.shape[0]
    if len(manifest) != n:
        raise ManifestError(f"manifest has {len(manifest)} rows but X has {n}; pass the manifest rows of the "
                            "embeddings, in the same order (e.g. store.load(backbone, manifest['image_id']))")
    if map is not None and map not in MAP_METHODS:
        raise InvalidInputError(f"map must be one of {sorted(MAP_METHODS)} or None; got {map!r}")
    manifest = manifest.reset_index(drop=True)
    g = pd.Series(_column(manifest, groups, "groups", n)).astype(str).to_numpy()
    y, label_name = (None, None) if label is None else _label_vector(manifest, label, n)
    exclude = {"image_id", "path", "patient_id", label_name} | set(manifest.attrs.get("labels", []))
    names = _attribute_names(manifest, attributes, exclude)
    seed = _seed_from(random_state)
    rng = np.random.default_rng(seed)
    folds = _folds(y, g, cv, seed)

    # ---- targets of the probe: attributes, their shuffled copies, the label
    cols = []
    specs = {}
    for name in names:
        values = manifest[name]
        if _is_numeric(name, values):
            t = pd.to_numeric(values, errors="coerce").to_numpy(float)
            if np.isfinite(t).sum() < 2 * cv or np.nanstd(t) == 0:
                logger.info("attribute %r: too few distinct values, skipped", name)
                continue
            block, kind, levels = t[:, None], "numeric", [""]
        else:
            lv = _levels(values, min_level_count)
            levels = sorted(set(lv.dropna()))
            if len(levels) < 2:
                logger.info("attribute %r: one level only, skipped", name)
                continue
            if len(levels) > _MAX_LEVELS:
                raise ManifestError(f"attribute {name!r} has {len(levels)} levels (more than {_MAX_LEVELS}); fix: "
                                    "pass attributes= without it, or pool its levels in the manifest")
            onehot = np.column_stack([(lv == v).to_numpy(float) for v in levels])
            onehot[lv.isna().to_numpy()] = np.nan
            kind = "binary" if len(levels) == 2 else "categorical"
            block, levels = (onehot[:, 1:], levels[1:]) if kind == "binary" else (onehot, levels)
        obs = np.flatnonzero(np.isfinite(block[:, 0]))
        shuffled = np.full_like(block, np.nan)
        shuffled[obs] = block[obs][rng.permutation(obs.size)]
        specs[name] = {"kind": kind, "levels": levels, "cols": list(range(len(cols), len(cols) + block.shape[1])),
                       "shuffled": list(range(len(cols) + block.shape[1], len(cols) + 2 * block.shape[1]))}
        cols += [block[:, j] for j in range(block.shape[1])] + [shuffled[:, j] for j in range(block.shape[1])]
    label_col = None
    if y is not None and estimator is None:
        label_col = len(cols)
        cols.append(y)
    fold_of = np.empty(n, dtype=int)
    for k, (_, te) in enumerate(folds):
        fold_of[te] = k
    P = _oof_ridge(X, np.column_stack(cols), folds, alpha) if cols else np.empty((n, 0))

    # ---- encoded attributes
    encoded = _encoded_table(specs, cols, P, g, folds, n_bootstrap=n_bootstrap, ci=ci, seed=seed,
                             encoded_auc=encoded_auc, encoded_r2=encoded_r2)
    decisive = encoded[encoded["encoded"].notna()].set_index("attribute")

    # ---- the label: scores, shortcuts, subgroups
    shortcuts = pd.DataFrame(columns=_SHORTCUT_COLUMNS)
    subgroups = pd.DataFrame(columns=["attribute", "level", "auc", "ci_low", "ci_high", "n", "n_pos", "n_groups"])
    gaps = pd.DataFrame(columns=["attribute", "gap", "best", "worst", "separated"])
    predictions = pd.DataFrame({"patient_id": g, "fold": fold_of})
    if "image_id" in manifest.columns:
        predictions.insert(0, "image_id", manifest["image_id"].astype(str).to_numpy())
    flags: list[str] = []
    if y is not None:
        score = P[:, label_col] if label_col is not None else _oof_estimator(estimator, X, y, g, folds)
        predictions["label"] = y
        predictions["score"] = np.where(np.isfinite(y), score, np.nan)
        lab = np.isfinite(y)
        yl, sl, gl = y[lab].astype(int), score[lab], g[lab]
        strata = {name: _strata(name, manifest[name], age_edges) for name in specs}
        shortcuts, flags = _shortcuts(y, score, g, strata, decisive, label_name, folds, fold_of,
                                      n_bootstrap=n_bootstrap, ci=ci, seed=seed, margin=margin,
                                      min_count=min_level_count)
        sub_rows, gap_rows = [], []
        for name, levels in strata.items():
            t = subgroup_auc(yl, sl, levels[lab], groups=gl, n_bootstrap=n_bootstrap, ci=ci,
                             min_per_class=min_per_class, random_state=random_state)
            t.insert(0, "attribute", name)
            sub_rows.append(t)
            if np.isfinite(t.attrs["gap"]):
                best, worst = t.attrs["gap_levels"]
                tb, tw = t.set_index("level").loc[best], t.set_index("level").loc[worst]
                separated = bool(tw["ci_high"] < tb["ci_low"])
                gap_rows.append({"attribute": name, "gap": t.attrs["gap"], "best": best, "worst": worst,
                                 "separated": separated})
                if separated:
                    flags.append(f"Subgroup gap: the classifier of {label_name!r} scores AUC {_fmt(tb['auc'])} "
                                 f"for {name}={best} but {_fmt(tw['auc'])} for {name}={worst}, and the "
                                 f"{ci:.0%} CIs do not overlap; check that group before deployment.")
        if sub_rows:
            subgroups = pd.concat(sub_rows, ignore_index=True)
        gaps = pd.DataFrame(gap_rows, columns=gaps.columns)

    # ---- re-identification and map
    reid = reidentification(X, g, ks=reid_k, n_bootstrap=n_bootstrap, ci=ci, random_state=seed)
    top1 = reid[reid["k"] == min(reid_k)]
    if len(top1) and np.isfinite(top1["ci_low"].iloc[0]):
        r = top1.iloc[0]
        if r["ci_low"] > max(2 * r["chance"], r["chance"] + 0.05):
            flags.append(f"Re-identification: for {r['rate']:.0%} of the {int(r['n_queries'])} images whose patient "
                         f"has other images, the nearest neighbour in embedding space is an image of the same "
                         f"patient (chance {r['chance']:.1%}); treat the embeddings as identifying data.")
    coords = None
    map_method = None
    if map is not None:
        xy, map_method = embedding_map(X, method=map, random_state=seed)
        coords = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
        if y is not None:
            coords["label"] = pd.Series(y).map({1.0: f"{label_name}=1", 0.0: f"{label_name}=0"}).fillna("unknown")
        for c in _MAP_COLOURS[1:]:
            if c in manifest.columns:
                coords[c] = manifest[c].astype(object).where(manifest[c].notna(), "unknown").astype(str).to_numpy()
    params = {"n_images": n, "n_patients": int(len(np.unique(g))), "dim": int(X.shape[1]), "label": label_name,
              "attributes": list(specs), "cv": int(cv), "random_state": random_state, "n_bootstrap": int(n_bootstrap),
              "ci": ci, "margin": margin, "encoded_auc": encoded_auc, "encoded_r2": encoded_r2, "alpha": alpha,
              "probe": f"StandardScaler + Ridge(alpha={alpha} x n_train), all targets per fold",
              "classifier": "the ridge probe" if estimator is None else repr(estimator),
              "map_method": map_method, "reid_k": [int(k) for k in reid_k]}
    return EmbeddingAudit(encoded=encoded, shortcuts=shortcuts, subgroups=subgroups, subgroup_gaps=gaps,
                          reidentification=reid, flags=flags, predictions=predictions, map=coords, params=params)
