"""Gradient-free maps of any classifier on a composite embedding: occlusion through every pass.

A classifier fitted on a :class:`~cxr_embed.CompositeEmbedding` (several sizes, the mirrored
image, several backbones) sees an image only through all of its passes. Occlusion needs nothing
but the pipeline's score, so it explains every such classifier, trees and kNN included: each
region of the image is replaced by a blurred copy, every pass embeds the occluded image, the
parts are combined as in the store, and the map is the drop of the classifier's logit
(:func:`~cxr_embed.saliency._perturbation.occlusion_map`). The work is done on the image scaled
down to the largest pass's input (no pass sees more pixels than that), so a full-size DICOM costs
no more than a PNG.
"""
from __future__ import annotations

import numpy as np

from ..io.preprocessing import restore_map

__all__: list[str] = []  # reached through cxr_embed.explain


def work_image(image: np.ndarray, composite) -> np.ndarray:
    """``image`` scaled (area) so that its longer side is at most the largest pass's input side.

    Parameters
    ----------
    image : ndarray of shape (H, W)
    composite : CompositeEmbedding

    Returns
    -------
    ndarray of shape (h, w), float32
        ``image`` itself when it is already that small.
    """
    from PIL import Image

    side = max(max(p["backbone"].input_size) for p in composite.passes())
    h, w = image.shape
    if max(h, w) <= side:
        return np.asarray(image, np.float32)
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.asarray(image, np.float32)).resize(size, Image.BOX), np.float32)


def composite_proba(estimator, composite, *, batch_size: int = 32):
    """``proba(batch of (n, h, w) or (n, h, w, 1) images in [0, 1]) -> (n,)`` through every pass."""
    from ._heads import positive_proba

    def proba(batch):
        return positive_proba(estimator, composite.embed_images(np.asarray(batch), batch_size=batch_size))

    return proba


def composite_occlusion(image: np.ndarray, path, estimator, composite, *, label=None, batch_size: int = 32):
    """Occlusion map of any classifier on a composite embedding, for one image.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Float in [0, 1] (as :func:`cxr_embed.read_image` returns).
    path : str or None
    estimator : fitted binary classifier, MultiLabelClassifier or ModelBundle
        Fitted on ``composite``'s embeddings.
    composite : CompositeEmbedding
    label : str or int, optional
    batch_size : int, default 32
        Occluded copies per call of the pipeline.

    Returns
    -------
    Saliency
        ``map`` of shape (H, W) in [0, 1]; ``input_map`` the signed logit drop on the working image
        (:func:`work_image`); ``score`` the probability of the working image.
    """
    from ._perturbation import occlusion_map
    from .maps import Saliency, _normalise, _unwrap

    est, name, _ = _unwrap(estimator, label)
    x = work_image(image, composite)
    proba = composite_proba(est, composite, batch_size=batch_size)
    drop = occlusion_map(proba, x[..., None], batch_size=batch_size)
    score = float(proba(x[None])[0])
    full = _normalise(restore_map(drop, image.shape, mode="resize"))
    return Saliency(full, "occlusion", name, score, drop, image, path)


def deletion_inputs(image: np.ndarray, saliency, estimator, composite, *, label=None):
    """What a deletion curve of a composite pipeline runs on: (working image, map on it, proba).

    Returns
    -------
    x : ndarray of shape (h, w)
        :func:`work_image`.
    map : ndarray of shape (h, w)
        ``saliency.map`` resampled onto ``x``.
    proba : callable
        :func:`composite_proba` of the explained label's binary estimator.
    """
    from PIL import Image

    from .maps import _unwrap

    est, _, _ = _unwrap(estimator, label)
    x = work_image(image, composite)
    h, w = x.shape
    m = np.asarray(Image.fromarray(np.asarray(saliency.map, np.float32)).resize((w, h), Image.BILINEAR))
    return x, m, composite_proba(est, composite)
