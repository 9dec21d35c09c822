"""CompositeEmbedding: multi-size / flip / fused embeddings extracted like a backbone, read like any group."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed import Backbone, EmbeddingStore  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.embed.composite import CompositeEmbedding, EmbeddingConfig, FusedConfig, parse_embedding  # noqa: E402
from cxr_embed.embed.views import ImageView  # noqa: E402
from _random_nets import random_mobilenet_v2  # noqa: E402

LABEL = "mobilenet_v2@32|40 + mobilenet_v2@48+flip"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("composite")
    weights = root / "mnv2.weights.h5"
    random_mobilenet_v2(0).save_weights(weights)  # O(1) features, so the tolerances below mean something
    ds = make_synthetic_cxr(16, site="A", size=48, seed=4, images_per_patient=2)
    manifest = cxr_embed.load_manifest(write_dataset(ds, root / "data", format="png"))
    bad = root / "data" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with_bad = pd.concat([manifest, pd.DataFrame({"image_id": ["broken"], "path": [str(bad)]})], ignore_index=True)
    comp = CompositeEmbedding(LABEL, weights=str(weights))
    store = root / "s.h5"
    report = cxr_embed.extract(with_bad, comp, store, workers=0, progress=False)
    return {"root": root, "weights": str(weights), "manifest": manifest, "with_bad": with_bad, "comp": comp,
            "store": store, "report": report}


def test_labels_parse_back_to_their_configurations():
    for cfg in (EmbeddingConfig("efficientnet_lite0", (224,)), EmbeddingConfig("densenet121", (224, 320), None, "flip"),
                EmbeddingConfig("resnet50", (224,), "conv4_block6_out"),
                FusedConfig((EmbeddingConfig("efficientnet_lite0", (224, 320, 448)),
                             EmbeddingConfig("efficientnet_lite1", (224, 320), None, "flip")))):
        assert parse_embedding(cfg.label) == cfg
    for bad in ("efficientnet_lite0", "efficientnet_lite0@", "a@224+b@240", "efficientnet_lite0@224 +"):
        with pytest.raises(ValueError, match="not an embedding label"):
            parse_embedding(bad)


def test_the_group_is_the_combination_of_its_cached_passes(setup):
    comp, store, w = setup["comp"], EmbeddingStore(setup["store"], mode="r"), setup["weights"]
    # the target store holds one group, described by its config; the passes live beside it
    assert store.fingerprints() == [comp.fingerprint]
    config = store.info()["backbones"][comp.fingerprint]["config"]
    assert config["format"] == "cxr_embed.composite" and config["name"] == LABEL and config["dim"] == 2560
    assert config["embedding"] == parse_embedding(LABEL).to_dict() and len(config["parts"]) == 3
    parts = EmbeddingStore(setup["root"] / "s.parts.h5", mode="r")
    b32, b40, b48 = (Backbone("mobilenet_v2", weights=w, input_size=s) for s in (32, 40, 48))
    assert set(parts.fingerprints()) == {b32.fingerprint, b40.fingerprint, b48.fingerprint,
                                         ImageView(b48, flip=True).fingerprint}
    ids, X = store.load(comp.fingerprint)
    assert X.shape == (16, 2560) and "broken" not in set(ids)

    def part(bb):
        return parts.load(bb.fingerprint, list(ids))[1]

    np.testing.assert_allclose(X[:, :1280], (part(b32) + part(b40)) / 2, rtol=1e-6)
    np.testing.assert_allclose(X[:, 1280:], (part(b48) + part(ImageView(b48, flip=True))) * np.float32(0.5), rtol=1e-6)


def test_a_bad_file_is_reported_once_and_a_rerun_computes_nothing(setup):
    report = setup["report"]
    assert report.n_done == 16 and report.n_failed == 1 and report.failures[0][0] == "broken"
    assert report.fingerprint == setup["comp"].fingerprint
    again = cxr_embed.extract(setup["with_bad"], setup["comp"], setup["store"], workers=0, progress=False)
    assert again.n_done == 0 and again.n_cached == 16 and again.n_failed == 1


def test_the_parts_store_may_not_be_the_target(setup, tmp_path):
    import copy

    comp = copy.copy(setup["comp"])  # its backbones, another parts store
    comp.parts_store = tmp_path / "t.h5"
    with pytest.raises(cxr_embed.BackboneError, match="must not be its target"):
        cxr_embed.extract(setup["manifest"], comp, tmp_path / "t.h5", workers=0, progress=False)


def test_a_fused_search_bundle_predicts_from_the_command_line(setup, tmp_path, capsys):
    """cxr-embed extract --backbone LABEL writes the group a searched pipeline's bundle predicts on."""
    from sklearn.linear_model import LogisticRegression

    from cxr_embed.cli import main
    from cxr_embed.transfer.search import SearchedPipeline

    comp, m = setup["comp"], setup["manifest"]
    ids, X = EmbeddingStore(setup["store"], mode="r").load(comp.fingerprint)
    y = m.set_index("image_id").loc[ids, "opacity"].to_numpy()
    pipe = SearchedPipeline(embedding=comp.embedding, classifier="logreg", estimator=LogisticRegression().fit(X, y),
                            best_params={}, fingerprint=comp.fingerprint, label="opacity",
                            _backbone_kwargs={"weights": setup["weights"]})
    assert pipe.extractor().fingerprint == comp.fingerprint
    bundle = pipe.save(tmp_path / "bundle")
    csv = tmp_path / "m.csv"
    m.to_csv(csv, index=False)
    rc = main(["extract", "--manifest", str(csv), "--backbone", LABEL, "--weights", setup["weights"],
               "--store", str(tmp_path / "new.h5"), "--workers", "0", "--no-progress", "--json"])
    assert rc == 0, capsys.readouterr()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_done"] == 16
    rc = main(["predict", "--model", str(bundle), "--store", str(tmp_path / "new.h5"), "--manifest", str(csv),
               "--out", str(tmp_path / "p.csv")])
    assert rc == 0, capsys.readouterr()
    got = pd.read_csv(tmp_path / "p.csv").set_index("image_id")
    want = pipe.estimator.predict_proba(X)[:, 1]  # the same passes, recomputed by the command in another store
    np.testing.assert_allclose(got.loc[list(ids), "opacity"].to_numpy(), want, rtol=1e-4)
    assert main(["extract", "--manifest", str(csv), "--backbone", LABEL, "--input-size", "64",
                 "--store", str(tmp_path / "x.h5")]) == 2
    assert "cannot be combined with an embedding label" in capsys.readouterr().err
    # the bundle is explained from the command line: the composite is rebuilt from the store's record
    assert main(["explain", "--model", str(bundle), "--store", str(setup["store"]), "--image", m["path"].iloc[0],
                 "--out", str(tmp_path / "sal")]) == 0, capsys.readouterr()
    assert list((tmp_path / "sal").glob("*_gradcam.png"))
    # the default workflow: extract (a composite), fit, explain with what the fitted bundle records
    assert main(["fit", "--store", str(tmp_path / "new.h5"), "--manifest", str(csv), "--labels", "opacity",
                 "--cv", "0", "--out", str(tmp_path / "fitted")]) == 0, capsys.readouterr()
    assert main(["explain", "--model", str(tmp_path / "fitted"), "--image", m["path"].iloc[0],
                 "--out", str(tmp_path / "sal2")]) == 0, capsys.readouterr()
    assert list((tmp_path / "sal2").glob("*_gradcam.png"))


def test_compare_transfer_takes_a_composite_for_the_embeddings_approach(setup):
    m = setup["manifest"]
    res = cxr_embed.compare_transfer(m, ["opacity"], backbones=[setup["comp"]], store=setup["store"],
                                     classifiers=("logreg",), approaches=("embeddings",), n_splits=2, n_bootstrap=0)
    name = f"{LABEL} + logreg"
    assert set(res.oof) == {name} and res.backbones[name].fingerprint == setup["comp"].fingerprint
    assert any("cache" in n and LABEL in n for n in res.notes)
    with pytest.raises(ValueError, match="train one CNN"):
        cxr_embed.compare_transfer(m, ["opacity"], backbones=[LABEL], approaches=("fine-tuning",), n_splits=2)


def test_the_cam_of_a_linear_head_on_a_composite_is_its_grad_cam_for_one_pass(setup):
    """One pass: the summed CAM equals Grad-CAM (= CAM for a linear head); several: a map and the right score."""
    from sklearn.linear_model import LogisticRegression

    m, w = setup["manifest"], setup["weights"]
    path = m["path"].iloc[0]
    single = CompositeEmbedding("mobilenet_v2@96", weights=w)  # 3 x 3 cells
    bb = Backbone("mobilenet_v2", weights=w, input_size=96)
    assert single.fingerprint != bb.fingerprint  # a composite group is its own group
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 1280)).astype(np.float32) + 1.0
    y = (X[:, :8].sum(axis=1) > 8).astype(int)
    est = cxr_embed.make_classifier("logreg").fit(X, y)
    from cxr_embed.io.images import read_image
    from cxr_embed.saliency._heads import linear_head
    from cxr_embed.saliency.composite_cam import pass_cells

    if pass_cells(read_image(path)[0], linear_head(est, 1280)[0][:, 0], single)[0][0].max() <= 0:
        est = cxr_embed.make_classifier("logreg").fit(X, 1 - y)  # a map with positive evidence to compare
    cam = cxr_embed.explain(path, est, backbone=single)
    grad = cxr_embed.explain(path, est, backbone=bb, method="gradcam")
    assert cam.method == "gradcam" and cam.map.shape == grad.map.shape
    # the same evidence; the two differ only in where they resample (tf-keras-vis zooms the rectified cells)
    assert np.corrcoef(cam.map.ravel(), grad.map.ravel())[0, 1] > 0.85
    assert cam.score == pytest.approx(grad.score, abs=1e-4)
    # the three-pass, flipped and fused composite: a map over the image and the estimator's own score
    comp = setup["comp"]
    ids, Xc = EmbeddingStore(setup["store"], mode="r").load(comp.fingerprint)
    yc = m.set_index("image_id").loc[ids, "opacity"].to_numpy()
    clf = LogisticRegression(max_iter=2000).fit(Xc, yc)
    s = cxr_embed.explain(path, clf, backbone=comp)
    if s.map.max() == 0:  # no positive evidence in this image: explain the other class, which then has some
        clf = LogisticRegression(max_iter=2000).fit(Xc, 1 - yc)
        s = cxr_embed.explain(path, clf, backbone=comp)
    i = list(ids).index(m["image_id"].iloc[0])
    assert s.map.shape == s.image.shape and 0 <= s.map.min() and s.map.max() == pytest.approx(1.0)
    assert s.score == pytest.approx(clf.predict_proba(Xc[i:i + 1])[0, 1], abs=1e-3)
    # exact: the cells of every pass add up to the logit minus the intercept
    W, b = linear_head(clf, comp.dim)
    cells, emb = pass_cells(read_image(path)[0], W[:, 0], comp)
    assert len(cells) == 4 and emb.shape == (comp.dim,)
    np.testing.assert_allclose(sum(c.mean() for c in cells), emb @ W[:, 0], rtol=1e-6)
    np.testing.assert_allclose(emb, Xc[i], rtol=2e-3, atol=2e-3)  # read_prepared vs read_image + prepare
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(Xc, yc)
    with pytest.raises(cxr_embed.BackboneError, match="not a linear model.*method='occlusion'"):
        cxr_embed.explain(path, mlp, backbone=comp, method="gradcam")
    with pytest.raises(cxr_embed.BackboneError, match="or by occlusion"):
        cxr_embed.explain(path, clf, backbone=comp, method="scorecam")


def test_embed_images_computes_the_stored_rows_in_memory(setup):
    from cxr_embed.io.images import read_image

    comp, m = setup["comp"], setup["manifest"]
    ids, X = EmbeddingStore(setup["store"], mode="r").load(comp.fingerprint)
    rows = dict(zip((str(i) for i in ids), X))
    images = [read_image(p)[0] for p in m["path"].iloc[:3]]
    got = comp.embed_images(images, batch_size=2)
    assert got.shape == (3, comp.dim) and got.dtype == np.float32
    want = np.stack([rows[str(i)] for i in m["image_id"].iloc[:3]])
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)  # read_prepared vs read_image + prepare
    np.testing.assert_array_equal(comp.embed_images(np.stack(images)[..., None]), comp.embed_images(images))
    with pytest.raises(cxr_embed.BackboneError, match="grey images"):
        comp.embed_images(np.zeros((1, 8, 8, 3)))


def test_occlusion_runs_every_pass_and_finds_the_region_the_pipeline_reads():
    """A composite whose one feature is the top-left quadrant's brightness: the map's peak is there."""
    from types import SimpleNamespace

    from sklearn.linear_model import LogisticRegression

    from cxr_embed.saliency.composite_occlusion import composite_occlusion, work_image

    class QuadrantComposite:
        composite, name = True, "quadrant"
        calls = 0

        def passes(self):
            return [{"backbone": SimpleNamespace(input_size=(64, 64)), "flip": False, "part": 0, "weight": 1.0}]

        def embed_images(self, images, batch_size=32):
            type(self).calls += len(images)
            b = np.asarray(images)[..., 0] if np.asarray(images).ndim == 4 else np.asarray(images)
            return b[:, : b.shape[1] // 2, : b.shape[2] // 2].mean(axis=(1, 2))[:, None]

    rng = np.random.default_rng(0)
    x = rng.random((200, 1))
    clf = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    image = np.full((256, 128), 0.2, np.float32)
    image[10:100, 5:60] = 0.9  # bright in the top-left quadrant: a high score that occluding it lowers
    comp = QuadrantComposite()
    assert work_image(image, comp).shape == (64, 32)  # the longer side scaled to the largest pass
    s = composite_occlusion(image, "x.png", clf, comp)
    assert s.method == "occlusion" and s.map.shape == image.shape and s.input_map.shape == (64, 32)
    r, c = np.unravel_index(int(np.argmax(s.map)), s.map.shape)
    assert r < 128 and c < 64, (r, c)
    assert s.map[128:, 64:].max() == 0.0  # the pipeline never reads the other quadrants
    assert s.score == pytest.approx(clf.predict_proba(comp.embed_images(work_image(image, comp)[None]))[0, 1])
    assert comp.calls > 8  # one call of every pass per occluded copy


def test_any_classifier_on_a_composite_is_explained_by_occlusion(setup, tmp_path):
    from sklearn.neural_network import MLPClassifier

    m, comp = setup["manifest"], setup["comp"]
    ids, X = EmbeddingStore(setup["store"], mode="r").load(comp.fingerprint)
    y = m.set_index("image_id").loc[ids, "opacity"].to_numpy()
    mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(X, y)
    path = m["path"].iloc[0]
    s = cxr_embed.explain(path, mlp, backbone=comp)  # "auto" is occlusion for a non-linear classifier
    i = list(ids).index(m["image_id"].iloc[0])
    assert s.method == "occlusion" and s.map.shape == s.image.shape and np.isfinite(s.map).all()
    assert s.score == pytest.approx(mlp.predict_proba(X[i:i + 1])[0, 1], abs=2e-3)
    # the localisation tool takes it, deletion curves included (through every pass)
    boxes = pd.DataFrame({"image_id": m["image_id"].iloc[:2], "finding": "opacity", "x": 4.0, "y": 4.0,
                          "w": 20.0, "h": 20.0})
    res = cxr_embed.evaluate_localization(mlp, m.head(2), boxes, backbone=comp, deletion=True, n_bootstrap=50,
                                          n_random=2)
    assert res.method == "occlusion" and len(res.per_image) == 2
    assert np.isfinite(res.per_image[["deletion_auc", "random_deletion_auc"]].to_numpy()).all()


def test_equivalent_arguments_and_the_record_give_the_same_group(setup):
    from pathlib import Path

    comp, store = setup["comp"], EmbeddingStore(setup["store"], mode="r")
    again = CompositeEmbedding(LABEL, weights=Path(setup["weights"]))  # a Path instead of a str
    assert again.config == comp.config and again.fingerprint == comp.fingerprint
    record = store.info()["backbones"][comp.fingerprint]["config"]
    rebuilt = CompositeEmbedding.from_config(record)
    assert rebuilt.config == comp.config
    np.testing.assert_array_equal(store.load(rebuilt)[1], store.load(comp)[1])  # the store accepts it as the writer
    damaged = {**record, "parts": record["parts"][:1]}
    with pytest.raises(cxr_embed.BackboneError, match="damaged"):
        CompositeEmbedding.from_config(damaged)


def test_the_cam_prepares_each_pass_as_its_backbone_does(setup):
    """A backbone's own interpolation (here bilinear, not the default area) is the one the CAM's passes see."""
    from cxr_embed.saliency.composite_cam import pass_cells

    rng = np.random.default_rng(1)
    image = rng.random((97, 83)).astype(np.float32)  # noise: area and bilinear downscaling differ a lot
    comp = CompositeEmbedding("mobilenet_v2@32 + mobilenet_v2@40+flip", weights=setup["weights"],
                              interpolation="bilinear")
    assert all(p["backbone"].interpolation == "bilinear" for p in comp.passes())
    _, emb = pass_cells(image, np.zeros(comp.dim), comp)
    np.testing.assert_allclose(emb, comp.embed_images([image])[0], rtol=1e-4, atol=1e-4)


