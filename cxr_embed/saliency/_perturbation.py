"""Model-agnostic saliency maps that need no gradients and no convolutional layer.

``occlusion``: slide a square patch over the model input, replace it by a blurred copy of the
image (a perturbation that stays close to the image's own statistics, unlike a black square),
and record how much the explained score falls (Zeiler & Fergus 2014). The whole pipeline runs
on every occluded copy (backbone, embedding, scaler, classifier), so the map is the model's own
answer to "which region, removed, lowers the probability"; it works for every model ``explain``
accepts, including trees and kNN.

``stage_layers``: the last layer of each spatial resolution of a CNN (its stage outputs), for
CAMs fused over stages (LayerCAM, Jiang et al. 2021).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__: list[str] = []  # private module

_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def occlusion_map(proba: Callable, x: np.ndarray, *, patch: int | None = None, stride: int | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """Drop of the explained logit when each region of ``x`` is blurred out.

    Parameters
    ----------
    proba : callable
        ``proba(batch of shape (n, h, w, 3)) -> (n,)`` probability of the explained label.
    x : ndarray of shape (h, w, 3)
        The prepared model input.
    patch : int, optional
        Side of the occluding square in input pixels; default ``max(h, w) // 7`` (one cell of a
        stride-32 CNN at 224 px).
    stride : int, optional
        Step between patches; default ``patch`` (non-overlapping: one model call per CAM cell).
    batch_size : int, default 32
        Occluded copies per model call.

    Returns
    -------
    ndarray of shape (h, w), float32
        Mean logit drop of the patches covering each pixel (negative where occlusion raises the score).

    Examples
    --------
    >>> x = np.zeros((28, 28, 3), np.float32); x[4:8, 4:8] = 255
    >>> m = occlusion_map(lambda b: 1 / (1 + np.exp(-(b[:, 4:8, 4:8, 0].mean(axis=(1, 2)) / 50 - 2))), x, patch=4)
    >>> np.unravel_index(int(np.argmax(m)), m.shape)[0] in range(4, 8)
    True
    """
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, np.float32)
    h, w = x.shape[:2]
    patch = int(patch or max(1, max(h, w) // 7))
    stride = int(stride or patch)
    blurred = np.stack([gaussian_filter(x[..., c], patch / 2.0) for c in range(x.shape[-1])], axis=-1)
    rows = sorted(set(list(range(0, max(h - patch, 0) + 1, stride)) + [max(h - patch, 0)]))
    cols = sorted(set(list(range(0, max(w - patch, 0) + 1, stride)) + [max(w - patch, 0)]))
    boxes = [(r, c) for r in rows for c in cols]
    base = float(_logit(np.asarray(proba(x[None])).reshape(-1))[0])
    drop = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for k, (r, c) in enumerate(chunk):
            batch[k, r : r + patch, c : c + patch] = blurred[r : r + patch, c : c + patch]
        scores = _logit(np.asarray(proba(batch)).reshape(-1))
        for (r, c), s in zip(chunk, scores):
            drop[r : r + patch, c : c + patch] += base - s
            count[r : r + patch, c : c + patch] += 1
    return (drop / np.maximum(count, 1)).astype(np.float32)


def stage_layers(model, n_stages: int = 3) -> list[str]:
    """Names of the last layer of each of the ``n_stages`` coarsest spatial resolutions.

    Parameters
    ----------
    model : keras.Model
    n_stages : int, default 3

    Returns
    -------
    list of str
        From fine to coarse (for EfficientNet-Lite0 at 224 px: the 28, 14 and 7 px stage outputs).
    """
    last: dict = {}
    order = []
    for layer in model.layers:
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is None or len(shape) != 4 or shape[1] is None:
            continue
        key = (int(shape[1]), int(shape[2]))
        if key not in last:
            order.append(key)
        last[key] = layer.name
    keys = sorted(order, key=lambda k: -k[0] * k[1])
    if not keys:
        raise ValueError("the model has no layer with a 4-D (convolutional) output to explain")
    return [last[k] for k in keys[-n_stages:]]
