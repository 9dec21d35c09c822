"""Embeddings of modified copies of the images: mirrored and acquisition-shifted views.

An :class:`ImageView` wraps a backbone so that :func:`cxr_embed.extract` embeds a modified copy
of each image -- perturbed after decoding (:func:`cxr_embed.io.perturbations.perturb`) and/or
mirrored left-right after preparation -- into its own store group: the view has its own
:attr:`~ImageView.fingerprint` (the backbone's plus the view), so the embeddings of perturbed
copies can never be read as, or mixed with, those of the images themselves.

:func:`cxr_embed.search_pipeline` uses views to embed the held-out images under acquisition
shift (stress tests) and to build flip test-time augmentation from cached passes: the mean of
the plain and the mirrored view equals ``Backbone(..., tta="flip").embed`` bit for bit.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._utils import sha256_text, stable_json
from ..io.perturbations import perturb, perturbation_config

__all__ = ["ImageView"]


class ImageView:
    """A backbone applied to a modified copy of each image.

    Parameters
    ----------
    backbone : Backbone
        Any object :func:`cxr_embed.extract` accepts.
    flip : bool, default False
        Mirror the prepared image left-right (``x[:, ::-1]``) before the forward pass.
    perturbation : str or dict, optional
        An acquisition shift applied to the decoded image before preparation
        (see :func:`cxr_embed.io.perturbations.perturbation_config`).

    Attributes
    ----------
    name, dim, input_size
        Those of the backbone.
    view : dict
        ``{"flip": bool, "perturbation": dict or None}``.
    config : dict
        The backbone's config with ``"view"`` added.
    fingerprint : str
        SHA-256 of the backbone's fingerprint and :attr:`view`.

    Examples
    --------
    >>> from cxr_embed import Backbone
    >>> bb = Backbone("mobilenet_v2", weights=None, input_size=32)
    >>> v = ImageView(bb, perturbation="jpeg")
    >>> v.view
    {'flip': False, 'perturbation': {'name': 'jpeg', 'quality': 30}}
    >>> v.fingerprint != bb.fingerprint
    True
    """

    #: ``extract`` must call :meth:`prepare` (worker processes cannot rebuild the view from the
    #: library's one-step reader), so decoding runs in threads.
    reproducible_prepare = False

    def __init__(self, backbone: Any, *, flip: bool = False, perturbation: str | dict | None = None):
        if isinstance(backbone, ImageView):
            raise TypeError("ImageView wraps a backbone, not another view; pass flip and perturbation together")
        self.backbone = backbone
        self.view = {"flip": bool(flip),
                     "perturbation": None if perturbation is None else perturbation_config(perturbation)}
        self.name = backbone.name
        self.dim = int(backbone.dim)
        self.input_size = tuple(backbone.input_size)
        self._fingerprint = sha256_text(stable_json({"backbone": str(backbone.fingerprint), "view": self.view}))

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the backbone's fingerprint and the view."""
        return self._fingerprint

    @property
    def config(self) -> dict:
        """The backbone's config with ``"view"`` added (and this view's fingerprint)."""
        return {**dict(self.backbone.config), "view": self.view, "fingerprint": self.fingerprint}

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Decoded image ``(H, W)`` in [0, 1] -> perturbed, prepared, maybe mirrored ``(h, w, 3)``."""
        if self.view["perturbation"] is not None:
            image = perturb(image, self.view["perturbation"])
        x = np.asarray(self.backbone.prepare(image), dtype=np.float32)
        return np.ascontiguousarray(x[:, ::-1]) if self.view["flip"] else x

    def embed(self, batch: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """The backbone's forward pass, ``(n, h, w, 3) -> (n, dim)``."""
        return self.backbone.embed(batch, batch_size=batch_size)

    def __repr__(self) -> str:
        return f"ImageView({self.backbone!r}, flip={self.view['flip']}, perturbation={self.view['perturbation']})"
