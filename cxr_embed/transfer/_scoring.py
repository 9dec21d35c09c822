"""The rows of the comparison's table: AUC with a patient-bootstrap CI per approach and label, the
macro AUC with its CI, and DeLong's test of every approach against the best of its setting.

Used by :func:`cxr_embed.transfer.compare.compare_transfer` (and by the tests' fake comparisons).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

__all__: list[str] = []

logger = logging.getLogger("cxr_embed.transfer.compare")


def _evaluate(name, family, truth, scores, groups, labels, n_bootstrap, seed) -> list[dict]:
    from ..evaluate.metrics import roc_auc_ci

    rows = []
    aucs = []
    for j, lab in enumerate(labels):
        known = ~np.isnan(truth[:, j]) & ~np.isnan(scores[:, j])
        y = truth[known, j]
        row = {"family": family, "approach": name, "label": lab, "n": int(known.sum()), "n_pos": int(np.sum(y == 1)),
               "n_patients": int(np.unique(groups[known]).size)}
        if np.unique(y).size < 2:
            row.update(auc=np.nan, ci_low=np.nan, ci_high=np.nan)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # few positives: the CI shows it
                a = roc_auc_ci(y, scores[known, j], groups=groups[known], n_bootstrap=n_bootstrap, random_state=seed)
            row.update(auc=a.auc, ci_low=a.ci_low, ci_high=a.ci_high)
        aucs.append(row["auc"])
        rows.append(row)
    if len(labels) > 1:
        rows.append(_macro_row(name, family, truth, scores, groups, n_bootstrap, seed, aucs))
    return rows


def _macro_row(name, family, truth, scores, groups, n_bootstrap, seed, aucs) -> dict:
    """Macro AUC with a CI from the same patient resamples applied to every label."""
    from ..evaluate.metrics import evaluate_predictions

    row = {"family": family, "approach": name, "label": "macro", "auc": float(np.nanmean(aucs)),
           "ci_low": np.nan, "ci_high": np.nan, "n": int(np.sum(~np.isnan(truth))),
           "n_pos": int(np.nansum(truth == 1)), "n_patients": int(np.unique(groups).size)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = evaluate_predictions(truth, scores, groups=groups, n_bootstrap=n_bootstrap, random_state=seed)
        macro = m[(m["label"] == "macro") & (m["metric"] == "auc") & (m["subgroup"] == "all")]
        if len(macro):
            row["ci_low"], row["ci_high"] = float(macro["ci_low"].iloc[0]), float(macro["ci_high"].iloc[0])
    except ValueError as e:  # a degenerate label: keep the AUC, no CI
        logger.warning("macro CI of %s not computed: %s", name, e)
    return row


def _add_delong(table: pd.DataFrame, truth: np.ndarray, scores: dict, labels: list[str]) -> pd.DataFrame:
    from ..evaluate.metrics import delong_test

    key = "macro" if len(labels) > 1 else labels[0]
    head = table[table["label"] == key].dropna(subset=["auc"])
    table["best"] = False
    table["delong_p"] = np.nan
    if head.empty:
        return table
    best = str(head.sort_values("auc", ascending=False)["approach"].iloc[0])
    table.loc[table["approach"] == best, "best"] = True
    for j, lab in enumerate(labels):
        for name, s in scores.items():
            if name == best:
                continue
            known = ~np.isnan(truth[:, j]) & ~np.isnan(s[:, j]) & ~np.isnan(scores[best][:, j])
            y = truth[known, j]
            if np.unique(y).size < 2:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                _, _, _, p = delong_test(y, scores[best][known, j], s[known, j])
            table.loc[(table["approach"] == name) & (table["label"] == lab), "delong_p"] = p
    return table
