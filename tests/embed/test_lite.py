"""EfficientNet-Lite: torch-free legacy state-dict reader, Keras builder, converter, cache."""
from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from cxr_embed.embed import _lite
from cxr_embed.exceptions import WeightsError

MILITARY_UNIFORM = 652


# --------------------------------------------------------------------------------------
# helpers: write a legacy-format file without torch (fake `torch` names while pickling)
# --------------------------------------------------------------------------------------
class _FakeStorage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, np.asarray(data)


class _FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


def _write_legacy(path, state, storages, monkeypatch, truncate=0, extra_global=None):
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - only pickled by reference
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch_mod, name, cls)
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                return ("storage", getattr(torch_mod, obj.kind), obj.key, "cpu", obj.data.size)
            return None

    with open(path, "wb") as fh:
        pickle.dump(_lite._LEGACY_MAGIC, fh, protocol=2)
        pickle.dump(_lite._LEGACY_PROTOCOL, fh, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, fh, protocol=2)
        P(fh, protocol=2).dump(state if extra_global is None else extra_global)
        pickle.dump([s.key for s in storages], fh, protocol=2)
        for s in storages:
            fh.write(struct.pack("<q", s.data.size))
            fh.write(s.data.astype(s.data.dtype.newbyteorder("<")).tobytes())
    if truncate:
        size = os.path.getsize(path)
        with open(path, "r+b") as fh:
            fh.truncate(size - truncate)


def test_reader_rebuilds_offsets_strides_and_shared_storages(tmp_path, monkeypatch):
    floats = _FakeStorage("0", "FloatStorage", np.arange(12, dtype=np.float32))
    longs = _FakeStorage("1", "LongStorage", np.array([7], np.int64))
    state = collections.OrderedDict(
        a=_FakeTensor(floats, 0, (3, 4), (4, 1)),
        transposed=_FakeTensor(floats, 0, (4, 3), (1, 4)),
        offset=_FakeTensor(floats, 2, (2, 3), (1, 2)),
        count=_FakeTensor(longs, 0, (), ()),
    )
    path = tmp_path / "w.pth"
    _write_legacy(path, state, [floats, longs], monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # the reader must not need torch
    sd = _lite.read_legacy_state_dict(path)
    base = np.arange(12, dtype=np.float32)
    assert list(sd) == ["a", "transposed", "offset", "count"]
    np.testing.assert_array_equal(sd["a"], base.reshape(3, 4))
    np.testing.assert_array_equal(sd["transposed"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(sd["offset"], np.array([[2, 4, 6], [3, 5, 7]], np.float32))
    assert sd["count"].dtype == np.int64 and int(sd["count"]) == 7
    assert sd["a"].flags.writeable and sd["a"].flags.c_contiguous


def test_reader_refuses_foreign_globals_without_running_them(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    _write_legacy(path, None, [], monkeypatch, extra_global={"x": Evil()})
    with pytest.raises(WeightsError, match="refusing to unpickle global"):
        _lite.read_legacy_state_dict(path)
    assert not marker.exists()


def test_reader_errors_on_truncated_zip_and_missing_files(tmp_path, monkeypatch):
    floats = _FakeStorage("0", "FloatStorage", np.arange(6, dtype=np.float32))
    path = tmp_path / "t.pth"
    _write_legacy(path, collections.OrderedDict(a=_FakeTensor(floats, 0, (6,), (1,))), [floats], monkeypatch, truncate=5)
    with pytest.raises(WeightsError, match="truncated"):
        _lite.read_legacy_state_dict(path)
    zipped = tmp_path / "z.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(WeightsError, match="zip-format"):
        _lite.read_legacy_state_dict(zipped)
    with pytest.raises(WeightsError, match="not found"):
        _lite.read_legacy_state_dict(tmp_path / "absent.pth")


@pytest.fixture(scope="module")
def lite0_state():
    return _lite.read_legacy_state_dict(_lite.lite_source_file("lite0"))


def test_real_lite0_state_dict_is_read(lite0_state):
    sd = lite0_state
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280)
    assert sd["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert not any("_se_" in k for k in sd)  # Lite has no squeeze-excite
    n_params = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    model = _lite.efficientnet_lite("lite0", include_top=True, input_shape=(64, 64, 3))
    assert sum(int(np.prod(w.shape)) for w in model.weights) == n_params


def test_converter_refuses_leftover_missing_and_misshaped_tensors(lite0_state):
    model = _lite.efficientnet_lite("lite0", include_top=False, input_shape=(32, 32, 3))
    _lite.convert_state_dict(lite0_state, model, "lite0")  # _fc may remain without the top
    extra = collections.OrderedDict(lite0_state, **{"_blocks.99._bn0.weight": np.zeros(3, np.float32)})
    with pytest.raises(WeightsError, match="not used"):
        _lite.convert_state_dict(extra, model, "lite0")
    missing = collections.OrderedDict((k, v) for k, v in lite0_state.items() if k != "_blocks.3._bn1.running_var")
    with pytest.raises(WeightsError, match="_blocks.3._bn1.running_var"):
        _lite.convert_state_dict(missing, model, "lite0")
    bad = collections.OrderedDict(lite0_state)
    bad["_conv_head.weight"] = bad["_conv_head.weight"][:100]
    with pytest.raises(WeightsError, match="shape mismatch"):
        _lite.convert_state_dict(bad, model, "lite0")
    with pytest.raises(WeightsError, match="shape mismatch|not used|missing"):
        _lite.convert_state_dict(lite0_state, _lite.efficientnet_lite("lite1", input_shape=(32, 32, 3)), "lite0")


def _grace_hopper(size):
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)[None]


def _check_imagenet(variant, cache):
    path = _lite.lite_weights_path(variant, cache_dir=cache)
    size = _lite.LITE_VARIANTS[variant][2]
    model = _lite.efficientnet_lite(variant, include_top=True)
    model.load_weights(path)
    probs = np.asarray(model(_grace_hopper(size), training=False))[0]
    assert int(np.argmax(probs)) == MILITARY_UNIFORM, np.argsort(probs)[::-1][:5]
    return path, model


def test_lite0_imagenet_grace_hopper_and_cache(tmp_path, monkeypatch):
    path, model = _check_imagenet("lite0", tmp_path)
    checksum = path.with_name(path.name + ".sha256")
    assert path.parent == tmp_path and checksum.is_file()
    assert checksum.read_text().split()[0] == _lite.sha256_file(path)
    # second call reuses the cache: no conversion at all
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(_lite, "read_legacy_state_dict", lambda p: pytest.fail("re-converted a valid cache"))
    assert _lite.lite_weights_path("lite0", cache_dir=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime
    monkeypatch.undo()
    # a corrupted cache fails its checksum and is converted again
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        fh.write(b"\xff" * 64)
    assert _lite.lite_weights_path("lite0", cache_dir=tmp_path) == path
    assert checksum.read_text().split()[0] == _lite.sha256_file(path)
    # the cache dir follows $CXR_EMBED_CACHE when no argument is given
    monkeypatch.setenv("CXR_EMBED_CACHE", str(tmp_path))
    assert _lite.lite_weights_path("lite0") == path


def test_backbone_lite0_imagenet_matches_classifier_features(tmp_path):
    from cxr_embed import Backbone

    bb = Backbone("efficientnet_lite0", cache_dir=tmp_path)
    assert bb.dim == 1280 and bb.input_size == (224, 224) and bb.feature_layer == "top_activation"
    x = _grace_hopper(224)
    emb = bb.embed(x)
    full = _lite.efficientnet_lite("lite0", include_top=True)
    full.load_weights(_lite.lite_weights_path("lite0", cache_dir=tmp_path))
    import keras

    pooled = keras.Model(full.input, full.get_layer("avg_pool").output)(x, training=False)
    np.testing.assert_allclose(emb, np.asarray(pooled), rtol=1e-4, atol=1e-5)
    again = Backbone("efficientnet_lite0", cache_dir=tmp_path)
    assert again.fingerprint == bb.fingerprint
    # the cached file (saved with the classifier head) also loads as weights=PATH: same function
    cached = _lite.lite_weights_path("lite0", cache_dir=tmp_path)
    assert Backbone("efficientnet_lite0", weights=cached).fingerprint == bb.fingerprint


def test_backbone_lite_weights_path_without_top(tmp_path):
    from cxr_embed import Backbone

    model = _lite.efficientnet_lite("lite0", include_top=False, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(0.5, 1.0, w.shape).astype(np.float32) if "variance" in w.path
                       else rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.weights])
    path = tmp_path / "lite0_notop.weights.h5"
    model.save_weights(path)
    bb = Backbone("efficientnet_lite0", weights=path, input_size=32)
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(bb.embed(x), np.asarray(model(x, training=False)).mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_lite2_imagenet_grace_hopper(tmp_path, variant):
    _check_imagenet(variant, tmp_path)
