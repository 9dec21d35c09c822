"""Model bundles: round trip, integrity checks, fingerprint refusal, XGBoost JSON, HMAC."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier
from cxr_embed.exceptions import BundleIntegrityError, FingerprintMismatchError
from cxr_embed.learn.persistence import FORMAT, ModelBundle, load_model, manifest_hash, save_model


@pytest.fixture
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 6))
    Y = pd.DataFrame({"a": (X[:, 0] > 0).astype(float), "b": (X[:, 1] > 0).astype(float)})
    Y.iloc[:5, 1] = -1
    est = MultiLabelClassifier(make_classifier("xgboost", n_estimators=10, n_jobs=1, random_state=0),
                               policy="ones").fit(X, Y)
    manifest = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)], "path": "x",
                             "patient_id": [f"p{k // 2}" for k in range(60)], **{c: Y[c] for c in Y}})
    manifest.attrs["labels"] = ["a", "b"]
    return X, est, manifest


def test_round_trip(tmp_path, fitted):
    X, est, manifest = fitted
    metrics = pd.DataFrame({"label": ["a", "b"], "auc": [0.9, np.nan]})
    path = save_model(tmp_path / "m", est, labels=["a", "b"], backbone_fingerprint="fp1", manifest=manifest,
                      metrics=metrics, extra={"policy": "ones"})
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format"] == FORMAT and meta["format_version"] == 2 and len(meta["meta_sha256"]) == 64
    assert set(meta["versions"]) >= {"cxr_embed", "sklearn", "xgboost", "numpy"}
    assert meta["versions"]["xgboost"] is not None
    assert set(meta["files"]) == {"estimator.joblib", "metrics.json", "xgboost_0.json", "xgboost_1.json"}
    bundle = load_model(path, expected_fingerprint="fp1")
    assert isinstance(bundle, ModelBundle)
    assert bundle.labels == ["a", "b"] and bundle.extra == {"policy": "ones"}
    assert bundle.manifest_hash == manifest_hash(manifest)
    pd.testing.assert_frame_equal(bundle.metrics, metrics)
    np.testing.assert_allclose(bundle.predict_proba(X, fingerprint="fp1"), est.predict_proba(X))


def test_xgboost_json_is_xgboosts_own_format_and_is_what_gets_loaded(tmp_path, fitted):
    import xgboost

    X, est, _ = fitted
    path = save_model(tmp_path / "m", est, labels=["a", "b"], backbone_fingerprint="fp1")
    booster = xgboost.Booster()
    booster.load_model(str(path / "xgboost_0.json"))
    direct = booster.predict(xgboost.DMatrix(X))
    np.testing.assert_allclose(direct, est.predict_proba(X)[:, 0], rtol=1e-6)
    assert "learner" in json.loads((path / "xgboost_0.json").read_text())


def test_tampering_is_detected(tmp_path, fitted):
    X, est, _ = fitted
    path = save_model(tmp_path / "m", est, labels=["a", "b"], backbone_fingerprint="fp1")
    blob = bytearray((path / "estimator.joblib").read_bytes())
    blob[len(blob) // 2] ^= 0x01  # flip one bit
    (path / "estimator.joblib").write_bytes(bytes(blob))
    with pytest.raises(BundleIntegrityError, match="estimator.joblib.*SHA-256"):
        load_model(path)
    path2 = save_model(tmp_path / "m2", est, labels=["a", "b"], backbone_fingerprint="fp1")
    (path2 / "xgboost_1.json").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        load_model(path2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleIntegrityError, match="bundle.json"):
        load_model(tmp_path / "empty")


def test_fingerprint_refused(tmp_path, fitted):
    X, est, _ = fitted
    path = save_model(tmp_path / "m", est, labels=["a", "b"], backbone_fingerprint="fp1")
    bundle = load_model(path)
    with pytest.raises(FingerprintMismatchError, match="fp1.*fp2"):
        bundle.predict_proba(X, fingerprint="fp2")
    with pytest.raises(FingerprintMismatchError):
        load_model(path, expected_fingerprint="fp2")
    with pytest.raises(ValueError, match="expects"):
        bundle.predict_proba(X[:, :3], fingerprint="fp1")


def test_hmac_key(tmp_path, fitted):
    X, est, _ = fitted
    path = save_model(tmp_path / "m", est, labels=["a", "b"], backbone_fingerprint="fp1", key="secret")
    assert load_model(path, key="secret").labels == ["a", "b"]
    with pytest.raises(BundleIntegrityError, match="HMAC"):
        load_model(path, key="wrong")
    with pytest.raises(BundleIntegrityError, match="signed but no key"):  # an error since issue 10
        load_model(path)
    with pytest.warns(UserWarning, match="not checked"):
        load_model(path, trust_unsigned=True)
    # a consistent forgery (new pickle + recomputed checksum) passes SHA-256 but not the HMAC
    import hashlib

    meta = json.loads((path / "bundle.json").read_text())
    forged = save_model(tmp_path / "other", LogisticRegression().fit(X, X[:, 0] > 0), labels=["a"],
                        backbone_fingerprint="fp1")
    (path / "estimator.joblib").write_bytes((forged / "estimator.joblib").read_bytes())
    meta["files"]["estimator.joblib"] = hashlib.sha256((path / "estimator.joblib").read_bytes()).hexdigest()
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleIntegrityError, match="HMAC"):
        load_model(path, key="secret")
    unsigned = save_model(tmp_path / "u", est, labels=["a", "b"], backbone_fingerprint="fp1")
    with pytest.raises(BundleIntegrityError, match="unsigned"):
        load_model(unsigned, key="secret")
    with pytest.warns(UserWarning, match="unsigned"):
        load_model(unsigned, key="secret", trust_unsigned=True)


def test_single_label_plain_estimator_and_overwrite(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    y = (X[:, 0] > 0).astype(int)
    est = LogisticRegression().fit(X, y)
    path = save_model(tmp_path / "m", est, labels="y", backbone_fingerprint="fp", metrics={"auc": 0.8})
    b = load_model(path)
    np.testing.assert_allclose(b.predict_proba(X, fingerprint="fp")[:, 0], est.predict_proba(X)[:, 1])
    assert b.metrics == {"auc": 0.8}
    with pytest.raises(FileExistsError):
        save_model(path, est, labels="y", backbone_fingerprint="fp")
    save_model(path, est, labels="y", backbone_fingerprint="fp2", overwrite=True)
    assert load_model(path).backbone_fingerprint == "fp2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_manifest_hash_ignores_order_and_paths_but_not_labels():
    df = pd.DataFrame({"image_id": ["a", "b"], "path": ["/x/a", "/x/b"], "patient_id": ["p", "q"], "L": [1.0, 0.0]})
    df.attrs["labels"] = ["L"]
    moved = df.assign(path=["/y/a", "/y/b"]).iloc[::-1]
    moved.attrs["labels"] = ["L"]
    assert manifest_hash(df) == manifest_hash(moved)
    changed = df.assign(L=[1.0, 1.0])
    assert manifest_hash(changed, ["L"]) != manifest_hash(df)
    with pytest.raises(BundleIntegrityError, match="lacks"):
        manifest_hash(df, ["missing"])


def test_manifest_hash_is_the_same_for_float32_and_float64_labels():
    # manifests hold float32 labels since 0.2; bundles trained on float64 manifests keep their hash
    df = pd.DataFrame({"image_id": list("abcd"), "patient_id": list("ppqq"),
                       "L": np.array([1.0, 0.0, -1.0, np.nan], dtype=np.float32)})
    assert manifest_hash(df, ["L"]) == manifest_hash(df.astype({"L": np.float64}), ["L"])


# ------------------------------------------------------------ bundles of the pre-0.2 layout
PREMOVE = Path(__file__).resolve().parents[1] / "data" / "bundle_v0_1_premove"


def test_bundle_saved_before_the_layout_move_loads():
    """tests/data/bundle_v0_1_premove was written by commit 0b50974 (flat cxr_embed.classifiers)."""
    import sys

    import cxr_embed as cx

    assert b"cxr_embed.classifiers" in (PREMOVE / "estimator.joblib").read_bytes()
    with pytest.warns(UserWarning, match="saved with cxr_embed 0.1.0"):
        bundle = cx.load_model(PREMOVE)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4)).astype(np.float32)
    expected = np.load(PREMOVE.parent / "bundle_v0_1_premove_proba.npy")
    np.testing.assert_allclose(bundle.predict_proba(X, fingerprint="0" * 64), expected, rtol=1e-6, atol=1e-9)
    assert type(bundle.estimator).__module__ == "cxr_embed.learn.classifiers"
    assert "cxr_embed.classifiers" not in sys.modules  # the alias does not outlive the load


def test_bundle_with_unresolvable_old_class_is_refused_with_the_fix(tmp_path):
    import shutil

    import cxr_embed as cx
    from cxr_embed.learn import persistence

    bundle = tmp_path / "old"
    shutil.copytree(PREMOVE, bundle)
    raw = (bundle / "estimator.joblib").read_bytes()
    # a class that existed in 0.1 under the old path but is gone now
    (bundle / "estimator.joblib").write_bytes(raw.replace(b"MultiLabelClassifier", b"MultiLabelClassifieX"))
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["files"]["estimator.joblib"] = persistence.sha256_file(bundle / "estimator.joblib")
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(cx.BundleIntegrityError, match="save_model it again"):
        cx.load_model(bundle)
