"""Saliency maps: every model kind, coordinates, outputs, and the heads rebuilt as Keras layers."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from cxr_embed import Backbone  # noqa: E402
from cxr_embed.saliency._heads import linear_head, positive_proba  # noqa: E402
from cxr_embed.exceptions import FingerprintMismatchError  # noqa: E402
from cxr_embed.saliency.maps import AUTO_METHODS, METHODS, explain, resolve_method, explain_manifest, load_saliency_h5, save_overlay, save_saliency_h5  # noqa: E402
from cxr_embed.saliency.faithfulness import (  # noqa: E402
    deletion_auc,
    energy_in_mask,
    insertion_auc,
    pointing_game,
    random_saliency,
    saliency_iou,
)

SIZE = 32


def _tiny_cnn(n_out=None, seed=0):
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b",
                            kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    if n_out is None:
        return keras.Model(inp, x)
    g = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(n_out, activation="sigmoid", name="head")(g)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def backbone():
    return Backbone.from_keras(_tiny_cnn(), layer="conv_b")


@pytest.fixture(scope="module")
def embeddings(backbone):
    rng = np.random.default_rng(0)
    images = rng.random((60, 40, 30)).astype(np.float32)
    X = backbone.embed(np.stack([backbone.prepare(im) for im in images]))
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    return images, X, y


def _fit(est, X, y):
    return est.fit(X, y)


@pytest.mark.parametrize("make", [
    lambda: make_pipeline(StandardScaler(), LogisticRegression()),
    lambda: make_pipeline(StandardScaler(), PCA(4), LogisticRegression(C=0.1)),
    lambda: CalibratedClassifierCV(LinearSVC(), cv=3),
])
def test_linear_head_reproduces_the_classifier_exactly(make, embeddings):
    _, X, y = embeddings
    est = _fit(make(), X, y)
    W, b = linear_head(est, X.shape[1])
    got = (1 / (1 + np.exp(-(X @ W + b)))).mean(axis=1)
    np.testing.assert_allclose(got, positive_proba(est, X), atol=1e-5)


def test_linear_head_refuses_non_linear_models(embeddings):
    _, X, y = embeddings
    assert linear_head(RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y), X.shape[1]) is None


def test_gradcam_through_linear_head_matches_keras_logit(backbone, embeddings):
    """The rebuilt head on the backbone graph gives the classifier's own probability."""
    images, X, y = embeddings
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    s = explain(images[0], est, backbone=backbone, method="gradcam")
    assert s.score == pytest.approx(positive_proba(est, X[:1])[0], abs=1e-5)
    assert s.map.shape == images[0].shape and s.input_map.shape == (SIZE, SIZE)
    assert 0 <= s.map.min() and s.map.max() <= 1



@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_cam_is_taken_at_the_requested_layer_not_at_the_convolution_before_it(method):
    """The tapped layer of EfficientNet is ``top_activation`` (batch norm + activation after
    ``top_conv``); tf-keras-vis by default walks back from a non-convolutional layer to the nearest
    Conv layer, which silently explained a different tensor from the one the embedding is pooled
    from. Here the layer after the convolution takes its absolute value: the map of the requested
    layer is exactly ReLU(sum_k w_k A_k) for Grad-CAM (a linear head on average-pooled features) and
    ReLU(sum_k ReLU(w_k) A_k) for LayerCAM; the convolution's map is another one."""
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv",
                            kernel_initializer=keras.initializers.GlorotUniform(3))(x)
    a = keras.layers.Activation(keras.ops.absolute, name="magnitude")(x)
    g = keras.layers.GlobalAveragePooling2D()(a)
    out = keras.layers.Dense(1, activation="sigmoid", name="head",
                             kernel_initializer=keras.initializers.GlorotUniform(4))(g)
    model = keras.Model(inp, out)
    image = np.random.default_rng(5).random((SIZE, SIZE)).astype(np.float32)
    sal = explain(image, model, method=method, layer="magnitude")
    A = np.asarray(keras.Model(inp, a)(image[None, ..., None].repeat(3, -1) * 255.0))[0]
    w = model.get_layer("head").get_weights()[0][:, 0]
    cam = np.maximum(A @ (w if method == "gradcam" else np.maximum(w, 0)), 0)
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    assert sal.map.shape == cam.shape
    assert np.corrcoef(sal.map.ravel(), cam.ravel())[0, 1] > 0.99

@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_cnn_with_its_own_head(method):
    model = _tiny_cnn(n_out=2)
    image = np.random.default_rng(1).random((48, 36)).astype(np.float32)
    s = explain(image, model, method=method, label=1, labels=["a", "b"], faster_n=4, smooth_samples=3)
    assert s.map.shape == (48, 36) and s.label == "b" and s.method == resolve_method(model, method)
    assert np.isfinite(s.map).all()
    assert s.score == pytest.approx(float(model(image_to_input(image))[0, 1]), abs=1e-5)


def image_to_input(image):
    from cxr_embed.io.preprocessing import prepare_image

    return prepare_image(image, (SIZE, SIZE))[None]


def test_cnn_with_several_outputs_needs_a_label():
    with pytest.raises(ValueError, match="label="):
        explain(np.zeros((32, 32), np.float32), _tiny_cnn(n_out=2))
    with pytest.raises(ValueError, match="unknown label"):
        explain(np.zeros((32, 32), np.float32), _tiny_cnn(n_out=2), label="c", labels=["a", "b"])


def test_non_differentiable_classifier_gets_scorecam_and_a_clear_error_for_gradcam(backbone, embeddings):
    images, X, y = embeddings
    rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="scorecam"):
        explain(images[0], rf, backbone=backbone, method="gradcam")
    s = explain(images[0], rf, backbone=backbone, method="faster-scorecam", faster_n=4)
    assert s.map.shape == images[0].shape
    assert s.score == pytest.approx(rf.predict_proba(X[:1])[0, 1])


def test_auto_method_by_model_kind_and_occlusion_through_a_tree_pipeline(backbone, embeddings):
    images, X, y = embeddings
    rf = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    lin = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    assert resolve_method(rf) == AUTO_METHODS["other"] and resolve_method(lin) == AUTO_METHODS["linear"]
    assert resolve_method(_tiny_cnn(1)) == AUTO_METHODS["cnn"] and resolve_method(rf, "gradcam") == "gradcam"
    s = explain(images[0], rf, backbone=backbone, method="occlusion")
    assert s.method == "occlusion" and s.map.shape == images[0].shape and np.isfinite(s.map).all()
    assert s.score == pytest.approx(rf.predict_proba(X[:1])[0, 1])
    assert explain(images[0], lin, backbone=backbone).method == AUTO_METHODS["linear"]


def test_scorecam_is_not_flat_for_sigmoid_models():
    """tf-keras-vis applies a softmax before scoring; a one-unit sigmoid would give a constant 1."""
    model = _tiny_cnn(n_out=1, seed=3)
    image = np.zeros((32, 32), np.float32)
    image[4:14, 4:14] = 1
    s = explain(image, model, method="scorecam")
    assert s.map.max() > s.map.min()


def test_classifier_needs_its_backbone_and_a_matching_fingerprint(backbone, embeddings):
    images, X, y = embeddings
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match="backbone="):
        explain(images[0], est)

    class Bundle:
        estimator = est
        labels = ["y"]
        backbone_fingerprint = "0" * 64

    with pytest.raises(FingerprintMismatchError):
        explain(images[0], Bundle(), backbone=backbone)


def test_unknown_method_and_bad_image():
    with pytest.raises(ValueError, match="unknown method"):
        explain(np.zeros((8, 8)), _tiny_cnn(1), method="lime")
    with pytest.raises(ValueError, match="2-D"):
        explain(np.zeros((8, 8, 3)), _tiny_cnn(1))


def test_map_is_in_original_coordinates_for_padded_inputs():
    """A tall image is padded left/right to a square; the map must come back without the padding."""
    inp = keras.Input((SIZE, SIZE, 3))
    # a "detector" whose activation is the input brightness itself
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="bright")(inp)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(0.01))(
        keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    image = np.zeros((64, 32), np.float32)
    image[40:56, 8:24] = 1.0  # bright square in the lower half
    s = explain(image, model, method="layercam", layer="bright")
    peak = np.unravel_index(np.argmax(s.map), s.map.shape)
    assert s.map.shape == (64, 32)
    assert 36 <= peak[0] <= 60 and 4 <= peak[1] <= 28


def test_overlay_h5_and_manifest_batch(tmp_path, backbone, embeddings):
    import pandas as pd
    from PIL import Image

    images, X, y = embeddings
    est = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((images[i] * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    manifest = pd.DataFrame({"image_id": ["a", "b", "c"], "path": paths + [str(bad)]})
    table = explain_manifest(manifest, est, tmp_path / "out", backbone=backbone, method="gradcam")
    assert list(table["image_id"]) == ["a", "b", "c"]
    assert table["overlay"].notna().sum() == 2 and "broken.png" in table.loc[2, "error"]
    png = Image.open(table.loc[0, "overlay"])
    assert png.size[0] > 100
    maps = load_saliency_h5(tmp_path / "out" / "saliency.h5")
    assert set(maps) == {"a", "b"} and maps["a"].map.shape == images[0].shape

    s = explain(images[0], est, backbone=backbone)
    save_overlay(s, tmp_path / "one.png", contour=np.ones_like(images[0], bool))
    assert (tmp_path / "one.png").stat().st_size > 1000
    save_saliency_h5(tmp_path / "m.h5", [s], ids=["x/y"])
    assert "x/y" in load_saliency_h5(tmp_path / "m.h5")


# --------------------------------------------------------------------------- faithfulness metrics
def test_localisation_metrics_by_hand():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True  # 4 pixels
    sal = np.zeros((10, 10))
    sal[2:4, 2:4] = 1.0
    sal[9, 9] = 0.5
    assert pointing_game(sal, mask)
    assert energy_in_mask(sal, mask) == pytest.approx(4 / 4.5)
    assert saliency_iou(sal, mask) == pytest.approx(1.0)
    assert saliency_iou(sal, mask, threshold=0.4) == pytest.approx(4 / 5)
    off = np.zeros((10, 10))
    off[9, 9] = 1
    assert not pointing_game(off, mask)
    assert pointing_game(off, np.pad(np.ones((1, 1), bool), ((8, 1), (8, 1))), tolerance=1)
    assert energy_in_mask(np.ones((10, 10)), mask) == pytest.approx(0.04)  # chance = mask area
    with pytest.raises(ValueError, match="empty"):
        pointing_game(sal, np.zeros((10, 10), bool))
    with pytest.raises(ValueError, match="shape"):
        energy_in_mask(sal, np.ones((5, 5), bool))


def test_random_maps_score_near_chance():
    rng = np.random.default_rng(0)
    hits, energy, area = [], [], []
    for i in range(200):
        mask = np.zeros((64, 64), bool)
        r, c = rng.integers(8, 48, size=2)
        mask[r : r + 8, c : c + 8] = True
        sal = random_saliency((64, 64), random_state=i)
        hits.append(pointing_game(sal, mask))
        energy.append(energy_in_mask(sal, mask))
        area.append(mask.mean())
    assert np.mean(hits) < 0.1  # chance is ~ mask area (1.6 %)
    assert abs(np.mean(energy) - np.mean(area)) < 0.01


def test_deletion_and_insertion_rank_a_faithful_map_above_its_inverse():
    image = np.zeros((16, 16), np.float32)
    image[4:8, 4:8] = 1.0

    def predict(batch):  # the "model" looks at the bright square only
        return batch[:, 4:8, 4:8].mean(axis=(1, 2))

    good = image.copy()
    assert deletion_auc(image, good, predict) < deletion_auc(image, -good, predict)
    assert insertion_auc(image, good, predict) > insertion_auc(image, -good, predict)
    assert deletion_auc(image, good, predict, steps=256) == pytest.approx(
        np.trapezoid(np.clip(1 - np.linspace(0, 1, 257) * 256 / 16, 0, 1), np.linspace(0, 1, 257)), abs=1e-6)


@pytest.mark.parametrize("kind", ["stack", "mean", "entropy"])
def test_ensembles_combine_member_maps(kind, embeddings):
    from cxr_embed.learn.stacking import AveragingEnsemble, StackedEnsemble

    images, X, y = embeddings
    bb2 = Backbone.from_keras(_tiny_cnn(seed=5), layer="conv_b")
    X2 = bb2.embed(np.stack([bb2.prepare(im) for im in images]))
    bb1 = Backbone.from_keras(_tiny_cnn(), layer="conv_b")
    members = [("a", make_pipeline(StandardScaler(), LogisticRegression())),
               ("b", make_pipeline(StandardScaler(), LogisticRegression()))]
    groups = np.arange(len(y)) // 2
    if kind == "stack":
        ens = StackedEnsemble(members, cv=3).fit([X, X2], y, groups=groups)
    else:
        ens = AveragingEnsemble(members, method=kind).fit([X, X2], y)
    s = explain(images[0], ens, backbone=[bb1, bb2], method="gradcam")
    assert s.map.shape == images[0].shape
    assert s.score == pytest.approx(ens.predict_proba([X[:1], X2[:1]])[0, 1], abs=1e-5)
    with pytest.raises(ValueError, match="2 members but 1 backbones"):
        explain(images[0], ens, backbone=[bb1])


def test_auto_method_sees_through_multilabel_wrappers(embeddings):
    from cxr_embed import MultiLabelClassifier

    _, X, y = embeddings
    import pandas as pd

    Y = pd.DataFrame({"a": y, "b": 1 - y})
    lin = MultiLabelClassifier(make_pipeline(StandardScaler(), LogisticRegression())).fit(X, Y)
    rf = MultiLabelClassifier(RandomForestClassifier(n_estimators=5, random_state=0)).fit(X, Y)
    assert resolve_method(lin) == AUTO_METHODS["linear"] and resolve_method(rf) == AUTO_METHODS["other"]
