"""Uncertainty policies for CheXpert-style labels, and masks for missing labels.

Labels arrive from :func:`cxr_embed.io.manifest.load_manifest` as floats: ``1.0``
positive, ``0.0`` negative, ``-1.0`` uncertain (the radiology report hedged) and
``NaN`` missing (not mentioned). A *policy* (Irvin et al. 2019, CheXpert; used by
Gozzi et al. 2022) turns them into training targets:

========================  =====================  ============================================
policy                    aliases                uncertain (-1) becomes
========================  =====================  ============================================
``"ignore"``              ``"U-Ignore"``         masked out (not trained on)
``"zeros"``               ``"U-Zeros"``          0 (negative)
``"ones"``                ``"U-Ones"``           1 (positive)
``"ones_smoothed"``       ``"U-Ones+LSR"``,      a soft target drawn uniformly from
                          ``"U-Ones-Smoothed"``  ``[0.55, 0.85]`` (seeded by ``random_state``)
``"multiclass"``          ``"U-MultiClass"``     class 2 (0 negative, 1 positive, 2 uncertain)
========================  =====================  ============================================

Missing labels (NaN) are always masked out. Classical classifiers take hard
labels only; :func:`soft_to_weighted` turns soft targets into weighted hard rows
(each soft row ``p`` becomes a positive row of weight ``p`` and a negative row of
weight ``1 - p``), which is what :class:`cxr_embed.learn.classifiers.MultiLabelClassifier`
does for the ``"ones_smoothed"`` policy.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..exceptions import ManifestError

__all__ = ["POLICIES", "apply_uncertainty", "normalize_policy", "soft_to_weighted"]

logger = logging.getLogger(__name__)

#: Canonical policy names, in the order of the table above.
POLICIES: tuple[str, ...] = ("ignore", "zeros", "ones", "ones_smoothed", "multiclass")

_ALIASES = {
    "ignore": "ignore", "u-ignore": "ignore", "u_ignore": "ignore", "uignore": "ignore",
    "zeros": "zeros", "u-zeros": "zeros", "u_zeros": "zeros", "uzeros": "zeros",
    "ones": "ones", "u-ones": "ones", "u_ones": "ones", "uones": "ones",
    "ones_smoothed": "ones_smoothed", "u-ones-smoothed": "ones_smoothed",
    "u-ones+lsr": "ones_smoothed", "u-ones-lsr": "ones_smoothed", "u_ones_smoothed": "ones_smoothed",
    "u-ones smoothed": "ones_smoothed", "ones-smoothed": "ones_smoothed",
    "multiclass": "multiclass", "u-multiclass": "multiclass", "u_multiclass": "multiclass",
    "multi-class": "multiclass",
}

#: Interval of the soft target drawn for uncertain labels under ``"ones_smoothed"``.
SMOOTHING_RANGE: tuple[float, float] = (0.55, 0.85)


def normalize_policy(policy: str) -> str:
    """Return the canonical name of an uncertainty policy.

    Parameters
    ----------
    policy : str
        A canonical name (``"ignore"``, ``"zeros"``, ``"ones"``, ``"ones_smoothed"``,
        ``"multiclass"``) or one of the paper's names (``"U-Ignore"``, ``"U-Zeros"``,
        ``"U-Ones"``, ``"U-Ones+LSR"``, ``"U-MultiClass"``); case-insensitive.

    Returns
    -------
    name : str
        One of :data:`POLICIES`.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the accepted names.

    Examples
    --------
    >>> normalize_policy("U-Ones")
    'ones'
    """
    if not isinstance(policy, str):
        raise ValueError(f"policy must be a str, one of {POLICIES}; got {policy!r}")
    key = policy.strip().lower()
    if key not in _ALIASES:
        raise ValueError(
            f"unknown uncertainty policy {policy!r}; expected one of {POLICIES} "
            "or the paper's names U-Ignore, U-Zeros, U-Ones, U-Ones+LSR, U-MultiClass"
        )
    return _ALIASES[key]


def _as_label_array(labels: Any) -> np.ndarray:
    if hasattr(labels, "to_numpy"):  # DataFrame or Series
        arr = labels.to_numpy(dtype=float, na_value=np.nan)
    else:
        try:
            arr = np.asarray(labels, dtype=float)
        except (TypeError, ValueError) as e:
            raise ManifestError(
                "labels must be numeric (1 positive, 0 negative, -1 uncertain, NaN missing); "
                f"could not convert them to float: {e}"
            ) from e
    if arr.ndim not in (1, 2):
        raise ManifestError(
            f"labels must have shape (n_samples,) or (n_samples, n_labels); got shape {arr.shape}"
        )
    known = arr[~np.isnan(arr)]
    bad = ~np.isin(known, (-1.0, 0.0, 1.0))
    if bad.any():
        values = np.unique(known[bad])[:5]
        raise ManifestError(
            "labels may only contain 1 (positive), 0 (negative), -1 (uncertain) or NaN (missing); "
            f"found {values.tolist()}; fix the manifest or map these values first"
        )
    return arr


def apply_uncertainty(labels: Any, policy: str = "ignore", *, random_state: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Turn 1/0/-1/NaN labels into training targets and a mask of usable entries.

    Parameters
    ----------
    labels : array-like or DataFrame of shape (n_samples, n_labels) or (n_samples,)
        ``1`` positive, ``0`` negative, ``-1`` uncertain, ``NaN`` missing.
    policy : str, default="ignore"
        ``"ignore"`` (U-Ignore), ``"zeros"`` (U-Zeros), ``"ones"`` (U-Ones),
        ``"ones_smoothed"`` (U-Ones with label smoothing, uncertain -> U(0.55, 0.85))
        or ``"multiclass"`` (U-MultiClass: 0 negative, 1 positive, 2 uncertain).
        Case-insensitive; the paper's names are accepted (see :func:`normalize_policy`).
    random_state : int, numpy Generator or None, default=None
        Seeds the soft targets of ``"ones_smoothed"``; ignored by other policies.

    Returns
    -------
    y : ndarray of float64, same shape as ``labels``
        Targets; ``NaN`` wherever ``mask`` is False.
    mask : ndarray of bool, same shape as ``labels``
        True where the entry may be trained on (known after the policy).

    Raises
    ------
    ManifestError
        If the labels contain values other than 1, 0, -1 and NaN.
    ValueError
        For an unknown policy.

    Examples
    --------
    >>> import numpy as np
    >>> y, mask = apply_uncertainty(np.array([1.0, 0.0, -1.0, np.nan]), "U-Ones")
    >>> y.tolist()[:3], mask.tolist()
    ([1.0, 0.0, 1.0], [True, True, True, False])
    >>> y, mask = apply_uncertainty(np.array([1.0, -1.0]), "ignore")
    >>> mask.tolist()
    [True, False]
    """
    name = normalize_policy(policy)
    arr = _as_label_array(labels)
    missing = np.isnan(arr)
    uncertain = arr == -1.0
    y = arr.copy()
    if name == "ignore":
        y[uncertain] = np.nan
        mask = ~missing & ~uncertain
    elif name == "zeros":
        y[uncertain] = 0.0
        mask = ~missing
    elif name == "ones":
        y[uncertain] = 1.0
        mask = ~missing
    elif name == "ones_smoothed":
        rng = np.random.default_rng(random_state)
        low, high = SMOOTHING_RANGE
        y[uncertain] = rng.uniform(low, high, size=int(uncertain.sum()))
        mask = ~missing
    else:  # multiclass
        y[uncertain] = 2.0
        mask = ~missing
    y[~mask] = np.nan
    logger.debug("policy %s: %d uncertain, %d missing entries", name, int(uncertain.sum()), int(missing.sum()))
    return y, mask


def soft_to_weighted(X: Any, y_soft: Any, sample_weight: Any = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """Expand soft binary targets into weighted hard rows for hard-label classifiers.

    Each row whose target ``p`` lies strictly between 0 and 1 becomes two rows:
    a positive (``y = 1``) with weight ``p * w`` and a negative (``y = 0``) with
    weight ``(1 - p) * w``. Hard rows (0 or 1) are kept once with weight ``w``.
    The expected log-loss (and the Gini/entropy impurity of trees) under these
    weights equals that of the soft target, so any estimator accepting
    ``sample_weight`` learns from label-smoothed targets.
    :class:`cxr_embed.learn.classifiers.MultiLabelClassifier` calls this for the
    ``"ones_smoothed"`` policy.

    Parameters
    ----------
    X : array-like of shape (n_samples, dim)
        Features.
    y_soft : array-like of shape (n_samples,)
        Targets in ``[0, 1]`` (no NaN: drop masked rows first).
    sample_weight : array-like of shape (n_samples,), default=None
        Existing weights, multiplied in.

    Returns
    -------
    X_out : ndarray of shape (n_out, dim), or DataFrame
        Hard rows first (in input order), then the negative copies of soft rows. A DataFrame
        (embeddings beside clinical columns, :mod:`cxr_embed.learn.clinical`) stays one, with
        its columns and dtypes and a fresh index.
    y_out : ndarray of int64 of shape (n_out,)
    weight_out : ndarray of float64 of shape (n_out,)

    Examples
    --------
    >>> import numpy as np
    >>> X2, y2, w2 = soft_to_weighted(np.eye(2), np.array([1.0, 0.7]))
    >>> y2.tolist(), np.round(w2, 2).tolist()
    ([1, 1, 0], [1.0, 0.7, 0.3])
    """
    frame = hasattr(X, "iloc") and hasattr(X, "columns")
    X = X if frame else np.asarray(X)
    p = np.asarray(y_soft, dtype=float).ravel()
    if p.shape[0] != X.shape[0]:
        raise ValueError(f"y_soft has {p.shape[0]} rows but X has {X.shape[0]}; they must match")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("y_soft must lie in [0, 1] without NaN; drop masked rows (mask from apply_uncertainty) first")
    w = np.ones_like(p) if sample_weight is None else np.asarray(sample_weight, dtype=float).ravel()
    soft = (p > 0) & (p < 1)
    # the first copy of each row: hard rows as they are, soft rows as positives of weight p
    y_first = np.where(soft, 1, np.rint(p)).astype(np.int64)
    w_first = np.where(soft, p * w, w)
    if frame:
        import pandas as pd

        X_out = pd.concat([X, X.iloc[np.flatnonzero(soft)]], axis=0, ignore_index=True)
    else:
        X_out = np.concatenate([X, X[soft]], axis=0)
    y_out = np.concatenate([y_first, np.zeros(int(soft.sum()), dtype=np.int64)])
    w_out = np.concatenate([w_first, (1.0 - p[soft]) * w[soft]])
    return X_out, y_out, w_out
