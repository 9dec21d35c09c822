"""Predictions -> statistics and pages: metrics with confidence intervals (:mod:`.metrics`), reports."""
