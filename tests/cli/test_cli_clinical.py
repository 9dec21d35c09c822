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


def test_fit_stores_the_importance_and_evaluate_shows_it_before_the_saliency_maps(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(1)
    n = 80
    ids = [f"img{i:03d}" for i in range(n)]
    wbc = rng.normal(size=n)
    y = (wbc + 0.4 * rng.normal(size=n) > 0).astype(float)
    y[:4] = -1.0  # uncertain: left out of the importance, as of the AUCs
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "path": [f"images/{i}.png" for i in ids],
                  "patient_id": [f"p{i // 2}" for i in range(n)], "sex": rng.choice(["F", "M"], n), "wbc": wbc,
                  "a": y}).to_csv(manifest, index=False)
    store = EmbeddingStore(tmp_path / "emb.h5")
    with store.writer(types.SimpleNamespace(fingerprint="fp_imp", config={"name": "demo"}, dim=5)) as w:
        w.append(ids, rng.normal(size=(n, 5)).astype("float32"))
    common = ["--store", str(store.path), "--manifest", str(manifest)]
    rc = main(["fit", *common, "--labels", "a", "--cv", "3", "--n-bootstrap", "20", "--clinical", "wbc,sex",
               "--importance-permutations", "3", "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "importance for a" in out
    stored = load_model(tmp_path / "b").extra["importance"]["a"]
    table = pd.DataFrame(stored["table"]).set_index("feature")
    assert set(table.index) == {"image", "wbc", "sex"} and table["importance"].idxmax() == "wbc"
    assert stored["attrs"]["n_permutations"] == 3 and stored["attrs"]["n_folds"] == 3
    # a folder as cxr-embed explain writes it (moved: the overlay paths in the CSV are stale)
    sal = tmp_path / "explained"
    sal.mkdir()
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(sal / "img001_gradcam.png")
    pd.DataFrame({"image_id": ["img001", "img002"], "path": ["x", "y"],
                  "overlay": ["/elsewhere/img001_gradcam.png", None], "score": [0.73, np.nan],
                  "error": [None, "unreadable"]}).to_csv(sal / "explanations.csv", index=False)
    rc = main(["evaluate", "--model", str(tmp_path / "b"), *common, "--n-bootstrap", "20", "--saliency", str(sal),
               "--out", str(tmp_path / "r")])
    assert rc == 0, capsys.readouterr().err
    html = (tmp_path / "r" / "index.html").read_text()
    heading = html.index("Importance of the image and of each clinical variable")
    assert heading < html.index("<h2>Images</h2>") and "img001 (score 0.73)" in html
    assert "Measured by cxr-embed fit on its training manifest" in html
    assert (tmp_path / "r" / "importance.png").is_file()
    rc = main(["evaluate", "--model", str(tmp_path / "b"), *common, "--saliency", str(tmp_path),
               "--out", str(tmp_path / "r2")])
    assert rc == 2 and "explanations.csv" in capsys.readouterr().err
    # without clinical columns (or with --importance-permutations 0) nothing is computed
    rc = main(["fit", *common, "--labels", "a", "--cv", "3", "--n-bootstrap", "20", "--clinical", "wbc",
               "--importance-permutations", "0", "--out", str(tmp_path / "b0")])
    assert rc == 0 and "importance" not in load_model(tmp_path / "b0").extra


def test_an_empty_clinical_list_means_no_clinical_columns_and_pca_takes_whole_numbers(tmp_path, capsys):
    rng = np.random.default_rng(2)
    n = 40
    ids = [f"img{i:03d}" for i in range(n)]
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "path": [f"images/{i}.png" for i in ids], "patient_id": [f"p{i // 2}" for i in range(n)],
                  "a": np.tile([0.0, 1.0], n // 2)}).to_csv(manifest, index=False)
    store = EmbeddingStore(tmp_path / "emb.h5")
    with store.writer(types.SimpleNamespace(fingerprint="fp_e", config={"name": "demo"}, dim=6)) as w:
        w.append(ids, rng.normal(size=(n, 6)).astype("float32"))
    common = ["fit", "--store", str(store.path), "--manifest", str(manifest), "--labels", "a", "--cv", "2",
              "--n-bootstrap", "0"]
    assert main([*common, "--clinical", " ", "--pca", "2.0", "--out", str(tmp_path / "b")]) == 0, \
        capsys.readouterr().err  # was "ClinicalFeatures takes a DataFrame" and a float n_components
    assert load_model(tmp_path / "b").extra["clinical"] is None
    assert main([*common, "--pca", "0", "--out", str(tmp_path / "c")]) == 2
    assert "pca is a number of components" in capsys.readouterr().err
