"""ROC AUC with patient-level bootstrap confidence intervals, and the DeLong test for paired AUCs.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from numpy.typing import ArrayLike

from ...exceptions import InsufficientDataError

from ._bootstrap import (
    _WeightedAUC,
    _as_binary_1d,
    _as_score_1d,
    _bootstrap_auc_samples,
    _check_ci,
    _group_index,
    _percentile_ci,
    _seed_from,
)

__all__ = ["AUCInterval", "roc_auc_ci", "delong_roc_variance", "delong_test"]

logger = logging.getLogger(__name__)

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
        raise InsufficientDataError(
            f"y_true holds only {'positives' if n_pos else 'negatives'} ({y.shape[0]} images); "
            "ROC AUC needs both classes; fix: score a set with positive and negative images."
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
    ``z = 0, p = 1`` if the AUCs are equal. With fewer than 2 images of a class the variance
    cannot be estimated: ``z`` and ``p`` are NaN, with a warning (it used to say ``p = 0``).

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
    n_pos = int(y.sum())
    if min(n_pos, y.size - n_pos) < 2:
        warnings.warn(f"delong_test: {n_pos} positive and {y.size - n_pos} negative image(s); the variance of an "
                      "AUC needs at least 2 of each, so z and p are NaN", RuntimeWarning, stacklevel=2)
        return float(aucs[0]), float(aucs[1]), math.nan, math.nan
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
