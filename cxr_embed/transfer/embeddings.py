"""How a searched pipeline turns an image into a vector: embedding configurations and their cache.

An :class:`EmbeddingConfig` is one backbone at one input size, or several sizes averaged
(multi-resolution), at one layer, with or without flip test-time augmentation. A
:class:`FusedConfig` concatenates several configurations, typically different backbones (each
part is cached on its own, so fusing costs no extraction beyond its parts). :class:`_Embeddings`
extracts every configuration's parts once into an :class:`~cxr_embed.EmbeddingStore` and builds
their matrices from it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from itertools import combinations, product
from typing import Mapping, Sequence, Union

import numpy as np
import pandas as pd

from .._utils import sha256_text, stable_json

__all__ = ["EmbeddingConfig", "FusedConfig"]


@dataclass(frozen=True)
class EmbeddingConfig:
    """One way of turning an image into an embedding.

    Attributes
    ----------
    backbone : str
        A registered backbone name.
    sizes : tuple of int
        Input size(s); several sizes mean the mean of the embeddings at each (multi-resolution).
    layer : str or None
        Tapped layer (None: the backbone's default, the last one).
    tta : {None, "flip"}
        ``"flip"``: mean of the embeddings of the image and of its mirror.
    """

    backbone: str
    sizes: tuple[int, ...]
    layer: str | None = None
    tta: str | None = None

    @property
    def label(self) -> str:
        """Short name, e.g. ``efficientnet_lite0@224+flip`` or ``efficientnet_lite1@224|320``."""
        text = f"{self.backbone}@{'|'.join(str(s) for s in self.sizes)}"
        if self.layer:
            text += f"/{self.layer}"
        return text + ("+flip" if self.tta == "flip" else "")

    @property
    def parts(self) -> tuple["EmbeddingConfig", ...]:
        """The configurations whose embeddings are concatenated: this one alone."""
        return (self,)

    def to_dict(self) -> dict:
        """JSON-serialisable form (recorded in ``search.json`` and in the saved bundle)."""
        return {"backbone": self.backbone, "sizes": list(self.sizes), "layer": self.layer, "tta": self.tta}


@dataclass(frozen=True)
class FusedConfig:
    """Several embedding configurations concatenated (early fusion), e.g. two backbones.

    Each part is extracted and cached as it would be alone; the fused embedding of an image is the
    concatenation of its parts' embeddings, in the order of ``parts`` (dimension: the sum of the
    parts'). Classifiers that standardise their input (all of :func:`cxr_embed.make_classifier`'s
    linear ones) put the parts on one scale.

    Attributes
    ----------
    parts : tuple of EmbeddingConfig
        At least two, all different.
    """

    parts: tuple[EmbeddingConfig, ...]

    def __post_init__(self):
        if len(self.parts) < 2 or len(set(self.parts)) != len(self.parts):
            raise ValueError(f"a fusion needs two or more different embedding configurations, got "
                             f"{[p.label for p in self.parts]}")
        if not all(isinstance(p, EmbeddingConfig) for p in self.parts):
            raise ValueError("the parts of a fusion are EmbeddingConfig objects (a fusion does not nest)")

    @property
    def label(self) -> str:
        """The parts' labels joined by ``" + "``."""
        return " + ".join(p.label for p in self.parts)

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"fuse": [part, ...]}``."""
        return {"fuse": [p.to_dict() for p in self.parts]}


AnyConfig = Union[EmbeddingConfig, FusedConfig]


class _Embeddings:
    """Extract-once, load-many access to the embedding of every configuration and view."""

    def __init__(self, store, backbone_kwargs: dict, extract_kwargs: dict, backbones: dict | None = None):
        from ..embed.store import EmbeddingStore

        self.store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, mode="a")
        self.backbone_kwargs = dict(backbone_kwargs)
        self.extract_kwargs = {"progress": False, **extract_kwargs}
        self._backbones: dict = {} if backbones is None else backbones  # shared: one object per configuration
        self.failures: list = []
        self.seconds = 0.0

    def backbone(self, name: str, size: int, layer):
        from ..embed.backbones import Backbone

        key = (name, size, layer)
        if key not in self._backbones:
            self._backbones[key] = Backbone(name, input_size=size, layer=layer, **self.backbone_kwargs)
        return self._backbones[key]

    def fingerprint(self, cfg: AnyConfig) -> str:
        if isinstance(cfg, FusedConfig):
            return sha256_text(stable_json({"parts": [self.fingerprint(p) for p in cfg.parts], "combine": "concat"}))
        parts = [self.backbone(cfg.backbone, s, cfg.layer).fingerprint for s in cfg.sizes]
        return sha256_text(stable_json({"backbones": parts, "tta": cfg.tta, "combine": "mean"}))

    def _view_rows(self, bb, df: pd.DataFrame, *, flip: bool, perturbation) -> dict:
        from ..embed.extraction import extract
        from ..embed.views import ImageView

        obj = bb if not flip and perturbation is None else ImageView(bb, flip=flip, perturbation=perturbation)
        t0 = time.perf_counter()
        report = extract(df[["image_id", "path"]], obj, self.store, **self.extract_kwargs)
        self.seconds += time.perf_counter() - t0
        self.failures.extend(report.failures)
        ids, X = self.store.load(obj.fingerprint)
        return dict(zip((str(i) for i in ids), X))

    def rows(self, cfg: EmbeddingConfig, df: pd.DataFrame, perturbation=None) -> dict:
        """image id -> embedding of one (unfused) configuration, for the rows it could embed."""
        parts = []
        for size in cfg.sizes:
            bb = self.backbone(cfg.backbone, size, cfg.layer)
            plain = self._view_rows(bb, df, flip=False, perturbation=perturbation)
            if cfg.tta == "flip":
                mirrored = self._view_rows(bb, df, flip=True, perturbation=perturbation)
                plain = {k: (v + mirrored[k]) * np.float32(0.5) for k, v in plain.items() if k in mirrored}
            parts.append(plain)
        if len(parts) == 1:
            return parts[0]
        return {k: np.mean([p[k] for p in parts], axis=0) for k in parts[0] if all(k in p for p in parts)}

    def matrix(self, cfg: AnyConfig, df: pd.DataFrame, perturbation=None) -> tuple[np.ndarray, np.ndarray]:
        """(ids that every part has, embedding matrix) for a manifest, in manifest order.

        Returns
        -------
        ids : ndarray of str, shape (n_ok,)
        X : ndarray of shape (n_ok, dim), float32
            Multi-size: the mean over sizes; fused: the parts concatenated.
        """
        parts = [self.rows(p, df, perturbation) for p in cfg.parts]
        ids = [str(i) for i in df["image_id"] if all(str(i) in p for p in parts)]
        if not ids:
            return np.array([], dtype=str), np.zeros((0, 0), np.float32)
        X = np.stack([np.concatenate([p[i] for p in parts]) for i in ids])
        return np.asarray(ids), X.astype(np.float32, copy=False)


def _sizes_of(name: str, input_sizes) -> list[int]:
    """Sorted distinct input sizes of one backbone (None: its native size)."""
    from ..embed.registry import _get_spec

    if isinstance(input_sizes, Mapping):
        sizes = input_sizes.get(name, [None])
    else:
        sizes = [None] if input_sizes is None else list(input_sizes)
    native = int(_get_spec(name).input_size[0])
    return sorted({native if s is None else int(s) for s in sizes})


def _configs(backbones, input_sizes, layers, tta, multiscale, fuse=None) -> list[AnyConfig]:
    """Every embedding configuration of the grid, then the fusions asked for."""
    if isinstance(input_sizes, Mapping):
        unknown = set(input_sizes) - set(backbones)
        if unknown:
            raise ValueError(f"input_sizes names backbones that are not searched: {sorted(unknown)}")
    out: list[AnyConfig] = []
    widest: dict = {}  # (backbone, layer, tta) -> the configuration that stands for it in fuse="backbones"
    for name, layer, t in product(backbones, layers, tta):
        if t not in (None, "flip"):
            raise ValueError(f"tta options are None and 'flip', got {t!r}")
        resolved = _sizes_of(name, input_sizes)
        out += [EmbeddingConfig(name, (s,), layer, t) for s in resolved]
        if multiscale and len(resolved) > 1:
            out.append(EmbeddingConfig(name, tuple(resolved), layer, t))
        widest[(name, layer, t)] = out[-1] if multiscale or len(resolved) == 1 else None
    out += _fusions(fuse, out, widest, backbones, layers, tta)
    if len(set(out)) != len(out):
        raise ValueError("the search grid repeats an embedding configuration; list each backbone, size and layer once")
    return out


def _fusions(fuse, grid, widest, backbones, layers, tta) -> list[FusedConfig]:
    if fuse is None or (not isinstance(fuse, str) and len(fuse) == 0):
        return []
    if isinstance(fuse, str):
        if fuse != "backbones":
            raise ValueError(f"fuse is 'backbones' or a list of groups of embedding labels, got {fuse!r}")
        if len(backbones) < 2:
            raise ValueError("fuse='backbones' needs two or more backbones")
        out = []
        for layer, t in product(layers, tta):
            reps = [widest[(b, layer, t)] for b in backbones]
            if any(r is None for r in reps):
                raise ValueError("fuse='backbones' fuses one configuration per backbone: with several input sizes, "
                                 "set multiscale=True (each backbone is then its multi-resolution embedding)")
            out += [FusedConfig(tuple(c)) for k in range(2, len(reps) + 1) for c in combinations(reps, k)]
        return out
    by_label = {c.label: c for c in grid}
    out = []
    for group in fuse:
        if isinstance(group, str):
            raise ValueError(f"each fusion is a list of embedding labels, got the string {group!r}")
        missing = [lab for lab in group if lab not in by_label]
        if missing:
            raise ValueError(f"fuse names embeddings that are not in the search grid: {missing}; "
                             f"the grid has {sorted(by_label)}")
        out.append(FusedConfig(tuple(by_label[lab] for lab in group)))
    return out


def parse_fuse(text: Sequence[str] | str | None):
    """The ``fuse`` argument from command-line text: ``backbones`` or groups ``a + b`` (spaces around ``+``).

    Examples
    --------
    >>> parse_fuse(["efficientnet_lite0@224+flip + efficientnet_lite2@260+flip"])
    [['efficientnet_lite0@224+flip', 'efficientnet_lite2@260+flip']]
    >>> parse_fuse("backbones")
    'backbones'
    """
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    if items == ["backbones"]:
        return "backbones"
    # labels hold "+flip" without spaces; the parts of a group are separated by " + "
    return [[s for s in re.split(r"\s+\+\s+", item.strip()) if s] for item in items]
