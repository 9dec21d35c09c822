"""Empty and degenerate arguments to public entry points: a named error that says what to change, never a
bare IndexError/KeyError from deep inside, and never a silent NaN or True (found by a probe of every entry)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cxr_embed
from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier

rng = np.random.default_rng(0)
X = rng.normal(size=(24, 4))
y = np.tile([0, 1], 12)
g = np.repeat(np.arange(12), 2).astype(str)


@pytest.mark.parametrize("kw, match", [({"n_repeats": 0}, "n_repeats"), ({"n_repeats": -1}, "n_repeats"),
                                       ({"n_splits": 1}, "n_splits"), ({"n_splits": 0}, "n_splits")])
def test_grouped_folds_need_two_splits_and_one_repeat(kw, match):
    with pytest.raises(ValueError, match=match):
        cxr_embed.grouped_kfold(y, g, **kw)
    with pytest.raises(ValueError, match=match):  # was a CVResult of NaN for n_repeats=0
        cxr_embed.cross_validate_grouped(make_classifier("logreg"), X, y, g, **kw)


def test_learning_curve_sizes_and_repeats():
    with pytest.raises(ValueError, match="sizes is empty"):
        cxr_embed.learning_curve_patients(make_classifier("logreg"), X, y, g, sizes=[], n_splits=3)


def test_clinical_importance_with_no_block():
    clinical = pd.DataFrame({"age": rng.normal(size=24)})
    with pytest.raises(ValueError, match="blocks is empty"):
        cxr_embed.clinical_importance(make_classifier("logreg"), X, y, g, clinical=clinical, blocks={}, n_splits=3)
    with pytest.raises(ValueError, match="n_permutations"):  # was an importance of NaN
        cxr_embed.clinical_importance(make_classifier("logreg"), X, y, g, clinical=clinical, n_permutations=0,
                                      n_splits=3)


def test_a_multilabel_target_needs_a_label_column():
    with pytest.raises(ValueError, match="no label column"):
        MultiLabelClassifier(make_classifier("logreg")).fit(X, np.zeros((24, 0)))
    with pytest.raises(ValueError, match="no label column"):
        cxr_embed.cross_validate_grouped(MultiLabelClassifier(make_classifier("logreg")), X, np.zeros((24, 0)), g,
                                         n_splits=3)


def test_combat_on_no_rows():
    pytest.importorskip("neuroCombat")
    from cxr_embed.learn.clinical import clinical_frame

    frame = clinical_frame(X[:0], pd.DataFrame({"site": pd.Series([], dtype=str)}))
    with pytest.raises(cxr_embed.InsufficientDataError, match="no rows"):
        cxr_embed.ComBat().fit(frame)


def test_report_of_no_predictions(tmp_path):
    with pytest.raises(cxr_embed.InvalidInputError, match="no rows"):
        cxr_embed.write_report(tmp_path / "r", title="t", y_true=[], y_score=[])
    assert not (tmp_path / "r").exists()


def test_negative_decimals():
    table = cxr_embed.evaluate_predictions(y, X[:, 0])
    with pytest.raises(ValueError, match="decimals"):
        cxr_embed.format_metrics_table(table, decimals=-1)


def test_finetune_with_no_label(tmp_path):
    m = pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p"]})
    with pytest.raises(ValueError, match="labels is empty"):
        cxr_embed.finetune(None, m, [])


@pytest.mark.parametrize("maker", [lambda: np.full((8, 8), np.nan),
                                   lambda: np.where(np.eye(8, dtype=bool), np.inf, 0.0)])
def test_faithfulness_of_a_map_with_non_finite_values(maker):
    sal, mask = maker(), np.eye(8, dtype=bool)
    for fn in (cxr_embed.pointing_game, cxr_embed.energy_in_mask, cxr_embed.saliency_iou):
        with pytest.raises(ValueError, match="non-finite"):  # pointing_game said True for an all-NaN map
            fn(sal, mask)


@pytest.fixture
def boxed(tmp_path):
    from PIL import Image

    rows = []
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / f"i{k}.png")
        rows.append({"image_id": f"i{k}", "path": str(tmp_path / f"i{k}.png"), "patient_id": f"p{k}"})
    boxes = pd.DataFrame({"image_id": ["i0", "i1", "i2"], "finding": "x", "x": 2.0, "y": 2.0, "w": 5.0, "h": 5.0})
    maps = {f"i{k}": np.random.default_rng(k).random((16, 16)) for k in range(3)}
    return pd.DataFrame(rows), boxes, maps


def test_localization_without_bootstrap_has_nan_intervals(boxed):
    manifest, boxes, maps = boxed
    res = cxr_embed.evaluate_localization(None, manifest, boxes, maps=maps, n_bootstrap=0, n_random=2)
    s = res.summary
    assert s["mean"].notna().all() and s["ci_low"].isna().all() and s["ci_high"].isna().all()


@pytest.mark.parametrize("kw, match", [({"n_random": 0}, "n_random"), ({"top_fraction": 0.0}, "top_fraction"),
                                       ({"top_fraction": 1.5}, "top_fraction")])
def test_localization_options_out_of_range(boxed, kw, match):
    manifest, boxes, maps = boxed
    with pytest.raises(ValueError, match=match):
        cxr_embed.evaluate_localization(None, manifest, boxes, maps=maps, n_bootstrap=0, **kw)


@pytest.mark.parametrize("arg", ["backbones", "classifiers"])
def test_compare_names_an_empty_list(arg):
    m = pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p"], "y": [1]})
    with pytest.raises(ValueError, match=f"{arg} is empty"):
        cxr_embed.compare_transfer(m, "y", approaches=["embeddings"], **{arg: []})


def test_pca_below_one_component():
    with pytest.raises(ValueError, match="pca"):
        make_classifier("logreg", pca=0)



def test_external_validation_of_no_rows_or_one_class():
    with pytest.raises(cxr_embed.InsufficientDataError, match="no rows"):
        cxr_embed.external_validation(make_classifier("logreg"), X, y, X[:0], y[:0])
    with pytest.warns(UserWarning, match="4 positive and 0 negative"):
        res = cxr_embed.external_validation(make_classifier("logreg"), X, y, X[:4], np.ones(4))
    assert np.isnan(res.summary["auc"].iloc[0])


def test_extracting_an_empty_manifest_says_so(tmp_path, caplog):
    pytest.importorskip("keras")
    import logging

    bb = cxr_embed.Backbone("mobilenet_v2", input_size=32, weights=None)
    with caplog.at_level(logging.WARNING, logger="cxr_embed"):
        report = cxr_embed.extract([], bb, tmp_path / "e.h5")
    assert report.n_done == 0 and "lists no images" in caplog.text


def test_delong_with_one_image_of_a_class_has_no_p_value():
    with pytest.warns(RuntimeWarning, match="at least 2 of each"):
        a, b, z, p = cxr_embed.delong_test([0, 1, 0], [0.2, 0.3, 0.1], [0.3, 0.1, 0.2])
    assert np.isnan(z) and np.isnan(p)  # was z = inf, p = 0: "significant" from one positive


def test_boxes_of_a_finding_the_file_does_not_have(tmp_path):
    path = tmp_path / "b.csv"
    pd.DataFrame({"image_id": ["a"], "finding": ["Pneumonia"], "x": [1], "y": [1], "w": [2], "h": [2]}).to_csv(path)
    assert len(cxr_embed.load_boxes(path, finding="PNEUMONIA")) == 1
    with pytest.raises(cxr_embed.BoxFormatError, match=r"no box has the finding 'nope'.*\['pneumonia'\]"):
        cxr_embed.load_boxes(path, finding="nope")  # was an empty table


def test_a_roc_of_no_scores_says_so(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="cxr_embed"):
        cxr_embed.plot_roc([0, 1, 0, 1], [np.nan] * 4)
    assert "no row with both a label and a finite score" in caplog.text and "single class" not in caplog.text


def test_explaining_no_image(tmp_path, caplog):
    keras = pytest.importorskip("keras")
    import logging

    with pytest.raises(ValueError, match="limit must be"):
        cxr_embed.explain_manifest(pd.DataFrame(columns=["image_id", "path"]), None, tmp_path / "a", limit=0)
    assert not (tmp_path / "a").exists()
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    with caplog.at_level(logging.WARNING, logger="cxr_embed"):
        out = cxr_embed.explain_manifest(pd.DataFrame(columns=["image_id", "path"]), model, tmp_path / "b")
    assert list(out.columns) == ["image_id", "path", "overlay", "score", "error"] and out.empty  # had no columns
    assert "no image to explain" in caplog.text


def test_an_empty_metrics_table(tmp_path):
    table = cxr_embed.evaluate_predictions(y, X[:, 0])
    for bad in (table.iloc[:0], pd.DataFrame()):
        with pytest.raises(cxr_embed.InvalidInputError, match="metrics has 0 rows"):
            cxr_embed.format_metrics_table(bad)  # was pandas' "Empty DataFrame" text
        with pytest.raises(cxr_embed.InvalidInputError, match="metrics has 0 rows"):
            cxr_embed.write_report(tmp_path / "r", title="t", metrics=bad)
    assert not (tmp_path / "r").exists()


def test_an_audit_of_embeddings_without_columns():
    m = pd.DataFrame({"image_id": [str(i) for i in range(24)], "patient_id": g, "opacity": y})
    with pytest.raises(cxr_embed.InvalidInputError, match="at least 2 rows and 1 column"):
        cxr_embed.audit_embeddings(X[:, :0], m, label="opacity")  # was scikit-learn's "0 feature(s)"
