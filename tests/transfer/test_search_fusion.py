"""Fused embeddings in search_pipeline: the grid, the concatenation, no extraction beyond the parts."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.transfer import search as search_mod  # noqa: E402
from cxr_embed.embed.composite import EmbeddingConfig, FusedConfig, _Embeddings  # noqa: E402
from cxr_embed.transfer.search_grid import _configs, parse_fuse  # noqa: E402

L0, L1, L2 = "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
BB = {"weights": None}
KW = dict(backbones=["mobilenet_v2"], input_sizes=[32, 40], tta=[None], classifiers=["logreg"], stress=["jpeg"],
          cv=3, inner_cv=2, n_bootstrap=0, backbone_kwargs=BB, extract_kwargs={"workers": 0}, rank="clean")
FUSED = "mobilenet_v2@32 + mobilenet_v2@40"


def test_fuse_backbones_adds_every_combination_of_the_multiresolution_embeddings():
    sizes = {L0: [224, 320], L1: [240]}
    grid = _configs([L0, L1, L2], sizes, [None], [None, "flip"], True, "backbones")
    fused = [c for c in grid if isinstance(c, FusedConfig)]
    # 3 backbones: 3 pairs + 1 triple, for each TTA option; L2 absent from the dict: its native size
    assert len(fused) == 8
    assert FusedConfig((EmbeddingConfig(L0, (224, 320)), EmbeddingConfig(L1, (240,)), EmbeddingConfig(L2, (260,)))) \
        in fused
    flipped = [c for c in fused if all(p.tta == "flip" for p in c.parts)]
    assert len(flipped) == 4 and not [c for c in fused if len({p.tta for p in c.parts}) > 1]
    assert fused[0].label == "efficientnet_lite0@224|320 + efficientnet_lite1@240"
    assert fused[0].to_dict() == {"fuse": [fused[0].parts[0].to_dict(), fused[0].parts[1].to_dict()]}


def test_explicit_fusions_are_labels_of_the_grid_and_bad_ones_are_named():
    grid = _configs([L0, L2], None, [None], [None, "flip"], False,
                    parse_fuse(["efficientnet_lite0@224+flip + efficientnet_lite2@260+flip"]))
    assert grid[-1] == FusedConfig((EmbeddingConfig(L0, (224,), None, "flip"), EmbeddingConfig(L2, (260,), None, "flip")))
    with pytest.raises(ValueError, match="not in the search grid.*efficientnet_lite2@300"):
        _configs([L0, L2], None, [None], [None], False, [["efficientnet_lite0@224", "efficientnet_lite2@300"]])
    with pytest.raises(ValueError, match="set multiscale=True"):
        _configs([L0, L2], [224, 320], [None], [None], False, "backbones")
    with pytest.raises(ValueError, match="two or more backbones"):
        _configs([L0], None, [None], [None], False, "backbones")
    with pytest.raises(ValueError, match="list of embedding labels"):
        _configs([L0, L2], None, [None], [None], False, ["efficientnet_lite0@224"])
    with pytest.raises(ValueError, match="not searched"):
        _configs([L0], {L2: [224]}, [None], [None], False, None)
    with pytest.raises(ValueError, match="two or more different"):
        FusedConfig((EmbeddingConfig(L0, (224,)), EmbeddingConfig(L0, (224,))))
    assert parse_fuse("backbones") == "backbones" and parse_fuse(None) is None


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from cxr_embed.embed import extraction

    root = tmp_path_factory.mktemp("fusion")
    ds = make_synthetic_cxr(30, site="A", size=48, seed=2, images_per_patient=2)
    manifest = cxr_embed.load_manifest(write_dataset(ds, root / "data", format="png"))
    real, done = extraction.extract, []

    def spy(m, backbone, store, **kw):
        r = real(m, backbone, store, **kw)
        done.append((backbone.fingerprint, r.n_done))
        return r

    mp = pytest.MonkeyPatch()
    mp.setattr(extraction, "extract", spy)
    try:
        keras.utils.set_random_seed(0)
        res = search_mod.search_pipeline(manifest, "opacity", store=root / "s.h5", fuse=[FUSED.split(" + ")], **KW)
    finally:
        mp.undo()
    return {"res": res, "done": done, "manifest": manifest, "store": root / "s.h5", "root": root}


def test_a_fusion_is_the_concatenation_of_its_parts_and_costs_no_extraction(searched):
    res = searched["res"]
    assert set(res.table["embedding"]) == {"mobilenet_v2@32", "mobilenet_v2@40", FUSED}
    fused_row = res.table[res.table["embedding"] == FUSED].iloc[0]
    assert np.isfinite(fused_row["auc"]) and np.isfinite(fused_row["auc_jpeg"])
    # two sizes x (clean, jpeg): four extractions with rows; the fusion added none
    assert sum(n > 0 for _, n in searched["done"]) == 4 and len({fp for fp, n in searched["done"] if n}) == 4
    emb = _Embeddings(searched["store"], BB, {"workers": 0}, backbones=res.best._backbones)
    a, b = EmbeddingConfig("mobilenet_v2", (32,)), EmbeddingConfig("mobilenet_v2", (40,))
    ids, X = emb.matrix(FusedConfig((a, b)), searched["manifest"])
    (ia, Xa), (ib, Xb) = emb.matrix(a, searched["manifest"]), emb.matrix(b, searched["manifest"])
    assert list(ids) == list(ia) == list(ib)
    np.testing.assert_array_equal(X, np.hstack([Xa, Xb]))
    assert emb.fingerprint(FusedConfig((a, b))) != emb.fingerprint(FusedConfig((b, a)))
    assert emb.fingerprint(FusedConfig((a, b))) != emb.fingerprint(EmbeddingConfig("mobilenet_v2", (32, 40)))


def test_a_fused_pipeline_predicts_saves_and_names_what_it_cannot_do(searched, tmp_path):
    from sklearn.linear_model import LogisticRegression

    res = searched["res"]
    cfg = next(c for c in search_mod._configs(["mobilenet_v2"], [32, 40], [None], [None], False,
                                                [FUSED.split(" + ")]) if isinstance(c, FusedConfig))
    emb = _Embeddings(searched["store"], BB, {"workers": 0}, backbones=res.best._backbones)
    ids, X = emb.matrix(cfg, searched["manifest"])
    y = searched["manifest"].set_index("image_id").loc[ids, "opacity"].to_numpy()
    pipe = search_mod.SearchedPipeline(embedding=cfg, classifier="logreg", estimator=LogisticRegression().fit(X, y),
                                       best_params={}, fingerprint=emb.fingerprint(cfg), label="opacity",
                                       _backbone_kwargs=BB, _backbones=res.best._backbones)
    with pytest.raises(ValueError, match="fuses several embeddings"):
        pipe.backbone()
    out = pipe.predict_proba(searched["manifest"], searched["store"], workers=0)
    np.testing.assert_allclose(out["proba"], pipe.estimator.predict_proba(X)[:, 1])
    bundle = cxr_embed.load_model(pipe.save(tmp_path / "b"))
    assert bundle.extra["search"]["embedding"] == cfg.to_dict() and bundle.backbone_fingerprint == pipe.fingerprint
    json.dumps(res.settings, default=str)


@pytest.mark.slow  # 9 s: a second search; parse_fuse and the grid are tested above
def test_cli_search_takes_fuse(searched, tmp_path, capsys):
    from cxr_embed.cli import main

    csv = tmp_path / "m.csv"
    searched["manifest"].to_csv(csv, index=False)
    keras.utils.set_random_seed(0)
    rc = main(["search", "--manifest", str(csv), "--label", "opacity", "--store", str(tmp_path / "s.h5"),
               "--out", str(tmp_path / "out"), "--backbones", "mobilenet_v2", "--input-sizes", "32,40",
               "--tta", "none", "--classifiers", "logreg", "--stress", "none", "--cv", "3", "--inner-cv", "2",
               "--weights", "none", "--n-bootstrap", "0", "--workers", "0", "--fuse", FUSED])
    assert rc == 0, capsys.readouterr()
    meta = json.loads((tmp_path / "out" / "search.json").read_text())
    assert meta["settings"]["fuse"] == [FUSED.split(" + ")]
    assert FUSED in set(pd.read_csv(tmp_path / "out" / "search.csv")["embedding"])
