"""Keras graph surgery for backbones: the library's layers, flat copies, taps, pooling, digests.

Every :class:`~cxr_embed.embed.backbones.Backbone` is one flat functional graph
``image -> ImagePreprocessing -> CNN -> tapped layer(s) -> pooling``. This module holds the two
serialisable layers of that graph, the copy that expands nested models into one flat graph (so
tf-keras-vis and ``get_layer`` reach every convolution), and the digests of architecture and
weights that go into the fingerprint.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

import keras
from keras import layers as _kl

from .._utils import sha256_text, stable_json
from ..exceptions import BackboneError

__all__ = ["ImagePreprocessing", "GeneralizedMeanPooling2D"]


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
