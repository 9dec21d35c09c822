"""Turn a decoded radiograph into a CNN input: resize/pad/crop and gray -> 3 channels.

Pure numpy + Pillow; the backbone-specific normalisation (caffe, torch, tf modes)
lives inside each :class:`~cxr_embed.Backbone` model, not here.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["prepare_image", "preprocessing_config", "restore_map", "RESIZE_MODES", "INTERPOLATIONS",
           "DECODE_MODES"]

RESIZE_MODES = ("pad", "resize", "crop")
#: Downscaling filters of :func:`prepare_image`: ``"area"`` (default; Pillow's box filter, each output
#: pixel the mean of the input pixels whose centres fall in its footprint) or ``"bilinear"`` (Pillow's
#: antialiased triangle filter, the default before issue 11: twice the taps, hence slower).
INTERPOLATIONS = ("area", "bilinear")
#: How compressed files are decoded for a CNN input (see :func:`cxr_embed.read_prepared`): ``"full"``
#: (default) at their stored resolution, ``"reduced"`` at the smallest JPEG 2000 resolution level or
#: JPEG DCT scale that still covers the input size (faster; changes pixels slightly).
DECODE_MODES = ("full", "reduced")


def preprocessing_config(size=(224, 224), mode: str = "pad", *, interpolation: str = "area",
                         decode: str = "full") -> dict:
    """Describe the preprocessing, for fingerprints and file attributes.

    The description of ``interpolation="bilinear", decode="full"`` is exactly that of the library
    before issue 11, so backbones configured that way keep their fingerprints (and old stores).

    Parameters
    ----------
    size : tuple of int (h, w)
        Target size.
    mode : {"pad", "resize", "crop"}
        How the aspect ratio is handled.
    interpolation : {"area", "bilinear"}
        Downscaling filter (see :data:`INTERPOLATIONS`).
    decode : {"full", "reduced"}
        Resolution at which compressed files are decoded (see :data:`DECODE_MODES`); recorded only
        when ``"reduced"``.

    Returns
    -------
    dict
        JSON-serialisable description.

    Examples
    --------
    >>> preprocessing_config((224, 224), "pad")["interpolation"]
    'area'
    >>> preprocessing_config((224, 224), "pad", decode="reduced")["decode"]
    'reduced'
    """
    _check_mode(mode)
    _check_interpolation(interpolation)
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    h, w = _size(size)
    config = {"size": [h, w], "mode": mode, "channels": "gray3", "range": [0.0, 255.0],
              "interpolation": interpolation, "version": 1}
    if decode != "full":
        config["decode"] = decode
    return config


def _check_mode(mode):
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")


def _check_interpolation(interpolation):
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")


def _pil_filter(interpolation: str):
    return Image.BOX if interpolation == "area" else Image.BILINEAR


def _size(size):
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _resize(image: np.ndarray, h: int, w: int, interpolation: str = "bilinear") -> np.ndarray:
    if image.shape == (h, w):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), _pil_filter(interpolation)), dtype=np.float32)


def _frame(scaled: np.ndarray, size, mode: str, top: int, left: int) -> np.ndarray:
    """Place the scaled image (nh, nw) float32 in [0, 1] into the output frame: (h, w, 3) in [0, 255]."""
    h, w = size
    nh, nw = scaled.shape
    if mode == "pad":
        out = np.zeros((h, w), np.float32)
        out[top : top + nh, left : left + nw] = scaled
    else:  # resize (top = left = 0) or crop (negative offsets into the scaled image)
        out = scaled[-top : -top + h, -left : -left + w]
    out = np.clip(out, 0.0, 1.0) * 255.0
    return np.repeat(out[:, :, None], 3, axis=2).astype(np.float32, copy=False)


def _geometry(shape, size, mode):
    """Scaled size (nh, nw) of the image and its offset (top, left) in the output frame.

    Offsets are >= 0 for ``pad`` (image inside the frame) and <= 0 for ``crop``
    (frame inside the image).
    """
    (H, W), (h, w) = shape, size
    if mode == "resize":
        return h, w, 0, 0
    if mode == "pad":
        scale = min(h / H, w / W)
        nh, nw = max(1, round(H * scale)), max(1, round(W * scale))
    else:
        scale = max(h / H, w / W)
        nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
    return nh, nw, (h - nh) // 2, (w - nw) // 2


def restore_map(values: np.ndarray, original_shape, *, mode: str = "pad") -> np.ndarray:
    """Map a per-pixel array in model-input coordinates back onto the original image.

    The inverse of the geometry of :func:`prepare_image`: padding is removed, the map is
    resized to the original size, and for ``mode="crop"`` the cropped-away border is 0.

    Parameters
    ----------
    values : ndarray of shape (h, w)
        For example a saliency map computed on the model input.
    original_shape : tuple of int (H, W)
        Shape of the image before :func:`prepare_image`.
    mode : {"pad", "resize", "crop"}
        The mode that was used by :func:`prepare_image`.

    Returns
    -------
    ndarray of shape (H, W), float32

    Examples
    --------
    >>> import numpy as np
    >>> restore_map(np.ones((64, 64)), (100, 50)).shape
    (100, 50)
    """
    _check_mode(mode)
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D map of shape (h, w), got shape {values.shape}")
    H, W = (int(s) for s in original_shape)
    h, w = values.shape
    nh, nw, top, left = _geometry((H, W), (h, w), mode)
    if mode == "pad":
        return _resize(values[top : top + nh, left : left + nw], H, W)
    if mode == "resize":
        return _resize(values, H, W)
    canvas = np.zeros((nh, nw), np.float32)
    canvas[-top : -top + h, -left : -left + w] = values
    return _resize(canvas, H, W)


def prepare_image(image: np.ndarray, size=(224, 224), *, mode: str = "pad", interpolation: str = "area") -> np.ndarray:
    """Resize a radiograph and repeat it to three channels.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Float image in [0, 1] as returned by :func:`cxr_embed.read_image`.
    size : tuple of int (h, w) or int
        Target size.
    mode : {"pad", "resize", "crop"}
        ``"pad"`` keeps the aspect ratio and pads with black (air), ``"resize"`` stretches,
        ``"crop"`` scales the short side to fit and centre-crops.
    interpolation : {"area", "bilinear"}
        Resampling filter (see :data:`INTERPOLATIONS`); ``"bilinear"`` reproduces the library
        before issue 11.

    Returns
    -------
    ndarray of shape (h, w, 3), float32 in [0, 255]

    Examples
    --------
    >>> import numpy as np
    >>> prepare_image(np.zeros((100, 50), np.float32), (64, 64)).shape
    (64, 64, 3)
    """
    _check_mode(mode)
    _check_interpolation(interpolation)
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image of shape (H, W), got shape {image.shape}")
    h, w = _size(size)
    nh, nw, top, left = _geometry(image.shape, (h, w), mode)
    return _frame(_resize(image, nh, nw, interpolation), (h, w), mode, top, left)
