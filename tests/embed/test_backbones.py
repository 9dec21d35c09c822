"""Backbone registry, flat graphs, pooling, layer taps, fingerprints, from_keras, weight files.

Every model here is built with ``weights=None`` (or from a local file) at a tiny input size:
nothing is downloaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras

from cxr_embed.embed.backbones import (
    POOLINGS,
    Backbone,
    GeneralizedMeanPooling2D,
    ImagePreprocessing,
    list_backbones,
)
from cxr_embed.embed.compute import _clone_for_compute
from cxr_embed.embed.registry import _REGISTRY
from cxr_embed.exceptions import BackboneError, WeightsError

# the paper's backbone, the default and two cheap other families run in the fast suite; every other
# backbone (one build each: 3-11 s) runs with -m slow
FAST = ["densenet121", "resnet50", "mobilenet_v3_small", "efficientnet_lite0"]
SLOW = [n for n in list_backbones() if n not in FAST]


def _batch(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)


def _check_family(name):
    spec = _REGISTRY[name]
    size = max(spec.min_size, 32)
    bb = Backbone(name, weights=None, input_size=size)
    assert not [l.name for l in bb.model.layers if isinstance(l, keras.Model)], "nested model"
    assert tuple(bb.model.input_shape) == (None, size, size, 3)
    assert tuple(bb.model.output_shape) == (None, spec.dim) and bb.dim == spec.dim
    assert (bb.preprocess == "none") != any(isinstance(l, ImagePreprocessing) for l in bb.model.layers)
    assert len(bb.model.get_layer(bb.feature_layer).output.shape) == 4
    x = _batch(3, size)
    a, b = bb.embed(x), bb.embed(x)
    assert a.shape == (3, spec.dim) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)  # same bits
    assert not np.array_equal(a[0], a[1])  # different images, different embeddings
    # the mixed-precision copy that embed uses on a GPU ("auto") rebuilds for every family
    mixed = _clone_for_compute(bb.model, "mixed_bfloat16", None)
    m = np.asarray(mixed(x[:2]), np.float32)
    assert m.shape == (2, spec.dim) and np.isfinite(m).all()
    assert any(l.compute_dtype == "bfloat16" for l in mixed.layers)
    assert mixed.layers[-1].compute_dtype == "float32"  # pooling stays float32
    assert [l.name for l in mixed.layers] == [l.name for l in bb.model.layers]


@pytest.mark.parametrize("name", FAST)
def test_family_builds_flat_and_embeds(name):
    _check_family(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_every_other_backbone_builds_flat_and_embeds(name):
    _check_family(name)


def test_registry_table():
    names = list_backbones()
    assert len(names) == len(set(names)) == len(_REGISTRY)
    for expected in ("densenet201", "resnet152_v2", "inception_resnet_v2", "vgg19", "mobilenet_v3_large",
                     "efficientnet_b7", "efficientnet_v2_l", "convnext_xlarge", "efficientnet_lite2"):
        assert expected in names
    rows = list_backbones(details=True)
    assert {r["preprocess"] for r in rows} == {"caffe", "torch", "tf", "none"}
    by = {r["name"]: r for r in rows}
    assert by["densenet121"]["preprocess"] == "torch" and by["vgg16"]["preprocess"] == "caffe"
    assert by["xception"]["input_size"] == [299, 299] and by["efficientnet_b3"]["input_size"] == [300, 300]
    assert "offline" in by["efficientnet_lite0"]["weights_source"]
    json.dumps(rows)


@pytest.mark.parametrize("mode,module", [("caffe", "resnet"), ("torch", "densenet"), ("tf", "inception_v3")])
def test_preprocessing_layer_equals_keras_preprocess_input(mode, module):
    x = _batch(2, 8)
    expected = getattr(keras.applications, module).preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(ImagePreprocessing(mode)(x)), expected, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------
# a tiny functional CNN with fixed weights, to check pooling and taps numerically
# --------------------------------------------------------------------------------------
def _tiny_cnn(size=16, seed=0):
    inp = keras.Input((size, size, 3), name="img")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="conv2")(x)
    x = keras.layers.Activation("relu", name="relu2")(x)
    out = keras.layers.Dense(2, activation="sigmoid", name="head")(keras.layers.GlobalAveragePooling2D(name="gap")(x))
    model = keras.Model(inp, out, name="tiny_cnn")
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.weights])
    return model


@pytest.fixture(scope="module")
def tiny():
    return _tiny_cnn()


def test_pooling_modes_match_numpy(tiny):
    x = _batch(2, 16)
    fmap = np.asarray(keras.Model(tiny.input, tiny.get_layer("relu2").output)(x))
    expected = {
        "avg": fmap.mean(axis=(1, 2)),
        "max": fmap.max(axis=(1, 2)),
        "gem": (np.maximum(fmap, 1e-6) ** 3).mean(axis=(1, 2)) ** (1 / 3),
    }
    for pooling in POOLINGS:
        bb = Backbone.from_keras(tiny, pooling=pooling)
        assert bb.feature_layer == "relu2" and bb.dim == 6
        np.testing.assert_allclose(bb.embed(x), expected[pooling], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(bb.feature_model(x)), fmap, rtol=1e-5, atol=1e-6)


def test_multi_layer_concatenation(tiny):
    bb = Backbone.from_keras(tiny, layer=["relu1", "relu2"], pooling="max")
    assert bb.dim == 4 + 6 and bb.layer == ("relu1", "relu2") and bb.feature_layer == "relu2"
    x = _batch(2, 16)
    emb = bb.embed(x)
    f1, f2 = bb.feature_model(x)
    np.testing.assert_allclose(emb, np.concatenate([np.max(f1, (1, 2)), np.max(f2, (1, 2))], 1), rtol=1e-5)
    app = Backbone("mobilenet_v2", weights=None, input_size=32, layer=["block_13_expand_relu", "out_relu"])
    assert app.dim == 576 + 1280 and app.embed(_batch(1, 32)).shape == (1, 1856)


def test_gem_layer_serialises():
    layer = GeneralizedMeanPooling2D(p=2.0)
    again = GeneralizedMeanPooling2D.from_config(layer.get_config())
    assert again.p == 2.0
    x = np.full((1, 3, 3, 2), 4.0, np.float32)
    np.testing.assert_allclose(np.asarray(again(x)), [[4.0, 4.0]], rtol=1e-6)
    with pytest.raises(BackboneError):
        GeneralizedMeanPooling2D(p=0)


def test_from_keras_flattens_a_nested_model_and_keeps_the_original(tiny):
    base = _tiny_cnn(seed=1)
    feat = keras.Model(base.input, base.get_layer("relu2").output, name="base")
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(3, name="new_head")(keras.layers.GlobalAveragePooling2D()(feat(inp)))
    finetuned = keras.Model(inp, out, name="finetuned")
    assert any(isinstance(l, keras.Model) for l in finetuned.layers)
    bb = Backbone.from_keras(finetuned, preprocess="tf", layer="relu2")
    assert not any(isinstance(l, keras.Model) for l in bb.model.layers)
    assert bb.model.get_layer("conv1") is not base.get_layer("conv1")  # fresh copies
    x = _batch(2, 16)
    manual = np.asarray(feat(x / 127.5 - 1.0)).mean(axis=(1, 2))
    np.testing.assert_allclose(bb.embed(x), manual, rtol=1e-4, atol=1e-5)
    assert bb.preprocess == "tf" and bb.input_size == (16, 16)
    # a Sequential wrapper is flattened too, and the default tap is the last 4-D layer
    seq = keras.Sequential([keras.Input((16, 16, 3)), feat, keras.layers.GlobalMaxPooling2D()])
    bb2 = Backbone.from_keras(seq)
    assert bb2.feature_layer == "relu2"
    np.testing.assert_allclose(bb2.embed(x), np.asarray(feat(x)).mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_from_keras_file_safe_mode_and_input_size(tiny, tmp_path):
    path = tmp_path / "cnn.keras"
    tiny.save(path)
    bb = Backbone.from_keras(path, name="chexpert_cnn")
    assert bb.name == "chexpert_cnn" and bb.input_size == (16, 16)
    x = _batch(2, 16)
    np.testing.assert_allclose(bb.embed(x), Backbone.from_keras(tiny).embed(x), rtol=1e-5, atol=1e-6)
    assert bb.config["weights"] == str(path)
    # the Backbone graph itself (custom preprocessing and GeM layers) saves and reloads safely
    gem = Backbone.from_keras(tiny, preprocess="caffe", pooling="gem")
    gem.model.save(tmp_path / "bb.keras")
    reloaded = keras.models.load_model(tmp_path / "bb.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(x)), gem.embed(x), rtol=1e-5, atol=1e-6)
    big = Backbone.from_keras(path, input_size=(24, 20))
    assert big.embed(_batch(1, 24)[:, :, :20]).shape == (1, 6)
    # a Lambda layer carries arbitrary code: safe_mode refuses it
    inp = keras.Input((8, 8, 3))
    lam = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Conv2D(2, 1)(inp)))
    lam_path = tmp_path / "lambda.keras"
    lam.save(lam_path)
    with pytest.raises(WeightsError, match="cannot load Keras model"):
        Backbone.from_keras(lam_path)
    with pytest.raises(WeightsError, match="not found"):
        Backbone.from_keras(tmp_path / "absent.keras")
    with pytest.raises(BackboneError, match="input_size"):
        any_size = keras.Input((None, None, 3))
        Backbone.from_keras(keras.Model(any_size, keras.layers.Conv2D(2, 3)(any_size)))
    with pytest.raises(BackboneError, match="preprocess"):
        Backbone.from_keras(tiny, preprocess="imagenet")


@pytest.fixture(scope="module")
def mnv2_weights(tmp_path_factory):
    from _random_nets import random_mobilenet_v2

    path = tmp_path_factory.mktemp("w") / "mnv2.weights.h5"
    app = random_mobilenet_v2(0)  # O(1) features: a fresh MobileNetV2's are ~1e-11, below any tolerance
    app.save_weights(path)
    return path, app


def test_weights_path_round_trip(mnv2_weights):
    path, app = mnv2_weights
    bb = Backbone("mobilenet_v2", weights=path, input_size=32)
    x = _batch(2, 32)
    expected = np.asarray(app(x / 127.5 - 1.0, training=False)).mean(axis=(1, 2))
    assert np.abs(expected).max() > 1.0  # features of a size a wrong weight or preparation would change
    # float32 through ~50 layers: the backbone's graph and the bare application differ by ~1e-4 at most
    # (measured 9.9e-5 on features up to 4.6); other weights differ by ~5, no weights by ~4.6
    np.testing.assert_allclose(bb.embed(x), expected, rtol=1e-3, atol=5e-4)
    other = Backbone("mobilenet_v2", weights=None, input_size=32)
    assert np.abs(other.embed(x) - expected).max() > 0.1  # the comparison above can fail
    assert bb.config["weights"] == str(path)
    with pytest.raises(WeightsError, match="not found"):
        Backbone("mobilenet_v2", weights=path.parent / "nope.weights.h5", input_size=32)
    with pytest.raises(WeightsError, match="cannot load weights"):
        Backbone("vgg16", weights=path, input_size=32)


def test_fingerprint_stable_and_sensitive(mnv2_weights, tiny, tmp_path):
    path, _ = mnv2_weights
    ref = Backbone("mobilenet_v2", weights=path, input_size=32)
    assert Backbone("mobilenet_v2", weights=path, input_size=32).fingerprint == ref.fingerprint
    assert len(ref.fingerprint) == 64 and int(ref.fingerprint, 16) >= 0
    assert Backbone("mobilenet_v2", weights=None, input_size=32).fingerprint != ref.fingerprint
    cfg = ref.config
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg["preprocessing"]["mode"] == "pad" and cfg["dim"] == 1280 and cfg["fingerprint"] == ref.fingerprint
    # every setting of the embedding function changes it (cheap tiny model for the variations)
    base = Backbone.from_keras(tiny)
    assert Backbone.from_keras(tiny).fingerprint == base.fingerprint
    variants = [
        Backbone.from_keras(tiny, pooling="gem"),
        Backbone.from_keras(tiny, pooling="max"),
        Backbone.from_keras(tiny, layer="relu1"),
        Backbone.from_keras(tiny, layer=["relu1", "relu2"]),
        Backbone.from_keras(tiny, input_size=24),
        Backbone.from_keras(tiny, resize="crop"),
        Backbone.from_keras(tiny, preprocess="tf"),
        Backbone.from_keras(_tiny_cnn(seed=1)),
    ]
    fps = {base.fingerprint, *(v.fingerprint for v in variants)}
    assert len(fps) == 1 + len(variants)
    # changing a single weight changes the fingerprint
    tweaked = Backbone.from_keras(tiny)
    w = tweaked.model.get_layer("conv2").get_weights()
    w[0][0, 0, 0, 0] += 1e-3
    tweaked.model.get_layer("conv2").set_weights(w)
    tweaked._fingerprint = None
    assert tweaked.fingerprint != base.fingerprint


def test_fingerprint_is_the_same_in_another_process(tiny, tmp_path):
    path = tmp_path / "cnn.keras"
    tiny.save(path)
    here = Backbone.from_keras(path, pooling="gem", preprocess="torch").fingerprint
    code = textwrap.dedent(f"""
        from cxr_embed.embed.backbones import Backbone
        print(Backbone.from_keras({str(path)!r}, pooling="gem", preprocess="torch").fingerprint)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == here


def test_errors_name_the_fix(tiny):
    with pytest.raises(BackboneError, match="densenet121") as e:
        Backbone("densnet121", weights=None)
    assert "list_backbones" in str(e.value)
    with pytest.raises(BackboneError, match="relu2") as e:
        Backbone.from_keras(tiny, layer="relu3")
    assert "4-D" in str(e.value)
    with pytest.raises(BackboneError, match="4-D"):
        Backbone.from_keras(tiny, layer="head")
    with pytest.raises(BackboneError, match="pooling"):
        Backbone.from_keras(tiny, pooling="sum")
    with pytest.raises(BackboneError, match="resize"):
        Backbone.from_keras(tiny, resize="stretch")
    with pytest.raises(BackboneError, match="at least 75"):
        Backbone("inception_v3", weights=None, input_size=64)
    bb = Backbone.from_keras(tiny)
    with pytest.raises(BackboneError, match=r"\(n, 16, 16, 3\)"):
        bb.embed(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(BackboneError, match="one image"):
        bb.embed(np.zeros((16, 16, 3), np.float32))


def test_prepare_and_batching(tiny):
    bb = Backbone.from_keras(tiny, resize="crop")
    img = np.random.default_rng(1).uniform(0, 1, (40, 30)).astype(np.float32)
    prepared = bb.prepare(img)
    assert prepared.shape == (16, 16, 3) and prepared.max() <= 255.0
    x = _batch(7, 16)
    whole = bb.embed(x, batch_size=32)
    np.testing.assert_allclose(bb.embed(x, batch_size=3), whole, rtol=1e-5, atol=1e-6)
    fn = bb.embed_function()
    assert fn.experimental_get_tracing_count() == 1  # one trace for batches of 7, 3 and 1


def test_flip_tta_embeds_the_mean_with_the_mirror_and_has_its_own_fingerprint(mnv2_weights):
    path, _ = mnv2_weights
    plain = Backbone("mobilenet_v2", weights=path, input_size=32)
    tta = Backbone("mobilenet_v2", weights=path, input_size=32, tta="flip")
    x = _batch(3, 32)
    want = (plain.embed(x) + plain.embed(np.ascontiguousarray(x[:, :, ::-1]))) * np.float32(0.5)
    np.testing.assert_array_equal(tta.embed(x), want)
    assert tta.fingerprint != plain.fingerprint and tta.config["tta"] == "flip" and "tta" not in plain.config
    assert "tta='flip'" in repr(tta)
    with pytest.raises(BackboneError, match="tta must be one of"):
        Backbone("mobilenet_v2", weights=path, input_size=32, tta="rot90")


def test_from_config_keeps_tta_interpolation_and_decode(mnv2_weights):
    path, _ = mnv2_weights
    for kw in ({"tta": "flip"}, {"interpolation": "bilinear"}, {"decode": "reduced"}):
        bb = Backbone("mobilenet_v2", weights=path, input_size=32, **kw)
        again = Backbone.from_config(bb.config)  # checks the fingerprint
        assert again.fingerprint == bb.fingerprint, kw
