"""The embedding audit: planted shortcuts are flagged, clean data is not, numbers agree with the metrics."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from cxr_embed.evaluate.audit import EmbeddingAudit, audit_embeddings
from cxr_embed.evaluate._audit_reid import reidentification
from cxr_embed.evaluate.metrics import age_bands, roc_auc_ci, subgroup_auc
from cxr_embed.exceptions import InvalidInputError, ManifestError, MissingDependencyError

FAST = dict(n_bootstrap=200, map=None)


def make(seed: int, *, shortcut: bool, n: int = 300, dim: int = 16):
    """Embeddings with a strongly encoded view and a label-related direction.

    ``shortcut=True``: the label depends on the view (P = 0.25 for AP, 0.75 for PA). Otherwise
    the view is independent of the label, and sex predicts the label but is not in ``X``:
    neither half of the flag's rule may fire alone.
    """
    rng = np.random.default_rng(seed)
    patient = np.arange(n) // 2
    n_pat = n // 2
    view = np.where(rng.random(n) < 0.5, "AP", "PA")
    sex = np.where(rng.random(n_pat) < 0.5, "F", "M")[patient]
    age = rng.uniform(20, 90, n_pat)[patient]
    if shortcut:
        p = np.where(view == "AP", 0.25, 0.75)
    else:
        p = np.where(sex == "F", 0.3, 0.7)
    y = (rng.random(n) < p).astype(float)
    X = rng.normal(size=(n, dim)) + 0.5 * rng.normal(size=(n_pat, dim))[patient]
    X[:, 0] += 3.0 * (view == "AP")
    X[:, 1] += 1.0 * y
    X[:, 2] += (age - 55) / 10
    m = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{k}" for k in patient],
                      "view": view, "sex": sex, "age": age, "y": y})
    return X, m


def test_planted_shortcut_is_flagged():
    X, m = make(0, shortcut=True)
    audit = audit_embeddings(X, m, label="y", **FAST)
    sc = audit.shortcuts.set_index("attribute")
    assert sc.loc["view", "flag"] and not sc.loc["sex", "flag"]
    assert sc.loc["view", "label_ci_low"] > 0.55 and sc.loc["view", "encoded_ci_low"] > 0.7
    assert any(f.startswith("Shortcut risk: view") for f in audit.flags)
    enc = audit.encoded.set_index("attribute")
    assert enc.loc["view", "value"] > 0.9 and bool(enc.loc["view", "encoded"])
    assert abs(enc.loc["view", "shuffled"] - 0.5) < 0.15  # the shuffled baseline sits at chance


def test_false_flag_rate_over_seeds():
    """10 seeds (200 images each) without a shortcut: at most one shortcut flag; 10 with one: flagged at least 9 times."""
    quick = dict(n_bootstrap=100, map=None)
    false = sum(audit_embeddings(*make(s, shortcut=False, n=200), label="y", **quick).shortcuts["flag"].astype(bool).any()
                for s in range(10))
    hits = sum(bool(audit_embeddings(*make(s, shortcut=True, n=200), label="y", **quick)
                    .shortcuts.set_index("attribute").loc["view", "flag"]) for s in range(10))
    assert false <= 1, f"false-flag rate {false}/10"
    assert hits >= 9, f"planted shortcut found in {hits}/10"


def test_no_patient_on_both_sides_and_every_image_scored_once():
    X, m = make(1, shortcut=True)
    audit = audit_embeddings(X, m, label="y", cv=4, **FAST)
    pred = audit.predictions
    assert pred.groupby("patient_id")["fold"].nunique().max() == 1
    assert sorted(pred["fold"].unique()) == [0, 1, 2, 3]
    assert pred["score"].notna().all() and list(pred["image_id"]) == list(m["image_id"])


def test_subgroups_agree_exactly_with_subgroup_auc():
    X, m = make(2, shortcut=True)
    audit = audit_embeddings(X, m, label="y", random_state=3, **FAST)
    y, s, g = m["y"].to_numpy(), audit.predictions["score"].to_numpy(), m["patient_id"].to_numpy()
    for attribute, levels in (("view", m["view"]), ("sex", m["sex"]), ("age", age_bands(m["age"]))):
        expected = subgroup_auc(y, s, levels, groups=g, n_bootstrap=200, min_per_class=5, random_state=3)
        got = audit.subgroups[audit.subgroups["attribute"] == attribute].drop(columns="attribute")
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
        gap = audit.subgroup_gaps.set_index("attribute").loc[attribute, "gap"]
        assert gap == pytest.approx(expected.attrs["gap"])


def test_encoded_table_categorical_and_numeric():
    X, m = make(3, shortcut=False, n=400)
    site = np.array(["A", "B", "C"])[np.arange(400) // 2 % 3]
    X[:, 3] += 2.0 * (site == "B")
    m["site"] = site
    audit = audit_embeddings(X, m, attributes=["site", "age", "sex"], **FAST)
    enc = audit.encoded
    site_rows = enc[enc["attribute"] == "site"]
    assert list(site_rows["metric"]) == ["auc_macro", "auc_ovr", "auc_ovr", "auc_ovr"]
    ovr = site_rows[site_rows["metric"] == "auc_ovr"]
    assert site_rows["value"].iloc[0] == pytest.approx(ovr["value"].mean())
    b = ovr.set_index("level").loc["B"]
    assert b["value"] > 0.8 and b["ci_low"] <= b["value"] <= b["ci_high"]
    age = enc[enc["attribute"] == "age"].set_index("metric")
    assert age.loc["r2", "value"] > 0.3 and age.loc["r2", "chance"] == 0.0 and bool(age.loc["r2", "encoded"])
    assert age.loc["mae", "value"] < age.loc["mae", "chance"]  # better than predicting the training mean
    sex = enc[enc["attribute"] == "sex"].iloc[0]  # not in X
    assert sex["ci_low"] < 0.7 and not sex["encoded"]
    assert audit.shortcuts.empty and audit.subgroups.empty  # no label given


def test_one_vs_rest_intervals_equal_roc_auc_ci_and_macro_is_their_mean():
    from cxr_embed.evaluate._audit_stats import _ovr_auc_ci

    rng = np.random.default_rng(0)
    level = rng.integers(0, 3, 240)
    Y1 = np.eye(3)[level].astype(int)
    S = Y1 + rng.normal(0, 1.0, Y1.shape)
    g = np.arange(240) // 3
    per_level, (macro, lo, hi) = _ovr_auc_ci(Y1, S, g, 300, 0.95, 7)
    for k in range(3):
        assert tuple(per_level[k]) == pytest.approx(tuple(roc_auc_ci(Y1[:, k], S[:, k], groups=g, n_bootstrap=300,
                                                                     random_state=7)))
    assert macro == pytest.approx(np.mean([p[0] for p in per_level]))
    assert lo < macro < hi


def test_reidentification_near_duplicates_and_random():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(100, 32))
    groups = np.repeat(np.arange(100), 3)
    dup = reidentification(np.repeat(base, 3, axis=0) + 0.01 * rng.normal(size=(300, 32)), groups, n_bootstrap=100)
    assert dup["rate"].tolist() == [1.0, 1.0]
    assert dup["chance"].iloc[0] == pytest.approx(2 / 299)
    assert dup["chance"].iloc[1] == pytest.approx(1 - np.prod([(297 - j) / (299 - j) for j in range(5)]))
    rnd = reidentification(rng.normal(size=(300, 32)), groups, n_bootstrap=200)
    top5 = rnd[rnd["k"] == 5].iloc[0]
    assert top5["rate"] < 0.12 and top5["ci_low"] <= top5["chance"] + 0.02  # random vectors: about chance
    # only images whose patient has another image are queried
    single = reidentification(rng.normal(size=(10, 4)), np.r_[np.arange(8), 8, 8], n_bootstrap=0)
    assert single["n_queries"].iloc[0] == 2 and single["n_patients"].iloc[0] == 1


def test_reidentification_flag_in_the_audit():
    X, m = make(4, shortcut=False)
    X = X + 5 * np.random.default_rng(0).normal(size=(150, X.shape[1]))[np.arange(300) // 2]  # strong identity
    audit = audit_embeddings(X, m, **FAST)
    assert audit.reidentification["rate"].iloc[0] > 0.8
    assert any(f.startswith("Re-identification") for f in audit.flags)


def test_outputs_json_frames_html_and_files(tmp_path):
    X, m = make(5, shortcut=True)
    m["site"] = np.where(np.arange(300) < 150, "A", "B")
    audit = audit_embeddings(X, m, label="y", n_bootstrap=100, map="pca")
    assert isinstance(audit, EmbeddingAudit) and "flags=" in repr(audit)
    doc = json.loads(audit.to_json())
    assert doc["format"] == "cxr_embed.audit" and doc["flags"] == audit.flags
    assert {r["attribute"] for r in doc["encoded"]} >= {"view", "sex", "age", "site"}
    assert set(audit.to_frames()) >= {"encoded", "shortcuts", "subgroups", "reidentification", "flags", "map"}
    assert "<table" in audit._repr_html_() and "Shortcut risk" in audit._repr_html_()
    index = audit.write(tmp_path / "out")
    for name in ("encoded.csv", "shortcuts.csv", "subgroups.csv", "reidentification.csv", "flags.csv",
                 "audit.json", "map_label.png", "map_view.png", "map_sex.png", "map_site.png"):
        assert (tmp_path / "out" / name).is_file(), name
    page = index.read_text(encoding="utf-8")
    assert "Shortcut risk for the label" in page and "data:image/png;base64" in page


def test_custom_estimator_scores_the_label():
    from sklearn.linear_model import LogisticRegression

    X, m = make(6, shortcut=True)
    audit = audit_embeddings(X, m, label="y", estimator=LogisticRegression(max_iter=500), **FAST)
    assert audit.shortcuts["classifier_auc"].iloc[0] > 0.7
    assert "LogisticRegression" in audit.params["classifier"]


def test_uncertain_and_missing_labels_are_left_out():
    X, m = make(7, shortcut=True)
    m.loc[:19, "y"] = -1.0
    m.loc[20:29, "y"] = np.nan
    audit = audit_embeddings(X, m, label="y", **FAST)
    assert audit.predictions["score"].isna().sum() == 30
    assert audit.subgroups.groupby("attribute")["n"].sum().eq(270).all()


def test_errors_name_the_fix():
    X, m = make(8, shortcut=True)
    with pytest.raises(ManifestError, match="not in the manifest"):
        audit_embeddings(X, m, attributes=["scanner"], **FAST)
    with pytest.raises(ManifestError, match="same order"):
        audit_embeddings(X[:-1], m, **FAST)
    with pytest.raises(ManifestError, match="both classes"):
        audit_embeddings(X, m.assign(y=1.0), label="y", **FAST)
    with pytest.raises(ManifestError, match="lower cv"):
        audit_embeddings(X[:6], m.iloc[:6], cv=5, **FAST)
    with pytest.raises(ManifestError, match="patient_id"):
        audit_embeddings(X, m.drop(columns="patient_id"), **FAST)
    with pytest.raises(InvalidInputError, match="NaN"):
        audit_embeddings(np.where(np.eye(300, 16) > 0, np.nan, X), m, **FAST)


def test_umap_without_the_extra_names_the_install(monkeypatch):
    from cxr_embed.evaluate._audit_map import embedding_map

    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    with pytest.raises(MissingDependencyError, match=r"cxr_embed\[audit\]"):
        embedding_map(np.random.default_rng(0).normal(size=(30, 5)), method="umap")


@pytest.mark.slow
@pytest.mark.realdata
def test_nih_pneumonia_view_and_sex_encoded_view_flagged(shared_data, tmp_path):
    """EfficientNet-Lite0 on nih_cxr14_pneumonia (717 images; minutes on two cores)."""
    import cxr_embed

    root = shared_data("nih_cxr14_pneumonia")
    manifest = cxr_embed.load_manifest(root)
    backbone = cxr_embed.Backbone("efficientnet_lite0")
    store = cxr_embed.EmbeddingStore(tmp_path / "emb.h5")
    cxr_embed.extract(manifest, backbone, store, progress=False)
    _, X = store.load(backbone, manifest["image_id"].tolist())
    audit = cxr_embed.audit_embeddings(X, manifest, label="pneumonia", n_bootstrap=500, map=None)
    enc = audit.encoded[audit.encoded["encoded"].notna()].set_index("attribute")
    assert enc.loc["view", "value"] > 0.98 and bool(enc.loc["view", "encoded"])   # measured 0.999
    assert enc.loc["sex", "value"] > 0.8 and bool(enc.loc["sex", "encoded"])      # measured 0.889
    sc = audit.shortcuts.set_index("attribute")
    assert bool(sc.loc["view", "flag"]) and 0.55 < sc.loc["view", "label_auc"] < 0.67  # measured 0.610
    assert any(f.startswith("Shortcut risk: view") for f in audit.flags)
    assert audit.reidentification["rate"].iloc[0] > 5 * audit.reidentification["chance"].iloc[0]
