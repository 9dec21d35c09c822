"""Re-identification by nearest neighbours: is an image's closest embedding another image of its patient?

Part of the embedding audit (:func:`cxr_embed.evaluate.audit.audit_embeddings`). Neighbours
are searched by cosine similarity among all images (the image itself excluded); the rate is
taken over the images whose patient has at least two images, against the rate expected by
chance from the patients' image counts.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..exceptions import InvalidInputError

__all__ = ["reidentification"]

_COLUMNS = ["k", "rate", "ci_low", "ci_high", "chance", "lift", "n_queries", "n_patients"]


def _chance_hit(n_candidates: int, n_same: np.ndarray, k: int) -> np.ndarray:
    """P(at least one of k neighbours drawn without replacement is of the same patient)."""
    miss = np.ones(n_same.shape, dtype=float)
    for j in range(min(k, n_candidates)):
        miss *= np.clip((n_candidates - n_same - j) / (n_candidates - j), 0.0, 1.0)
    return 1.0 - miss


def _neighbours(X: np.ndarray, query: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """Indices of the k rows most cosine-similar to each query row (itself excluded), most similar first,
    shape (n_query, k)."""
    Z = np.asarray(X, dtype=np.float32)
    norm = np.linalg.norm(Z, axis=1, keepdims=True)
    Z = Z / np.where(norm > 0, norm, 1.0)
    out = np.empty((query.size, k), dtype=np.int64)
    for start in range(0, query.size, chunk):
        q = query[start:start + chunk]
        sim = Z[q] @ Z.T
        sim[np.arange(q.size), q] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def reidentification(
    X: ArrayLike,
    groups: ArrayLike,
    *,
    ks: Sequence[int] = (1, 5),
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    random_state: int | None = 0,
    chunk: int = 1024,
) -> pd.DataFrame:
    """How often an image's nearest neighbours (cosine) include another image of the same patient.

    Parameters
    ----------
    X : array-like of shape (n_images, dim)
    groups : array-like of shape (n_images,)
        Patient ids.
    ks : sequence of int, default (1, 5)
        Neighbour counts; ``k=1`` asks whether the single nearest image is the same patient's.
    n_bootstrap : int, default 1000
        Patient-level bootstrap resamples of the queried images for the CI (0: none).
    ci : float, default 0.95
    random_state : int or None, default 0
    chunk : int, default 1024
        Query rows per similarity block (memory ``chunk x n_images`` float32).

    Returns
    -------
    DataFrame
        One row per k: ``rate`` (fraction of queried images with a same-patient image among
        their k nearest), ``ci_low``, ``ci_high``, ``chance`` (the expected rate if neighbours
        were drawn at random: for an image whose patient has m images among n, one minus the
        hypergeometric probability that none of k draws from the n - 1 others is one of the
        m - 1), ``lift`` (rate / chance), ``n_queries`` (images whose patient has more than
        one image) and ``n_patients`` (their patients). Rates are NaN when no patient has two images.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(50, 8))
    >>> X = np.repeat(base, 2, axis=0) + 0.01 * rng.normal(size=(100, 8))
    >>> t = reidentification(X, np.repeat(np.arange(50), 2), n_bootstrap=100)
    >>> float(t.loc[t["k"] == 1, "rate"].iloc[0])
    1.0
    """
    X = np.asarray(X)
    g = np.asarray(groups).astype(str).ravel()
    if g.shape[0] != X.shape[0]:
        raise InvalidInputError(f"groups has {g.shape[0]} entries but X has {X.shape[0]} rows; pass one patient id per image")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InvalidInputError(f"ks must hold positive neighbour counts such as (1, 5); got {ks!r}")
    n = X.shape[0]
    _, codes, counts = np.unique(g, return_inverse=True, return_counts=True)
    codes = codes.ravel()
    per_image = counts[codes]
    query = np.flatnonzero(per_image > 1)
    kmax = min(ks[-1], n - 1)
    rows = []
    if query.size == 0 or kmax < 1:
        for k in ks:
            rows.append({"k": k, "rate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "chance": math.nan,
                         "lift": math.nan, "n_queries": 0, "n_patients": 0})
        return pd.DataFrame(rows, columns=_COLUMNS)
    nn = _neighbours(X, query, kmax, chunk)
    same = codes[nn] == codes[query][:, None]
    qcodes = np.unique(codes[query], return_inverse=True)[1].ravel()
    n_q_patients = int(qcodes.max()) + 1
    rng = np.random.default_rng(random_state)
    weights = rng.multinomial(n_q_patients, np.full(n_q_patients, 1.0 / n_q_patients), size=n_bootstrap) \
        if n_bootstrap else np.empty((0, n_q_patients))
    for k in ks:
        hit = same[:, :min(k, kmax)].any(axis=1).astype(float)
        chance = float(np.mean(_chance_hit(n - 1, per_image[query] - 1, k)))
        rate = float(hit.mean())
        lo = hi = math.nan
        if n_bootstrap:
            w = weights[:, qcodes]
            boot = (w @ hit) / w.sum(axis=1)
            alpha = (1.0 - ci) / 2.0
            lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
        rows.append({"k": k, "rate": rate, "ci_low": lo, "ci_high": hi, "chance": chance,
                     "lift": rate / chance if chance > 0 else math.nan, "n_queries": int(query.size),
                     "n_patients": n_q_patients})
    return pd.DataFrame(rows, columns=_COLUMNS)
