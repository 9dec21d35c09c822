"""Statistics of the embedding audit: encoded-attribute scores with patient-bootstrap CIs,
label-from-attribute scores, within-strata AUC and the shortcut table with its flags.

Part of :func:`cxr_embed.evaluate.audit.audit_embeddings`; private.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
import pandas as pd

from .metrics import roc_auc_ci
from .metrics._bootstrap import (
    _WeightedAUC,
    _bootstrap_auc_samples,
    _bootstrap_counts,
    _group_index,
    _percentile_ci,
)

__all__: list[str] = []

_Interval = namedtuple("_Interval", "auc ci_low ci_high")


def _pool(levels: np.ndarray, min_count: int) -> np.ndarray:
    """Levels seen fewer than ``min_count`` times replaced by 'other'."""
    values, counts = np.unique(levels, return_counts=True)
    rare = values[counts < min_count]
    return np.where(np.isin(levels, rare), "other", levels) if rare.size else levels


def _attribute_scores(codes: list[np.ndarray], y: np.ndarray, folds: list) -> np.ndarray:
    """Out-of-fold P(label) from categorical codes alone: the level's positive rate in the
    training folds (one code array) or a logistic regression on their one-hot encoding (several).
    Unlabelled rows are never trained on; levels unseen in training get the training rate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    C = np.column_stack(codes).astype(str)
    s = np.full(y.shape[0], np.nan)
    for tr, te in folds:
        tr = tr[np.isfinite(y[tr])]
        if C.shape[1] == 1:
            rates = pd.Series(y[tr]).groupby(C[tr, 0]).mean()
            s[te] = pd.Series(C[te, 0]).map(rates).fillna(float(y[tr].mean())).to_numpy(float)
        else:
            enc = OneHotEncoder(handle_unknown="ignore").fit(C[tr])
            model = LogisticRegression(C=1.0, max_iter=1000).fit(enc.transform(C[tr]), y[tr].astype(int))
            s[te] = model.predict_proba(enc.transform(C[te]))[:, 1]
    return s


# --------------------------------------------------------------------------- statistics
def _auc_row(y, s, g, n_bootstrap, ci, seed) -> dict:
    r = roc_auc_ci(y, s, groups=g, n_bootstrap=n_bootstrap, ci=ci, random_state=seed)
    return {"value": r.auc, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "n_groups": r.n_groups}


def _ovr_auc_ci(Y1: np.ndarray, S: np.ndarray, g, n_bootstrap, ci, seed) -> tuple[list, tuple]:
    """One-vs-rest AUC per level and their mean, each with a CI from the same patient resamples.

    Each level's interval equals ``roc_auc_ci(..., random_state=seed)``; the mean's interval is
    the percentile interval of the per-resample means.
    """
    gidx, n_groups = _group_index(g, len(g))
    per_level, samples = [], []
    for k in range(Y1.shape[1]):
        y = Y1[:, k].astype(np.int8)
        point = float(_WeightedAUC(y, S[:, k])(np.ones((1, y.size)))[0])
        boot = (_bootstrap_auc_samples(y, S[:, k], gidx, n_groups, int(n_bootstrap), seed) if n_bootstrap
                else np.full(1, math.nan))
        samples.append(boot)
        per_level.append((point, *(_percentile_ci(boot, ci) if n_bootstrap else (math.nan, math.nan))))
    macro = float(np.mean([p[0] for p in per_level]))
    with np.errstate(all="ignore"):
        lo, hi = _percentile_ci(np.nanmean(np.vstack(samples), axis=0), ci) if n_bootstrap else (math.nan, math.nan)
    return per_level, (macro, lo, hi)


def _regression_ci(y, p, g, n_bootstrap, ci, seed) -> dict:
    """R² and MAE with patient-bootstrap CIs."""
    gidx, n_groups = _group_index(g, len(g))
    def stats(w):
        mu = (w @ y) / w.sum(axis=1)
        ss_res = w @ (y - p) ** 2
        ss_tot = np.sum(w * (y[None, :] - mu[:, None]) ** 2, axis=1)
        return 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, np.nan), (w @ np.abs(y - p)) / w.sum(axis=1)
    r2, mae = stats(np.ones((1, len(y))))
    out = {"r2": [float(r2[0]), math.nan, math.nan], "mae": [float(mae[0]), math.nan, math.nan]}
    if n_bootstrap:
        parts = [stats(counts[:, gidx]) for counts in _bootstrap_counts(seed, int(n_bootstrap), n_groups)]
        out["r2"][1:] = _percentile_ci(np.concatenate([a for a, _ in parts]), ci)
        out["mae"][1:] = _percentile_ci(np.concatenate([b for _, b in parts]), ci)
    return out


def _within_strata_auc(y, s, strata, g, n_bootstrap, ci, seed) -> tuple[float, float, float]:
    """AUC over positive-negative pairs of the same stratum only (pair-weighted), with a patient-bootstrap CI."""
    gidx, n_groups = _group_index(g, len(g))
    parts = []
    for level in np.unique(strata):
        m = strata == level
        if 0 < y[m].sum() < m.sum():
            parts.append((m, _WeightedAUC(y[m].astype(np.int8), s[m])))
    if not parts:
        return math.nan, math.nan, math.nan

    def pooled(W):
        num = den = 0.0
        for m, auc in parts:
            w = W[:, m]
            pairs = (w @ (y[m] == 1)) * (w @ (y[m] == 0))
            a = auc(w)
            num = num + np.where(pairs > 0, np.nan_to_num(a) * pairs, 0.0)
            den = den + pairs
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    point = float(pooled(np.ones((1, len(y))))[0])
    if not n_bootstrap:
        return point, math.nan, math.nan
    samples = np.concatenate([pooled(c[:, gidx]) for c in _bootstrap_counts(seed, int(n_bootstrap), n_groups)])
    lo, hi = _percentile_ci(samples, ci)
    return point, lo, hi


def _plain_auc(t: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    t = np.asarray(t, dtype=float)
    ok = np.isfinite(t)
    return float(roc_auc_score(t[ok], s[ok])) if 0 < t[ok].sum() < ok.sum() else math.nan


_SHORTCUT_COLUMNS = ["attribute", "label_auc", "label_ci_low", "label_ci_high", "encoded_metric", "encoded_value",
                     "encoded_ci_low", "classifier_auc", "classifier_ci_low", "classifier_ci_high",
                     "within_strata_auc", "within_ci_low", "within_ci_high", "flag"]


def _shortcuts(y, score, g, strata, decisive, label_name, folds, fold_of, *, n_bootstrap, ci, seed, margin,
               min_count):
    """Shortcut table and its flags: each attribute alone (and all together) against the embeddings' classifier.

    The AUC of the label from an attribute counts positive-negative pairs of the same test fold
    only (pooled over folds, with a patient-bootstrap CI): out-of-fold rates differ slightly
    between folds, and comparing them across folds would break the ties within a level at
    random and pull a binary attribute's AUC towards 0.5.
    """
    lab = np.isfinite(y)
    yl, sl, gl, fl = y[lab].astype(int), score[lab], g[lab], fold_of[lab]
    overall = roc_auc_ci(yl, sl, groups=gl, n_bootstrap=n_bootstrap, ci=ci, random_state=seed)
    clf = {"classifier_auc": overall.auc, "classifier_ci_low": overall.ci_low, "classifier_ci_high": overall.ci_high}
    rows, flags = [], []
    for i, (name, levels) in enumerate(strata.items()):
        alone = _attribute_scores([_pool(levels, min_count)], y, folds)[lab]
        r = _Interval(*_within_strata_auc(yl, alone, fl, gl, n_bootstrap, ci, seed + 7 * i + 1))
        w = _within_strata_auc(yl, sl, levels[lab], gl, n_bootstrap, ci, seed + 7 * i + 2)
        enc = decisive.loc[name]
        predicts = bool(np.isfinite(r.ci_low) and r.ci_low > 0.5 + margin)
        flag = predicts and bool(enc["encoded"])
        rows.append({"attribute": name, "label_auc": r.auc, "label_ci_low": r.ci_low, "label_ci_high": r.ci_high,
                     "encoded_metric": enc["metric"], "encoded_value": enc["value"], "encoded_ci_low": enc["ci_low"],
                     **clf, "within_strata_auc": w[0], "within_ci_low": w[1], "within_ci_high": w[2],
                     "flag": flag})
        if flag:
            metric = "R²" if enc["metric"] == "r2" else "AUC"
            flags.append(
                f"Shortcut risk: {name} predicts {label_name!r} on its own (AUC {_fmt(r.auc)}, {ci:.0%} CI "
                f"{_fmt(r.ci_low)}-{_fmt(r.ci_high)}) and the embeddings encode {name} ({metric} {enc['value']:.3f}, "
                f"CI lower bound {enc['ci_low']:.3f}); a classifier on these embeddings can score by reading {name} "
                f"instead of the finding. Its AUC within {name} strata is {_fmt(w[0])} against {_fmt(overall.auc)} "
                f"overall; validate where {name} is not tied to the label.")
    if strata:
        alone = _attribute_scores([_pool(v, min_count) for v in strata.values()], y, folds)[lab]
        r = _Interval(*_within_strata_auc(yl, alone, fl, gl, n_bootstrap, ci, seed + 3))
        rows.append({"attribute": "all attributes", "label_auc": r.auc, "label_ci_low": r.ci_low,
                     "label_ci_high": r.ci_high, "encoded_metric": "", "encoded_value": math.nan,
                     "encoded_ci_low": math.nan, **clf, "within_strata_auc": math.nan, "within_ci_low": math.nan,
                     "within_ci_high": math.nan, "flag": False})
    return pd.DataFrame(rows, columns=_SHORTCUT_COLUMNS), flags


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.2f}"


def _encoded_table(specs: dict, cols: list, P: np.ndarray, g: np.ndarray, folds: list, *, n_bootstrap: int,
                   ci: float, seed: int, encoded_auc: float, encoded_r2: float) -> pd.DataFrame:
    """How well the probe's out-of-fold predictions ``P`` recover each attribute (and its shuffled copy)."""
    n = P.shape[0]
    rows = []
    for i, (name, spec) in enumerate(specs.items()):
        s_seed = seed + 101 * i
        T = np.column_stack([cols[j] for j in spec["cols"]])
        S, Sh = P[:, spec["cols"]], P[:, spec["shuffled"]]
        T_sh = np.column_stack([cols[j] for j in spec["shuffled"]])
        obs = np.isfinite(T[:, 0])
        base = {"attribute": name, "kind": spec["kind"], "n": int(obs.sum()), "n_groups": len(np.unique(g[obs]))}
        if spec["kind"] == "numeric":
            t, p = T[obs, 0], S[obs, 0]
            reg = _regression_ci(t, p, g[obs], n_bootstrap, ci, s_seed)
            sh = _regression_ci(T_sh[obs, 0], Sh[obs, 0], g[obs], 0, ci, s_seed)
            mean_pred = np.empty(n)
            for tr, te in folds:
                mean_pred[te] = np.nanmean(T[tr, 0])
            chance_mae = float(np.mean(np.abs(t - mean_pred[obs])))
            r2_low = reg["r2"][1]
            rows.append({**base, "metric": "r2", "level": "", "value": reg["r2"][0], "ci_low": r2_low,
                         "ci_high": reg["r2"][2], "chance": 0.0, "shuffled": sh["r2"][0],
                         "encoded": bool(np.isfinite(r2_low) and r2_low > encoded_r2)})
            rows.append({**base, "metric": "mae", "level": "", "value": reg["mae"][0], "ci_low": reg["mae"][1],
                         "ci_high": reg["mae"][2], "chance": chance_mae, "shuffled": sh["mae"][0], "encoded": None})
            continue
        T1, S1, Sh1 = T[obs].astype(int), S[obs], Sh[obs]
        if spec["kind"] == "binary":
            r = _auc_row(T1[:, 0], S1[:, 0], g[obs], n_bootstrap, ci, s_seed)
            rows.append({**base, **r, "metric": "auc", "level": spec["levels"][0], "chance": 0.5,
                         "shuffled": _plain_auc(T_sh[obs, 0], Sh1[:, 0]),
                         "encoded": bool(np.isfinite(r["ci_low"]) and r["ci_low"] > encoded_auc)})
            continue
        per_level, (value, lo, hi) = _ovr_auc_ci(T1, S1, g[obs], n_bootstrap, ci, s_seed)
        shuffled = [_plain_auc(T_sh[obs, k], Sh1[:, k]) for k in range(T1.shape[1])]
        rows.append({**base, "metric": "auc_macro", "level": "", "value": value, "ci_low": lo, "ci_high": hi,
                     "chance": 0.5, "shuffled": float(np.nanmean(shuffled)),
                     "encoded": bool(np.isfinite(lo) and lo > encoded_auc)})
        rows += [{**base, "metric": "auc_ovr", "level": level, "value": v, "ci_low": l, "ci_high": h, "chance": 0.5,
                  "shuffled": sh, "encoded": None}
                 for level, (v, l, h), sh in zip(spec["levels"], per_level, shuffled)]
    enc_cols = ["attribute", "kind", "metric", "level", "value", "ci_low", "ci_high", "chance", "shuffled",
                "n", "n_groups", "encoded"]
    encoded = pd.DataFrame(rows, columns=enc_cols)
    return encoded
