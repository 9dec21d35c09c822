"""Calibration of predicted probabilities: Brier score, expected calibration error, reliability curve.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._bootstrap import _as_binary_1d, _as_score_1d

__all__ = ["brier_score", "expected_calibration_error", "reliability_curve"]

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
