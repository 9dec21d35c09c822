"""Planted clinical covariates of the synthetic generator: opt-in, images untouched, signal and holes as documented."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_embed.datasets import CLINICAL_COVARIATES, add_clinical_covariates, make_demo_sites, make_synthetic_cxr


def test_clinical_columns_leave_images_and_other_columns_identical():
    a = make_synthetic_cxr(30, size=32, seed=4)
    b = make_synthetic_cxr(30, size=32, seed=4, clinical=True)
    assert np.array_equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.labels, b.labels[list(a.labels.columns)])
    assert list(b.labels.columns[len(a.labels.columns):]) == list(CLINICAL_COVARIATES)
    c = make_synthetic_cxr(30, size=32, seed=4, clinical=True)
    pd.testing.assert_frame_equal(b.labels, c.labels)  # deterministic
    g1, g2 = np.random.default_rng(8), np.random.default_rng(8)
    make_synthetic_cxr(3, size=32, seed=g1, clinical=True)
    make_synthetic_cxr(3, size=32, seed=g2)
    assert g1.random() == g2.random()  # a caller's generator ends in the same state either way


def test_planted_signal_noise_and_missing_values():
    lab = pd.DataFrame({"opacity": np.tile([0, 1], 2000)})
    out = add_clinical_covariates(lab, "opacity", seed=0)
    pos, neg = out[out.opacity == 1], out[out.opacity == 0]
    assert pos["wbc"].mean() - neg["wbc"].mean() == pytest.approx(4.0, abs=0.3)
    assert (pos["fever"] == "yes").mean() - (neg["fever"] == "yes").mean() == pytest.approx(0.5, abs=0.05)
    assert abs(pos["bmi"].mean() - neg["bmi"].mean()) < 0.4
    assert out["wbc"].isna().mean() == pytest.approx(0.15, abs=0.03)
    assert out["crp"].isna().mean() == pytest.approx(0.25, abs=0.03)
    assert out["smoker"].isna().mean() == pytest.approx(0.10, abs=0.03)
    assert out["bmi"].notna().all() and out["fever"].notna().all()
    with pytest.raises(ValueError, match="not a column"):
        add_clinical_covariates(lab, "effusion")


def test_demo_sites_can_carry_them(tmp_path):
    paths = make_demo_sites(tmp_path, n_source=4, n_target=4, size=32, format="png", clinical=True)
    assert {"wbc", "fever", "smoker"} <= set(pd.read_csv(paths["source"]).columns)
