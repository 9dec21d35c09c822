"""AUC by subgroup (sex, age band, view, site) and the largest gap between subgroups.

Part of :mod:`cxr_embed.evaluate.metrics`; import the public names from there.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ._bootstrap import _as_binary_1d, _as_score_1d, _seed_from
from .auc import roc_auc_ci

__all__ = ["age_bands", "subgroup_auc"]

logger = logging.getLogger(__name__)

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
