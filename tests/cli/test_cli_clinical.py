"""``cxr-embed fit --clinical``: the columns are used in CV and the bundle, and evaluate/predict read them."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd

from cxr_embed.cli import main
from cxr_embed.embed.store import EmbeddingStore
from cxr_embed.learn.persistence import load_model


def test_fit_evaluate_predict_with_clinical_columns(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 90
    ids = [f"img{i:03d}" for i in range(n)]
    wbc = rng.normal(size=n)
    a = (wbc + 0.4 * rng.normal(size=n) > 0).astype(float)
    wbc_obs = np.where(rng.random(n) < 0.1, np.nan, wbc)
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "path": [f"images/{i}.png" for i in ids], "patient_id": [f"p{i // 2}" for i in range(n)],
                  "sex": rng.choice(["F", "M"], n), "wbc": wbc_obs, "a": a}).to_csv(manifest, index=False)
    store = EmbeddingStore(tmp_path / "emb.h5")
    with store.writer(types.SimpleNamespace(fingerprint="fp_clin", config={"name": "demo"}, dim=6)) as w:
        w.append(ids, rng.normal(size=(n, 6)).astype("float32"))  # the images carry no signal
    common = ["--store", str(store.path), "--manifest", str(manifest)]
    rc = main(["fit", *common, "--labels", "a", "--cv", "3", "--n-bootstrap", "50", "--out", str(tmp_path / "b")])
    assert rc == 0
    rc = main(["fit", *common, "--labels", "a", "--cv", "3", "--n-bootstrap", "50", "--clinical", "wbc,sex",
               "--out", str(tmp_path / "bc")])
    assert rc == 0, capsys.readouterr().err
    plain, clin = load_model(tmp_path / "b"), load_model(tmp_path / "bc")
    assert clin.extra["clinical"] == ["wbc", "sex"]
    assert clin.metrics["auc"].iloc[0] > 0.8 > plain.metrics["auc"].iloc[0] + 0.1
    rc = main(["predict", "--model", str(tmp_path / "bc"), *common, "--out", str(tmp_path / "p.csv")])
    assert rc == 0 and pd.read_csv(tmp_path / "p.csv")["a"].notna().all()
    rc = main(["evaluate", "--model", str(tmp_path / "bc"), *common, "--n-bootstrap", "50", "--out", str(tmp_path / "r")])
    assert rc == 0
    m = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert "balanced_accuracy" in set(m.metric)
    pd.read_csv(manifest).drop(columns=["wbc"]).to_csv(tmp_path / "nowbc.csv", index=False)
    rc = main(["predict", "--model", str(tmp_path / "bc"), "--store", str(store.path), "--manifest",
               str(tmp_path / "nowbc.csv"), "--out", str(tmp_path / "q.csv")])
    assert rc != 0 and "wbc" in capsys.readouterr().err
