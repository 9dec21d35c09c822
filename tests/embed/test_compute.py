"""Tests of how a Backbone computes: mixed precision, several devices (tf.distribute), provenance.

No GPU here: several replicas are emulated with logical CPU devices in a subprocess (the
logical-device split must happen before TensorFlow starts), which runs the same
``MirroredStrategy`` code path as several GPUs.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cxr_embed
from cxr_embed import Backbone, EmbeddingStore
from cxr_embed.exceptions import BackboneError

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


def tiny_keras():
    """A two-conv CNN with fixed-seed weights whose activations are O(1) (random ImageNet
    architectures shrink activations to ~1e-12, which would make every comparison trivial)."""
    import keras

    init = keras.initializers.GlorotUniform
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, activation="relu", kernel_initializer=init(seed=1), name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", kernel_initializer=init(seed=2), name="conv2")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name="tiny")


def images(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return tiny_keras()


# ---------------------------------------------------------------- precision
def test_auto_is_float32_on_cpu_and_compute_describes_it(model):
    bb = Backbone.from_keras(model)
    assert bb.precision == "float32"
    assert bb.strategy is None and bb.replicas == 1
    assert bb.compute == {"precision": "float32", "replicas": 1, "devices": ["CPU"], "xla": False}


@pytest.mark.parametrize("precision,rtol", [("mixed_bfloat16", 3e-2), ("mixed_float16", 3e-3)])
@pytest.mark.parametrize("pooling", ["avg", "gem"])
def test_mixed_precision_close_to_float32_same_fingerprint(model, precision, rtol, pooling):
    ref = Backbone.from_keras(model, precision="float32", pooling=pooling)
    mixed = Backbone.from_keras(model, precision=precision, pooling=pooling)
    x = images()
    a, b = ref.embed(x), mixed.embed(x)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.all(np.isfinite(b))
    scale = np.abs(a).max()
    assert scale > 0.05  # a real comparison, not of near-zero vectors
    assert np.abs(a - b).max() <= rtol * scale
    assert not np.array_equal(a, b)  # it really computed in 16 bits
    # how it is computed is provenance, not identity
    assert mixed.fingerprint == ref.fingerprint and mixed.config == ref.config
    assert mixed.compute["precision"] == precision
    # the float32 model used for saliency and fine-tuning is untouched
    assert mixed.model.dtype_policy.name == "float32"
    np.testing.assert_array_equal(np.asarray(mixed.model(x)), np.asarray(ref.model(x)))
    # deterministic
    np.testing.assert_array_equal(mixed.embed(x), b)


@pytest.mark.slow  # 7 s: builds real Lite0 twice
def test_mixed_float16_real_lite0_weights():
    bb = Backbone("efficientnet_lite0", input_size=96)
    mixed = Backbone("efficientnet_lite0", input_size=96, precision="mixed_float16")
    x = np.random.default_rng(3).uniform(0, 255, (4, 96, 96, 3)).astype(np.float32)
    a, b = bb.embed(x), mixed.embed(x)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9999
    assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max()


def test_bad_precision_and_distribute_are_refused(model):
    with pytest.raises(BackboneError, match="precision must be one of"):
        Backbone.from_keras(model, precision="float16")
    with pytest.raises(BackboneError, match="distribute must be"):
        Backbone.from_keras(model, distribute="mirrored")
    with pytest.raises(BackboneError, match="precision must be one of"):
        Backbone("mobilenet_v2", weights=None, input_size=32, precision="half")


# ---------------------------------------------------------------- provenance in the store
def test_store_records_compute_and_merge_unions_it(model, tmp_path):
    ref = Backbone.from_keras(model)
    mixed = Backbone.from_keras(model, precision="mixed_bfloat16")
    x = images(4)
    a = tmp_path / "a.h5"
    with EmbeddingStore(a).writer(ref) as w:
        w.append(["i0", "i1"], ref.embed(x[:2]))
    info = EmbeddingStore(a, mode="r").info()["backbones"][ref.fingerprint]
    assert info["compute"] == [ref.compute]
    b = tmp_path / "b.h5"
    with EmbeddingStore(b).writer(mixed) as w:
        w.append(["i2", "i3"], mixed.embed(x[2:]))
    merged = cxr_embed.merge([a, b], tmp_path / "m.h5")
    info = merged.info()["backbones"][ref.fingerprint]
    assert info["count"] == 4
    assert [c["precision"] for c in info["compute"]] == ["float32", "mixed_bfloat16"]
    # resuming with the same setting adds no duplicate entry
    with EmbeddingStore(a).writer(ref) as w:
        w.append(["i9"], ref.embed(x[:1]))
    assert EmbeddingStore(a, mode="r").info()["backbones"][ref.fingerprint]["compute"] == [ref.compute]


def test_cli_extract_precision_and_store_info_shows_compute(tmp_path, capsys):
    from PIL import Image

    from cxr_embed.cli import main

    path = tmp_path / "tiny.keras"
    tiny_keras().save(path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,patient_id"]
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / f"x{i}.png")
        rows.append(f"imgs/x{i}.png,p{i}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "s.h5"
    rc = main(["extract", "--manifest", str(tmp_path / "labels.csv"), "--backbone", str(path), "--store", str(store),
               "--precision", "mixed_bfloat16", "--workers", "0", "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert main(["store", "info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "computed: mixed_bfloat16 on 1 device(s)" in out


# ---------------------------------------------------------------- several devices
_DIST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
    import numpy as np, keras
    sys.path.insert(0, sys.argv[1])
    from test_compute import tiny_keras, images
    from cxr_embed import Backbone, EmbeddingStore, extract
    from PIL import Image
    from pathlib import Path

    model = tiny_keras()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1", "/cpu:2"])
    dist = Backbone.from_keras(model, distribute=strategy)
    one = Backbone.from_keras(model, distribute=None)
    x = images(7)
    out = {"replicas": dist.replicas, "devices": dist.compute["devices"],
           "same_fingerprint": dist.fingerprint == one.fingerprint}
    a = dist.embed(x, batch_size=4)  # passes of 4 rows padded to 6, and of 3 rows
    b = one.embed(x, batch_size=4)
    out["max_abs_diff"] = float(np.abs(a - b).max())
    out["scale"] = float(np.abs(b).max())
    out["deterministic"] = bool(np.array_equal(a, dist.embed(x, batch_size=4)))
    # the replicated variables are copies: the float32 model is untouched
    out["model_untouched"] = bool(np.array_equal(np.asarray(dist.model(x)), np.asarray(one.model(x))))
    # mixed precision and several devices together
    both = Backbone.from_keras(model, distribute=strategy, precision="mixed_bfloat16")
    c = both.embed(x, batch_size=6)
    out["mixed_dist_rel"] = float(np.abs(c - b).max() / np.abs(b).max())
    # end to end through extract, with a resume
    folder = Path(sys.argv[2])
    paths = []
    rng = np.random.default_rng(0)
    for i in range(10):
        p = folder / f"x{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(p)
        paths.append(str(p))
    store = EmbeddingStore(folder / "emb.h5")
    r1 = extract(paths[:7], dist, store, batch_size=4, workers=0, progress=False)
    r2 = extract(paths, dist, store, batch_size=4, workers=0, progress=False)
    ids, X = store.load(dist, paths)
    extract(paths, one, EmbeddingStore(folder / "one.h5"), batch_size=4, workers=0, progress=False)
    _, X1 = EmbeddingStore(folder / "one.h5").load(one, paths)
    out["extract"] = [r1.n_done, r2.n_cached, r2.n_done]
    out["extract_max_abs_diff"] = float(np.abs(X - X1).max())
    out["store_compute"] = store.info()["backbones"][dist.fingerprint]["compute"]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow  # 11 s: three logical CPU devices in a subprocess
def test_mirrored_strategy_over_three_devices(tmp_path):
    script = tmp_path / "dist.py"
    script.write_text(_DIST_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 3
    assert len(out["devices"]) == 3 and all("CPU:" in d for d in out["devices"])
    assert out["same_fingerprint"]
    assert out["scale"] > 0.05
    assert out["max_abs_diff"] <= 1e-5 * out["scale"]
    assert out["deterministic"] and out["model_untouched"]
    assert 0 < out["mixed_dist_rel"] < 3e-2
    assert out["extract"] == [7, 7, 3]
    assert out["extract_max_abs_diff"] <= 1e-5 * out["scale"]
    assert out["store_compute"][0]["replicas"] == 3
