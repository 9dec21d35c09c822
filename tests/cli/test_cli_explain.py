"""``cxr-embed explain`` end to end: a fine-tuned .keras CNN and a bundle from ``cxr-embed fit``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.cli import main  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.saliency.maps import explain, load_saliency_h5  # noqa: E402
from cxr_embed.transfer.finetuning import finetune  # noqa: E402  (cxr_embed.transfer.finetuning is also the module)

SIZE = 32


def _tiny_cnn(seed=0):
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a",
                            kernel_initializer=keras.initializers.GlorotUniform(seed))(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b",
                            kernel_initializer=keras.initializers.GlorotUniform(seed + 1))(x)
    return keras.Model(inp, x, name=f"tiny{seed}")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """PNG phantoms with a labels.csv, a fine-tuned .keras CNN and an embedding store of a saved CNN."""
    root = tmp_path_factory.mktemp("cli_explain")
    ds = make_synthetic_cxr(16, findings=("opacity",), size=48, seed=0)
    csv = write_dataset(ds, root / "data", format="png")
    manifest = cxr_embed.load_manifest(csv)
    bb = cxr_embed.Backbone.from_keras(_tiny_cnn(), layer="conv_b")
    images = np.stack([bb.prepare(im) for im in ds.images])
    res = finetune(bb, manifest, labels=["opacity"], trainable_layers="all", epochs=1, batch_size=8,
                   images=images, random_state=0, augment=False, out=root / "cnn.keras")
    cnn_file = root / "backbone.keras"
    _tiny_cnn(seed=3).save(cnn_file)
    store_bb = cxr_embed.Backbone.from_keras(cnn_file, layer="conv_b")
    store = root / "emb.h5"
    cxr_embed.extract(manifest, store_bb, store, workers=0, progress=False)
    return {"root": root, "csv": csv, "manifest": manifest, "ds": ds, "finetuned": res, "cnn_file": cnn_file,
            "store": store, "store_bb": store_bb}


def test_explain_a_finetuned_keras_model_over_a_manifest(work, capsys):
    out = work["root"] / "out_keras"
    rc = main(["explain", "--model", str(work["root"] / "cnn.keras"), "--manifest", str(work["csv"]),
               "--method", "gradcam", "--label", "opacity", "--limit", "3", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "3 of 3 images explained with gradcam" in stdout
    table = pd.read_csv(out / "explanations.csv")
    assert list(table["image_id"]) == list(work["manifest"]["image_id"][:3])
    assert table["error"].isna().all() and all((out / p).name in {f.name for f in out.glob("*.png")}
                                               for p in table["overlay"])
    maps = load_saliency_h5(out / "saliency.h5")
    assert set(maps) == set(table["image_id"])
    # the CLI's map and score are those of the in-process API on the loaded model (labels from the sidecar)
    meta = json.loads((work["root"] / "cnn.finetune.json").read_text())
    model = keras.saving.load_model(work["root"] / "cnn.keras", safe_mode=True, compile=False)
    first = table["image_id"][0]
    s = explain(work["ds"].images[0], model, method="gradcam", label="opacity", labels=meta["labels"])
    got = maps[first]
    assert got.label == "opacity" and got.map.shape == (48, 48)
    np.testing.assert_allclose(got.map, s.map, atol=2e-2)  # PNG round trip of the image (8-bit)
    assert table["score"][0] == pytest.approx(s.score, abs=1e-2)


def test_explain_a_bundle_rebuilds_its_backbone_from_the_store(work, capsys, tmp_path):
    bundle = tmp_path / "bundle"
    rc = main(["fit", "--store", str(work["store"]), "--manifest", str(work["csv"]), "--labels", "opacity",
               "--classifier", "logreg", "--cv", "0", "--out", str(bundle)])
    assert rc == 0, capsys.readouterr().err
    png = work["manifest"]["path"][1]
    out = tmp_path / "out_bundle"
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    table = pd.read_csv(out / "explanations.csv")
    assert len(table) == 1 and table["error"].isna().all()
    # the score is the bundle's own probability on the store's embedding of that image
    b = cxr_embed.load_model(bundle)
    _, X = cxr_embed.EmbeddingStore(work["store"], mode="r").load(b.backbone_fingerprint,
                                                                   [work["manifest"]["image_id"][1]])
    assert table["score"][0] == pytest.approx(b.predict_proba(X, fingerprint=b.backbone_fingerprint)[0, 0], abs=1e-4)
    assert load_saliency_h5(out / "saliency.h5")[table["image_id"][0]].map.shape == (48, 48)

    # gradient-free Score-CAM through the same bundle, no HDF5
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--method", "faster-scorecam",
               "--faster-n", "4", "--no-h5", "--out", str(tmp_path / "out_sc")])
    assert rc == 0, capsys.readouterr().err
    assert not (tmp_path / "out_sc" / "saliency.h5").exists() and list((tmp_path / "out_sc").glob("*.png"))

    # explicit --backbone options equal to the extraction's are accepted ...
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--backbone", str(work["cnn_file"]),
               "--layer", "conv_b", "--out", str(tmp_path / "out_explicit")])
    assert rc == 0, capsys.readouterr().err
    # ... another backbone is refused by fingerprint
    other = tmp_path / "other.keras"
    _tiny_cnn(seed=7).save(other)
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--backbone", str(other),
               "--layer", "conv_b", "--out", str(tmp_path / "out_other")])
    err = capsys.readouterr().err
    assert rc == 2 and "fingerprint" in err and "--backbone" in err

    # without the store the backbone cannot be rebuilt: a clear error naming the fix
    moved = tmp_path / "moved.h5"
    shutil.copy(work["store"], moved)
    gone = tmp_path / "gone.h5"
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--store", str(gone),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "--store" in err
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--store", str(moved),
               "--out", str(tmp_path / "out_moved")])
    assert rc == 0, capsys.readouterr().err
    # `cxr-embed fit` records the backbone's configuration in the bundle: no store needed at all
    Path(work["store"]).rename(tmp_path / "elsewhere.h5")
    try:
        rc = main(["explain", "--model", str(bundle), "--image", str(png), "--out", str(tmp_path / "out_nostore")])
    finally:
        (tmp_path / "elsewhere.h5").rename(work["store"])
    assert rc == 0, capsys.readouterr().err


def test_gradient_method_on_a_tree_bundle_and_bad_model_paths(work, capsys, tmp_path):
    bundle = tmp_path / "rf"
    rc = main(["fit", "--store", str(work["store"]), "--manifest", str(work["csv"]), "--labels", "opacity",
               "--classifier", "random_forest", "--cv", "0", "--out", str(bundle)])
    assert rc == 0, capsys.readouterr().err
    png = work["manifest"]["path"][0]
    rc = main(["explain", "--model", str(bundle), "--image", str(png), "--method", "gradcam",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "scorecam" in err
    rc = main(["explain", "--model", str(tmp_path / "nothing"), "--image", str(png), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "neither a .keras file nor a bundle" in err
    rc = main(["explain", "--model", str(work["root"] / "cnn.keras"), "--image", str(tmp_path / "missing.png"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
