"""Tests of cxr_embed.transfer.compare: same folds for every approach, honest statistics, external never fitted on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.transfer import compare as compare_mod  # noqa: E402
from cxr_embed.learn.classifiers import MultiLabelClassifier  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.exceptions import LeakageError, ManifestError  # noqa: E402

SIZE = 32
LABELS = ["opacity", "cardiomegaly"]
FT = {"epochs": 1, "batch_size": 8, "patience": 1, "trainable_layers": 2}


def _tiny_backbone(seed=0):
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(2), name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return cxr_embed.Backbone.from_keras(keras.Model(inp, x, name="tiny"), layer="conv2", name="tiny")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for key, site, n, seed in (("source", "A", 24, 1), ("target", "B", 40, 2), ("external", "C", 20, 3)):
        ds = make_synthetic_cxr(n, site=site, size=48, seed=seed, images_per_patient=2)
        out[key] = cxr_embed.load_manifest(write_dataset(ds, root / key, format="png"))
    out["root"] = root
    return out


@pytest.fixture(scope="module")
def spied_run(sites, tmp_path_factory):
    """One full comparison with spies on everything that fits a model."""
    import importlib

    finetune_mod = importlib.import_module("cxr_embed.transfer.finetuning")
    fits = {"mlc": [], "finetune": [], "meta": []}
    mp = pytest.MonkeyPatch()
    orig_fit = MultiLabelClassifier.fit

    def spy_fit(self, X, Y, groups=None):
        fits["mlc"].append(np.array(X, copy=True))
        return orig_fit(self, X, Y, groups=groups)

    orig_ft = finetune_mod.finetune

    def spy_ft(backbone, manifest, labels=None, **kw):
        fits["finetune"].append(manifest["image_id"].astype(str).tolist())
        return orig_ft(backbone, manifest, labels, **kw)

    orig_meta = compare_mod._fit_meta

    def spy_meta(meta, P, y, random_state):
        fits["meta"].append(np.array(P, copy=True))
        return orig_meta(meta, P, y, random_state)

    mp.setattr(MultiLabelClassifier, "fit", spy_fit)
    mp.setattr(finetune_mod, "finetune", spy_ft)
    mp.setattr(compare_mod, "_fit_meta", spy_meta)
    bb = _tiny_backbone()
    out = tmp_path_factory.mktemp("cmp")
    try:
        res = cxr_embed.compare_transfer(
            sites["target"], LABELS, source=sites["source"], backbones=[bb], classifiers=("logreg", "knn"),
            external=sites["external"], n_splits=3, finetune_options=FT, n_bootstrap=50, random_state=0,
            out=out, source_labels=LABELS,
        )
    finally:
        mp.undo()
    return res, fits, bb, out


def test_every_approach_runs_on_the_same_leak_free_folds(spied_run, sites):
    res, fits, bb, _ = spied_run
    target = sites["target"]
    groups = target["patient_id"].astype(str).to_numpy()
    assert {"stacking", "embeddings", "fine-tuning"} == set(res.families.values())
    # the folds partition the target and never split a patient
    assert len(res.splits) == 3
    assert np.array_equal(np.sort(np.concatenate([te for _, te in res.splits])), np.arange(len(target)))
    for tr, te in res.splits:
        assert not set(groups[tr]) & set(groups[te])
        cxr_embed.check_no_leakage(groups[tr], groups[te])
    for k, (_, te) in enumerate(res.splits):
        assert np.all(res.fold[te] == k)
    # embeddings: the k-th CV fit of every classifier saw exactly the rows of fold k's training set
    X = cxr_embed.EmbeddingStore(_store_path(res)).load(bb, res.image_ids)[1]
    per_clf = len(res.splits) + 1  # folds + the refit for the external set
    assert len(fits["mlc"]) == 2 * per_clf
    for c in range(2):
        for k, (tr, _) in enumerate(res.splits):
            np.testing.assert_array_equal(fits["mlc"][c * per_clf + k], X[tr])
        np.testing.assert_array_equal(fits["mlc"][c * per_clf + len(res.splits)], X)
    # fine-tuning: the source CNN on the source set, then one CNN per training fold, then the refit
    src_ids = sites["source"]["image_id"].astype(str).tolist()
    assert fits["finetune"][0] == src_ids
    for k, (tr, _) in enumerate(res.splits):
        assert fits["finetune"][1 + k] == res.image_ids[tr].tolist()
    assert fits["finetune"][1 + len(res.splits)] == res.image_ids.tolist()
    # stacking: per label and fold, the meta-classifier saw training rows of that fold only
    n_labels = len(LABELS)
    fold_meta = fits["meta"][: n_labels * len(res.splits)]
    for k, (tr, _) in enumerate(res.splits):
        for j in range(n_labels):
            known = ~np.isnan(res.y_true[tr, j])
            assert fold_meta[k * n_labels + j].shape[0] == known.sum()


def _store_path(res):
    note = next(n for n in res.notes if "read from the cache" in n)
    return note.rsplit("cache ", 1)[1].rstrip(".")


def test_external_set_is_never_used_for_fitting(spied_run, sites):
    res, fits, bb, _ = spied_run
    ext_ids = set(sites["external"]["image_id"].astype(str))
    for ids in fits["finetune"]:
        assert not ext_ids & set(ids)
    X_ext = cxr_embed.EmbeddingStore(_store_path(res)).load(bb, res.external_ids)[1]
    ext_rows = {r.tobytes() for r in X_ext}
    for X in fits["mlc"]:
        assert not ext_rows & {r.tobytes() for r in X}
        assert len(X) <= len(res.image_ids)
    for P in fits["meta"]:
        assert len(P) <= len(res.image_ids)
    # every approach has external scores, from models refitted on the target only
    assert set(res.external) == set(res.oof)
    for s in res.external.values():
        assert s.shape == (len(sites["external"]), len(LABELS))
        assert np.all((s >= 0) & (s <= 1))


def test_table_has_cis_delong_and_wall_times(spied_run):
    res, *_ = spied_run
    t = res.table
    assert set(t["setting"]) == {"internal", "external"}
    assert {"auc", "ci_low", "ci_high", "delong_p", "best", "wall_time_s"} <= set(t.columns)
    names = set(res.oof)
    assert any(n.startswith("embeddings: simple") for n in names)
    assert any(n.startswith("embeddings: entropy") for n in names)
    for setting in ("internal", "external"):
        s = t[t["setting"] == setting]
        assert set(s["label"]) == set(LABELS) | {"macro"}
        assert set(s["approach"]) == names
        ok = s.dropna(subset=["auc"])
        assert len(ok) > 0
        assert np.all((ok["ci_low"] <= ok["auc"] + 1e-12) & (ok["auc"] <= ok["ci_high"] + 1e-12))
        best = s[s["best"]]["approach"].unique()
        assert len(best) == 1
        macro = s[s["label"] == "macro"]
        assert macro.loc[macro["best"], "auc"].iloc[0] == pytest.approx(macro["auc"].max())
        per_label = s[(s["label"] != "macro") & ~s["best"]].dropna(subset=["auc"])
        assert per_label["delong_p"].between(0, 1).all()
        assert s[s["best"]]["delong_p"].isna().all()
        assert (s["wall_time_s"] > 0).all()
    # the macro AUC is the mean of the label AUCs
    s = t[(t["setting"] == "internal")]
    for name in names:
        a = s[s["approach"] == name].set_index("label")["auc"]
        assert a["macro"] == pytest.approx(np.nanmean([a[lab] for lab in LABELS]))
    # a DeLong p-value recomputed by hand for one pair
    j, lab = 0, LABELS[0]
    best = s[s["best"]]["approach"].iloc[0]
    other = next(n for n in names if n != best)
    known = ~np.isnan(res.y_true[:, j])
    p = cxr_embed.delong_test(res.y_true[known, j], res.oof[best][known, j], res.oof[other][known, j])[3]
    got = s[(s["approach"] == other) & (s["label"] == lab)]["delong_p"].iloc[0]
    assert got == pytest.approx(p)
    assert {"evaluation", "source CNN training", "extract tiny"} <= set(res.timings)
    summ = res.summary("internal")
    assert list(summ.columns) == ["family", "approach", "auc", "ci_low", "ci_high",
                                  *[f"p[{lab}]" for lab in LABELS], "wall_time_s"]
    assert summ["auc"].is_monotonic_decreasing
    assert res.best() == summ["approach"].iloc[0] == best
    assert summ.loc[summ["approach"] == other, f"p[{lab}]"].iloc[0] == pytest.approx(p)


def test_averages_are_the_averages_of_the_members(spied_run):
    res, *_ = spied_run
    members = [n for n, f in res.families.items() if f == "embeddings" and not n.startswith("embeddings:")]
    assert len(members) == 2
    mean = np.mean([res.oof[m] for m in members], axis=0)
    np.testing.assert_allclose(res.oof["embeddings: simple average"], mean)
    P = np.stack([res.oof[m] for m in members])
    W = cxr_embed.entropy_weights(P)
    np.testing.assert_allclose(res.oof["embeddings: entropy-weighted average"],
                               np.where(W.sum(0) > 0, (W * P).sum(0) / np.where(W.sum(0) > 0, W.sum(0), 1), mean))


def test_report_is_written(spied_run, tmp_path):
    res, *_ = spied_run
    index = res.write_report(tmp_path / "report", n_bootstrap=20)
    html = index.read_text()
    assert "Internal: out-of-fold" in html and "External: refitted" in html and 'class="summary"' in html
    assert (tmp_path / "report" / "comparison.csv").is_file()
    assert (tmp_path / "report" / f"roc_internal_{LABELS[0]}.png").is_file()
    assert (tmp_path / "report" / f"roc_external_{LABELS[0]}.png").is_file()
    assert (tmp_path / "report" / f"calibration_external_{LABELS[0]}.png").is_file()
    assert (tmp_path / "report" / "forest.png").is_file()
    oof = pd.read_csv(tmp_path / "report" / "oof.csv")
    assert len(oof) == len(res.image_ids)


def test_cached_embeddings_are_not_recomputed(spied_run, sites, monkeypatch):
    res, _, bb, out = spied_run
    calls = []
    orig = type(bb).embed

    def spy_embed(self, batch, *a, **k):
        calls.append(len(batch))
        return orig(self, batch, *a, **k)

    monkeypatch.setattr(type(bb), "embed", spy_embed)
    again = cxr_embed.compare_transfer(sites["target"], LABELS, backbones=[bb], classifiers=("logreg",),
                                       approaches=("embeddings",), store=_store_path(res), n_splits=3,
                                       n_bootstrap=0, random_state=0)
    assert calls == []
    assert any("0 images embedded" in n for n in again.notes)
    # same random_state: the same folds
    for (a, b), (c, d) in zip(again.splits, res.splits):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    name = "tiny + logreg"
    np.testing.assert_allclose(again.oof[name], res.oof[name])


def test_external_sharing_patients_or_ids_is_refused(sites):
    target = sites["target"]
    leaky = sites["external"].copy()
    leaky.loc[0, "patient_id"] = target["patient_id"].iloc[0]
    with pytest.raises(LeakageError):
        cxr_embed.compare_transfer(target, LABELS, external=leaky, backbones=[_tiny_backbone()],
                                   approaches=("embeddings",), n_splits=3)
    clash = sites["external"].copy()
    clash.loc[0, "image_id"] = target["image_id"].iloc[0]
    with pytest.raises(ManifestError, match="image ids"):
        cxr_embed.compare_transfer(target, LABELS, external=clash, backbones=[_tiny_backbone()],
                                   approaches=("embeddings",), n_splits=3)
    with pytest.raises(ManifestError, match="no label column"):
        cxr_embed.compare_transfer(target, ["nope"], backbones=[_tiny_backbone()], approaches=("embeddings",))
    with pytest.raises(ValueError, match="approaches"):
        cxr_embed.compare_transfer(target, LABELS, approaches=("magic",))


def test_stacking_without_source_warns_and_is_skipped(sites):
    with pytest.warns(UserWarning, match="stacking"):
        res = cxr_embed.compare_transfer(sites["target"], LABELS[:1], backbones=[_tiny_backbone()],
                                         classifiers=("logreg",), approaches=("stacking", "embeddings"),
                                         n_splits=3, n_bootstrap=0)
    assert set(res.families.values()) == {"embeddings"}
    # one label: no macro rows; the single label row carries best and DeLong
    assert set(res.table["label"]) == {LABELS[0]}


def test_cli_compare_with_a_saved_source_model(sites, tmp_path, capsys):
    from cxr_embed.cli import main
    from cxr_embed.transfer.finetuning import finetune

    src = finetune(_tiny_backbone(), sites["source"], LABELS, epochs=1, batch_size=8, trainable_layers=1, random_state=0,
                   out=tmp_path / "src.keras")
    target_csv = sites["root"] / "target" / "labels.csv"
    rc = main(["compare", "--target", str(target_csv), "--labels", ",".join(LABELS), "--source-model", str(src.path),
               "--approaches", "stacking,fine-tuning", "--cv", "3", "--epochs", "1", "--trainable-layers", "1",
               "--n-bootstrap", "20", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "internal:" in captured.out and "stacking (src" in captured.out
    assert (tmp_path / "out" / "comparison.csv").is_file()
    assert (tmp_path / "out" / "report" / "index.html").is_file()
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert set(table["family"]) == {"stacking", "fine-tuning"}


def test_classifier_specs_name_the_approaches():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from cxr_embed.transfer.compare import _classifier

    name, est = _classifier("logreg", cxr_embed.make_classifier, 0)
    assert name == "logreg" and hasattr(est, "predict_proba")
    rf = RandomForestClassifier(n_estimators=5)
    assert _classifier(("rf5", rf), cxr_embed.make_classifier, 0) == ("rf5", rf)
    assert _classifier(LogisticRegression(), cxr_embed.make_classifier, 0)[0] == "LogisticRegression"
    with pytest.raises(TypeError, match="classifiers entries"):
        _classifier(3, cxr_embed.make_classifier, 0)
