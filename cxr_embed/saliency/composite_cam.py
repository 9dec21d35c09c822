"""Class activation maps of a linear classifier on a composite embedding (several CNN passes).

A :class:`~cxr_embed.CompositeEmbedding` embeds an image by several forward passes (one backbone
at several input sizes, the mirrored image, several backbones) whose average-pooled features are
averaged within a part and concatenated across parts. For a linear classifier on that embedding,
the logit is exactly a sum over passes and over the cells of each pass's feature map::

    logit - b = sum_p  weight_p * mean_cells( w_part(p) . A_p[cell] )

(``w`` the classifier's weights on the raw embedding, scaler and PCA folded in; ``weight_p`` the
pass's share of its part's mean). Each pass's cell contributions, spread over the image region the
cell sees (mirrored passes flipped back, each pass's padding undone), add up to one map in the
image's coordinates whose integral is ``logit - b``: the CAM of Zhou et al. 2016, which for a single
backbone with a linear head equals Grad-CAM. Like Grad-CAM it keeps the positive evidence,
normalised to [0, 1].
"""
from __future__ import annotations

import warnings
import weakref

import numpy as np

from ..exceptions import BackboneError
from ..io.preprocessing import restore_map

__all__: list[str] = []  # reached through cxr_embed.explain


_FEATURE_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _feature_map(backbone, x: np.ndarray) -> np.ndarray:
    """The tapped layer's map of one prepared image, (h_cells, w_cells, channels) float64."""
    import keras

    model = _FEATURE_MODELS.get(backbone)
    if model is None:
        model = keras.Model(backbone.model.inputs, backbone.model.get_layer(backbone.feature_layer).output)
        _FEATURE_MODELS[backbone] = model
    with warnings.catch_warnings():  # a bare tensor for a named input: harmless, silenced here only
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        return np.asarray(model(x[None].astype(np.float32), training=False), np.float64)[0]


def composite_cam(image: np.ndarray, path, estimator, composite, *, label=None, method: str = "gradcam"):
    """The CAM of a linear classifier on a composite embedding, for one image.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Float in [0, 1] (as :func:`cxr_embed.read_image` returns).
    path : str or None
    estimator : fitted binary linear classifier, MultiLabelClassifier or ModelBundle
    composite : CompositeEmbedding
    label : str or int, optional
    method : str
        ``"gradcam"`` (what ``"auto"`` means for a linear head; equal to CAM here).

    Returns
    -------
    Saliency
        ``input_map`` is the map in the image's coordinates too (there is no single model input).

    Raises
    ------
    BackboneError
        A non-linear classifier, another method, or a pass whose features are not average-pooled.
    """
    from ._heads import linear_head, positive_proba
    from .maps import Saliency, _normalise, _resize_mode, _unwrap

    if method != "gradcam":
        raise BackboneError(f"a classifier on a composite embedding ({composite.name}) is explained by its class "
                            f"activation map (method='gradcam' or 'auto') or by occlusion (method='occlusion'), "
                            f"not {method!r}")
    est, name, _ = _unwrap(estimator, label)
    passes = composite.passes()
    head = linear_head(est, int(sum(composite.part_dims())))
    if head is None:
        raise BackboneError(
            f"{type(est).__name__} is not a linear model on the embeddings of {composite.name}, so it has no class "
            "activation map; fix: method='occlusion' (the default for such classifiers), which runs every pass on "
            "occluded copies of the image")
    W, _ = head
    w = W.mean(axis=1)  # the mean logit of a calibrated ensemble; the logit itself for logistic regression
    total = np.zeros(image.shape, np.float64)
    cells, embedding = pass_cells(image, w, composite)
    for p, c in zip(passes, cells):
        bb = p["backbone"]
        up = _upsample(c, tuple(bb.input_size))
        if p["flip"]:
            up = up[:, ::-1]
        total += restore_map(up.astype(np.float32), image.shape, mode=_resize_mode(bb))
    score = float(positive_proba(est, embedding[None].astype(np.float32))[0])
    full = _normalise(total.astype(np.float32))
    return Saliency(full, "gradcam", name, score, full, image, path)


def pass_cells(image: np.ndarray, w: np.ndarray, composite) -> tuple[list[np.ndarray], np.ndarray]:
    """Each pass's evidence per feature-map cell, and the image's composite embedding.

    Parameters
    ----------
    image : ndarray of shape (H, W)
    w : ndarray of shape (dim,)
        Linear weights on the raw composite embedding.
    composite : CompositeEmbedding

    Returns
    -------
    cells : list of ndarray of shape (h_p, w_p)
        ``weight_p * w_part . A_p[cell]`` per pass (in the pass's input orientation), so that
        ``sum_p cells_p.mean() == w . embedding``.
    embedding : ndarray of shape (dim,)
    """
    dims = composite.part_dims()
    offsets = np.concatenate([[0], np.cumsum(dims)])
    pooled = [np.zeros(d, np.float64) for d in dims]
    cells = []
    for p in composite.passes():
        bb, k = p["backbone"], p["part"]
        if (bb.config or {}).get("pooling", "avg") != "avg":
            raise BackboneError(f"{bb.name}: the CAM decomposition needs average pooling, not "
                                f"{bb.config.get('pooling')!r}")
        x = bb.prepare(image)  # its own size, resize mode and interpolation, as extraction prepares it
        if p["flip"]:
            x = x[:, ::-1]
        A = _feature_map(bb, x)
        pooled[k] += p["weight"] * A.mean(axis=(0, 1))
        cells.append(A @ w[offsets[k]:offsets[k + 1]] * p["weight"])
    return cells, np.concatenate(pooled)


def _upsample(cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A cell grid spread bilinearly over the model input (h, w)."""
    from PIL import Image

    return np.asarray(Image.fromarray(cells.astype(np.float32)).resize((size[1], size[0]), Image.BILINEAR))
