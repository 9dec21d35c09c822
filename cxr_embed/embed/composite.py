"""Embeddings made of several backbone passes: multi-resolution means, flip TTA, fused backbones.

An :class:`EmbeddingConfig` is one backbone at one input size, or several sizes averaged
(multi-resolution), at one layer, with or without flip test-time augmentation. A
:class:`FusedConfig` concatenates several configurations, typically different backbones.
:func:`parse_embedding` reads either from its label (``"efficientnet_lite0@224|320|448 +
efficientnet_lite1@224|320"``).

:class:`CompositeEmbedding` makes such a configuration something :func:`cxr_embed.extract` takes
like a backbone: each pass (backbone, size, mirror) is extracted and cached on its own in a parts
store beside the target store, and the combined embedding is written to the target store as one
group with its own fingerprint and a config that lists its parts. ``cxr-embed fit``,
``evaluate`` and ``predict`` then read it like any other group. :func:`cxr_embed.search_pipeline`
builds every configuration of its grid through the same cache (:class:`_Embeddings`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import pandas as pd

from .._utils import sha256_text, stable_json
from ..exceptions import BackboneError

__all__ = ["DEFAULT_EMBEDDING", "CompositeEmbedding", "EmbeddingConfig", "FusedConfig", "parse_embedding"]

DEFAULT_EMBEDDING = "efficientnet_lite0@224|320|448 + efficientnet_lite1@224|320"
"""The library's default embedding (``cxr-embed extract`` without ``--backbone``, the demo).

EfficientNet-Lite0 at 224, 320 and 448 px (the mean) fused with EfficientNet-Lite1 at 224 and
320 px (the mean): 2,560 values per image. Chosen by :func:`cxr_embed.search_pipeline` under a
protocol fixed before the run (docs/search.md, "Fused backbones"): nested patient-grouped CV AUC
0.920 against 0.886 for Lite0 at 224 px alone on NIH pneumonia, and more AUC kept under the worst
acquisition shift (0.878 against 0.859). It costs five forward passes per image;
``"efficientnet_lite0@224"`` is the one-pass alternative.
"""


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
        from .store import EmbeddingStore

        # store=None: fingerprints and backbones only (nothing can be extracted)
        self.store = store if store is None or isinstance(store, EmbeddingStore) else EmbeddingStore(store, mode="a")
        self.backbone_kwargs = dict(backbone_kwargs)
        self.extract_kwargs = {"progress": False, **extract_kwargs}
        self._backbones: dict = {} if backbones is None else backbones  # shared: one object per configuration
        self.failures: list = []
        self.seconds = 0.0

    def backbone(self, name: str, size: int, layer):
        from .backbones import Backbone

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
        from .extraction import extract
        from .views import ImageView

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


_PART = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)@(?P<sizes>\d+(?:\|\d+)*)(?:/(?P<layer>[^+\s]+))?(?P<flip>\+flip)?$")


def parse_embedding(label: str) -> AnyConfig:
    """The configuration a label names (the inverse of ``.label``).

    Parameters
    ----------
    label : str
        ``backbone@size[|size...][/layer][+flip]``, several of them joined by ``" + "`` for a fusion.

    Returns
    -------
    EmbeddingConfig or FusedConfig

    Raises
    ------
    ValueError
        A label that does not have this form (the message shows it).

    Examples
    --------
    >>> parse_embedding("efficientnet_lite0@224|320+flip")
    EmbeddingConfig(backbone='efficientnet_lite0', sizes=(224, 320), layer=None, tta='flip')
    >>> parse_embedding("efficientnet_lite0@224 + efficientnet_lite1@240").label
    'efficientnet_lite0@224 + efficientnet_lite1@240'
    """
    parts = []
    for text in re.split(r"\s+\+\s+", str(label).strip()):
        m = _PART.match(text)
        if not m:
            raise ValueError(f"{text!r} is not an embedding label; the form is backbone@size[|size...][/layer][+flip], "
                             "e.g. 'efficientnet_lite0@224|320+flip', several joined by ' + '")
        parts.append(EmbeddingConfig(m["name"], tuple(int(s) for s in m["sizes"].split("|")), m["layer"],
                                     "flip" if m["flip"] else None))
    return parts[0] if len(parts) == 1 else FusedConfig(tuple(parts))


def _pass_keys(embedding: AnyConfig) -> list[tuple]:
    """(backbone, size, layer) of every distinct backbone pass, in concatenation order (mirrors share one)."""
    return list(dict.fromkeys((p.backbone, s, p.layer) for p in embedding.parts for s in p.sizes))


def is_composite(spec) -> bool:
    """Whether ``spec`` is an embedding label (``name@size...``) or a CompositeEmbedding, not one backbone."""
    return (isinstance(spec, str) and "@" in spec) or bool(getattr(spec, "composite", False))


def as_extractor(spec):
    """What :func:`cxr_embed.extract` takes for ``spec``: a name -> Backbone, a label -> CompositeEmbedding."""
    if isinstance(spec, str):
        if is_composite(spec):
            return CompositeEmbedding(spec)
        from .backbones import Backbone

        return Backbone(spec)
    return spec


class CompositeEmbedding:
    """A multi-size, flip-TTA or fused embedding that :func:`cxr_embed.extract` takes like a backbone.

    Parameters
    ----------
    embedding : str, EmbeddingConfig or FusedConfig
        What to compute (a label is read by :func:`parse_embedding`).
    parts_store : str or Path, optional
        Where the single passes are cached (default: beside the target store,
        ``<name>.parts.h5``). A later extraction of another composite that shares passes reuses them.
    **backbone_kwargs
        Passed to every :class:`~cxr_embed.Backbone` (``weights``, ``resize``, ...).

    Attributes
    ----------
    name : str
        The label.
    dim : int
        Embedding width (parts concatenated; a multi-size part has its backbone's width).
    fingerprint : str
        SHA-256 of the parts' backbone fingerprints, their TTA and the combination; equal to the
        :attr:`~cxr_embed.transfer.search.SearchedPipeline.fingerprint` of a searched pipeline with
        this configuration, so its bundle predicts on this group.
    config : dict
        ``format`` ``"cxr_embed.composite"``, the ``embedding`` (``to_dict``), the ``parts``
        (each pass's backbone config, which holds the weights and every option), ``dim`` and
        ``fingerprint``; the same embedding built with equivalent arguments has the same config.
        :meth:`from_config` rebuilds the object from it.

    Examples
    --------
    >>> emb = CompositeEmbedding("mobilenet_v2@32|40", weights=None)  # doctest: +SKIP
    >>> cxr_embed.extract(manifest, emb, "store.h5")                 # doctest: +SKIP
    """

    #: Read by :func:`cxr_embed.extract`, which hands the work to :meth:`extract_into`.
    composite = True

    def __init__(self, embedding, *, parts_store=None, **backbone_kwargs):
        self.embedding = parse_embedding(embedding) if isinstance(embedding, str) else embedding
        if not isinstance(self.embedding, (EmbeddingConfig, FusedConfig)):
            raise TypeError(f"embedding is a label, an EmbeddingConfig or a FusedConfig, got {type(embedding).__name__}")
        self.parts_store = parts_store
        self._backbones: dict = backbone_kwargs.pop("_backbones", None) or {}  # from_config: the passes, rebuilt
        self.backbone_kwargs = dict(backbone_kwargs)
        self.name = self.embedding.label
        # the fingerprint hashes every pass's backbone, so computing it builds those not given
        self.fingerprint = _Embeddings(None, self.backbone_kwargs, {}, backbones=self._backbones).fingerprint(
            self.embedding)
        self.dim = int(sum(self.part_dims()))
        self.input_size = None
        self.config = {"format": "cxr_embed.composite", "format_version": 1, "name": self.name,
                       "embedding": self.embedding.to_dict(), "dim": self.dim, "fingerprint": self.fingerprint,
                       "parts": [self._backbones[k].config for k in _pass_keys(self.embedding)]}

    @classmethod
    def from_config(cls, config: dict) -> "CompositeEmbedding":
        """Rebuild from :attr:`config` (e.g. a store group's record), checking the fingerprint.

        Raises
        ------
        FingerprintMismatchError
            The rebuilt passes differ from the recorded ones (other weights, another version).
        """
        from ..exceptions import FingerprintMismatchError
        from .backbones import Backbone

        if config.get("format") != "cxr_embed.composite":
            raise BackboneError(f"not a composite embedding's config (format {config.get('format')!r})")
        embedding = parse_embedding(config["name"])
        keys = _pass_keys(embedding)
        if len(keys) != len(config.get("parts") or []):
            raise BackboneError(f"the record of {config['name']!r} lists {len(config.get('parts') or [])} passes, "
                                f"its label {len(keys)}; the record is damaged")
        passes = {k: Backbone.from_config(pc) for k, pc in zip(keys, config["parts"])}  # each checks its fingerprint
        obj = cls(embedding, _backbones=passes)
        if obj.fingerprint != config.get("fingerprint"):
            raise FingerprintMismatchError(
                f"the composite embedding {config['name']!r} rebuilt here has fingerprint {obj.fingerprint[:12]}... "
                f"but the record says {str(config.get('fingerprint'))[:12]}...; fix: the same weights files and "
                "backbone options as at extraction time")
        return obj

    def passes(self) -> list[dict]:
        """Every forward pass of one image, in the order the parts are concatenated.

        Returns
        -------
        list of dict
            ``backbone`` (a :class:`~cxr_embed.Backbone`), ``flip`` (the prepared image mirrored),
            ``part`` (index into :attr:`embedding`'s parts) and ``weight`` (the pass's share of its
            part's mean: 1 / (sizes x views)).
        """
        out = []
        for k, part in enumerate(self.embedding.parts):
            views = (False, True) if part.tta == "flip" else (False,)
            for size in part.sizes:
                bb = self._backbones[(part.backbone, size, part.layer)]
                out += [{"backbone": bb, "flip": f, "part": k, "weight": 1.0 / (len(part.sizes) * len(views))}
                        for f in views]
        return out

    def part_dims(self) -> list[int]:
        """Width of each part of the concatenation (a multi-size part has its backbone's width)."""
        return [int(self._backbones[(p.backbone, p.sizes[0], p.layer)].dim) for p in self.embedding.parts]

    def embed_images(self, images, *, batch_size: int = 32) -> np.ndarray:
        """Composite embeddings of decoded images, computed in memory (nothing cached).

        What explanation code needs to run the whole pipeline on perturbed copies of an image
        (occlusion, deletion curves). :meth:`extract_into` computes the same rows from files
        (each pass decoding straight to its input size, within 0.01 grey levels of
        :meth:`Backbone.prepare <cxr_embed.Backbone.prepare>`).

        Parameters
        ----------
        images : ndarray of shape (n, H, W) or (n, H, W, 1), or a sequence of (H, W) arrays
            Grey images in [0, 1] (as :func:`cxr_embed.read_image` returns); sizes may differ.
        batch_size : int, default 32
            Images per forward pass.

        Returns
        -------
        ndarray of shape (n, dim), float32
            Each part the weighted mean of its passes, parts concatenated (as in the store).

        Examples
        --------
        >>> emb = CompositeEmbedding("mobilenet_v2@32|40", weights=None)  # doctest: +SKIP
        >>> emb.embed_images(np.zeros((2, 50, 40))).shape                 # doctest: +SKIP
        (2, 1280)
        """
        imgs = [np.asarray(im, np.float32) for im in images]
        imgs = [im[..., 0] if im.ndim == 3 and im.shape[-1] == 1 else im for im in imgs]
        if any(im.ndim != 2 for im in imgs):
            raise BackboneError(f"{self.name}: embed_images takes grey images (H, W) in [0, 1]; got shapes "
                                f"{sorted({im.shape for im in imgs})}")
        dims = self.part_dims()
        parts = [np.zeros((len(imgs), d), np.float64) for d in dims]
        prepared = (None, None)  # (backbone, its inputs): a mirrored pass follows its plain one and reuses them
        for p in self.passes():
            bb = p["backbone"]
            if prepared[0] is not bb:
                prepared = (bb, np.stack([bb.prepare(im) for im in imgs]))
            x = prepared[1][:, :, ::-1] if p["flip"] else prepared[1]
            parts[p["part"]] += p["weight"] * bb.embed(np.ascontiguousarray(x), batch_size=batch_size)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _parts_path(self, store) -> Path:
        if self.parts_store is not None:
            return Path(self.parts_store)
        base = Path(getattr(store, "path", store))
        return base.with_name(base.stem + ".parts" + base.suffix)

    def extract_into(self, df, store, **extract_kwargs):
        """Extract the passes into the parts store, then write the combined rows the store lacks.

        Called by :func:`cxr_embed.extract` (which passes its keyword arguments on to each pass).

        Returns
        -------
        ExtractionReport
            ``n_done``: rows written to the target group; ``n_failed`` / ``failures``: images
            some pass could not embed (reported once each).
        """
        from .extraction import ExtractionReport
        from .store import EmbeddingStore

        t0 = time.perf_counter()
        target = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store, mode="a")
        parts_path = self._parts_path(target)
        if parts_path.resolve() == Path(target.path).resolve():
            raise BackboneError(f"{parts_path}: the parts store of a composite embedding must not be its target "
                                "store (the target would then hold one group per pass); fix: another parts_store")
        cache = _Embeddings(parts_path, self.backbone_kwargs, extract_kwargs, backbones=self._backbones)
        have = set(target.ids(self)) if self.fingerprint in target.fingerprints() else set()
        ids, X = cache.matrix(self.embedding, df)
        new = np.array([i not in have for i in ids], dtype=bool)
        if new.any():
            with target.writer(self, dtype=extract_kwargs.get("dtype")) as w:
                w.append(list(ids[new]), X[new])
        failures, seen = [], set()
        for image_id, path, reason in cache.failures:
            if image_id not in seen:
                seen.add(image_id)
                failures.append((image_id, path, reason))
        seconds = time.perf_counter() - t0
        n_done = int(new.sum())
        return ExtractionReport(n_done=n_done, n_cached=len(ids) - n_done, n_failed=len(failures),
                                failures=failures, seconds=seconds,
                                images_per_second=n_done / seconds if n_done and seconds > 0 else 0.0,
                                store_path=str(target.path), fingerprint=self.fingerprint)

    def __repr__(self) -> str:
        return f"CompositeEmbedding({self.name!r}, dim={self.dim})"
