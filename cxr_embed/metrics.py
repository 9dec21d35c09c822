"""Honest evaluation of predicted probabilities: AUC with patient-level bootstrap CIs,
the DeLong test, operating points, calibration and subgroup AUCs, as one tidy table.

Everything here works on plain arrays of labels and scores (never on images or models),
so it evaluates out-of-fold predictions from :mod:`cxr_embed.validation`, stacked
predictions from :mod:`cxr_embed.stacking` or any external model alike.

Conventions
-----------
* A prediction is *positive* when ``score >= threshold`` (scikit-learn's ``roc_curve``).
* Labels are ``1`` (positive), ``0`` (negative) or ``NaN`` (missing / masked: the row is
  dropped for that label only).
* ``groups`` are patient ids. Images of one patient are correlated, so confidence
  intervals resample *patients*, each resampled patient bringing all of its images.
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

__all__ = [
    "AUCInterval",
    "roc_auc_ci",
    "delong_roc_variance",
    "delong_test",
    "youden_threshold",
    "threshold_at_specificity",
    "confusion_metrics",
    "operating_points",
    "brier_score",
    "expected_calibration_error",
    "reliability_curve",
    "age_bands",
    "subgroup_auc",
    "evaluate_predictions",
    "metrics_to_json",
    "metrics_from_json",
    "METRICS_COLUMNS",
]

logger = logging.getLogger(__name__)

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

_JSON_FORMAT = "cxr_embed.metrics"
_JSON_VERSION = 1
_MAX_CHUNK_CELLS = 4_000_000  # bootstrap weights held in memory at once (float64 cells)


# --------------------------------------------------------------------------- helpers
def _as_binary_1d(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true, dtype=float).ravel()
    if y.size == 0:
        raise ValueError(f"{name} is empty; expected at least one positive and one negative.")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(
            f"{name} must hold only 0 and 1 (drop or mask missing labels first); "
            f"got values {np.unique(y[bad])[:5].tolist()}."
        )
    return y.astype(np.int8)


def _as_score_1d(y_score, n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(y_score, dtype=float).ravel()
    if s.shape[0] != n:
        raise ValueError(f"{name} has {s.shape[0]} values but y_true has {n}; pass one score per image.")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or infinite values; every image needs a finite score.")
    return s


def _group_index(groups, n: int) -> tuple[np.ndarray, int]:
    """Integer code 0..G-1 per image (each image its own group when ``groups`` is None)."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups).ravel()
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries but y_true has {n}; pass one patient id per image.")
    _, codes = np.unique(g.astype(str) if g.dtype == object else g, return_inverse=True)
    return codes.ravel(), int(codes.max()) + 1


def _seed_from(random_state) -> int:
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if random_state is None:
        return int(np.random.SeedSequence().entropy % (2**31 - 1))
    return int(random_state)


class _WeightedAUC:
    """AUC of one (y, score) sample under many weight vectors at once.

    Sorting and tie structure are computed once; each call takes a weight matrix of shape
    (n_weightings, n) and returns one AUC per row (NaN when a row has no positive or no
    negative weight). With unit weights it equals ``sklearn.metrics.roc_auc_score``
    (ties count one half).
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(s, kind="mergesort")
        s_sorted = s[order]
        self.order = order
        self.pos = (y[order] == 1).astype(float)
        self.neg = 1.0 - self.pos
        self.starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])

    def __call__(self, w: np.ndarray, *, presorted: bool = False) -> np.ndarray:
        if not presorted:
            w = w[:, self.order]
        if self.starts.size == self.pos.size:  # no ties: one level per sample
            P, N = w * self.pos, w * self.neg
        else:
            P = np.add.reduceat(w * self.pos, self.starts, axis=1)
            N = np.add.reduceat(w * self.neg, self.starts, axis=1)
        below = np.cumsum(N, axis=1) - N
        num = np.sum(P * (below + 0.5 * N), axis=1)
        den = P.sum(axis=1) * N.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _bootstrap_counts(seed: int, n_bootstrap: int, n_groups: int):
    """Yield chunks of patient multiplicities, shape (chunk, n_groups), reproducibly."""
    chunk = max(1, min(n_bootstrap, _MAX_CHUNK_CELLS // max(n_groups, 1)))
    done, k = 0, 0
    while done < n_bootstrap:
        b = min(chunk, n_bootstrap - done)
        rng = np.random.default_rng([seed, k])
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        flat = draws + (np.arange(b) * n_groups)[:, None]
        yield np.bincount(flat.ravel(), minlength=b * n_groups).reshape(b, n_groups).astype(float)
        done += b
        k += 1


def _bootstrap_auc_samples(y, s, gidx, n_groups, n_bootstrap, seed) -> np.ndarray:
    """AUC of each bootstrap resample (NaN for one-class resamples), shape (n_bootstrap,)."""
    auc = _WeightedAUC(y, s)
    gsorted = gidx[auc.order]
    out = [auc(counts[:, gsorted], presorted=True) for counts in _bootstrap_counts(seed, n_bootstrap, n_groups)]
    return np.concatenate(out) if out else np.empty(0)


def _percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(valid, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check_ci(ci: float, n_bootstrap: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be strictly between 0 and 1 (e.g. 0.95); got {ci!r}.")
    if int(n_bootstrap) < 0:
        raise ValueError(f"n_bootstrap must be >= 0 (0 disables the interval); got {n_bootstrap!r}.")


# --------------------------------------------------------------------------- AUC + CI
class AUCInterval(tuple):
    """``(auc, ci_low, ci_high)`` that also carries how the interval was obtained.

    Unpacks like a 3-tuple; extra attributes: ``auc``, ``ci_low``, ``ci_high``,
    ``ci``, ``n_bootstrap`` (resamples drawn), ``n_skipped`` (resamples dropped because
    they held one class only), ``n`` (images), ``n_pos`` and ``n_groups`` (patients).
    """

    def __new__(cls, auc, lo, hi, *, ci, n_bootstrap, n_skipped, n, n_pos, n_groups):
        self = super().__new__(cls, (float(auc), float(lo), float(hi)))
        self.auc, self.ci_low, self.ci_high = float(auc), float(lo), float(hi)
        self.ci = float(ci)
        self.n_bootstrap, self.n_skipped = int(n_bootstrap), int(n_skipped)
        self.n, self.n_pos, self.n_groups = int(n), int(n_pos), int(n_groups)
        return self

    def __getnewargs_ex__(self):
        return (self.auc, self.ci_low, self.ci_high), {
            "ci": self.ci, "n_bootstrap": self.n_bootstrap, "n_skipped": self.n_skipped,
            "n": self.n, "n_pos": self.n_pos, "n_groups": self.n_groups,
        }

    def __repr__(self) -> str:
        return (
            f"AUCInterval(auc={self.auc:.4f}, ci_low={self.ci_low:.4f}, ci_high={self.ci_high:.4f}, "
            f"ci={self.ci}, n_bootstrap={self.n_bootstrap}, n_skipped={self.n_skipped})"
        )


def _report_skipped(n_skipped: int, n_bootstrap: int, what: str) -> None:
    if n_skipped == 0:
        return
    frac = n_skipped / max(n_bootstrap, 1)
    logger.info("%s: %d of %d bootstrap resamples held one class only and were skipped", what, n_skipped, n_bootstrap)
    if frac > 0.05:
        warnings.warn(
            f"{what}: {n_skipped} of {n_bootstrap} bootstrap resamples ({frac:.0%}) held one class "
            "only and were skipped; the interval is unreliable with so few positives or negatives "
            "(collect more cases of the rare class or report the AUC without a CI).",
            RuntimeWarning,
            stacklevel=3,
        )


def roc_auc_ci(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_bootstrap: int = 2000,
    ci: float = 0.95,
    random_state: int | np.random.Generator | np.random.RandomState | None = None,
) -> AUCInterval:
    """ROC AUC with a percentile bootstrap confidence interval over patients.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        Binary labels (0/1). Drop missing labels before calling.
    y_score : array-like of shape (n_images,)
        Scores or probabilities; higher means more likely positive.
    groups : array-like of shape (n_images,), optional
        Patient id of each image. Each bootstrap resample draws patients with replacement
        and each drawn patient contributes *all* its images, which keeps the correlation
        between images of one patient. ``None`` resamples images (correct only when each
        patient has one image).
    n_bootstrap : int, default=2000
        Number of resamples; 0 returns the AUC with NaN bounds.
    ci : float, default=0.95
        Coverage of the interval (percentile method: the ``(1-ci)/2`` and ``1-(1-ci)/2``
        quantiles of the resampled AUCs).
    random_state : int, numpy Generator/RandomState or None
        Seed of the resampling.

    Returns
    -------
    AUCInterval
        Unpacks as ``(auc, ci_low, ci_high)``; ``.n_skipped`` counts resamples that held a
        single class and were skipped (a ``RuntimeWarning`` is raised above 5 %).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    >>> s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.7])
    >>> auc, lo, hi = roc_auc_ci(y, s, n_bootstrap=200, random_state=0)
    >>> round(auc, 4)
    0.9375
    """
    _check_ci(ci, n_bootstrap)
    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    gidx, n_groups = _group_index(groups, y.shape[0])
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError(
            f"y_true holds only {'positives' if n_pos else 'negatives'} ({y.shape[0]} images); "
            "ROC AUC needs both classes."
        )
    auc = float(_WeightedAUC(y, s)(np.ones((1, y.shape[0])))[0])
    lo = hi = math.nan
    n_skipped = 0
    if n_bootstrap:
        samples = _bootstrap_auc_samples(y, s, gidx, n_groups, int(n_bootstrap), _seed_from(random_state))
        n_skipped = int(np.sum(~np.isfinite(samples)))
        _report_skipped(n_skipped, int(n_bootstrap), "roc_auc_ci")
        lo, hi = _percentile_ci(samples, ci)
    return AUCInterval(
        auc, lo, hi, ci=ci, n_bootstrap=n_bootstrap, n_skipped=n_skipped,
        n=y.shape[0], n_pos=n_pos, n_groups=n_groups,
    )


# --------------------------------------------------------------------------- DeLong
def _midrank(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties averaged) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(x, method="average", axis=-1)


def _fast_delong(scores: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu (2014) fast DeLong. ``scores`` (k, n). Returns (aucs (k,), cov (k, k))."""
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = _midrank(pos)
    ty = _midrank(neg)
    tz = _midrank(np.concatenate([pos, neg], axis=1))
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2.0) / n
    v01 = (tz[:, :m] - tx) / n          # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m    # structural components of the negatives
    s01 = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    s10 = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, s01 / m + s10 / n


def delong_roc_variance(y_true: ArrayLike, y_score: ArrayLike) -> tuple[float, float]:
    """ROC AUC and its DeLong variance (fast algorithm of Sun & Xu, 2014).

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        Binary labels (0/1).
    y_score : array-like of shape (n_images,)
        Scores.

    Returns
    -------
    auc : float
    variance : float
        DeLong et al. (1988) variance estimate of the AUC (images assumed independent).

    Examples
    --------
    >>> auc, var = delong_roc_variance([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> round(auc, 3)
    0.75
    """
    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    _need_both_classes(y, "delong_roc_variance")
    aucs, cov = _fast_delong(s[None, :], y)
    return float(aucs[0]), float(cov[0, 0])


def _need_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError(f"{what}: y_true holds a single class ({y.shape[0]} images); ROC AUC needs both.")


def delong_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> tuple[float, float, float, float]:
    """DeLong test for two correlated ROC AUCs measured on the same images.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        Binary labels (0/1).
    score_a, score_b : array-like of shape (n_images,)
        Scores of two models for the same images, in the same order.

    Returns
    -------
    auc_a, auc_b : float
    z : float
        ``(auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``.
    p : float
        Two-sided p-value from the standard normal.

    Notes
    -----
    The fast algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389) computes
    the DeLong et al. (1988) structural components in O(n log n). Like pROC's
    ``roc.test(method="delong")`` it assumes independent images; with several images per
    patient the variance is underestimated, so compare models at the patient level
    (e.g. one prediction per patient) or with a paired patient bootstrap.
    When both models rank every pair identically the variance of the difference is 0:
    ``z = 0, p = 1`` if the AUCs are equal.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> a = y + rng.normal(0, 1, 200); b = y + rng.normal(0, 2, 200)
    >>> auc_a, auc_b, z, p = delong_test(y, a, b)
    >>> bool(auc_a > auc_b)
    True
    """
    from scipy.stats import norm

    y = _as_binary_1d(y_true)
    a = _as_score_1d(score_a, y.shape[0], "score_a")
    b = _as_score_1d(score_b, y.shape[0], "score_b")
    _need_both_classes(y, "delong_test")
    aucs, cov = _fast_delong(np.vstack([a, b]), y)
    diff = aucs[0] - aucs[1]
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    if var <= 1e-15:
        if abs(diff) < 1e-12:
            return float(aucs[0]), float(aucs[1]), 0.0, 1.0
        warnings.warn(
            "delong_test: the variance of the AUC difference is 0 but the AUCs differ; "
            "returning an infinite z. Check that the scores are not constant.",
            RuntimeWarning,
            stacklevel=2,
        )
        return float(aucs[0]), float(aucs[1]), math.copysign(math.inf, diff), 0.0
    z = diff / math.sqrt(var)
    return float(aucs[0]), float(aucs[1]), float(z), float(2.0 * norm.sf(abs(z)))


# --------------------------------------------------------------------------- thresholds
def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_score : array-like of shape (n_images,)

    Returns
    -------
    float
        A score value; predict positive when ``score >= threshold``. Ties in J go to the
        highest threshold (fewest positives).

    Examples
    --------
    >>> youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.8
    """
    from sklearn.metrics import roc_curve

    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    _need_both_classes(y, "youden_threshold")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    k = int(np.argmax(j[1:])) + 1  # skip the +inf "nobody positive" point
    return float(thr[k])


def threshold_at_specificity(y_true: ArrayLike, y_score: ArrayLike, specificity: float = 0.9) -> float:
    """Lowest threshold whose specificity is still ``>= specificity``.

    Among all thresholds achieving at least the requested specificity this one has the
    highest sensitivity.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_score : array-like of shape (n_images,)
    specificity : float, default=0.9
        Target specificity in (0, 1].

    Returns
    -------
    float
        Predict positive when ``score >= threshold``; ``inf`` (nobody positive) when no
        finite threshold reaches the target (possible with tied negative scores).

    Examples
    --------
    >>> threshold_at_specificity([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.5, 0.9], 0.75)
    0.5
    """
    from sklearn.metrics import roc_curve

    if not 0.0 < specificity <= 1.0:
        raise ValueError(f"specificity must be in (0, 1]; got {specificity!r}.")
    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    _need_both_classes(y, "threshold_at_specificity")
    fpr, _, thr = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(1.0 - fpr >= specificity - 1e-12)
    return float(thr[ok[-1]])  # fpr is non-decreasing as the threshold falls


def confusion_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and NPV when ``score >= threshold`` is positive.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_score : array-like of shape (n_images,)
    threshold : float

    Returns
    -------
    dict
        ``threshold, sensitivity, specificity, ppv, npv, tp, fp, tn, fn``; a ratio whose
        denominator is 0 is NaN.

    Examples
    --------
    >>> m = confusion_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], 0.5)
    >>> m["sensitivity"], m["specificity"], m["ppv"], m["npv"]
    (0.5, 0.5, 0.5, 0.5)
    """
    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))

    def ratio(a, b):
        return a / b if b else math.nan

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
    }


def operating_points(y_true: ArrayLike, y_score: ArrayLike, *, specificity: float = 0.9) -> dict[str, dict[str, float]]:
    """:func:`confusion_metrics` at the Youden threshold and at a fixed specificity.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_score : array-like of shape (n_images,)
    specificity : float, default=0.9

    Returns
    -------
    dict
        ``{"youden": {...}, "spec>=0.90": {...}}`` (the key embeds the target).

    Examples
    --------
    >>> ops = operating_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], specificity=0.5)
    >>> sorted(ops)
    ['spec>=0.50', 'youden']
    """
    return {
        "youden": confusion_metrics(y_true, y_score, youden_threshold(y_true, y_score)),
        f"spec>={specificity:.2f}": confusion_metrics(
            y_true, y_score, threshold_at_specificity(y_true, y_score, specificity)
        ),
    }


# --------------------------------------------------------------------------- calibration
def _check_prob(p: np.ndarray) -> None:
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(
            f"calibration needs probabilities in [0, 1]; got scores in [{p.min():.3g}, {p.max():.3g}] "
            "(use predict_proba, not decision_function)."
        )


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared difference between probability and outcome (``sklearn.metrics.brier_score_loss``).

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_prob : array-like of shape (n_images,)
        Probabilities in [0, 1].

    Returns
    -------
    float

    Examples
    --------
    >>> brier_score([0, 1], [0.2, 0.6])
    0.1
    """
    from sklearn.metrics import brier_score_loss

    y = _as_binary_1d(y_true)
    p = _as_score_1d(y_prob, y.shape[0], "y_prob")
    _check_prob(p)
    return float(round(brier_score_loss(y, p), 15))


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    # identical to sklearn.calibration.calibration_curve(strategy="uniform"):
    # bin 0 is [0, 1/n_bins], bin k is (k/n_bins, (k+1)/n_bins]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], p)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width probability bins.

    ``ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|`` over ``n_bins`` bins of
    width ``1/n_bins`` on [0, 1]; empty bins contribute nothing. Bin edges follow
    ``sklearn.calibration.calibration_curve(strategy="uniform")``: the first bin is
    ``[0, 1/n_bins]``, the others are closed on the right, so the numbers agree with
    :func:`reliability_curve`.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_prob : array-like of shape (n_images,)
    n_bins : int, default=10

    Returns
    -------
    float
        In [0, 1]; 0 is perfect calibration (at this binning).

    Examples
    --------
    >>> expected_calibration_error([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9], n_bins=2)
    0.2
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins!r}.")
    y = _as_binary_1d(y_true)
    p = _as_score_1d(y_prob, y.shape[0], "y_prob")
    _check_prob(p)
    ids = _bin_ids(p, int(n_bins))
    total = np.bincount(ids, minlength=n_bins)
    sum_p = np.bincount(ids, weights=p, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y.astype(float), minlength=n_bins)
    nz = total > 0
    gap = np.abs(sum_y[nz] / total[nz] - sum_p[nz] / total[nz])
    return float(round(np.sum(total[nz] / y.shape[0] * gap), 15))


def reliability_curve(y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """Reliability (calibration) curve with the number of images per bin.

    Wraps ``sklearn.calibration.calibration_curve``; empty bins are left out.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_prob : array-like of shape (n_images,)
    n_bins : int, default=10
    strategy : {"uniform", "quantile"}, default="uniform"

    Returns
    -------
    DataFrame
        Columns ``prob_pred`` (mean probability in the bin), ``prob_true`` (fraction of
        positives) and ``count``; one row per non-empty bin.

    Examples
    --------
    >>> reliability_curve([0, 0, 1, 1], [0.1, 0.3, 0.7, 0.9], n_bins=2)["count"].tolist()
    [2, 2]
    """
    from sklearn.calibration import calibration_curve

    y = _as_binary_1d(y_true)
    p = _as_score_1d(y_prob, y.shape[0], "y_prob")
    _check_prob(p)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    if strategy == "uniform":
        counts = np.bincount(_bin_ids(p, n_bins), minlength=n_bins)
    else:
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
        counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    return pd.DataFrame({"prob_pred": prob_pred, "prob_true": prob_true, "count": counts.astype(int)})


# --------------------------------------------------------------------------- subgroups
def age_bands(ages: ArrayLike, edges: Sequence[float] = (0, 18, 40, 60, 80)) -> np.ndarray:
    """Age in years -> band labels such as ``"18-39"`` and ``"80+"``.

    Parameters
    ----------
    ages : array-like of shape (n,)
        Ages in years; NaN / None become ``"unknown"``.
    edges : sequence of float, default=(0, 18, 40, 60, 80)
        Increasing lower band edges; the last band is open (``"80+"``).

    Returns
    -------
    ndarray of str, shape (n,)

    Examples
    --------
    >>> age_bands([5, 18, 39.9, 65, 90, float("nan")]).tolist()
    ['0-17', '18-39', '18-39', '60-79', '80+', 'unknown']
    """
    e = [float(x) for x in edges]
    if len(e) < 1 or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"edges must be strictly increasing; got {list(edges)!r}.")
    a = pd.to_numeric(pd.Series(np.asarray(ages, dtype=object).ravel()), errors="coerce").to_numpy(float)
    names = []
    for lo, hi in zip(e, e[1:]):
        names.append(f"{_fmt_age(lo)}-{_fmt_age(math.ceil(hi) - 1 if float(hi).is_integer() else hi)}")
    names.append(f"{_fmt_age(e[-1])}+")
    out = np.full(a.shape, "unknown", dtype=object)
    ok = np.isfinite(a) & (a >= e[0])
    idx = np.searchsorted(np.asarray(e), a[ok], side="right") - 1
    out[ok] = np.asarray(names, dtype=object)[idx]
    return out.astype(str)


def _fmt_age(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def subgroup_auc(
    y_true: ArrayLike,
    y_score: ArrayLike,
    subgroup: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    min_per_class: int = 1,
    random_state: int | None = None,
) -> pd.DataFrame:
    """ROC AUC with bootstrap CI in each level of a subgroup variable, and the largest gap.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
    y_score : array-like of shape (n_images,)
    subgroup : array-like of shape (n_images,)
        Level per image (sex, :func:`age_bands` output, view, site ...). Missing values
        become the level ``"unknown"``.
    groups : array-like of shape (n_images,), optional
        Patient ids for the patient-level bootstrap (see :func:`roc_auc_ci`).
    n_bootstrap : int, default=1000
    ci : float, default=0.95
    min_per_class : int, default=1
        A level needs at least this many positives *and* negatives for an AUC; otherwise
        its AUC is NaN and it is left out of the gap.
    random_state : int or None

    Returns
    -------
    DataFrame
        One row per level, columns ``level, auc, ci_low, ci_high, n, n_pos, n_groups``.
        ``df.attrs["gap"]`` is the largest AUC difference between estimable levels and
        ``df.attrs["gap_levels"]`` the (best, worst) pair.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 400); s = y + rng.normal(0, 1, 400)
    >>> sex = np.where(np.arange(400) % 2, "F", "M")
    >>> t = subgroup_auc(y, s, sex, n_bootstrap=100, random_state=0)
    >>> t["level"].tolist()
    ['F', 'M']
    """
    y = _as_binary_1d(y_true)
    s = _as_score_1d(y_score, y.shape[0])
    sub = pd.Series(np.asarray(subgroup, dtype=object).ravel())
    if sub.shape[0] != y.shape[0]:
        raise ValueError(f"subgroup has {sub.shape[0]} entries but y_true has {y.shape[0]}.")
    sub = sub.where(sub.notna(), "unknown").astype(str).to_numpy()
    g = None if groups is None else np.asarray(groups).ravel()
    seed = _seed_from(random_state)
    rows = []
    for k, level in enumerate(sorted(set(sub))):
        m = sub == level
        yl, sl = y[m], s[m]
        n_pos = int(yl.sum())
        n_groups = len(np.unique(g[m])) if g is not None else int(m.sum())
        row = {"level": level, "auc": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "n": int(m.sum()), "n_pos": n_pos, "n_groups": n_groups}
        if n_pos >= min_per_class and (m.sum() - n_pos) >= min_per_class and 0 < n_pos < m.sum():
            r = roc_auc_ci(yl, sl, groups=None if g is None else g[m], n_bootstrap=n_bootstrap,
                           ci=ci, random_state=seed + k)
            row.update(auc=r.auc, ci_low=r.ci_low, ci_high=r.ci_high)
        else:
            logger.info("subgroup %r: %d positives of %d images, AUC not estimable", level, n_pos, m.sum())
        rows.append(row)
    df = pd.DataFrame(rows, columns=["level", "auc", "ci_low", "ci_high", "n", "n_pos", "n_groups"])
    est = df.dropna(subset=["auc"])
    if len(est) >= 2:
        best, worst = est.loc[est["auc"].idxmax()], est.loc[est["auc"].idxmin()]
        df.attrs["gap"] = float(best["auc"] - worst["auc"])
        df.attrs["gap_levels"] = (str(best["level"]), str(worst["level"]))
    else:
        df.attrs["gap"] = math.nan
        df.attrs["gap_levels"] = ()
    return df


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

    Returns
    -------
    DataFrame
        Columns :data:`METRICS_COLUMNS`:

        * ``label``: label name, or ``"macro"`` for the macro average;
        * ``metric``: ``auc``, ``auc_gap``, ``threshold``, ``sensitivity``, ``specificity``,
          ``ppv``, ``npv``, ``brier``, ``ece``, ``prevalence``;
        * ``operating_point``: ``"youden"`` or ``"spec>=0.90"`` for threshold metrics, else ``""``;
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
        for op, m in operating_points(y, s, specificity=specificity).items():
            for metric in ("threshold", "sensitivity", "specificity", "ppv", "npv"):
                rows.append(_row(label, metric, m[metric], op=op, **common))
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
        ``{"format": "cxr_embed.metrics", "version": 1, "attrs": {...}, "rows": [...]}``.

    Examples
    --------
    >>> import pandas as pd
    >>> text = metrics_to_json(pd.DataFrame({"label": ["a"], "metric": ["auc"], "value": [0.9]}))
    >>> metrics_from_json(text)["value"].tolist()
    [0.9]
    """
    from ._version import __version__

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
