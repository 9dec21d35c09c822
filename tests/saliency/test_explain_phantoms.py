"""Issue 6, "Must show": saliency maps of models trained by the library against the phantoms' lesions,
random maps at chance, and a marker shortcut exposed by the energy-in-mask metric.

Set-up (deterministic; 75-90 s wall / 60-65 s CPU on two shared cores, numbers in docs/explain.md):

* 64 px phantoms of site A with the ``opacity`` finding only (prevalence 0.5), 400 for training
  (320 train / 80 validation patients inside finetune) and 80 for testing, rendered with
  ``make_synthetic_cxr(opacity_contrast=3.5)`` (a more conspicuous lesion than the default, which is
  tuned for ImageNet embeddings at 256 px).
* The CNN (``_cnn``): input centred to [-0.5, 0.5]; an 11 x 11 convolution initialised with
  centre-surround (difference-of-Gaussians) filters at four blob scales plus four random ones; 3 x 3 max
  pooling with stride 1; two 3 x 3 convolutions dilated by 2 (``c3``, the layer every CAM uses); global
  max pooling. finetune adds the sigmoid head and trains all layers (constant learning rate, 12
  epochs). Nothing is strided, so the CAM lives on the full 64 x 64 input grid (no upsampling).
* Pointing game with ``tolerance=TOL`` = 1 px, one cell of the full-resolution CAM grid: the map's
  maximum lies in the lesion mask or on a pixel touching it. The masks (half-maximum contour of the
  opacity inside the lungs) are small, ~32 px, a radius of about 3 px. Exact (0 px) and 2 px rates are
  recorded too (docs/explain.md). Random maps are scored with the same tolerance.
* ``test_cam_peak_has_no_systematic_offset``: a fixed Gaussian spot detector checks that the
  library's CAM pipeline (explain -> tf-keras-vis zoom -> restore_map) puts the peak on the spot at
  several positions: exactly at full resolution, within one input pixel through a stride-2 grid.

What made the difference (docs/explain.md has the numbers): with [0, 1] input the convolutions' zero
padding is black, the bright abdomen and shoulders at the border respond like blobs, and the CAM peaks
sat beside the lesion (median ~4 px with a 32 x 32 CAM grid) or on the border (Score-CAM); centring
the input, keeping full resolution and a symmetric (3 x 3) pooling window put them on the lesion. At
0 px Grad-CAM's peaks often sit on the lesion's edge just outside the half-maximum mask (0 px rates
0.66 / 0.60 / 1.00), which is why the asserted tolerance is the one CAM cell.
"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("xgboost")

from scipy import ndimage  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from cxr_embed import Backbone  # noqa: E402
from cxr_embed.learn.classifiers import make_classifier  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr  # noqa: E402
from cxr_embed.saliency.maps import explain  # noqa: E402
from cxr_embed.saliency.faithfulness import energy_in_mask, pointing_game, random_saliency  # noqa: E402
from cxr_embed.transfer.finetuning import finetune  # noqa: E402

SIZE = 64
TOL = 1  # pixels: one cell of the CAM grid, which is the 64 x 64 input grid (peak in or touching the lesion)
CONTRAST = 3.5  # make_synthetic_cxr(opacity_contrast=...): a lesion a small from-scratch CNN can learn
MIN_HIT_RATE = 0.9  # the bar: peak inside the lesion for >= 90 % of true positives
EPOCHS = 12
POOLING = "max"
RESULTS: dict = {}  # measured numbers, printed by test_report (pytest -s)


def _cnn(seed: int = 0, *, dense: bool = True):
    """A small CNN whose first layer starts as blob detectors; the backbone that finetune trains.

    With ``dense`` every layer keeps the full 64 x 64 resolution: 3 x 3 max pooling with stride 1 and
    3 x 3 convolutions dilated by 2 (the receptive fields of stride-2 pooling followed by plain 3 x 3
    convolutions, evaluated at every pixel: "a trous"), so the CAM of ``c3`` needs no upsampling.
    ``dense=False`` is the strided variant (2 x 2 pooling with stride 2, a 32 x 32 ``c3``).
    """
    scale = SIZE / 64
    k = 2 * round(5 * scale) + 1
    ax = np.arange(k) - k // 2
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    rng = np.random.default_rng(seed)
    w = np.zeros((k, k, 3, 8), np.float32)  # the three input channels are the same grey image: use the first
    w[:, :, 0, :] = rng.normal(0, 0.05, (k, k, 8))
    for j, sigma in enumerate(scale * np.array([1.2, 1.8, 2.5, 3.2])):
        centre = np.exp(-r2 / (2 * sigma**2))
        surround = np.exp(-r2 / (8 * sigma**2))
        w[:, :, 0, j] = 10 * (centre / centre.sum() - surround / surround.sum())
    init = keras.initializers.GlorotUniform
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    # centred input (-0.5 .. 0.5): the convolutions' zero padding is then mid-grey, not black, so the bright
    # abdomen and shoulders at the image border do not look like blobs; with [0, 1] input the CAM peaks
    # sat on such border responses or beside the lesion (see docs/explain.md)
    x = keras.layers.Rescaling(1 / 255.0, offset=-0.5, name="scale")(inp)
    first = keras.layers.Conv2D(8, k, padding="same", activation="relu", name="c1")
    x = first(x)
    first.set_weights([w, np.zeros(8, np.float32)])
    # dense: a symmetric 3 x 3 window (a 2 x 2 window with stride 1 shifts features by half a pixel, and the
    # peaks then sat ~2-3 px up-left of the lesion for some initialisations)
    pool = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="pool") if dense else \
        keras.layers.MaxPooling2D(2, name="pool")
    x = pool(x)
    for name, offset in (("c2", 1), ("c3", 2)):
        x = keras.layers.Conv2D(16, 3, padding="same", dilation_rate=2 if dense else 1, activation="relu", name=name,
                                kernel_initializer=init(seed + offset))(x)
    return keras.Model(inp, x, name=f"blobnet{seed}")


def _train(images, table, label, *, seed, lr=3e-3, dense=True):
    bb = Backbone.from_keras(_cnn(seed, dense=dense), layer="c3", pooling=POOLING)
    prepared = np.stack([bb.prepare(im) for im in images])
    res = finetune(bb, table, labels=[label], trainable_layers="all", epochs=EPOCHS, decay=None, batch_size=32,
                   learning_rate=lr,
                   patience=10, augment=False, images=prepared, random_state=seed)
    return res, prepared


def test_cam_peak_has_no_systematic_offset():
    """A fixed spot detector: the CAM peak lands on the spot, so any offset below comes from the model."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    k = 9
    ax = np.arange(k) - k // 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / 8.0)
    for stride in (1, 2):
        inp = keras.Input((SIZE, SIZE, 3))
        conv = keras.layers.Conv2D(1, k, padding="same", activation="relu", name="spot")
        x = conv(keras.layers.Rescaling(1 / 255.0)(inp))
        w = np.zeros((k, k, 3, 1), np.float32)
        w[:, :, 0, 0] = g / g.sum()
        conv.set_weights([w, np.zeros(1, np.float32)])
        x = keras.layers.MaxPooling2D(stride, name="grid")(x)
        x = keras.layers.GlobalMaxPooling2D()(x)
        model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(x))
        errors = []
        for r, c in [(10, 10), (20, 41), (31, 32), (32, 31), (45, 17), (53, 54), (5, 60)]:
            image = np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / 4.0).astype(np.float32)
            s = explain(image, model, method="gradcam", layer="grid").map
            errors.append(np.subtract(np.unravel_index(int(np.argmax(s)), s.shape), (r, c)))
        errors = np.abs(errors)
        if stride == 1:
            assert errors.max() == 0, errors
        else:  # a 32 x 32 grid: each cell covers 2 x 2 pixels; linear zoom keeps the peak within 1 px
            assert errors.max() <= 1, errors


@pytest.fixture(scope="module")
def lesion():
    """A CNN fine-tuned on marker-free phantoms to detect the opacity, and a test set."""
    kw = dict(findings=("opacity",), prevalence=0.5, size=SIZE, opacity_contrast=CONTRAST)
    train = make_synthetic_cxr(400, seed=1, **kw)
    test = make_synthetic_cxr(80, seed=2, **kw)
    res, x_train = _train(train.images, train.labels, "opacity", seed=0)
    images = test.images
    x_test = np.stack([res.to_backbone().prepare(im) for im in images])
    p = res.predict(x_test)[:, 0]
    y = test.labels["opacity"].to_numpy()
    RESULTS["cnn test AUC"] = roc_auc_score(y, p)
    return {"res": res, "x_train": x_train, "y_train": train.labels["opacity"].to_numpy(), "images": images,
            "x_test": x_test, "y": y, "p": p, "masks": test.masks["opacity"]}


def _true_positives(y, p):
    tp = np.flatnonzero((y == 1) & (p > 0.5))
    assert len(tp) >= 0.7 * (y == 1).sum(), f"the model misses too many lesions: {len(tp)} of {(y == 1).sum()}"
    return tp


def _hit_rate(maps, masks, idx, tolerance=TOL):
    return float(np.mean([pointing_game(m, masks[i], tolerance=tolerance) for m, i in zip(maps, idx)]))


def _record(key, maps, masks, idx):
    """Hit rates at 0, TOL and 2 px, and the median distance of the peak from the mask."""
    for tol in sorted({0, 1, 2, TOL}):
        RESULTS[f"{key} @ {tol} px"] = _hit_rate(maps, masks, idx, tolerance=tol)
    dist = [ndimage.distance_transform_edt(~masks[i])[np.unravel_index(int(np.argmax(m)), m.shape)]
            for m, i in zip(maps, idx)]
    RESULTS[f"{key}: median peak distance from the mask (px)"] = float(np.median(dist))
    return RESULTS[f"{key} @ {TOL} px"]


def test_gradcam_on_a_finetuned_cnn_points_into_the_lesion(lesion):
    assert RESULTS["cnn test AUC"] > 0.95
    tp = _true_positives(lesion["y"], lesion["p"])
    model = lesion["res"].model
    maps = [explain(lesion["images"][i], model, method="gradcam").map for i in tp]
    RESULTS["true positives"] = f"{len(tp)} of {int(lesion['y'].sum())}"
    rate = _record("(a) Grad-CAM, fine-tuned CNN", maps, lesion["masks"], tp)
    assert rate >= MIN_HIT_RATE and rate >= 10 * _chance(lesion)


@pytest.fixture(scope="module")
def embeddings(lesion):
    bb = lesion["res"].to_backbone()
    return bb, bb.embed(lesion["x_train"]), bb.embed(lesion["x_test"])


def test_gradcam_through_a_linear_head_on_the_embeddings_points_into_the_lesion(lesion, embeddings):
    bb, e_train, e_test = embeddings
    clf = make_classifier("logreg", random_state=0).fit(e_train, lesion["y_train"])
    p = clf.predict_proba(e_test)[:, 1]
    RESULTS["logreg test AUC"] = roc_auc_score(lesion["y"], p)
    tp = _true_positives(lesion["y"], p)
    maps = []
    for i in tp:
        s = explain(lesion["images"][i], clf, backbone=bb, method="gradcam")
        assert s.score == pytest.approx(p[i], abs=1e-4)  # the rebuilt head is the classifier
        maps.append(s.map)
    rate = _record("(b) Grad-CAM, embeddings + logreg", maps, lesion["masks"], tp)
    assert rate >= MIN_HIT_RATE and rate >= 10 * _chance(lesion)


@pytest.mark.slow  # 10 s; XGBoost's default is occlusion now, Score-CAM the alternative
def test_scorecam_through_an_xgboost_pipeline_points_into_the_lesion(lesion, embeddings):
    bb, e_train, e_test = embeddings
    clf = make_classifier("xgboost", random_state=0, n_jobs=1).fit(e_train, lesion["y_train"])
    p = clf.predict_proba(e_test)[:, 1]
    RESULTS["xgboost test AUC"] = roc_auc_score(lesion["y"], p)
    tp = _true_positives(lesion["y"], p)
    maps = [explain(lesion["images"][i], clf, backbone=bb, method="scorecam").map for i in tp]
    rate = _record("(c) Score-CAM, embeddings + XGBoost", maps, lesion["masks"], tp)
    assert rate >= MIN_HIT_RATE and rate >= 10 * _chance(lesion)


def _chance(lesion) -> float:
    """Pointing-game chance level: mean area fraction of the lesion masks dilated by TOL."""
    pos = np.flatnonzero(lesion["y"] == 1)
    return float(np.mean([ndimage.binary_dilation(lesion["masks"][i], np.ones((2 * TOL + 1,) * 2, bool)).mean()
                          for i in pos]))


def test_random_maps_score_near_chance_on_the_same_metric(lesion):
    """The pointing game discriminates: smooth random maps hit the (dilated) lesion at chance rate."""
    pos = np.flatnonzero(lesion["y"] == 1)
    masks = lesion["masks"]
    hits = [pointing_game(random_saliency((SIZE, SIZE), random_state=1000 + r), masks[i], tolerance=TOL)
            for r in range(5) for i in pos]
    chance = RESULTS["chance (dilated lesion area)"] = _chance(lesion)
    rate = RESULTS["random maps"] = float(np.mean(hits))
    assert rate <= chance + 0.06
    assert rate < MIN_HIT_RATE / 4  # far below every explained model


@pytest.mark.slow  # 18 s: trains a CNN from scratch
def test_a_marker_shortcut_is_exposed_by_energy_in_mask(lesion):
    # the realistic shortcut: a subtle finding (the generator's own, faint opacity) and a "PORT" marker
    # burned into 85 % of the positive and 15 % of the negative training images. The strided CNN (dense=False):
    # the dense one learns the marker too, but also part of the faint lesion (its lesion AUC on marker-free
    # images was 0.71, close to the 0.75 limit below), which would make it a less clear-cut shortcut model
    train = make_synthetic_cxr(400, findings=("opacity",), prevalence=0.5, size=SIZE, seed=21, marker_shortcut=True)
    shortcut, _ = _train(train.images, train.labels, "opacity", seed=1, lr=1e-2, dense=False)

    test = make_synthetic_cxr(80, findings=("opacity",), prevalence=0.5, size=SIZE, seed=22, marker_shortcut=True,
                              opacity_contrast=CONTRAST)
    images = test.images
    x = np.stack([shortcut.to_backbone().prepare(im) for im in images])
    has_marker = test.params["marker"].to_numpy()
    p_short = shortcut.predict(x)[:, 0]
    # it truly uses the marker: it predicts the marker, and not the lesion
    RESULTS["shortcut model: AUC for the marker"] = roc_auc_score(has_marker, p_short)
    no_marker = ~has_marker
    RESULTS["shortcut model: AUC for the lesion, marker-free images"] = roc_auc_score(
        test.labels["opacity"][no_marker], p_short[no_marker])
    assert RESULTS["shortcut model: AUC for the marker"] > 0.95
    assert RESULTS["shortcut model: AUC for the lesion, marker-free images"] < 0.75

    # images with both the lesion and the marker, each model explaining its positive prediction
    both = np.flatnonzero(has_marker & (test.labels["opacity"].to_numpy() == 1))
    assert len(both) >= 15
    marker_masks = test.masks["marker"]
    e_short = [energy_in_mask(explain(images[i], shortcut.model, method="gradcam"), marker_masks[i]) for i in both]
    e_lesion = [energy_in_mask(explain(images[i], lesion["res"].model, method="gradcam"), marker_masks[i])
                for i in both]
    chance = float(np.mean([marker_masks[i].mean() for i in both]))
    RESULTS["energy in marker: shortcut model"] = float(np.mean(e_short))
    RESULTS["energy in marker: shortcut model, median"] = float(np.median(e_short))
    RESULTS["energy in marker: lesion model"] = float(np.mean(e_lesion))
    RESULTS["energy in marker: chance (area)"] = chance
    assert np.mean(e_short) > 5 * chance
    assert np.mean(e_short) > 3 * np.mean(e_lesion)
    assert np.median(e_short) > 0.3


def test_report():
    """Print the measured numbers (run with -s)."""
    for key, value in RESULTS.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
