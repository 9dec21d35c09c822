"""Acquisition-shift perturbations of a decoded radiograph, for stress tests.

Each perturbation maps a decoded image ``(H, W)`` float in [0, 1] (as returned by
:func:`cxr_embed.read_image`) to another one of the same kind, imitating how the same chest
looks when it reaches a model through another site's acquisition and archive:

============  ==========================================================================
name          what it does (default parameters)
============  ==========================================================================
``lowres``    area-downsample so the longer side is ``size`` px (224), then bilinear
              upsample back: an archive that kept a small copy (as the paediatric set)
``jpeg``      8-bit JPEG at ``quality`` (30) and decoded again: lossy re-compression
``gamma``     ``image ** gamma`` (1.6): another exposure / display curve
``noise``     additive Gaussian noise of standard deviation ``sigma`` (0.03), clipped to
              [0, 1]; the generator is seeded from the image's own bytes, so a copy is
              perturbed identically in every run and every process
``squash``    resize the width by ``factor`` (0.8) keeping the height: another aspect ratio
============  ==========================================================================

They are used by :func:`cxr_embed.search_pipeline` on evaluation copies of held-out images
(stress tests) and, when asked (``train_augment=``), on copies of training images; they are part
of the fingerprint of the embeddings made from them (:func:`perturbation_config`), so perturbed
and clean embeddings are never mixed.
"""
from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["PERTURBATIONS", "perturb", "perturbation_config"]

PERTURBATIONS: dict[str, dict[str, Any]] = {
    "lowres": {"size": 224},
    "jpeg": {"quality": 30},
    "gamma": {"gamma": 1.6},
    "noise": {"sigma": 0.03},
    "squash": {"factor": 0.8},
}


def perturbation_config(spec: str | dict) -> dict:
    """The full description of a perturbation: its name and every parameter.

    Parameters
    ----------
    spec : str or dict
        A name of :data:`PERTURBATIONS`, or a dict ``{"name": ..., **params}`` overriding
        some of its default parameters.

    Returns
    -------
    config : dict
        ``{"name": str, **params}`` with every parameter present (JSON-serialisable).

    Raises
    ------
    ValueError
        Unknown name or parameter, or a parameter out of range.

    Examples
    --------
    >>> perturbation_config("jpeg")
    {'name': 'jpeg', 'quality': 30}
    >>> perturbation_config({"name": "gamma", "gamma": 0.7})
    {'name': 'gamma', 'gamma': 0.7}
    """
    if isinstance(spec, str):
        name, given = spec, {}
    elif isinstance(spec, dict) and "name" in spec:
        name, given = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ValueError(f"a perturbation is a name of {sorted(PERTURBATIONS)} or a dict with 'name'; got {spec!r}")
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; expected one of {sorted(PERTURBATIONS)}")
    unknown = sorted(set(given) - set(PERTURBATIONS[name]))
    if unknown:
        raise ValueError(f"perturbation {name!r} has no parameter(s) {unknown}; it takes {sorted(PERTURBATIONS[name])}")
    params = {**PERTURBATIONS[name], **given}
    checks = {
        "size": lambda v: int(v) >= 8, "quality": lambda v: 1 <= int(v) <= 95, "gamma": lambda v: float(v) > 0,
        "sigma": lambda v: float(v) >= 0, "factor": lambda v: 0.1 <= float(v) <= 10,
    }
    for key, value in params.items():
        try:
            ok = checks[key](value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"perturbation {name!r}: {key}={value!r} is out of range")
    return {"name": name, **params}


def _resize(image: np.ndarray, h: int, w: int, resample) -> np.ndarray:
    return np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((w, h), resample), np.float32)


def _seed(image: np.ndarray) -> int:
    return int.from_bytes(hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).digest()[:8], "little")


def perturb(image: np.ndarray, spec: str | dict) -> np.ndarray:
    """Apply one acquisition-shift perturbation to a decoded radiograph.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Float image in [0, 1] (from :func:`cxr_embed.read_image`).
    spec : str or dict
        See :func:`perturbation_config`.

    Returns
    -------
    ndarray of shape (H', W'), float32 in [0, 1]
        ``(H, W)`` except for ``squash`` (``W' = round(W * factor)``). Deterministic.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    >>> perturb(img, "squash").shape
    (64, 38)
    >>> bool(np.allclose(perturb(img, {"name": "gamma", "gamma": 1.0}), img))
    True
    """
    cfg = perturbation_config(spec)
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"perturb expects a 2-D image (H, W), got shape {x.shape}")
    x = np.clip(x, 0.0, 1.0)
    h, w = x.shape
    name = cfg["name"]
    if name == "lowres":
        scale = cfg["size"] / max(h, w)
        if scale < 1:
            small = _resize(x, max(1, round(h * scale)), max(1, round(w * scale)), Image.BOX)
            x = _resize(small, h, w, Image.BILINEAR)
    elif name == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(np.round(x * 255).astype(np.uint8), mode="L").save(buf, format="JPEG",
                                                                         quality=int(cfg["quality"]))
        buf.seek(0)
        with Image.open(buf) as im:
            x = np.asarray(im.convert("L"), np.float32) / 255.0
    elif name == "gamma":
        x = np.power(x, np.float32(cfg["gamma"]))
    elif name == "noise":
        rng = np.random.default_rng(_seed(x))
        x = x + rng.normal(0.0, float(cfg["sigma"]), size=x.shape).astype(np.float32)
    elif name == "squash":
        x = _resize(x, h, max(1, round(w * float(cfg["factor"]))), Image.BOX)
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
