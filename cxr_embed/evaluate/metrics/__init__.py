"""Honest evaluation of predicted probabilities: AUC with patient-level bootstrap CIs,
the DeLong test, operating points, calibration and subgroup AUCs, as one tidy table.

Everything here works on plain arrays of labels and scores (never on images or models),
so it evaluates out-of-fold predictions from :mod:`cxr_embed.learn.validation`, stacked
predictions from :mod:`cxr_embed.learn.stacking` or any external model alike.

Conventions
-----------
* A prediction is *positive* when ``score >= threshold`` (scikit-learn's ``roc_curve``).
* Labels are ``1`` (positive), ``0`` (negative) or ``NaN`` (missing / masked: the row is
  dropped for that label only).
* ``groups`` are patient ids. Images of one patient are correlated, so confidence
  intervals resample *patients*, each resampled patient bringing all of its images.
"""
from __future__ import annotations

from .auc import AUCInterval, roc_auc_ci, delong_roc_variance, delong_test
from .thresholds import youden_threshold, threshold_at_specificity, confusion_metrics, operating_points
from .calibration import brier_score, expected_calibration_error, reliability_curve
from .subgroups import age_bands, subgroup_auc
from .tables import evaluate_predictions, metrics_to_json, metrics_from_json, METRICS_COLUMNS

__all__ = [
    "AUCInterval",
    "roc_auc_ci",
    "delong_roc_variance",
    "delong_test",
    "youden_threshold",
    "threshold_at_specificity",
    "confusion_metrics",
    "operating_points",
    "brier_score",
    "expected_calibration_error",
    "reliability_curve",
    "age_bands",
    "subgroup_auc",
    "evaluate_predictions",
    "metrics_to_json",
    "metrics_from_json",
    "METRICS_COLUMNS",
]
