"""evaluate_localization with hand-made maps and boxes: hit, miss, several boxes, tolerance, baselines, CIs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_embed import BoxFormatError, LocalizationResult, evaluate_localization
from cxr_embed.saliency.localization import lung_prior, localization_html, save_localization_overlays

SIZE = 64


def _manifest(tmp_path, ids, patients=None):
    paths = []
    for i in ids:
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.tile(np.arange(SIZE, dtype=np.uint8) + 60, (SIZE, 1))).save(p)  # not blank
        paths.append(str(p))
    return pd.DataFrame({"image_id": ids, "path": paths, "patient_id": patients or [f"p{i}" for i in ids]})


def _boxes(rows):
    return pd.DataFrame(rows, columns=["image_id", "finding", "x", "y", "w", "h"])


def _peak(r, c, shape=(SIZE, SIZE)):
    m = np.zeros(shape, np.float32)
    m[r, c] = 1
    return m


def test_hit_miss_and_several_boxes(tmp_path):
    man = _manifest(tmp_path, ["hit", "miss", "two"])
    boxes = _boxes([("hit", "x", 10, 10, 8, 8), ("miss", "x", 10, 10, 8, 8),
                    ("two", "x", 0, 0, 4, 4), ("two", "x", 50, 50, 6, 6)])
    maps = {"hit": _peak(12, 12), "miss": _peak(40, 40), "two": _peak(52, 53)}  # (row, col): in the second box
    r = evaluate_localization(None, man, boxes, maps=maps, n_bootstrap=200)
    t = r.per_image.set_index("image_id")
    assert t.loc["hit", "pointing"] == 1 and t.loc["miss", "pointing"] == 0 and t.loc["two", "pointing"] == 1
    assert t.loc["two", "n_boxes"] == 2 and t.loc["two", "box_fraction"] == pytest.approx((16 + 36) / SIZE**2)
    assert t.loc["hit", "energy"] == 1 and t.loc["miss", "energy"] == 0
    assert (t.loc["hit", "peak_x"], t.loc["hit", "peak_y"]) == (12, 12)
    assert r.value("pointing") [0] == pytest.approx(2 / 3)
    assert r.method == "precomputed" and isinstance(r, LocalizationResult)


def test_tolerance_dilates_the_boxes(tmp_path):
    man = _manifest(tmp_path, ["a"])
    boxes = _boxes([("a", "x", 10, 10, 8, 8)])  # pixels 10..17
    near = {"a": _peak(20, 12)}  # 3 rows below the box
    assert evaluate_localization(None, man, boxes, maps=near, tolerance=2, n_bootstrap=50).per_image["pointing"][0] == 0
    assert evaluate_localization(None, man, boxes, maps=near, tolerance=3, n_bootstrap=50).per_image["pointing"][0] == 1


def test_iou_of_the_top_region(tmp_path):
    man = _manifest(tmp_path, ["a"])
    boxes = _boxes([("a", "x", 0, 0, 8, 8)])
    m = np.zeros((SIZE, SIZE), np.float32)
    m[:8, :8] = 1
    r = evaluate_localization(None, man, boxes, maps={"a": m}, n_bootstrap=50)
    assert r.per_image["iou"][0] == 1
    r = evaluate_localization(None, man, boxes, maps={"a": m}, top_fraction=128 / SIZE**2, n_bootstrap=50)
    assert r.per_image["iou"][0] == pytest.approx(0.5)


def test_baselines_centre_lungs_and_random(tmp_path):
    man = _manifest(tmp_path, ["c", "l"])
    boxes = _boxes([("c", "x", 28, 28, 8, 8),  # the image centre
                    ("l", "x", 15, 24, 8, 10)])  # around the right lung centre (row 28.8, col 19.2)
    maps = {"c": _peak(0, 0), "l": _peak(0, 0)}
    r = evaluate_localization(None, man, boxes, maps=maps, n_bootstrap=200, n_random=20)
    t = r.per_image.set_index("image_id")
    assert t.loc["c", "centre_pointing"] == 1 and t.loc["l", "centre_pointing"] == 0
    assert t.loc["l", "lungs_pointing"] == 0.5  # two equal lung peaks: the tie is shared
    assert t.loc["c", "centre_energy"] > t.loc["c", "box_fraction"]
    # random maps: near chance on average
    assert 0 <= t["random_pointing"].max() <= 0.3
    assert abs(t["random_energy"].mean() - t["box_fraction"].mean()) < 0.05
    assert set(r.summary["map"]) == {"explanation", "random", "centre", "lungs", "chance"}
    assert set(r.differences["baseline"]) == {"random", "centre", "lungs"}


def test_lung_prior_peaks():
    p = lung_prior((100, 80))
    assert p.shape == (100, 80) and p.max() == 1
    assert p[45, 24] > 0.95 and p[45, 56] > 0.95 and p[45, 40] < 0.2 and p[95, 5] < 0.01


def test_patient_bootstrap_interval_widens_with_fewer_patients(tmp_path):
    ids = [f"i{k}" for k in range(12)]
    boxes = _boxes([(i, "x", 10, 10, 8, 8) for i in ids])
    maps = {i: _peak(12, 12) if k % 2 else _peak(40, 40) for k, i in enumerate(ids)}
    indep = evaluate_localization(None, _manifest(tmp_path, ids), boxes, maps=maps, n_bootstrap=2000)
    # six patients, each with one hit and one miss: the per-patient mean is always 0.5
    paired = evaluate_localization(None, _manifest(tmp_path, ids, [f"p{k // 2}" for k in range(12)]), boxes,
                                   maps=maps, n_bootstrap=2000)
    m, lo, hi = indep.value("pointing")
    assert m == 0.5 and lo < 0.35 and hi > 0.65
    assert paired.value("pointing") == (0.5, 0.5, 0.5)
    assert paired.summary["n_patients"].iloc[0] == 6


def test_beats_baselines(tmp_path):
    ids = [f"i{k}" for k in range(20)]
    boxes = _boxes([(i, "x", 4, 40, 8, 8) for i in ids])  # bottom-left, away from centre and lungs
    r = evaluate_localization(None, _manifest(tmp_path, ids), boxes, maps={i: _peak(44, 8) for i in ids},
                              n_bootstrap=500)
    assert r.value("pointing") == (1, 1, 1) and r.beats_baselines("pointing")
    d = r.differences.set_index(["baseline", "metric"])
    assert d.loc[("centre", "pointing"), "ci_low"] == 1


def test_errors(tmp_path):
    man = _manifest(tmp_path, ["a"])
    with pytest.raises(BoxFormatError, match="no manifest image has a box"):
        evaluate_localization(None, man, _boxes([("zzz", "x", 1, 1, 2, 2)]), maps={})
    with pytest.raises(BoxFormatError, match="outside"):
        evaluate_localization(None, man, _boxes([("a", "x", 60, 60, 100, 100)]), maps={"a": _peak(1, 1)})
    with pytest.raises(ValueError, match="needs a model"):
        evaluate_localization(None, man, _boxes([("a", "x", 1, 1, 2, 2)]))
    with pytest.raises(ValueError, match="shape"):
        evaluate_localization(None, man, _boxes([("a", "x", 1, 1, 2, 2)]), maps={"a": np.zeros((3, 3))})


def test_box_table_path_is_scaled_to_the_images(tmp_path):
    man = _manifest(tmp_path, ["a"])
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Pneumonia,160,160,64,64,,,\n")  # 1024 frame
    r = evaluate_localization(None, man, p, maps={"a": _peak(12, 12)}, n_bootstrap=50)  # -> (10, 10, 4, 4) at 64 px
    assert r.per_image["pointing"][0] == 1 and r.per_image["box_fraction"][0] == 16 / SIZE**2


def test_a_model_end_to_end_with_overlays_html_and_deletion(tmp_path):
    keras = pytest.importorskip("keras")
    # a spot detector: the score rises with brightness around pixel (row 40, col 20); the map must point there
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(1, 5, padding="same", activation="relu", name="c",
                            kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-3000))(inp)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer="ones")(keras.layers.GlobalMaxPooling2D()(x))
    model = keras.Model(inp, out)
    ids = ["a", "b"]
    man = _manifest(tmp_path, ids)
    for p in man["path"]:
        img = np.full((SIZE, SIZE), 40, np.uint8)
        img[38:43, 18:23] = 255
        Image.fromarray(img).save(p)
    boxes = _boxes([(i, "opacity", 16, 36, 10, 10) for i in ids])
    r = evaluate_localization(model, man, boxes, method="gradcam", deletion=True, keep_maps=True, n_bootstrap=100)
    assert r.method == "gradcam" and (r.per_image["pointing"] == 1).all()
    assert (r.per_image["deletion_auc"] <= r.per_image["random_deletion_auc"]).all()
    assert "deletion_auc" in set(r.summary["metric"])
    pngs = save_localization_overlays(r, tmp_path / "ov", n=1)
    assert len(pngs) == 2 and all(p.is_file() for p in pngs.values())
    frag = localization_html(r, pngs)
    assert frag.startswith("<section") and frag.count("data:image/png;base64") == 2 and "<html" not in frag
