"""Operating points: Youden and fixed-specificity thresholds, sensitivity/specificity/PPV/NPV.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ._bootstrap import _as_binary_1d, _as_score_1d
from .auc import _need_both_classes

__all__ = ["youden_threshold", "threshold_at_specificity", "confusion_metrics", "operating_points"]

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
        ``threshold, sensitivity, specificity, balanced_accuracy, ppv, npv, tp, fp, tn, fn``; a
        ratio whose denominator is 0 is NaN. ``balanced_accuracy`` is the mean of sensitivity and
        specificity (``sklearn.metrics.balanced_accuracy_score`` for binary labels).

    Examples
    --------
    >>> m = confusion_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.8], 0.5)
    >>> m["sensitivity"], m["specificity"], m["ppv"], m["npv"]
    (0.5, 0.5, 0.5, 0.5)
    >>> confusion_metrics([0, 0, 0, 1], [0.1, 0.2, 0.6, 0.8], 0.5)["balanced_accuracy"]
    0.8333333333333333
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

    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2.0,
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
