"""Tests of cxr_embed.transfer.finetuning: masked loss, freezing, grouped validation, early stopping, saving."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from cxr_embed.exceptions import LeakageError, ManifestError  # noqa: E402
from cxr_embed.transfer.finetuning import (  # noqa: E402
    HEAD_LAYER,
    FineTuneResult,
    MaskedBinaryCrossentropy,
    _masked_auc,
    _masked_bce_numpy,
    _ValidationAUC,
    _Batches,
    _array_loader,
    finetune,
    predict_finetuned,
)

SIZE = 32


def _tiny_cnn(seed=0):
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(2), name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init(3), name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, x, name="tiny")


def _backbone(seed=0):
    from cxr_embed.embed.backbones import Backbone

    return Backbone.from_keras(_tiny_cnn(seed), layer="conv3", name="tiny")


def _square_data(n_patients=60, per_patient=2, seed=0):
    """Images with a bright square (label 1) or without (label 0); noise background."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    images = np.clip(rng.normal(70, 30, size=(n, SIZE, SIZE)), 0, 255)
    square = rng.random(n) < 0.5
    for i in np.flatnonzero(square):
        r, c = rng.integers(2, SIZE - 10, size=2)
        images[i, r : r + 6, c : c + 6] += 70
    images = np.repeat(images[..., None], 3, axis=3).astype(np.float32)
    lab = square.astype(float)
    lab[rng.random(n) < 0.1] = np.nan  # missing
    lab[rng.random(n) < 0.05] = -1.0  # uncertain
    df = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n)],
            "path": [f"/nonexistent/img{i}.png" for i in range(n)],
            "patient_id": [f"p{i // per_patient}" for i in range(n)],
            "square": lab,
        }
    )
    df.attrs["labels"] = ["square"]
    return df, images, square


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    df, images, square = _square_data()
    out = tmp_path_factory.mktemp("ft") / "tiny_ft.keras"
    bb = _backbone()
    res = finetune(
        bb, df, policy="ignore", trainable_layers="all", epochs=8, batch_size=16, learning_rate=3e-3,
        patience=3, random_state=0, out=out, images=images,
    )
    return bb, df, images, square, res


# --------------------------------------------------------------------------- loss
def test_masked_loss_matches_hand_computation():
    y = np.array([[1.0, np.nan, 0.0], [np.nan, 1.0, 0.0]], np.float32)
    p = np.array([[0.8, 0.3, 0.4], [0.1, 0.6, 0.2]], np.float32)
    w = [2.0, 3.0, 1.0]
    # known entries: (0,0) y=1 p=.8 w=2; (0,2) y=0 p=.4; (1,1) y=1 p=.6 w=3; (1,2) y=0 p=.2
    expected = (-2 * np.log(0.8) - np.log(0.6) - 3 * np.log(0.6) - np.log(0.8)) / 4
    got = float(MaskedBinaryCrossentropy(pos_weight=w)(y, p))
    assert got == pytest.approx(expected, rel=1e-5)
    # without NaN and weights it is the ordinary binary cross-entropy
    y_full = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    p_full = np.array([[0.7, 0.2], [0.4, 0.9]], np.float32)
    ref = float(keras.losses.BinaryCrossentropy()(y_full, p_full))
    assert float(MaskedBinaryCrossentropy()(y_full, p_full)) == pytest.approx(ref, rel=1e-4)
    # a batch with nothing known costs nothing
    assert float(MaskedBinaryCrossentropy()(np.full((2, 2), np.nan, np.float32), p_full)) == 0.0


def test_masked_entries_get_zero_gradient():
    import tensorflow as tf

    y = tf.constant([[1.0, np.nan], [0.0, np.nan]])
    p = tf.Variable([[0.6, 0.999], [0.3, 0.001]])
    with tf.GradientTape() as tape:
        loss = MaskedBinaryCrossentropy()(y, p)
    g = tape.gradient(loss, p).numpy()
    assert np.all(np.isfinite(g)) and np.all(g[:, 1] == 0) and np.all(g[:, 0] != 0)


def test_loss_config_round_trip():
    loss = MaskedBinaryCrossentropy(pos_weight=[1.5, 2.0])
    back = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(back, MaskedBinaryCrossentropy) and back.pos_weight == [1.5, 2.0]


# --------------------------------------------------------------------------- training
def test_learns_bright_square(trained):
    _, df, images, square, res = trained
    assert isinstance(res, FineTuneResult)
    assert res.val_auc > 0.9, res.history
    assert res.labels == ["square"] and res.input_size == (SIZE, SIZE)
    assert len(res.history["loss"]) == len(res.history["val_auc"]) >= res.best_epoch + 1
    assert res.val_auc == pytest.approx(max(res.history["val_auc"]))
    lr = res.history["learning_rate"]
    assert lr[-1] < lr[0]  # the learning rate decays
    # balanced positive-class weight = n_negative / n_positive over known training labels
    tr = df["patient_id"].isin(res.train_patients).to_numpy()
    col = df.loc[tr, "square"].to_numpy()
    col = col[(col == 0) | (col == 1)]
    assert res.pos_weight[0] == pytest.approx((col == 0).sum() / (col == 1).sum())


def test_best_weights_are_restored(trained):
    _, df, images, square, res = trained
    val = df["patient_id"].isin(res.val_patients).to_numpy()
    y = df["square"].to_numpy()[val]
    y = np.where(y == -1, np.nan, y)[:, None]
    p = predict_finetuned(res.model, images[val], batch_size=7)
    assert float(_masked_auc(y, p)[0]) == pytest.approx(res.val_auc, abs=1e-6)
    # the kept weights are the best epoch's, not the last epoch's: the validation loss tells them apart
    k = res.best_epoch
    assert _masked_bce_numpy(y, p, res.pos_weight) == pytest.approx(res.history["val_loss"][k], rel=1e-4)
    if k < len(res.history["val_loss"]) - 1:
        assert res.history["val_loss"][k] != pytest.approx(res.history["val_loss"][-1], rel=1e-4)


def test_early_stopping_callback_stops_and_restores():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, activation="sigmoid", name="d")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.linspace(-1, 1, 20, dtype=np.float32)[:, None]
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    y[3] = np.nan  # masked entries are ignored by the AUC
    good = [np.array([[5.0]], np.float32), np.zeros(1, np.float32)]
    bad = [np.array([[-5.0]], np.float32), np.zeros(1, np.float32)]
    cb = _ValidationAUC(_Batches(_array_loader(x), np.arange(20), 6), y, ["a"], patience=2, pos_weight=None)
    cb.set_model(model)
    for epoch, weights in enumerate([bad, good, bad, bad, good]):
        model.set_weights(weights)
        cb.on_epoch_end(epoch, {"loss": 1.0})
        if model.stop_training:
            break
    assert epoch == 3 and model.stop_training  # two epochs without improvement after epoch 1
    assert cb.best_epoch == 1 and cb.history["val_auc"] == [0.0, 1.0, 0.0, 0.0]
    cb.on_train_end()
    np.testing.assert_array_equal(model.get_layer("d").get_weights()[0], good[0])


def test_tied_validation_auc_is_broken_by_lower_validation_loss():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, activation="sigmoid", name="d")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.linspace(-1, 1, 20, dtype=np.float32)[:, None]
    y = (x[:, 0] > 0).astype(np.float32)[:, None]
    # all three rank the validation set perfectly (AUC 1.0); the sharper weights have the lower loss
    weak, sharp, weaker = ([np.array([[s]], np.float32), np.zeros(1, np.float32)] for s in (1.0, 8.0, 0.5))
    cb = _ValidationAUC(_Batches(_array_loader(x), np.arange(20), 6), y, ["a"], patience=5, pos_weight=None)
    cb.set_model(model)
    for epoch, weights in enumerate([weak, sharp, weaker]):
        model.set_weights(weights)
        cb.on_epoch_end(epoch, {"loss": 1.0})
    assert cb.history["val_auc"] == [1.0, 1.0, 1.0]
    assert cb.history["val_loss"][1] < cb.history["val_loss"][0] < cb.history["val_loss"][2]
    assert cb.best_epoch == 1 and cb.best_val_loss == pytest.approx(cb.history["val_loss"][1])
    assert cb._wait == 1  # the tie with a higher loss (epoch 2) is not an improvement
    cb.on_train_end()
    np.testing.assert_array_equal(model.get_layer("d").get_weights()[0], sharp[0])


def test_only_last_k_weighted_layers_train():
    df, images, _ = _square_data(n_patients=20)
    bb = _backbone()
    before = {l.name: [w.copy() for w in l.get_weights()] for l in bb.model.layers}
    res = finetune(bb, df, trainable_layers=2, epochs=1, batch_size=8, learning_rate=1e-2,
                   augment=False, random_state=1, images=images)
    assert res.trainable_layers == ["bn2", "conv3"]
    m = res.model
    for name in ["conv1", "bn1", "conv2"]:  # frozen (BatchNorm statistics included)
        for w0, w1 in zip(before[name], m.get_layer(name).get_weights()):
            np.testing.assert_array_equal(w0, w1)
    assert not np.allclose(before["conv3"][0], m.get_layer("conv3").get_weights()[0])
    assert not np.allclose(before["bn2"][0], m.get_layer("bn2").get_weights()[0])  # gamma learns
    # the backbone itself is never modified
    for l in bb.model.layers:
        for w0, w1 in zip(before[l.name], l.get_weights()):
            np.testing.assert_array_equal(w0, w1)


def test_head_only_and_errors():
    df, images, _ = _square_data(n_patients=10)
    bb = _backbone()
    with pytest.raises(ValueError, match="trainable_layers"):
        finetune(bb, df, trainable_layers=-1, images=images)
    with pytest.raises(ValueError, match="multiclass"):
        finetune(bb, df, policy="multiclass", images=images)
    with pytest.raises(ManifestError, match="nope"):
        finetune(bb, df, ["nope"], images=images)
    with pytest.raises(ManifestError, match="patient_id"):
        finetune(bb, df.drop(columns="patient_id"), images=images)
    with pytest.raises(ValueError, match=r"\(20, 32, 32, 3\)"):
        finetune(bb, df, images=images[:5])
    with pytest.raises(ValueError, match=r"\.keras"):
        finetune(bb, df, epochs=1, images=images, out="model.h5", trainable_layers=0)  # before any training


# --------------------------------------------------------------------------- validation split
def test_validation_split_is_patient_grouped(trained):
    _, df, _, _, res = trained
    assert set(res.train_patients).isdisjoint(res.val_patients)
    assert set(res.train_patients) | set(res.val_patients) == set(df["patient_id"])
    assert 0.1 < len(res.val_patients) / df["patient_id"].nunique() < 0.3


def test_validation_patients_can_be_given():
    from cxr_embed.transfer.finetuning import _validation_split

    groups = np.array(["a", "a", "b", "c", "c", "d"])
    y = np.array([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]], np.float32)
    tr, va = _validation_split(groups, y, ["c"], 0)
    assert groups[va].tolist() == ["c", "c"] and "c" not in groups[tr]
    tr, va = _validation_split(groups, y, 0.5, 0)
    assert set(groups[tr]).isdisjoint(groups[va])
    with pytest.raises(ValueError, match="some but not all"):
        _validation_split(groups, y, ["zz"], 0)
    from cxr_embed.learn.validation import check_no_leakage

    with pytest.raises(LeakageError):
        check_no_leakage(groups[[0, 2]], groups[[1]])


# --------------------------------------------------------------------------- saving and reuse
def test_saved_model_reloads_safely_and_gives_embeddings(trained):
    from cxr_embed.embed.backbones import Backbone

    _, _, images, _, res = trained
    assert res.path is not None and res.path.suffix == ".keras" and res.path.is_file()
    loaded = keras.saving.load_model(res.path, safe_mode=True)
    x = images[:10]
    np.testing.assert_allclose(loaded.predict_on_batch(x), res.model.predict_on_batch(x), atol=1e-5)
    np.testing.assert_allclose(predict_finetuned(res.path, x, batch_size=4), res.model.predict_on_batch(x), atol=1e-5)
    assert not any(isinstance(l, keras.layers.Lambda) for l in loaded.layers)

    bb = Backbone.from_keras(res.path, layer=res.feature_layer)
    emb = bb.embed(x)
    pooled = keras.Model(res.model.inputs, res.model.get_layer(HEAD_LAYER).input)
    np.testing.assert_allclose(emb, pooled.predict_on_batch(x), rtol=1e-4, atol=1e-5)
    assert emb.shape == (10, bb.dim) and bb.dim == 16
    np.testing.assert_allclose(res.to_backbone().embed(x), emb, rtol=1e-4, atol=1e-5)

    meta = json.loads(res.path.with_name(res.path.stem + ".finetune.json").read_text())
    assert meta["labels"] == ["square"] and meta["feature_layer"] == "conv3" and meta["best_epoch"] == res.best_epoch


# --------------------------------------------------------------------------- streaming from files
def _write_pngs(tmp_path, n_patients=12, seed=3):
    from PIL import Image

    df, images, _ = _square_data(n_patients=n_patients, per_patient=2, seed=seed)
    paths = []
    for i, img in enumerate(images[..., 0]):
        tall = np.zeros((SIZE + 8, SIZE), np.uint8)  # not square: prepare() pads
        tall[4 : 4 + SIZE] = np.clip(img, 0, 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(tall).save(path)
        paths.append(str(path))
    df["path"] = paths
    return df


def test_streaming_from_files(tmp_path):
    from cxr_embed.transfer.finetuning import _manifest_loader
    from cxr_embed.io.images import read_image

    df = _write_pngs(tmp_path, n_patients=8)
    bb = _backbone()
    prepared = np.stack([bb.prepare(read_image(p)[0]) for p in df["path"]])
    assert prepared.shape == (16, SIZE, SIZE, 3) and prepared[:, :2].max() == 0  # padded rows
    # batches read from the files are exactly the prepared images, in the requested order
    np.testing.assert_array_equal(_manifest_loader(df["path"].tolist(), bb.prepare)(np.array([5, 0, 9])), prepared[[5, 0, 9]])
    res = finetune(bb, df, trainable_layers=3, epochs=1, batch_size=8, learning_rate=1e-3, random_state=5)
    assert len(res.history["loss"]) == 1 and np.isfinite(res.history["loss"][0])
    np.testing.assert_allclose(
        predict_finetuned(res.model, df, batch_size=5), predict_finetuned(res.model, prepared), atol=1e-5
    )


def test_same_random_state_same_run():
    df, images, _ = _square_data(n_patients=8, seed=4)
    bb = _backbone()
    kw = dict(trainable_layers=2, epochs=1, batch_size=8, learning_rate=1e-3, random_state=7, images=images)
    a, b = finetune(bb, df, **kw), finetune(bb, df, **kw)
    assert a.history["loss"] == b.history["loss"] and a.val_patients == b.val_patients


def test_missing_and_unreadable_images_name_the_file(tmp_path):
    from cxr_embed.exceptions import ImageReadError, MissingFilesError

    df = _write_pngs(tmp_path, n_patients=6)
    gone = df.copy()
    gone.loc[3, "path"] = str(tmp_path / "missing.png")
    with pytest.raises(MissingFilesError, match="missing.png"):  # checked before any training
        finetune(_backbone(), gone, epochs=1)
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    df.loc[3, "path"] = str(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="broken.png"):
        finetune(_backbone(), df, trainable_layers=1, epochs=1, batch_size=4, augment=False, random_state=0)
