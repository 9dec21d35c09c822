"""Tests of cxr_embed.evaluate.metrics against hand-computed values, scikit-learn and simulation."""
from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from cxr_embed.evaluate.metrics import _bootstrap as MB
from cxr_embed.evaluate.metrics import (
    METRICS_COLUMNS,
    age_bands,
    brier_score,
    confusion_metrics,
    delong_roc_variance,
    delong_test,
    evaluate_predictions,
    expected_calibration_error,
    metrics_from_json,
    metrics_to_json,
    reliability_curve,
    roc_auc_ci,
    subgroup_auc,
    threshold_at_specificity,
    youden_threshold,
)


# --------------------------------------------------------------------------- reference implementations
def _slow_delong(y, scores):
    """DeLong et al. (1988) by definition: O(n*m) structural components with psi(x, y)."""
    y = np.asarray(y)
    scores = np.atleast_2d(scores)
    k = scores.shape[0]
    m, n = int(np.sum(y == 1)), int(np.sum(y == 0))
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    aucs = np.empty(k)
    for r in range(k):
        x, z = scores[r, y == 1], scores[r, y == 0]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        aucs[r] = psi.mean()
        v10[r] = psi.mean(axis=1)
        v01[r] = psi.mean(axis=0)
    s10 = np.cov(v10).reshape(k, k)
    s01 = np.cov(v01).reshape(k, k)
    return aucs, s10 / m + s01 / n


def _hanley_mcneil_se(auc, n_pos, n_neg):
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg))


# Hanley & McNeil (1982), Radiology 143:29-36, Table 1: 5-point ratings of 109 CT images.
HM_NEG = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])   # 58 normal
HM_POS = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])   # 51 abnormal


# --------------------------------------------------------------------------- AUC and bootstrap
def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 6, 300) + y  # many ties
    auc, lo, hi = roc_auc_ci(y, s, n_bootstrap=0)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert math.isnan(lo) and math.isnan(hi)


def test_bootstrap_weighted_auc_equals_sklearn_sample_weight():
    """The vectorised resampled AUCs equal sklearn's AUC with the multiplicities as weights."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.integers(0, 2, 40), 3)
    s = np.round(y + rng.normal(0, 1, 120), 1)
    gidx, G = MB._group_index(groups, 120)
    counts = next(MB._bootstrap_counts(seed=7, n_bootstrap=25, n_groups=G))
    got = MB._WeightedAUC(y, s)(counts[:, gidx])
    for b in range(25):
        w = counts[b, gidx]
        keep = w > 0
        if len(np.unique(y[keep])) < 2:
            assert np.isnan(got[b])
        else:
            assert got[b] == pytest.approx(roc_auc_score(y[keep], s[keep], sample_weight=w[keep]), abs=1e-12)


def test_roc_auc_ci_is_reproducible_and_brackets_auc():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = y + rng.normal(0, 1.5, 200)
    r1 = roc_auc_ci(y, s, n_bootstrap=300, random_state=11)
    r2 = roc_auc_ci(y, s, n_bootstrap=300, random_state=11)
    assert tuple(r1) == tuple(r2)
    auc, lo, hi = r1
    assert lo < auc < hi
    assert r1.n == 200 and r1.n_groups == 200 and r1.n_skipped == 0 and r1.n_bootstrap == 300
    assert tuple(roc_auc_ci(y, s, n_bootstrap=300, random_state=12)) != tuple(r1)
    back = pickle.loads(pickle.dumps(r1))  # crosses process boundaries (joblib) intact
    assert tuple(back) == tuple(r1) and back.n_bootstrap == 300 and back.ci == 0.95


def test_bootstrap_ci_coverage_by_simulation():
    """200 binormal datasets of known AUC; the 95% percentile CI must cover it ~95% of the time."""
    rng = np.random.default_rng(20240501)
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2))
    covered = 0
    n_sim = 200
    for k in range(n_sim):
        y = np.r_[np.zeros(60, int), np.ones(60, int)]
        s = np.r_[rng.normal(0, 1, 60), rng.normal(d, 1, 60)]
        _, lo, hi = roc_auc_ci(y, s, n_bootstrap=200, random_state=k)
        covered += lo <= true_auc <= hi
    coverage = covered / n_sim
    assert 0.88 <= coverage <= 0.99, coverage


def _clustered(rng, n_patients=60, per_patient=8, d=1.0):
    lab = rng.integers(0, 2, n_patients)
    lab[:2] = [0, 1]
    patient_score = rng.normal(d * lab, 1.0)
    groups = np.repeat(np.arange(n_patients), per_patient)
    y = np.repeat(lab, per_patient)
    s = np.repeat(patient_score, per_patient) + rng.normal(0, 0.1, n_patients * per_patient)
    return y, s, groups


def test_patient_bootstrap_resamples_patients_on_clustered_data():
    """Images of one patient are near-copies: the image-level CI is far too narrow."""
    rng = np.random.default_rng(5)
    y, s, groups = _clustered(rng)
    _, lo_i, hi_i = roc_auc_ci(y, s, n_bootstrap=500, random_state=0)
    r = roc_auc_ci(y, s, groups=groups, n_bootstrap=500, random_state=0)
    assert r.n_groups == 60
    assert (r.ci_high - r.ci_low) > 2.0 * (hi_i - lo_i)
    # the patient-level CI equals the CI of one score per patient (images are near duplicates)
    per_patient = roc_auc_ci(y[::8], s[::8], n_bootstrap=500, random_state=0)
    assert (r.ci_high - r.ci_low) == pytest.approx(per_patient.ci_high - per_patient.ci_low, rel=0.25)


def test_patient_bootstrap_coverage_beats_image_bootstrap_on_clustered_data():
    rng = np.random.default_rng(6)
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2 * (1 + 0.01)))
    hit_patient = hit_image = 0
    n_sim = 80
    for k in range(n_sim):
        y, s, groups = _clustered(rng, n_patients=50, per_patient=6, d=d)
        _, lo, hi = roc_auc_ci(y, s, groups=groups, n_bootstrap=200, random_state=k)
        hit_patient += lo <= true_auc <= hi
        _, lo, hi = roc_auc_ci(y, s, n_bootstrap=200, random_state=k)
        hit_image += lo <= true_auc <= hi
    assert hit_patient / n_sim >= 0.85
    assert hit_image / n_sim <= 0.75


def test_degenerate_resamples_are_skipped_and_counted():
    y = np.array([1] + [0] * 9)
    s = np.linspace(1, 0, 10)
    with pytest.warns(RuntimeWarning, match="held one class"):
        r = roc_auc_ci(y, s, n_bootstrap=400, random_state=0)
    # P(no positive in a resample of 10) = 0.9**10 ~ 0.35
    assert 0.25 * 400 < r.n_skipped < 0.45 * 400
    assert r.auc == 1.0 and r.ci_high == 1.0


def test_roc_auc_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc_ci([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        roc_auc_ci([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="one patient id per image"):
        roc_auc_ci([0, 1, 1], [0.1, 0.2, 0.3], groups=[1, 2])
    with pytest.raises(ValueError, match="ci must be"):
        roc_auc_ci([0, 1], [0.1, 0.2], ci=95)


# --------------------------------------------------------------------------- DeLong
def test_delong_on_hanley_mcneil_published_example():
    y = np.r_[np.zeros(58), np.ones(51)]
    s = np.r_[HM_NEG, HM_POS].astype(float)
    auc, var = delong_roc_variance(y, s)
    assert auc == pytest.approx(0.893, abs=5e-4)  # published AUC
    # Hanley & McNeil's published SE is 0.032 (exponential approximation); DeLong's
    # nonparametric SE is close to it, and equal to the O(n*m) definition exactly.
    assert math.sqrt(var) == pytest.approx(0.032, rel=0.1)
    assert _hanley_mcneil_se(auc, 51, 58) == pytest.approx(0.032, abs=6e-4)
    ref_auc, ref_cov = _slow_delong(y, s)
    assert var == pytest.approx(ref_cov[0, 0], rel=1e-12)


def test_fast_delong_equals_structural_components_definition():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 150)
    a = np.round(y + rng.normal(0, 1, 150), 1)  # ties
    b = 0.5 * a + rng.normal(0, 1, 150) + 0.3 * y
    auc_a, auc_b, z, p = delong_test(y, a, b)
    ref_auc, ref_cov = _slow_delong(y, np.vstack([a, b]))
    assert (auc_a, auc_b) == pytest.approx(tuple(ref_auc), abs=1e-12)
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    assert z == pytest.approx((ref_auc[0] - ref_auc[1]) / math.sqrt(var), rel=1e-10)
    assert p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-10)
    assert auc_a == pytest.approx(roc_auc_score(y, a))
    # antisymmetric in the two models
    _, _, z2, p2 = delong_test(y, b, a)
    assert z2 == pytest.approx(-z) and p2 == pytest.approx(p)


def test_delong_detects_a_better_model_and_not_a_null_difference():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 400)
    good = y + rng.normal(0, 0.7, 400)
    bad = y + rng.normal(0, 3.0, 400)
    assert delong_test(y, good, bad)[3] < 1e-4
    # identical models: z = 0, p = 1
    assert delong_test(y, good, good)[2:] == (0.0, 1.0)
    # monotone transform leaves the AUC unchanged
    assert delong_test(y, good, np.exp(good))[2:] == (0.0, 1.0)


def test_delong_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(9)
    ps = []
    for _ in range(300):
        y = rng.integers(0, 2, 120)
        common = y + rng.normal(0, 1, 120)
        ps.append(delong_test(y, common + rng.normal(0, 1, 120), common + rng.normal(0, 1, 120))[3])
    ps = np.asarray(ps)
    assert 0.02 <= np.mean(ps < 0.05) <= 0.09


# --------------------------------------------------------------------------- DeLong vs R's pROC
# These run only where R and its pROC package are installed (Debian/Ubuntu:
# `apt-get install r-cran-proc`); otherwise they skip. pROC is GPL, so its `aSAH` data are
# read from the installed R package at test time and never copied into this repository.
#
# Conventions. pROC's roc(response, predictor) takes the first factor level as the
# controls and, by default, picks the direction from the medians; "<" means controls score
# lower than cases, i.e. AUC = P(score_case > score_control) + 0.5 P(tie), which is our AUC
# with the case level as y = 1. roc.test(roc1, roc2) reports Z = (AUC1 - AUC2) / SD(diff),
# and our delong_test(y, score_a, score_b) returns z = (auc_a - auc_b) / SD(diff): same
# sign with a = roc1, b = roc2. The p-value is two-sided in both.
_PROC_ENABLE = "to enable: apt-get install r-cran-proc"


def _rscript(code: str, *args: str) -> str:
    """Run ``Rscript -e code args...`` and return its stdout; fail with R's stderr on error."""
    import subprocess

    res = subprocess.run(
        [_RSCRIPT["path"], "--vanilla", "-e", code, *args],
        capture_output=True, text=True, timeout=120,
    )
    if res.returncode != 0:
        pytest.fail(f"Rscript failed ({res.returncode}):\n{res.stderr}")
    return res.stdout


_RSCRIPT: dict = {}


@pytest.fixture
def proc_r():
    """Skip unless ``Rscript`` is on PATH and R can load pROC (checked once per session)."""
    import shutil
    import subprocess

    path = shutil.which("Rscript")
    if path is None:
        pytest.skip(f"R (Rscript) is not on PATH; {_PROC_ENABLE}")
    if _RSCRIPT.get("path") != path:
        ok = subprocess.run(
            [path, "--vanilla", "-e", 'quit(status = if (requireNamespace("pROC", quietly = TRUE)) 0 else 3)'],
            capture_output=True, timeout=60,
        ).returncode == 0
        _RSCRIPT.update(path=path, ok=ok)
    if not _RSCRIPT["ok"]:
        pytest.skip(f"R package pROC is not installed; {_PROC_ENABLE}")
    return _rscript


def test_delong_reproduces_proc_published_asah_example(proc_r):
    import io

    # aSAH (113 patients, 41 with a poor outcome), read from the installed pROC package.
    # wfns is an ordered factor with levels "1" < ... < "5"; pROC uses its level codes.
    csv = proc_r(
        "suppressPackageStartupMessages(library(pROC)); data(aSAH);"
        "write.csv(data.frame(outcome = as.character(aSAH$outcome), s100b = aSAH$s100b,"
        " wfns = as.numeric(aSAH$wfns)), stdout(), row.names = FALSE)"
    )
    d = pd.read_csv(io.StringIO(csv))
    assert len(d) == 113 and set(d["outcome"]) == {"Good", "Poor"}
    # pROC: levels(outcome) = c("Good", "Poor") -> controls = "Good", cases = "Poor" = 1 here;
    # it chooses direction "<" for both markers, the orientation of our AUC.
    y = (d["outcome"] == "Poor").astype(int).to_numpy()
    auc_a, auc_b, z, p = delong_test(y, d["s100b"], d["wfns"])
    # Published in the pROC manual, roc.test examples (pROC 1.18.0):
    #   roc1 <- roc(aSAH$outcome, aSAH$s100b); roc2 <- roc(aSAH$outcome, aSAH$wfns)
    #   roc.test(roc1, roc2)  # method = "delong"
    #   "DeLong's test for two correlated ROC curves ... Z = -2.209, p-value = 0.02718
    #    ... AUC of roc1 0.7313686  AUC of roc2 0.8236789"
    # Asserted to the printed precision (half a unit in the last printed digit).
    assert auc_a == pytest.approx(0.7313686, abs=5e-8)
    assert auc_b == pytest.approx(0.8236789, abs=5e-8)
    assert z == pytest.approx(-2.209, abs=5e-4)   # negative: z = auc_a - auc_b scaled, s100b < wfns
    assert p == pytest.approx(0.02718, abs=5e-6)


def _synthetic_paired_sets(n_sets=20):
    """Paired scores of two correlated models; ties, unequal classes, an AUC < 0.5 too."""
    frames = []
    for seed in range(n_sets):
        rng = np.random.default_rng(1000 + seed)
        n_pos, n_neg = int(rng.integers(4, 120)), int(rng.integers(4, 250))
        y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
        rng.shuffle(y)
        n = y.size
        shared = rng.normal(0, 1, n)
        a = rng.uniform(0, 1.5) * y + shared + rng.normal(0, 1, n)
        b = rng.uniform(-0.5, 1.5) * y + rng.uniform(0, 1) * shared + rng.normal(0, 1, n)
        if seed % 3 == 0:       # coarse ties within and across classes
            a, b = np.round(a, 1), np.round(b, 0)
        elif seed % 3 == 1:     # ordinal 1..5 scores, as radiologist ratings
            a = np.digitize(a, np.quantile(a, [0.2, 0.4, 0.6, 0.8])) + 1.0
        frames.append(pd.DataFrame({"dataset": seed, "y": y, "a": a, "b": b}))
    return pd.concat(frames, ignore_index=True)


_PROC_PAIRED_DELONG = r"""
suppressPackageStartupMessages(library(pROC))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
for (g in split(d, d$dataset)) {
  # fixed levels and direction: controls = 0, cases = 1, "<" (no automatic flipping)
  r1 <- roc(g$y, g$a, levels = c(0, 1), direction = "<", quiet = TRUE)
  r2 <- roc(g$y, g$b, levels = c(0, 1), direction = "<", quiet = TRUE)
  t <- roc.test(r1, r2, method = "delong", paired = TRUE)
  cat(sprintf("%d,%.17g,%.17g,%.17g,%.17g\n", g$dataset[1],
              t$estimate[[1]], t$estimate[[2]], t$statistic[[1]], t$p.value))
}
"""


def test_delong_equals_proc_roc_test_on_synthetic_paired_data(proc_r, tmp_path):
    data = _synthetic_paired_sets(20)
    path = tmp_path / "paired.csv"
    data.to_csv(path, index=False, float_format="%.17g")
    out = proc_r(_PROC_PAIRED_DELONG, str(path))
    ref = np.array([[float(v) for v in line.split(",")] for line in out.strip().splitlines()])
    assert ref.shape == (20, 5)
    ours = np.array([
        delong_test(g["y"], g["a"], g["b"]) for _, g in data.groupby("dataset", sort=True)
    ])
    assert np.array_equal(ref[:, 0], np.arange(20))
    assert np.any(ours[:, 1] < 0.5)           # an AUC below 0.5 is kept, not flipped
    np.testing.assert_allclose(ours[:, :2], ref[:, 1:3], rtol=0, atol=1e-12)   # AUCs
    np.testing.assert_allclose(ours[:, 2], ref[:, 3], rtol=1e-8, atol=1e-12)   # Z, same sign
    np.testing.assert_allclose(ours[:, 3], ref[:, 4], rtol=1e-8, atol=1e-15)   # p


# --------------------------------------------------------------------------- operating points
Y_OP = np.array([0, 0, 0, 0, 1, 1, 1])
S_OP = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.9])


def test_youden_threshold_hand_computed():
    # J at 0.9: 1/3; 0.7: 2/3; 0.6: 2/3-1/4; 0.5: 1-1/4 = 0.75 (max); 0.3: 1-1/2
    assert youden_threshold(Y_OP, S_OP) == 0.5
    m = confusion_metrics(Y_OP, S_OP, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 3, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.75
    assert m["ppv"] == 0.75 and m["npv"] == 1.0


def test_threshold_at_specificity_hand_computed():
    t = threshold_at_specificity(Y_OP, S_OP, 0.9)
    assert t == 0.7  # the only non-trivial threshold with specificity 1 >= 0.9 and best sensitivity
    m = confusion_metrics(Y_OP, S_OP, t)
    assert m["specificity"] == 1.0 and m["sensitivity"] == pytest.approx(2 / 3)
    assert m["ppv"] == 1.0 and m["npv"] == pytest.approx(4 / 5)
    assert threshold_at_specificity(Y_OP, S_OP, 0.75) == 0.5
    # achieved specificity never falls below the target on random data
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 500)
    s = y + rng.normal(0, 1, 500)
    for target in (0.8, 0.9, 0.95):
        thr = threshold_at_specificity(y, s, target)
        assert confusion_metrics(y, s, thr)["specificity"] >= target
        # and the next lower score would break it
        lower = np.max(s[s < thr])
        assert confusion_metrics(y, s, lower)["specificity"] < target


def test_confusion_metrics_undefined_ratios_are_nan():
    m = confusion_metrics([0, 1], [0.1, 0.2], threshold=0.9)
    assert math.isnan(m["ppv"]) and m["npv"] == 0.5


# --------------------------------------------------------------------------- calibration
def test_calibration_metrics():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.7, 0.9])
    # bins [0, .5] and (.5, 1]: |0 - 0.2| * 2/4 + |1 - 0.8| * 2/4 = 0.2
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.2)
    assert brier_score(y, p) == pytest.approx((0.01 + 0.09 + 0.09 + 0.01) / 4)
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 1000)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 1000), 0, 1)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    curve = reliability_curve(y, p, n_bins=10)
    pt, pp = calibration_curve(y, p, n_bins=10)
    np.testing.assert_allclose(curve["prob_true"], pt)
    np.testing.assert_allclose(curve["prob_pred"], pp)
    assert curve["count"].sum() == 1000
    ece_from_curve = np.sum(curve["count"] / 1000 * np.abs(curve["prob_true"] - curve["prob_pred"]))
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(ece_from_curve)
    # perfectly calibrated in expectation -> small ECE
    p2 = rng.uniform(0, 1, 20000)
    y2 = (rng.uniform(0, 1, 20000) < p2).astype(int)
    assert expected_calibration_error(y2, p2) < 0.02
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [-0.5, 2.0])


def test_ece_bin_edges_follow_sklearn():
    # p exactly on an edge belongs to the lower bin, like calibration_curve
    y = np.array([0, 1])
    p = np.array([0.5, 0.5])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.0)
    assert reliability_curve(y, p, n_bins=2)["count"].tolist() == [2]


# --------------------------------------------------------------------------- subgroups
def test_age_bands():
    got = age_bands([0, 17.9, 18, 59, 60, 79, 80, 101, None, np.nan, -3]).tolist()
    assert got == ["0-17", "0-17", "18-39", "40-59", "60-79", "60-79", "80+", "80+",
                   "unknown", "unknown", "unknown"]
    assert age_bands([30, 70], edges=(0, 50)).tolist() == ["0-49", "50+"]
    with pytest.raises(ValueError, match="increasing"):
        age_bands([1], edges=(10, 5))


def test_subgroup_auc_matches_sklearn_and_gap():
    rng = np.random.default_rng(12)
    n = 600
    sex = np.where(rng.uniform(size=n) < 0.5, "F", "M")
    y = rng.integers(0, 2, n)
    noise = np.where(sex == "F", 0.5, 2.0)  # the model is much better for F
    s = y + rng.normal(0, 1, n) * noise
    t = subgroup_auc(y, s, sex, n_bootstrap=200, random_state=0)
    for lvl in ("F", "M"):
        row = t.set_index("level").loc[lvl]
        m = sex == lvl
        assert row["auc"] == pytest.approx(roc_auc_score(y[m], s[m]))
        assert row["ci_low"] < row["auc"] < row["ci_high"]
        assert row["n"] == m.sum() and row["n_pos"] == y[m].sum()
    aucs = t.set_index("level")["auc"]
    assert t.attrs["gap"] == pytest.approx(aucs["F"] - aucs["M"])
    assert t.attrs["gap_levels"] == ("F", "M")


@pytest.mark.filterwarnings("ignore:roc_auc_ci.*held one class:RuntimeWarning")
def test_subgroup_with_single_class_is_nan_and_excluded_from_gap():
    y = np.array([0, 1, 0, 1, 0, 0, 1, 0])
    s = np.array([0.1, 0.9, 0.2, 0.6, 0.3, 0.4, 0.7, 0.8])
    view = np.array(["PA", "PA", "PA", "PA", "AP", "AP", "LL", "LL"])
    t = subgroup_auc(y, s, view, n_bootstrap=50, random_state=0).set_index("level")
    assert math.isnan(t.loc["AP", "auc"])  # negatives only
    assert t.loc["PA", "auc"] == 1.0 and t.loc["LL", "auc"] == 0.0
    assert t.attrs["gap"] == 1.0


# --------------------------------------------------------------------------- tidy table
def _multilabel(rng, n=400):
    y = rng.integers(0, 2, (n, 3)).astype(float)
    y[rng.uniform(size=(n, 3)) < 0.15] = np.nan
    p = 1 / (1 + np.exp(-(2 * np.nan_to_num(y, nan=0.5) - 1 + rng.normal(0, 1.2, (n, 3)))))
    return y, p


def test_evaluate_predictions_multilabel_with_missing_labels():
    rng = np.random.default_rng(13)
    y, p = _multilabel(rng)
    groups = np.repeat(np.arange(200), 2)
    sex = np.where(np.arange(400) % 3 == 0, "F", "M")
    df = evaluate_predictions(y, p, labels=["effusion", "edema", "mass"], groups=groups,
                              subgroups={"sex": sex}, n_bootstrap=200, random_state=0)
    assert list(df.columns) == METRICS_COLUMNS
    auc = df[(df.metric == "auc") & (df.subgroup == "all")].set_index("label")
    for j, name in enumerate(["effusion", "edema", "mass"]):
        known = ~np.isnan(y[:, j])
        assert auc.loc[name, "value"] == pytest.approx(roc_auc_score(y[known, j], p[known, j]))
        assert auc.loc[name, "n"] == known.sum() and auc.loc[name, "n_pos"] == np.nansum(y[:, j])
        assert auc.loc[name, "ci_low"] < auc.loc[name, "value"] < auc.loc[name, "ci_high"]
        assert auc.loc[name, "n_groups"] == len(np.unique(groups[known]))
        b = df[(df.label == name) & (df.metric == "brier")]["value"].item()
        assert b == pytest.approx(brier_score_loss(y[known, j], p[known, j]))
        sub = df[(df.label == name) & (df.metric == "auc") & (df.subgroup == "sex")].set_index("level")
        m = known & (sex == "F")
        assert sub.loc["F", "value"] == pytest.approx(roc_auc_score(y[m, j], p[m, j]))
        gap = df[(df.label == name) & (df.metric == "auc_gap")]["value"].item()
        assert gap == pytest.approx(abs(sub.loc["F", "value"] - sub.loc["M", "value"]))
    macro = auc.loc["macro"]
    assert macro["value"] == pytest.approx(auc.loc[["effusion", "edema", "mass"], "value"].mean())
    assert macro["ci_low"] < macro["value"] < macro["ci_high"]
    # macro CI is narrower than the single labels' (averaging three noisy AUCs)
    assert macro["ci_high"] - macro["ci_low"] < (auc["ci_high"] - auc["ci_low"]).iloc[:3].min()
    ops = df[df.operating_point != ""]
    assert set(ops.operating_point) == {"youden", "spec>=0.90"}
    spec = ops[(ops.operating_point == "spec>=0.90") & (ops.metric == "specificity")]
    assert (spec["value"] >= 0.9).all()
    assert df.attrs["bootstrap_unit"] == "patient"


def test_evaluate_predictions_dataframe_input_and_single_label():
    rng = np.random.default_rng(14)
    y, p = _multilabel(rng, 200)
    ydf = pd.DataFrame(y[:, :2], columns=["a", "b"])
    df = evaluate_predictions(ydf, p[:, :2], n_bootstrap=0)
    assert set(df.label) == {"a", "b", "macro"}
    assert df["ci_low"].isna().all()
    single = evaluate_predictions(y[:, 0], p[:, 0], n_bootstrap=50, random_state=0)
    assert set(single.label) == {"y"}  # no macro row for one label


def test_evaluate_predictions_warns_on_one_class_label_and_checks_shapes():
    y = np.array([[0, 1], [0, 0], [0, 1], [0, 0.0]])
    p = np.full((4, 2), 0.4)
    with pytest.warns(RuntimeWarning) as record:
        df = evaluate_predictions(y, p, labels=["a", "b"], n_bootstrap=20, random_state=0)
    assert any("'a' has 0 positives" in str(w.message) for w in record)
    assert math.isnan(df[(df.label == "a") & (df.metric == "auc")]["value"].item())
    with pytest.raises(ValueError, match="must match"):
        evaluate_predictions(y, p[:, :1])
    with pytest.raises(ValueError, match="NaN/inf"):
        evaluate_predictions(np.array([0, 1.0]), np.array([0.1, np.nan]))


def test_metrics_json_round_trip(tmp_path):
    rng = np.random.default_rng(15)
    y, p = _multilabel(rng, 150)
    df = evaluate_predictions(y, p, n_bootstrap=50, random_state=0)
    text = metrics_to_json(df, tmp_path / "m.json")
    doc = json.loads(text)
    assert doc["format"] == "cxr_embed.evaluate.metrics" and doc["version"] == 1
    assert "NaN" not in text
    back = metrics_from_json(tmp_path / "m.json")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back.attrs["bootstrap_unit"] == "image"
    with pytest.raises(ValueError, match="expected a 'cxr_embed.evaluate.metrics'"):
        metrics_from_json('{"format": "other"}')


def test_no_warnings_on_clean_input():
    rng = np.random.default_rng(16)
    y, p = _multilabel(rng, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_predictions(y, p, n_bootstrap=100, random_state=0)


@pytest.mark.slow
def test_bootstrap_ci_coverage_large_simulation():
    """1000 datasets per setting (balanced and imbalanced, AUC 0.76 and 0.92), 1000 resamples each."""
    rng = np.random.default_rng(99)
    for d, n_neg, n_pos in ((1.0, 100, 100), (2.0, 240, 60)):
        true_auc = norm.cdf(d / math.sqrt(2))
        hits = 0
        for k in range(1000):
            y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
            s = np.r_[rng.normal(0, 1, n_neg), rng.normal(d, 1, n_pos)]
            _, lo, hi = roc_auc_ci(y, s, n_bootstrap=1000, random_state=k)
            hits += lo <= true_auc <= hi
        assert 0.925 <= hits / 1000 <= 0.97, (d, hits / 1000)
