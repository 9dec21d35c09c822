"""Uncertainty policies against hand-computed arrays."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_embed.exceptions import ManifestError
from cxr_embed.learn.labels import POLICIES, apply_uncertainty, normalize_policy, soft_to_weighted

NAN = np.nan
LABELS = np.array([[1.0, 0.0], [-1.0, NAN], [0.0, -1.0], [NAN, 1.0]])


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ignore():
    y, mask = apply_uncertainty(LABELS, "ignore")
    _eq(y, [[1, 0], [NAN, NAN], [0, NAN], [NAN, 1]])
    _eq(mask, [[True, True], [False, False], [True, False], [False, True]])


def test_zeros():
    y, mask = apply_uncertainty(LABELS, "zeros")
    _eq(y, [[1, 0], [0, NAN], [0, 0], [NAN, 1]])
    _eq(mask, [[True, True], [True, False], [True, True], [False, True]])


def test_ones():
    y, mask = apply_uncertainty(LABELS, "U-Ones")
    _eq(y, [[1, 0], [1, NAN], [0, 1], [NAN, 1]])
    _eq(mask, [[True, True], [True, False], [True, True], [False, True]])


def test_multiclass():
    y, mask = apply_uncertainty(LABELS, "U-MultiClass")
    _eq(y, [[1, 0], [2, NAN], [0, 2], [NAN, 1]])
    _eq(mask, [[True, True], [True, False], [True, True], [False, True]])


def test_ones_smoothed_range_seed_and_certain_entries_untouched():
    labels = np.full((500, 2), -1.0)
    labels[:5] = [[1, 0]] * 5
    y, mask = apply_uncertainty(labels, "ones_smoothed", random_state=3)
    soft = y[5:]
    assert soft.min() >= 0.55 and soft.max() <= 0.85
    assert soft.std() > 0.05  # really drawn, not a constant
    _eq(y[:5], [[1, 0]] * 5)
    assert mask.all()
    y2, _ = apply_uncertainty(labels, "U-Ones+LSR", random_state=3)
    _eq(y, y2)
    y3, _ = apply_uncertainty(labels, "ones_smoothed", random_state=4)
    assert not np.array_equal(y, y3)


def test_dataframe_and_1d_inputs():
    df = pd.DataFrame(LABELS, columns=["a", "b"])
    y, mask = apply_uncertainty(df, "zeros")
    assert isinstance(y, np.ndarray) and y.shape == (4, 2)
    y1, m1 = apply_uncertainty(np.array([1.0, -1.0, NAN]), "ignore")
    _eq(y1, [1, NAN, NAN])
    _eq(m1, [True, False, False])


def test_policy_names_and_errors():
    assert normalize_policy("U-Ignore") == "ignore"
    assert normalize_policy(" ONES_smoothed ") == "ones_smoothed"
    assert [normalize_policy(p) for p in POLICIES] == list(POLICIES)
    with pytest.raises(ValueError, match="unknown uncertainty policy"):
        apply_uncertainty(LABELS, "u-twos")
    with pytest.raises(ManifestError, match=r"found \[2.0\]"):
        apply_uncertainty(np.array([1.0, 2.0]), "ones")
    with pytest.raises(ManifestError, match="numeric"):
        apply_uncertainty(np.array(["yes", "no"]), "ones")


def test_soft_to_weighted_hand_computed():
    X = np.arange(6, dtype=float).reshape(3, 2)
    X2, y2, w2 = soft_to_weighted(X, np.array([1.0, 0.7, 0.0]), sample_weight=np.array([1.0, 2.0, 1.0]))
    _eq(X2, [[0, 1], [2, 3], [4, 5], [2, 3]])
    _eq(y2, [1, 1, 0, 0])
    np.testing.assert_allclose(w2, [1.0, 1.4, 1.0, 0.6])
    # the weighted positive fraction of the soft row equals its target
    assert np.isclose(w2[1] / (w2[1] + w2[3]), 0.7)
    with pytest.raises(ValueError, match="NaN"):
        soft_to_weighted(X, np.array([1.0, NAN, 0.0]))
