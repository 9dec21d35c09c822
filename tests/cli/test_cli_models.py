"""``cxr-embed fit / evaluate / predict`` end to end on a tiny store."""
from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest

from cxr_embed.cli import main
from cxr_embed.learn.persistence import load_model
from cxr_embed.embed.store import EmbeddingStore


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    ids = [f"img{i:03d}" for i in range(n)]
    X = rng.normal(size=(n, 8)).astype("float32")
    a = (X[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(float)
    b = (X[:, 1] + 0.3 * rng.normal(size=n) > 0).astype(float)
    b[:10] = -1
    a[10:15] = np.nan
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "path": [f"images/{i}.png" for i in ids],
                  "patient_id": [f"p{i // 2}" for i in range(n)], "sex": rng.choice(["F", "M"], n),
                  "a": a, "b": b}).to_csv(manifest, index=False)
    store = EmbeddingStore(tmp_path / "emb.h5")
    bb = types.SimpleNamespace(fingerprint="fp_demo_1", config={"name": "demo"}, dim=8)
    with store.writer(bb) as w:
        w.append(ids[:-2], X[:-2])  # two images were never extracted
    return tmp_path, manifest, store, X


def test_fit_evaluate_predict(tiny, capsys):
    tmp, manifest, store, X = tiny
    bundle = tmp / "bundle"
    rc = main(["fit", "--store", str(store.path), "--manifest", str(manifest), "--labels", "a,b",
               "--classifier", "logreg", "--policy", "U-Ones", "--cv", "3", "--n-bootstrap", "100",
               "--out", str(bundle)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "2 of 80 manifest images are not in the store" in err
    assert "patient-grouped CV" in out and "macro AUC" in out
    b = load_model(bundle, expected_fingerprint="fp_demo_1")
    assert b.labels == ["a", "b"] and b.extra["policy"] == "ones" and b.extra["n_images"] == 78
    assert b.metrics["auc"].between(0.7, 1.0).all()  # grouped-CV AUCs stored in the bundle

    report = tmp / "report"
    rc = main(["evaluate", "--model", str(bundle), "--store", str(store.path), "--manifest", str(manifest),
               "--n-bootstrap", "100", "--out", str(report)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert (report / "index.html").is_file() and (report / "roc.png").is_file()
    metrics = pd.read_csv(report / "metrics.csv")
    auc = metrics[(metrics.metric == "auc") & (metrics.subgroup == "all") & (metrics.label == "b")].iloc[0]
    assert auc.n == 68  # uncertain labels are not scored
    assert "sex" in set(metrics.subgroup)

    preds = tmp / "pred.csv"
    rc = main(["predict", "--model", str(bundle), "--store", str(store.path), "--manifest", str(manifest),
               "--out", str(preds)])
    assert rc == 0
    df = pd.read_csv(preds)
    assert list(df.columns) == ["image_id", "patient_id", "a", "b"] and len(df) == 78
    np.testing.assert_allclose(df[["a", "b"]].to_numpy(), b.predict_proba(X[:78], fingerprint="fp_demo_1"),
                               rtol=1e-5)


def test_fingerprint_choice_and_errors(tiny, capsys):
    tmp, manifest, store, X = tiny
    rng = np.random.default_rng(1)
    other = types.SimpleNamespace(fingerprint="fp_other_2", config={"name": "other"}, dim=8)
    with store.writer(other) as w:
        w.append([f"img{i:03d}" for i in range(80)], rng.normal(size=(80, 8)).astype("float32"))
    common = ["--store", str(store.path), "--manifest", str(manifest)]
    rc = main(["fit", *common, "--out", str(tmp / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "several backbones" in err and "fp_demo_1" in err and "fp_other_2" in err
    rc = main(["fit", *common, "--backbone-fingerprint", "fp_demo", "--cv", "50", "--out", str(tmp / "b")])
    assert rc == 2 and "cannot fill n_splits=50" in capsys.readouterr().err
    rc = main(["fit", *common, "--classifier", "nope", "--out", str(tmp / "b")])
    assert rc == 2 and "unknown classifier" in capsys.readouterr().err
    rc = main(["fit", *common, "--backbone-fingerprint", "fp_demo", "--labels", "a", "--cv", "0", "--strict",
               "--out", str(tmp / "b")])
    assert rc == 2 and "--strict" in capsys.readouterr().err
    rc = main(["fit", *common, "--backbone-fingerprint", "fp_other", "--labels", "a,zz", "--out", str(tmp / "b")])
    assert rc == 2 and "zz" in capsys.readouterr().err
    rc = main(["fit", *common, "--backbone-fingerprint", "fp_other", "--labels", "a", "--cv", "0",
               "--classifier", "logreg", "--search", "grid", "--inner-cv", "2", "--out", str(tmp / "b")])
    assert rc == 0
    assert "clf__C" in load_model(tmp / "b").estimator.estimators_[0].best_params_
    # the model was trained on fp_other_2: scoring fp_demo_1 embeddings is refused
    rc = main(["predict", "--model", str(tmp / "b"), *common, "--backbone-fingerprint", "fp_demo",
               "--out", str(tmp / "p.csv")])
    assert rc == 2 and "differs from the model" in capsys.readouterr().err
    meta = json.loads((tmp / "b" / "bundle.json").read_text())
    assert meta["backbone_fingerprint"] == "fp_other_2"


def test_score_an_unlabelled_image_folder_end_to_end(tmp_path, capsys):
    """The everyday use: fit on a labelled site, then extract and predict a folder of new PNGs."""
    from test_extraction import tiny_model_file, write_pngs

    model = tiny_model_file(tmp_path)
    train = write_pngs(tmp_path / "train", 30, seed=1)
    rng = np.random.default_rng(0)
    pd.DataFrame({"path": train, "patient_id": [f"p{i // 2}" for i in range(30)],
                  "finding": rng.integers(0, 2, 30).astype(float)}).to_csv(tmp_path / "train.csv", index=False)
    new = tmp_path / "to_score"
    write_pngs(new / "batch1", 4, seed=2)
    write_pngs(new / "batch2", 3, seed=3)
    store = tmp_path / "emb.h5"
    common = ["--backbone", str(model), "--store", str(store), "--workers", "0", "--no-progress"]
    assert main(["extract", "--manifest", str(tmp_path / "train.csv"), *common]) == 0
    assert main(["fit", "--store", str(store), "--manifest", str(tmp_path / "train.csv"), "--labels", "finding",
                 "--classifier", "logreg", "--cv", "3", "--n-bootstrap", "50", "--out", str(tmp_path / "b")]) == 0
    assert main(["extract", "--manifest", str(new), *common]) == 0  # a plain folder: format "images"
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "b"), "--store", str(store), "--manifest", str(new),
                 "--out", str(tmp_path / "pred.csv")]) == 0
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert len(pred) == 7 and pred["image_id"].str.startswith(("batch1/", "batch2/")).all()
    assert pred["finding"].between(0, 1).all()
