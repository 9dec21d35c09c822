"""``cxr-embed audit`` end to end on a tiny store."""
from __future__ import annotations

import json
import types

import numpy as np
import pandas as pd
import pytest

from cxr_embed.cli import main
from cxr_embed.embed.store import EmbeddingStore


@pytest.fixture
def tiny(tmp_path):
    rng = np.random.default_rng(0)
    n = 160
    ids = [f"img{i:03d}" for i in range(n)]
    view = np.where(rng.random(n) < 0.5, "AP", "PA")
    y = (rng.random(n) < np.where(view == "AP", 0.2, 0.8)).astype(float)
    X = rng.normal(size=(n, 8)).astype("float32")
    X[:, 0] += 4.0 * (view == "AP")
    X[:, 1] += y
    manifest = tmp_path / "labels.csv"
    pd.DataFrame({"image_id": ids, "path": [f"images/{i}.png" for i in ids],
                  "patient_id": [f"p{i // 2}" for i in range(n)], "sex": rng.choice(["F", "M"], n),
                  "age": rng.uniform(20, 80, n).round(), "view": view, "pneumonia": y}).to_csv(manifest, index=False)
    store = EmbeddingStore(tmp_path / "emb.h5")
    for fp, name in (("fp_lite_1", "efficientnet_lite0"), ("fp_dense_2", "densenet121")):
        bb = types.SimpleNamespace(fingerprint=fp, config={"name": name}, dim=8)
        with store.writer(bb) as w:
            w.append(ids, X)
    return tmp_path, manifest, store


def test_audit_writes_tables_maps_and_page(tiny, capsys):
    tmp, manifest, store = tiny
    out = tmp / "audit"
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--backbone", "efficientnet_lite0",
               "--label", "pneumonia", "--n-bootstrap", "100", "--cv", "4", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "FLAG Shortcut risk: view" in stdout and "fingerprint fp_lite_1" in stdout
    for name in ("encoded.csv", "shortcuts.csv", "subgroups.csv", "subgroup_gaps.csv", "reidentification.csv",
                 "flags.csv", "predictions.csv", "audit.json", "index.html", "map_label.png", "map_view.png",
                 "map_sex.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "audit.json").read_text())
    assert doc["params"]["fingerprint"] == "fp_lite_1" and doc["params"]["cv"] == 4
    shortcuts = pd.read_csv(out / "shortcuts.csv").set_index("attribute")
    assert bool(shortcuts.loc["view", "flag"])
    assert "Shortcut risk for the label" in (out / "index.html").read_text()


def test_audit_without_label_and_fingerprint_choice(tiny, capsys):
    tmp, manifest, store = tiny
    out = tmp / "audit2"
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--fingerprint", "fp_dense",
               "--attributes", "view,sex", "--map", "none", "--n-bootstrap", "50", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    enc = pd.read_csv(out / "encoded.csv")
    assert set(enc["attribute"]) == {"view", "sex"}
    assert not (out / "map_view.png").exists() and pd.read_csv(out / "shortcuts.csv").empty


def test_audit_errors_are_one_line(tiny, capsys):
    tmp, manifest, store = tiny
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--out", str(tmp / "x")])
    assert rc == 2 and "several backbones" in capsys.readouterr().err
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--backbone", "vgg16",
               "--out", str(tmp / "x")])
    assert rc == 2 and "no group of backbone 'vgg16'" in capsys.readouterr().err
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--backbone", "densenet121",
               "--label", "nope", "--out", str(tmp / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "label column 'nope' is not in the manifest" in err
    rc = main(["audit", "--store", str(store.path), "--manifest", str(manifest), "--backbone", "densenet121",
               "--cv", "1", "--out", str(tmp / "x")])
    assert rc == 2 and "cv must be an int >= 2" in capsys.readouterr().err
