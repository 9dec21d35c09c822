"""Shared helpers of the metrics: input checks and the patient-level bootstrap.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = []

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
