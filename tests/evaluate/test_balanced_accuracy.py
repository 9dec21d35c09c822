"""Balanced accuracy and the confusion metrics at a chosen threshold, with patient-bootstrap CIs."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from cxr_embed.evaluate.metrics import confusion_metrics, evaluate_predictions, roc_auc_ci


def _data(seed=0, n_patients=150, per=2):
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n_patients), per).astype(float)
    s = np.clip(0.35 * y + rng.uniform(0, 0.65, y.size), 0, 1)
    return y, s, np.repeat(np.arange(n_patients), per)


def test_balanced_accuracy_matches_scikit_learn():
    y, s, _ = _data()
    for t in (0.3, 0.5, 0.7):
        m = confusion_metrics(y, s, t)
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, s >= t))
        assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)


def test_evaluate_predictions_reports_balanced_accuracy_with_cis_at_every_operating_point():
    y, s, g = _data()
    df = evaluate_predictions(y, s, groups=g, n_bootstrap=400, random_state=0, threshold=0.5)
    ops = df[df.operating_point != ""]
    assert set(ops.operating_point) == {"youden", "spec>=0.90", "fixed"}
    fixed = ops[ops.operating_point == "fixed"].set_index("metric")
    assert fixed.loc["threshold", "value"] == 0.5
    assert fixed.loc["balanced_accuracy", "value"] == pytest.approx(balanced_accuracy_score(y, s >= 0.5))
    for metric in ("sensitivity", "specificity", "balanced_accuracy", "ppv", "npv"):
        r = fixed.loc[metric]
        assert r.ci_low < r.value < r.ci_high, metric
    assert np.isnan(fixed.loc["threshold", "ci_low"])
    # patient resamples: with 4 near-identical images per patient the interval is wider than an
    # image-level bootstrap of the same numbers (about twice)
    rng = np.random.default_rng(5)
    yp = rng.integers(0, 2, 80).astype(float)
    sp = np.clip(0.35 * yp + rng.uniform(0, 0.65, 80), 0, 1)
    yc, sc, gc = np.repeat(yp, 4), np.repeat(sp, 4) + rng.normal(0, 0.01, 320), np.repeat(np.arange(80), 4)
    widths = []
    for groups in (gc, None):
        t = evaluate_predictions(yc, sc, groups=groups, n_bootstrap=400, random_state=0, threshold=0.5)
        r = t[(t.operating_point == "fixed") & (t.metric == "balanced_accuracy")].iloc[0]
        widths.append(r.ci_high - r.ci_low)
    assert widths[0] > 1.5 * widths[1]
    # the AUC's interval is unchanged by the new rows (same seed, same resamples)
    auc = df[(df.metric == "auc") & (df.subgroup == "all")].iloc[0]
    r = roc_auc_ci(y, s, groups=g, n_bootstrap=400, random_state=0)
    assert (auc.ci_low, auc.ci_high) == pytest.approx((r[1], r[2]), abs=0.02)


def test_balanced_accuracy_ci_covers_the_truth():
    # the population balanced accuracy at threshold 0.5 for scores 0.35*y + U(0, 0.65), by simulation
    rng_truth = np.random.default_rng(99)
    y = rng_truth.integers(0, 2, 400_000)
    s = 0.35 * y + rng_truth.uniform(0, 0.65, y.size)
    truth = balanced_accuracy_score(y, s >= 0.5)
    covered = 0
    for seed in range(30):
        yy, ss, g = _data(seed=seed + 1)
        df = evaluate_predictions(yy, ss, groups=g, n_bootstrap=300, random_state=seed, threshold=0.5)
        r = df[(df.operating_point == "fixed") & (df.metric == "balanced_accuracy")].iloc[0]
        covered += r.ci_low <= truth <= r.ci_high
    assert covered >= 24  # nominal 95 %: 28.5 of 30; fewer than 24 would be a real under-coverage


def test_threshold_per_label_and_errors():
    y, s, g = _data()
    Y = np.column_stack([y, y[::-1]])
    S = np.column_stack([s, s[::-1]])
    df = evaluate_predictions(Y, S, labels=["a", "b"], threshold={"a": 0.4, "b": 0.6}, n_bootstrap=0)
    thr = df[(df.operating_point == "fixed") & (df.metric == "threshold")].set_index("label")["value"]
    assert thr.to_dict() == {"a": 0.4, "b": 0.6}
    with pytest.raises(ValueError, match="no entry for label 'b'"):
        evaluate_predictions(Y, S, labels=["a", "b"], threshold={"a": 0.4}, n_bootstrap=0)
