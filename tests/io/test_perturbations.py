"""Acquisition-shift perturbations: shapes, ranges, determinism, parameters, named errors."""
from __future__ import annotations

import numpy as np
import pytest

from cxr_embed.io.perturbations import PERTURBATIONS, perturb, perturbation_config


def _image(h=300, w=240, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.clip(0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.02, (h, w)), 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_every_perturbation_changes_the_image_deterministically_and_stays_in_range(name):
    img = _image()
    a, b = perturb(img, name), perturb(img.copy(), name)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    if name == "squash":
        assert a.shape == (300, 192)
    else:
        assert a.shape == img.shape and not np.array_equal(a, img)
        assert np.abs(a - img).mean() < 0.2  # still the same radiograph


def test_noise_is_seeded_by_the_image_itself():
    a, b = _image(seed=0), _image(seed=1)
    na, nb = perturb(a, "noise") - a, perturb(b, "noise") - b
    assert not np.allclose(na, nb)
    assert 0.02 < float(np.std(perturb(a, "noise") - a)) < 0.04


def test_lowres_keeps_a_small_image_and_loses_detail_of_a_large_one():
    small = _image(100, 80)
    np.testing.assert_array_equal(perturb(small, "lowres"), small)
    big = _image(1024, 1024)
    out = perturb(big, {"name": "lowres", "size": 64})
    hf = lambda x: float(np.abs(np.diff(x, axis=1)).mean())  # noqa: E731
    assert hf(out) < 0.5 * hf(big)


def test_parameters_override_defaults_and_are_checked():
    assert perturbation_config({"name": "jpeg", "quality": 10}) == {"name": "jpeg", "quality": 10}
    img = _image()
    assert np.abs(perturb(img, {"name": "jpeg", "quality": 5}) - img).mean() > np.abs(perturb(img, "jpeg") - img).mean()
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation_config("blur")
    with pytest.raises(ValueError, match="no parameter"):
        perturbation_config({"name": "gamma", "quality": 3})
    with pytest.raises(ValueError, match="out of range"):
        perturbation_config({"name": "jpeg", "quality": 0})
    with pytest.raises(ValueError, match="2-D"):
        perturb(np.zeros((4, 4, 3)), "gamma")
