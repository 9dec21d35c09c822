"""``cxr-embed localize`` end to end on phantoms with a .keras CNN and boxes around the lesions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.cli import main  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402

SIZE = 48


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_localize")
    ds = make_synthetic_cxr(8, findings=("opacity",), prevalence=1.0, size=SIZE, seed=0)
    csv = write_dataset(ds, root / "data", format="png")
    manifest = cxr_embed.load_manifest(csv)
    rows = []
    for image_id, m in zip(manifest["image_id"], ds.masks["opacity"]):
        r, c = np.nonzero(m)
        rows.append({"image_id": image_id, "finding": "opacity", "x": c.min(), "y": r.min(),
                     "w": c.max() - c.min() + 1, "h": r.max() - r.min() + 1})
    pd.DataFrame(rows).to_csv(root / "boxes.csv", index=False)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inp)
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(root / "cnn.keras")
    return root, csv


def test_localize_writes_tables_overlays_and_html(work, capsys):
    root, csv = work
    out = root / "out"
    rc = main(["localize", "--model", str(root / "cnn.keras"), "--manifest", str(csv), "--boxes",
               str(root / "boxes.csv"), "--method", "gradcam", "--n-bootstrap", "100", "--n-overlays", "2",
               "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "8 boxed images explained with gradcam: pointing game" in stdout
    table = pd.read_csv(out / "localization.csv")
    # 1 hit, 0 miss; a tied maximum (a flat map of this random CNN) scores the share of its pixels inside
    assert len(table) == 8 and table["pointing"].between(0.0, 1.0).all()
    summary = pd.read_csv(out / "summary.csv")
    assert {"explanation", "random", "centre", "lungs", "chance"} == set(summary["map"])
    assert len(list((out / "overlays").glob("*.png"))) == 4
    assert (out / "localization.html").read_text().count("data:image/png;base64") == 4


def test_localize_reports_ids_that_do_not_match(work, capsys):
    root, csv = work
    bad = root / "bad_boxes.csv"
    bad.write_text("image_id,x,y,w,h\nnot_an_image,1,1,2,2\n")
    rc = main(["localize", "--model", str(root / "cnn.keras"), "--manifest", str(csv), "--boxes", str(bad),
               "--out", str(root / "o2")])
    assert rc == 2 and "no manifest image has a box" in capsys.readouterr().err
