"""Compute placement of a backbone: arithmetic precision, devices, and the compiled forward pass.

How an embedding is computed, never which function is computed: mixed precision, XLA and a
``tf.distribute`` strategy act on a *copy* of :attr:`Backbone.model`, are recorded as provenance
in the store (:attr:`ComputeMixin.compute`), and are never part of the fingerprint.
:class:`ComputeMixin` gives :class:`~cxr_embed.embed.backbones.Backbone` its ``precision``,
``strategy``, ``replicas``, ``compute``, ``embed_function`` and ``embed``.
"""
from __future__ import annotations

import logging

import numpy as np

import keras
from keras import layers as _kl

from ..exceptions import BackboneError

__all__ = ["ComputeMixin", "PRECISIONS"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

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


class ComputeMixin:
    """Precision, devices and the forward pass of a backbone (mixed into ``Backbone``).

    Needs ``self.model``, ``self.input_size``, ``self.dim``, and ``self._precision_arg``,
    ``self._distribute_arg``, ``self._compute`` and ``self._embed_fns`` set by
    :meth:`_init_compute`.
    """

    def _init_compute(self, precision, distribute) -> None:
        if precision not in PRECISIONS:
            raise BackboneError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if not (distribute is None or isinstance(distribute, str) and distribute in ("auto", "none")
                or hasattr(distribute, "run") and hasattr(distribute, "num_replicas_in_sync")):
            raise BackboneError(f"distribute must be 'auto', 'none', None or a tf.distribute.Strategy, got {distribute!r}")
        self._precision_arg = precision
        self._distribute_arg = distribute
        self._compute: tuple | None = None  # (precision, strategy) once resolved
        self._embed_fns: dict = {}

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
            Float images in [0, 255] (from :meth:`Backbone.prepare`), ``(h, w) == input_size``.
        batch_size : int
            Images per forward pass (bounds memory). With several replicas each pass is
            zero-padded to a multiple of :attr:`replicas` rows (the padding is dropped).

        Returns
        -------
        ndarray of shape (n, dim), float32
            Deterministic: the same input gives the same bits in one process. With
            ``tta="flip"`` each row is the mean of the image's and its left-right mirror's.

        Examples
        --------
        >>> import numpy as np
        >>> from cxr_embed import Backbone
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
            rows = np.asarray(fn(part))
            if getattr(self, "tta", None) == "flip":  # mean with the mirrored pass, in float32
                rows = (rows + np.asarray(fn(np.ascontiguousarray(part[:, :, ::-1, :])))) * np.float32(0.5)
            out[start : start + batch_size] = rows[: len(part) - pad]
        return out
