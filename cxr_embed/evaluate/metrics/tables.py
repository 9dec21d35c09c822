"""Everything at once as one tidy DataFrame (:func:`evaluate_predictions`), and its JSON form.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._bootstrap import (
    _WeightedAUC,
    _as_binary_1d,
    _bootstrap_auc_samples,
    _bootstrap_counts,
    _check_ci,
    _group_index,
    _percentile_ci,
    _seed_from,
)
from .auc import _report_skipped
from .calibration import brier_score, expected_calibration_error
from .subgroups import subgroup_auc
from .thresholds import confusion_metrics, operating_points

__all__ = ["evaluate_predictions", "metrics_to_json", "metrics_from_json", "METRICS_COLUMNS"]

logger = logging.getLogger(__name__)

_JSON_VERSION = 1

_JSON_FORMAT = "cxr_embed.evaluate.metrics"

#: Columns of the tidy table returned by :func:`evaluate_predictions`, in order.
METRICS_COLUMNS = [
    "label",
    "metric",
    "operating_point",
    "subgroup",
    "level",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_pos",
    "n_groups",
]

# --------------------------------------------------------------------------- tidy table
def _as_2d(a, name: str) -> tuple[np.ndarray, list[str] | None]:
    cols = None
    if isinstance(a, pd.DataFrame):
        cols = [str(c) for c in a.columns]
        arr = a.to_numpy(dtype=float)
    elif isinstance(a, pd.Series):
        cols = [str(a.name)] if a.name is not None else None
        arr = a.to_numpy(dtype=float)[:, None]
    else:
        arr = np.asarray(a, dtype=float)
        if arr.ndim == 1:
            arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n,) or (n, n_labels); got {arr.shape}.")
    return arr, cols


def _row(label, metric, value, *, op="", subgroup="all", level="all", lo=math.nan, hi=math.nan,
         n=0, n_pos=0, n_groups=0) -> dict[str, Any]:
    return {"label": label, "metric": metric, "operating_point": op, "subgroup": subgroup,
            "level": level, "value": float(value), "ci_low": float(lo), "ci_high": float(hi),
            "n": int(n), "n_pos": int(n_pos), "n_groups": int(n_groups)}


_THRESHOLD_METRICS = ("threshold", "sensitivity", "specificity", "balanced_accuracy", "ppv", "npv")
_CI_METRICS = ("sensitivity", "specificity", "balanced_accuracy", "ppv", "npv")


def _threshold_cis(y, s, gidx, n_groups, threshold, n_bootstrap, seed, ci) -> dict[str, tuple[float, float]]:
    """Percentile CIs of the confusion metrics at a fixed threshold, over the same patient resamples
    as the AUC's (same seed, so every interval of a label comes from the same draws)."""
    pred = s >= threshold
    cells = np.stack([pred & (y == 1), ~pred & (y == 1), ~pred & (y == 0), pred & (y == 0)], axis=1).astype(float)
    samples = {m: [] for m in _CI_METRICS}
    for counts in _bootstrap_counts(seed, n_bootstrap, n_groups):
        tp, fn, tn, fp = (counts[:, gidx] @ cells).T
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec = tp / (tp + fn), tn / (tn + fp)
            samples["sensitivity"].append(sens)
            samples["specificity"].append(spec)
            samples["balanced_accuracy"].append((sens + spec) / 2.0)
            samples["ppv"].append(tp / (tp + fp))
            samples["npv"].append(tn / (tn + fn))
    return {m: _percentile_ci(np.concatenate(v), ci) for m, v in samples.items()}


def evaluate_predictions(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    labels: Sequence[str] | None = None,
    groups: ArrayLike | None = None,
    subgroups: Mapping[str, Any] | None = None,
    n_bootstrap: int = 2000,
    ci: float = 0.95,
    specificity: float = 0.9,
    n_bins: int = 10,
    random_state: int | None = None,
    threshold: float | Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Every metric of every label in one tidy table.

    Parameters
    ----------
    y_true : array-like of shape (n_images,) or (n_images, n_labels)
        1 positive, 0 negative, NaN missing/masked (dropped for that label only).
        A DataFrame's columns name the labels.
    y_score : array-like, same shape as ``y_true``
        Predicted probabilities.
    labels : list of str, optional
        Label names (default: DataFrame columns, else ``label_0, label_1, ...``; ``"y"``
        for a single label).
    groups : array-like of shape (n_images,), optional
        Patient ids: CIs resample patients (recommended whenever patients have several images).
    subgroups : dict of str -> array-like of shape (n_images,), optional
        E.g. ``{"sex": sex, "age": age_bands(age), "view": view, "site": site}``.
    n_bootstrap : int, default=2000
        Bootstrap resamples for AUC CIs (0: no CIs).
    ci : float, default=0.95
    specificity : float, default=0.9
        Target of the fixed-specificity operating point.
    n_bins : int, default=10
        Bins of the expected calibration error.
    random_state : int or None
    threshold : float or dict of str -> float, optional
        A threshold chosen beforehand (on training or validation predictions, one for all labels
        or one per label): adds the operating point ``"fixed"``. Its sensitivity, specificity and
        balanced accuracy are the honest ones; those at ``"youden"`` and ``"spec>=..."`` use a
        threshold chosen on these very predictions and are optimistic.

    Returns
    -------
    DataFrame
        Columns :data:`METRICS_COLUMNS`:

        * ``label``: label name, or ``"macro"`` for the macro average;
        * ``metric``: ``auc``, ``auc_gap``, ``threshold``, ``sensitivity``, ``specificity``,
          ``balanced_accuracy``, ``ppv``, ``npv``, ``brier``, ``ece``, ``prevalence``;
        * ``operating_point``: ``"youden"``, ``"spec>=0.90"`` or ``"fixed"`` (``threshold=``) for
          threshold metrics, else ``""``; sensitivity, specificity, balanced accuracy, PPV and NPV
          get patient-bootstrap CIs over the same resamples as the AUC, the threshold held fixed;
        * ``subgroup`` / ``level``: ``"all"``/``"all"`` overall; ``"sex"``/``"F"`` for a
          subgroup AUC; ``"sex"``/``"max-min"`` for the largest gap;
        * ``value``, ``ci_low``, ``ci_high`` (NaN where no CI);
        * ``n`` images, ``n_pos`` positives and ``n_groups`` patients used.

        The macro AUC is the mean of the per-label AUCs; its CI comes from the same
        patient resamples applied to all labels (resamples where any label is
        degenerate are skipped).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, (300, 2)).astype(float); y[:20, 1] = np.nan
    >>> p = np.clip(0.5 * np.nan_to_num(y) + rng.uniform(0, 0.5, (300, 2)), 0, 1)
    >>> df = evaluate_predictions(y, p, labels=["a", "b"], n_bootstrap=100, random_state=0)
    >>> df.query("metric == 'auc' and subgroup == 'all'")["label"].tolist()
    ['a', 'b', 'macro']
    """
    _check_ci(ci, n_bootstrap)
    Y, ycols = _as_2d(y_true, "y_true")
    S, _ = _as_2d(y_score, "y_score")
    if Y.shape != S.shape:
        raise ValueError(f"y_true has shape {Y.shape} but y_score has {S.shape}; they must match.")
    n, L = Y.shape
    if labels is None:
        labels = ycols if ycols is not None else (["y"] if L == 1 else [f"label_{j}" for j in range(L)])
    labels = [str(x) for x in labels]
    if len(labels) != L:
        raise ValueError(f"{len(labels)} label names for {L} label columns.")
    gidx, n_groups_all = _group_index(groups, n)
    sub_arrays = {}
    for name, values in (subgroups or {}).items():
        arr = pd.Series(np.asarray(values, dtype=object).ravel())
        if arr.shape[0] != n:
            raise ValueError(f"subgroup {name!r} has {arr.shape[0]} entries for {n} images.")
        sub_arrays[str(name)] = arr.where(arr.notna(), "unknown").astype(str).to_numpy()
    seed = _seed_from(random_state)

    rows: list[dict[str, Any]] = []
    boot = []  # per-label bootstrap AUCs over the *same* patient resamples, shape (n_bootstrap,)
    for j, label in enumerate(labels):
        known = np.isfinite(Y[:, j])
        if np.any(~np.isfinite(S[known, j])):
            raise ValueError(f"label {label!r}: y_score has NaN/inf where y_true is known.")
        y = _as_binary_1d(Y[known, j], f"y_true[:, {label!r}]")
        s = S[known, j]
        g = gidx[known]
        n_j, n_pos = int(known.sum()), int(y.sum())
        n_g = len(np.unique(g))
        common = {"n": n_j, "n_pos": n_pos, "n_groups": n_g}
        rows.append(_row(label, "prevalence", n_pos / n_j if n_j else math.nan, **common))
        if n_pos == 0 or n_pos == n_j:
            warnings.warn(
                f"evaluate_predictions: label {label!r} has {n_pos} positives among {n_j} known "
                "images; its AUC and operating points are NaN.",
                RuntimeWarning,
                stacklevel=2,
            )
            rows.append(_row(label, "auc", math.nan, **common))
            boot.append(np.full(int(n_bootstrap), np.nan))
            continue
        auc = float(_WeightedAUC(y, s)(np.ones((1, n_j)))[0])
        lo = hi = math.nan
        if n_bootstrap:
            # resample patients of the whole table (same draws for every label), keep this label's rows
            samples = _bootstrap_auc_samples(y, s, gidx[known], n_groups_all, int(n_bootstrap), seed)
            _report_skipped(int(np.sum(~np.isfinite(samples))), int(n_bootstrap), f"label {label!r}")
            lo, hi = _percentile_ci(samples, ci)
            boot.append(samples)
        rows.append(_row(label, "auc", auc, lo=lo, hi=hi, **common))
        ops = operating_points(y, s, specificity=specificity)
        if threshold is not None:
            t = threshold.get(label) if isinstance(threshold, Mapping) else threshold
            if t is None:
                raise ValueError(f"threshold has no entry for label {label!r}; give one threshold per label")
            ops["fixed"] = confusion_metrics(y, s, float(t))
        for op, m in ops.items():
            cis = (_threshold_cis(y, s, gidx[known], n_groups_all, m["threshold"], int(n_bootstrap), seed, ci)
                   if n_bootstrap else {})
            for metric in _THRESHOLD_METRICS:
                lo_m, hi_m = cis.get(metric, (math.nan, math.nan))
                rows.append(_row(label, metric, m[metric], op=op, lo=lo_m, hi=hi_m, **common))
        if s.min() >= 0.0 and s.max() <= 1.0:
            rows.append(_row(label, "brier", brier_score(y, s), **common))
            rows.append(_row(label, "ece", expected_calibration_error(y, s, n_bins=n_bins), **common))
        else:
            logger.info("label %r: scores outside [0, 1], so no Brier score / ECE (pass probabilities)", label)
        for k, (name, sub) in enumerate(sub_arrays.items()):
            t = subgroup_auc(y, s, sub[known], groups=None if groups is None else gidx[known],
                             n_bootstrap=n_bootstrap, ci=ci, random_state=seed + 7919 * (j + 1) + k)
            for r in t.itertuples(index=False):
                rows.append(_row(label, "auc", r.auc, subgroup=name, level=r.level, lo=r.ci_low,
                                 hi=r.ci_high, n=r.n, n_pos=r.n_pos, n_groups=r.n_groups))
            rows.append(_row(label, "auc_gap", t.attrs["gap"], subgroup=name, level="max-min", **common))

    per_label = [r for r in rows if r["metric"] == "auc" and r["subgroup"] == "all"]
    if L > 1:
        aucs = np.array([r["value"] for r in per_label])
        lo = hi = math.nan
        if n_bootstrap and boot and np.all(np.isfinite(aucs)):
            macro = np.mean(np.vstack(boot), axis=0)  # NaN where any label degenerated
            _report_skipped(int(np.sum(~np.isfinite(macro))), int(n_bootstrap), "macro AUC")
            lo, hi = _percentile_ci(macro, ci)
        n_known = int(np.sum(np.isfinite(Y).any(axis=1)))
        rows.append(_row("macro", "auc", float(np.mean(aucs)) if np.all(np.isfinite(aucs)) else math.nan,
                         lo=lo, hi=hi, n=n_known, n_pos=int(np.nansum(Y)), n_groups=n_groups_all))
    df = pd.DataFrame(rows, columns=METRICS_COLUMNS)
    df.attrs["ci"] = ci
    df.attrs["n_bootstrap"] = int(n_bootstrap)
    df.attrs["bootstrap_unit"] = "image" if groups is None else "patient"
    return df


def metrics_to_json(df: pd.DataFrame, path: str | os.PathLike | None = None, *, indent: int | None = 1) -> str:
    """Serialise a metrics table to self-describing JSON (NaN becomes ``null``).

    Parameters
    ----------
    df : DataFrame
        Output of :func:`evaluate_predictions` (any tidy table works).
    path : str or Path, optional
        Also write the text there (UTF-8).
    indent : int or None, default=1

    Returns
    -------
    str
        ``{"format": "cxr_embed.evaluate.metrics", "version": 1, "attrs": {...}, "rows": [...]}``.

    Examples
    --------
    >>> import pandas as pd
    >>> text = metrics_to_json(pd.DataFrame({"label": ["a"], "metric": ["auc"], "value": [0.9]}))
    >>> metrics_from_json(text)["value"].tolist()
    [0.9]
    """
    from ..._version import __version__

    records = json.loads(df.to_json(orient="records", double_precision=15))
    attrs = {k: v for k, v in df.attrs.items() if isinstance(v, (str, int, float, bool, type(None)))}
    doc = {"format": _JSON_FORMAT, "version": _JSON_VERSION, "library_version": __version__,
           "attrs": attrs, "columns": [str(c) for c in df.columns], "rows": records}
    text = json.dumps(doc, indent=indent, allow_nan=False)
    if path is not None:
        from pathlib import Path

        Path(path).write_text(text, encoding="utf-8")
    return text


def metrics_from_json(text_or_path: str | os.PathLike) -> pd.DataFrame:
    """Read what :func:`metrics_to_json` wrote (JSON text or a path to it).

    Parameters
    ----------
    text_or_path : str or Path

    Returns
    -------
    DataFrame

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"metric": ["auc"], "value": [float("nan")]})
    >>> bool(metrics_from_json(metrics_to_json(df))["value"].isna().all())
    True
    """
    from pathlib import Path

    text = str(text_or_path)
    if not text.lstrip().startswith("{"):
        text = Path(text_or_path).read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc.get("format") != _JSON_FORMAT:
        raise ValueError(
            f"expected a {_JSON_FORMAT!r} JSON document (written by metrics_to_json); "
            f"got format {doc.get('format')!r}."
        )
    if int(doc.get("version", 0)) > _JSON_VERSION:
        raise ValueError(
            f"metrics JSON version {doc.get('version')} is newer than this library reads "
            f"({_JSON_VERSION}); upgrade cxr_embed."
        )
    df = pd.DataFrame(doc["rows"], columns=doc.get("columns"))
    for col in ("value", "ci_low", "ci_high"):
        if col in df:
            df[col] = df[col].astype(float)
    df.attrs.update(doc.get("attrs", {}))
    return df
