"""Faithfulness of saliency maps: do they point at the region that matters?

Localisation metrics compare a map with a region (a lesion mask drawn by a radiologist,
a synthetic phantom's known lesion, a burned-in marker); perturbation metrics (deletion
and insertion AUC) ask the model itself how much the highlighted pixels matter.
All maps and masks are 2-D arrays in the same coordinates (the original image's).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["pointing_game", "energy_in_mask", "saliency_iou", "deletion_auc", "insertion_auc", "random_saliency"]


def _pair(saliency, mask):
    sal = np.asarray(getattr(saliency, "map", saliency), dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if sal.shape != m.shape:
        raise ValueError(f"saliency map of shape {sal.shape} and mask of shape {m.shape} differ; "
                         "compute maps in the original image's coordinates (explain() does) or resize the mask")
    if not m.any():
        raise ValueError("the mask is empty: faithfulness metrics need a non-empty region")
    bad = int((~np.isfinite(sal)).sum())
    if bad:
        raise ValueError(f"the saliency map has {bad} non-finite value(s) (NaN or inf) of {sal.size}; "
                         "a map must be finite everywhere: recompute it, or replace them (np.nan_to_num)")
    return sal, m


def pointing_game(saliency, mask, *, tolerance: int = 0) -> bool:
    """Whether the map's maximum falls inside the mask (Zhang et al. 2018).

    Parameters
    ----------
    saliency : ndarray of shape (H, W) or Saliency
        The map.
    mask : ndarray of shape (H, W), bool
        The region (for example a lesion).
    tolerance : int, default 0
        Pixels of slack: the mask is dilated by this many pixels (a square) first.

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((8, 8), bool); m[2:4, 2:4] = True
    >>> s = np.zeros((8, 8)); s[3, 3] = 1
    >>> pointing_game(s, m)
    True
    """
    sal, m = _pair(saliency, mask)
    if tolerance > 0:
        from scipy.ndimage import binary_dilation

        m = binary_dilation(m, structure=np.ones((2 * tolerance + 1,) * 2, bool))
    peak = np.unravel_index(int(np.argmax(sal)), sal.shape)
    return bool(m[peak])


def energy_in_mask(saliency, mask) -> float:
    """Share of the (non-negative) saliency energy that lies inside the mask.

    A uniform map scores ``mask.mean()`` (the chance level), a perfect one 1.

    Parameters
    ----------
    saliency : ndarray of shape (H, W) or Saliency
    mask : ndarray of shape (H, W), bool

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4), bool); m[:2] = True
    >>> energy_in_mask(np.ones((4, 4)), m)
    0.5
    """
    sal, m = _pair(saliency, mask)
    sal = np.clip(sal, 0, None)
    total = sal.sum()
    if total <= 0:
        return float(m.mean())
    return float(sal[m].sum() / total)


def saliency_iou(saliency, mask, *, threshold: float | None = None, quantile: float | None = None) -> float:
    """Intersection over union of the thresholded map with the mask.

    Parameters
    ----------
    saliency : ndarray of shape (H, W) or Saliency
    mask : ndarray of shape (H, W), bool
    threshold : float, optional
        Absolute threshold on the map. Default: keep as many top pixels as the mask has
        (so the IoU compares regions of equal area).
    quantile : float, optional
        Keep pixels above this quantile of the map instead.

    Returns
    -------
    float in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> m = np.zeros((4, 4), bool); m[0, :2] = True
    >>> s = np.zeros((4, 4)); s[0, :2] = 1
    >>> saliency_iou(s, m)
    1.0
    """
    sal, m = _pair(saliency, mask)
    if threshold is not None:
        region = sal >= threshold
    elif quantile is not None:
        region = sal >= np.quantile(sal, quantile)
    else:
        k = int(m.sum())
        order = np.argsort(sal, axis=None)[::-1][:k]
        region = np.zeros(sal.size, bool)
        region[order] = True
        region = region.reshape(sal.shape)
    union = np.logical_or(region, m).sum()
    return float(np.logical_and(region, m).sum() / union) if union else 0.0


def _perturbation_curve(image, saliency, predict: Callable, *, steps: int, insert: bool, baseline):
    img = np.asarray(image, dtype=np.float32)
    sal = np.asarray(getattr(saliency, "map", saliency), dtype=np.float64)
    if sal.shape != img.shape[:2]:
        raise ValueError(f"saliency map {sal.shape} and image {img.shape} differ in size")
    base = np.full_like(img, baseline) if np.isscalar(baseline) else np.asarray(baseline, np.float32)
    order = np.argsort(sal, axis=None)[::-1]
    n = order.size
    cuts = np.linspace(0, n, steps + 1).round().astype(int)
    batch = []
    for c in cuts:
        keep = np.zeros(n, bool)
        keep[order[:c]] = True
        keep = keep.reshape(sal.shape)
        if img.ndim == 3:
            keep = keep[..., None]
        batch.append(np.where(keep, img, base) if insert else np.where(keep, base, img))
    scores = np.asarray(predict(np.stack(batch)), dtype=np.float64).reshape(-1)
    fractions = cuts / n
    return float(np.trapezoid(scores, fractions)), fractions, scores


def deletion_auc(image, saliency, predict: Callable, *, steps: int = 20, baseline=0.0) -> float:
    """Area under the score curve as the most salient pixels are removed first (lower is better).

    Parameters
    ----------
    image : ndarray of shape (H, W) or (H, W, C)
        The image the map explains, in the coordinates of ``predict``'s input.
    saliency : ndarray of shape (H, W) or Saliency
    predict : callable
        ``predict(batch of shape (n, H, W[, C])) -> (n,)`` probability of the explained label.
    steps : int, default 20
        Number of deletion steps (``steps + 1`` model calls in one batch).
    baseline : float or ndarray, default 0.0
        Value that replaces deleted pixels (0 = air).

    Returns
    -------
    float
        Area under the curve of score against fraction of pixels deleted (Petsiuk et al. 2018).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((4, 4)); img[0, 0] = 1
    >>> f = lambda b: b[:, 0, 0]
    >>> s = np.zeros((4, 4)); s[0, 0] = 1
    >>> deletion_auc(img, s, f, steps=16) < deletion_auc(img, -s, f, steps=16)
    True
    """
    return _perturbation_curve(image, saliency, predict, steps=steps, insert=False, baseline=baseline)[0]


def insertion_auc(image, saliency, predict: Callable, *, steps: int = 20, baseline=0.0) -> float:
    """Area under the score curve as the most salient pixels are inserted first (higher is better).

    Parameters and return value as in :func:`deletion_auc`, starting from the baseline image.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((4, 4)); img[0, 0] = 1
    >>> f = lambda b: b[:, 0, 0]
    >>> s = np.zeros((4, 4)); s[0, 0] = 1
    >>> insertion_auc(img, s, f, steps=16) > insertion_auc(img, -s, f, steps=16)
    True
    """
    return _perturbation_curve(image, saliency, predict, steps=steps, insert=True, baseline=baseline)[0]


def random_saliency(shape, *, smooth: float = 8.0, random_state=None) -> np.ndarray:
    """A smooth random map: the chance baseline for localisation metrics.

    Parameters
    ----------
    shape : tuple of int (H, W)
    smooth : float, default 8.0
        Gaussian blur sigma in pixels, so the map has blob structure like a CAM.
    random_state : int or numpy Generator, optional

    Returns
    -------
    ndarray of shape (H, W), float32 in [0, 1]

    Examples
    --------
    >>> random_saliency((16, 16), random_state=0).shape
    (16, 16)
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(random_state)
    sal = gaussian_filter(rng.random(shape), smooth)
    sal -= sal.min()
    return (sal / (sal.max() or 1.0)).astype(np.float32)
