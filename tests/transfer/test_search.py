"""search_pipeline: nesting, extract-once, stress copies only evaluated, external never fitted, determinism."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.embed.store import EmbeddingStore  # noqa: E402
from cxr_embed.exceptions import ManifestError  # noqa: E402
from cxr_embed.learn import classifiers as clf_mod  # noqa: E402
from cxr_embed.transfer import search as search_mod  # noqa: E402

BB = {"weights": None}
KW = dict(backbones=["mobilenet_v2"], input_sizes=[32], tta=[None, "flip"], classifiers=["logreg", "knn"], param_spaces={"knn": {"clf__n_neighbors": [3, 5]}},
          stress=["lowres", "jpeg"], cv=3, inner_cv=2, n_bootstrap=0, backbone_kwargs=BB,
          extract_kwargs={"workers": 0})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    out = {}
    for key, site, n, seed in (("internal", "A", 36, 1), ("external", "C", 16, 3)):
        ds = make_synthetic_cxr(n, site=site, size=48, seed=seed, images_per_patient=2)
        out[key] = cxr_embed.load_manifest(write_dataset(ds, root / key, format="png"))
    out["root"] = root
    return out


def _rows(X):
    return {np.asarray(r, np.float32).tobytes() for r in np.asarray(X)}


@pytest.fixture(scope="module")
def spied(data, tmp_path_factory):
    """One search with spies on every fit, every search and every extraction."""
    mp = pytest.MonkeyPatch()
    fits, searches, extracts = [], [], []
    real_fit, real_search_fit = clf_mod.GroupedPipeline.fit, clf_mod.GroupedSearchCV.fit
    from cxr_embed.embed import extraction

    real_extract = extraction.extract

    def spy_fit(self, X, y=None, groups=None, **kw):
        fits.append(np.array(X, np.float32, copy=True))
        return real_fit(self, X, y, groups=groups, **kw)

    def spy_search(self, X, y, groups=None, sample_weight=None):
        searches.append(set(np.asarray(groups).tolist()))
        return real_search_fit(self, X, y, groups=groups, sample_weight=sample_weight)

    def spy_extract(manifest, backbone, store, **kw):
        report = real_extract(manifest, backbone, store, **kw)
        extracts.append((backbone.fingerprint, report.n_done, str(store.path if hasattr(store, "path") else store)))
        return report

    mp.setattr(clf_mod.GroupedPipeline, "fit", spy_fit)
    mp.setattr(clf_mod.GroupedSearchCV, "fit", spy_search)
    mp.setattr(extraction, "extract", spy_extract)
    keras.utils.set_random_seed(0)
    store = tmp_path_factory.mktemp("store") / "s.h5"
    res = search_mod.search_pipeline(data["internal"], "opacity", store=store, external=data["external"],
                                     **{**KW, "n_bootstrap": 50})
    mp.undo()
    return {"res": res, "fits": fits, "searches": searches, "extracts": extracts, "store": store}


def test_table_ranks_every_pipeline_with_stress_and_external_columns(spied):
    res = spied["res"]
    t = res.table
    assert len(t) == 4 and list(t["rank"]) == [1, 2, 3, 4]
    for col in ("auc", "auc_lowres", "auc_jpeg", "worst_shift", "drop", "score", "delong_p", "ext_auc", "ext_ci_low",
                "ci_low"):
        assert col in t.columns and t[col].notna().all(), col
    assert (t["ci_low"] <= t["auc"]).all() and (t["auc"] <= t["ci_high"]).all()
    assert (t["worst_shift"] == t[["auc_lowres", "auc_jpeg"]].min(axis=1)).all()
    assert np.allclose(t["score"], np.minimum(t["auc"], t["worst_shift"]))
    assert t["score"].is_monotonic_decreasing
    assert t.loc[0, "delong_p"] == 1.0
    assert res.best.label == "opacity" and t.loc[0, "pipeline"] == f"{res.best.embedding.label} · {res.best.classifier}"
    assert "mobilenet_v2@32" in res.summary()


def test_nesting_is_real_no_outer_test_patient_in_any_inner_fit(spied):
    res = spied["res"]
    n_outer = len(res.folds) * len(res.table)
    outer = spied["searches"][:n_outer]  # then the refits on all internal data
    for k, seen in enumerate(outer):
        train, test = res.folds[k % len(res.folds)]
        assert seen == set(res.groups[train].tolist())
        assert not seen & set(res.groups[test].tolist())
    assert all(s == set(res.groups.tolist()) for s in spied["searches"][n_outer:])


@pytest.fixture(scope="module")
def rerun(spied, data):
    """The same search again on the same store, same seed, without the external set."""
    from cxr_embed.embed import extraction

    real, done = extraction.extract, []

    def spy(manifest, backbone, store, **kw):
        r = real(manifest, backbone, store, **kw)
        done.append(r.n_done)
        return r

    mp = pytest.MonkeyPatch()
    mp.setattr(extraction, "extract", spy)
    try:
        keras.utils.set_random_seed(0)
        res = search_mod.search_pipeline(data["internal"], "opacity", store=spied["store"], **KW)
    finally:
        mp.undo()
    return res, done


def test_each_embedding_configuration_is_extracted_once_and_cached(spied, rerun):
    done = [(fp, store) for fp, n, store in spied["extracts"] if n > 0]
    assert len(done) == len(set(done))
    # plain + mirror + 2 perturbations x (plain, mirror) internally; plain + mirror externally, same functions
    assert len({fp for fp, _ in done}) == 6 and len(done) == 8
    res2, again = rerun
    assert again and sum(again) == 0


def test_same_seed_same_table_and_external_data_never_changes_the_ranking(spied, rerun):
    res2, _ = rerun
    cols = ["pipeline", "auc", "auc_lowres", "auc_jpeg", "worst_shift", "score", "delong_p", "params"]
    pd.testing.assert_frame_equal(res2.table[cols], spied["res"].table[cols])
    assert "ext_auc" not in res2.table.columns
    for k, v in spied["res"].oof.items():
        np.testing.assert_array_equal(res2.oof[k], v)


def test_perturbed_and_external_rows_are_never_fitted(spied):
    res = spied["res"]
    store = EmbeddingStore(spied["store"])
    fitted = set().union(*(_rows(X) for X in spied["fits"]))
    perturbed = set()
    for fp, meta in store.info()["backbones"].items():
        if (meta["config"].get("view") or {}).get("perturbation"):
            perturbed |= _rows(store.load(fp)[1])
    assert perturbed and not fitted & perturbed
    ext_path = spied["store"].with_name("s.external.h5")
    ext = EmbeddingStore(ext_path)
    external = set().union(*(_rows(ext.load(fp)[1]) for fp in ext.fingerprints()))
    assert external and not fitted & external
    assert set(res.external_proba) == set(res.table["pipeline"])


def test_the_seed_sets_the_outer_folds(data, tmp_path):
    keras.utils.set_random_seed(0)
    res = search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5",
                                     **{**KW, "classifiers": ["logreg"], "tta": [None], "stress": None,
                                        "random_state": 7})
    from cxr_embed.learn.validation import grouped_kfold

    want = grouped_kfold(res.y_true, res.groups, n_splits=3, random_state=7)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(res.folds, want))
    assert res.table["stressed"].tolist() == [False] and res.table["score"].equals(res.table["auc"])


def test_flip_tta_is_the_mean_of_the_plain_and_mirrored_views(spied, data):
    res = spied["res"]
    store = EmbeddingStore(spied["store"])
    keras.utils.set_random_seed(0)
    emb = search_mod._Embeddings(store, BB, {"workers": 0})
    plain = search_mod.EmbeddingConfig("mobilenet_v2", (32,))
    flip = search_mod.EmbeddingConfig("mobilenet_v2", (32,), tta="flip")
    ids, Xp = emb.matrix(plain, data["internal"])
    ids2, Xf = emb.matrix(flip, data["internal"])
    assert list(ids) == list(ids2) and not np.array_equal(Xp, Xf)
    bb = emb.backbone("mobilenet_v2", 32, None)
    from cxr_embed.embed.views import ImageView

    _, Xm = store.load(ImageView(bb, flip=True).fingerprint, list(ids))
    np.testing.assert_array_equal(Xf, (Xp + Xm) * np.float32(0.5))
    assert len(res.oof) == 4


def test_stress_top_limits_the_stress_tests_and_rank_clean_ignores_them(data, tmp_path):
    keras.utils.set_random_seed(0)
    res = search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5",
                                     **{**KW, "rank": "clean", "stress_top": 1, "classifiers": ["logreg"],
                                        "tta": [None], "input_sizes": [32, 40], "stress": ["jpeg"]})
    t = res.table
    assert t["auc"].is_monotonic_decreasing and (t["score"] == t["auc"]).all()
    assert t["stressed"].tolist() == [True, False] and np.isnan(t.loc[1, "worst_shift"])
    assert not np.isnan(t.loc[0, "auc_jpeg"])


def test_result_pickles_and_the_loaded_pipeline_predicts(spied, data, tmp_path):
    import pickle

    res = pickle.loads(pickle.dumps(spied["res"]))
    assert res.table.equals(spied["res"].table) and res.best._backbones == {}
    # random weights (weights=None) cannot be rebuilt: refused, never silently another network
    with pytest.raises(cxr_embed.BackboneError, match="random backbone weights"):
        res.best.predict_proba(data["external"], tmp_path / "a.h5", workers=0)


def test_best_pipeline_predicts_and_saves(spied, data, tmp_path):
    best = spied["res"].best
    keras.utils.set_random_seed(0)
    out = best.predict_proba(data["external"], tmp_path / "new.h5", workers=0)
    assert len(out) == len(data["external"]) and out["proba"].between(0, 1).all()
    path = best.save(tmp_path / "bundle")
    bundle = cxr_embed.load_model(path)
    assert bundle.extra["search"]["classifier"] == best.classifier


def test_bad_arguments_are_named(data, tmp_path):
    with pytest.raises(ManifestError, match="no label column"):
        search_mod.search_pipeline(data["internal"], "nope", store=tmp_path / "s.h5", **KW)
    with pytest.raises(ValueError, match="rank must be"):
        search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5", **{**KW, "rank": "best"})
    with pytest.raises(ValueError, match="unknown perturbation"):
        search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5", **{**KW, "stress": ["blur"]})
    from cxr_embed.exceptions import LeakageError

    with pytest.raises(LeakageError, match="both the internal and the external"):
        search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5", external=data["internal"],
                                   **{**KW, "classifiers": ["logreg"], "tta": [None], "stress": None})
    with pytest.raises(ValueError, match="tta options"):
        search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5", **{**KW, "tta": ["rot"]})
    # one positive patient: a training fold would hold negatives only; said before anything is extracted
    from cxr_embed.exceptions import InsufficientDataError

    one = data["internal"].copy()
    first = one["patient_id"].iloc[0]
    one["opacity"] = (one["patient_id"] == first).astype(int)
    with pytest.raises(InsufficientDataError, match="search's outer folds holds only one class of 'opacity'"):
        search_mod.search_pipeline(one, "opacity", store=tmp_path / "one.h5", **KW)
    assert not (tmp_path / "one.h5").exists()


def test_cli_search_writes_table_json_and_a_loadable_bundle(data, tmp_path, capsys):
    from cxr_embed.cli import main

    root = data["root"]
    csv = tmp_path / "internal.csv"
    data["internal"].to_csv(csv, index=False)
    keras.utils.set_random_seed(0)
    rc = main(["search", "--manifest", str(csv), "--label", "opacity", "--store", str(tmp_path / "s.h5"),
               "--out", str(tmp_path / "out"), "--backbones", "mobilenet_v2", "--input-sizes", "32",
               "--tta", "none", "--classifiers", "logreg", "--stress", "gamma", "--train-augment", "none,jpeg",
               "--cv", "3", "--inner-cv", "2",
               "--weights", "none", "--n-bootstrap", "0", "--workers", "0"])
    assert rc == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "best: mobilenet_v2@32 · logreg" in out
    table = pd.read_csv(tmp_path / "out" / "search.csv")
    assert {"auc", "auc_gamma", "worst_shift", "score"} <= set(table.columns)
    assert sorted(table["train_augment"]) == ["jpeg", "none"]
    import json

    meta = json.loads((tmp_path / "out" / "search.json").read_text())
    assert meta["best"]["classifier"] == "logreg" and meta["settings"]["stress"] == [{"name": "gamma", "gamma": 1.6}]
    assert meta["settings"]["train_augment"] == [[], [{"name": "jpeg", "quality": 30}]]
    assert meta["best"]["train_augment"] in ([], [{"name": "jpeg", "quality": 30}])
    assert cxr_embed.load_model(meta["best"]["bundle"]).extra["search"]["classifier"] == "logreg"
    assert root.exists()


def test_cli_extract_takes_the_searched_input_size_and_tta(data, tmp_path, capsys):
    """The winner of a search can be extracted from the command line (--input-size, --tta)."""
    from cxr_embed.cli import main

    csv = tmp_path / "m.csv"
    data["internal"].head(4).to_csv(csv, index=False)
    rc = main(["extract", "--manifest", str(csv), "--backbone", "efficientnet_lite0", "--input-size", "64",
               "--tta", "flip", "--store", str(tmp_path / "e.h5"), "--workers", "0", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    want = cxr_embed.Backbone("efficientnet_lite0", input_size=64, tta="flip")
    info = cxr_embed.EmbeddingStore(tmp_path / "e.h5").info()["backbones"]
    assert list(info) == [want.fingerprint] and info[want.fingerprint]["config"]["tta"] == "flip"
    assert info[want.fingerprint]["config"]["input_size"] == [64, 64]


@pytest.mark.parametrize("arg", ["backbones", "input_sizes", "layers", "tta", "classifiers", "train_augment"])
def test_an_empty_grid_dimension_is_named_before_anything_is_extracted(data, tmp_path, arg):
    with pytest.raises(ValueError, match=f"{arg} is empty"):
        search_mod.search_pipeline(data["internal"], "opacity", store=tmp_path / "s.h5", **{**KW, arg: []})
    assert not (tmp_path / "s.h5").exists()
