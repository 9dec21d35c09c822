"""compare_transfer(clinical=...): manifest columns beside the embeddings, preprocessed inside each
training fold only; families that cannot take them say so in the table, the notes and the report."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

import cxr_embed  # noqa: E402
from cxr_embed.datasets import make_synthetic_cxr, write_dataset  # noqa: E402
from cxr_embed.exceptions import ClinicalDataError  # noqa: E402
from cxr_embed.learn.clinical import ClinicalFeatures  # noqa: E402
from cxr_embed.transfer import compare as compare_mod  # noqa: E402

SIZE = 32
LABELS = ["opacity", "effusion"]
CLIN = ["lab", "sex", "wbc"]
EXT_OFFSET = 1000.0  # external rows carry lab >= 1000: any fit that sees one is caught


def _tiny_backbone(seed=0):
    init = lambda k: keras.initializers.GlorotUniform(seed=seed + k)  # noqa: E731
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv1")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", kernel_initializer=init(2),
                            name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return cxr_embed.Backbone.from_keras(keras.Model(inp, x, name="tiny"), layer="conv2", name="tiny")


def _tiny_source(bb):
    """A source CNN with an (untrained) sigmoid head: enough for stacking's meta-features."""
    out = keras.layers.Dense(2, activation="sigmoid", name="head",
                             kernel_initializer=keras.initializers.GlorotUniform(seed=5))(bb.model.output)
    return keras.Model(bb.model.input, out, name="src")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("clin_sites")
    out = {"root": root}
    for key, site, n, seed in (("target", "B", 60, 2), ("external", "C", 20, 3)):
        ds = make_synthetic_cxr(n, site=site, size=48, seed=seed, images_per_patient=2, clinical=True)
        m = cxr_embed.load_manifest(write_dataset(ds, root / key, format="png"))
        # a numeric column whose median differs in every training fold (and from the whole set's)
        lab = np.arange(len(m), dtype=float) + (EXT_OFFSET if key == "external" else 0.0)
        lab[::7] = np.nan
        m["lab"] = lab
        out[key] = m
    return out


@pytest.fixture(scope="module")
def spied(sites):
    fits = []
    original = ClinicalFeatures.fit

    def spy(self, Xf, y=None):
        res = original(self, Xf, y)
        median = self.transformer_.named_transformers_["numeric"].named_steps["impute"].statistics_[0]
        fits.append({"rows": np.asarray(Xf.index), "lab": Xf["lab"].to_numpy(dtype=float), "median": median})
        return res

    mp = pytest.MonkeyPatch()
    mp.setattr(ClinicalFeatures, "fit", spy)
    bb = _tiny_backbone()
    try:
        res = cxr_embed.compare_transfer(sites["target"], LABELS, backbones=[bb], classifiers=("logreg",),
                                         clinical=CLIN, external=sites["external"], approaches=("embeddings",),
                                         n_splits=3, n_bootstrap=20, random_state=0)
    finally:
        mp.undo()
    return res, fits, bb


def test_clinical_preprocessing_is_fitted_inside_each_training_fold_only(spied, sites):
    res, fits, _ = spied
    groups = sites["target"]["patient_id"].astype(str).to_numpy()
    n, k = len(groups), len(res.splits)
    # one MultiLabelClassifier per fold fits one pipeline per label, then the refit for the external set
    assert len(fits) == len(LABELS) * (k + 1)
    full_median = float(np.nanmedian(sites["target"]["lab"]))
    for i, fit in enumerate(fits[: len(LABELS) * k]):
        train, test = res.splits[i // len(LABELS)]
        rows = set(fit["rows"].tolist())
        assert rows <= set(train.tolist()) and not rows & set(test.tolist())   # training rows only
        assert not {groups[r] for r in rows} & set(groups[test])               # no patient on both sides
        assert fit["median"] == pytest.approx(np.nanmedian(fit["lab"]))        # learnt from the rows it was given
        assert fit["median"] != pytest.approx(full_median)
    for fit in fits[len(LABELS) * k:]:                                         # the refit: target rows only
        assert set(fit["rows"].tolist()) <= set(range(n))
    assert all(np.nanmax(f["lab"]) < EXT_OFFSET for f in fits)                 # never an external row
    held_out = np.concatenate([te for _, te in res.splits])
    assert np.array_equal(np.sort(held_out), np.arange(n))
    for scores in (*res.oof.values(), *res.external.values()):
        assert np.isfinite(scores).all()


def test_the_table_and_result_name_the_clinical_columns(spied):
    from cxr_embed.learn.clinical import clinical_frame

    res, _, bb = spied
    assert res.clinical == CLIN
    assert set(res.oof) == {"tiny + logreg + clinical"}
    assert (res.table["clinical"] == "lab, sex, wbc").all()
    assert list(res.summary("internal").columns[:3]) == ["family", "approach", "clinical"]
    assert any("lab, sex, wbc were used beside the embeddings" in n for n in res.notes)
    model = res.models["tiny + logreg + clinical"]  # refitted on all target rows; takes a clinical frame
    frame = clinical_frame(np.zeros((3, bb.dim)), pd.DataFrame({"lab": [1.0, np.nan, 3.0], "sex": ["F", None, "M"],
                                                                "wbc": [np.nan, 0.5, 1.0]}))
    assert model.predict_proba(frame).shape == (3, len(LABELS))


def test_families_without_clinical_columns_say_so(sites, tmp_path):
    bb = _tiny_backbone()
    res = cxr_embed.compare_transfer(sites["target"], LABELS, backbones=[bb], classifiers=("logreg",),
                                     clinical="lab,sex", source_models=[_tiny_source(bb)],
                                     approaches=("stacking", "embeddings"), n_splits=3, n_bootstrap=20, random_state=0)
    t = res.table.set_index("family")["clinical"]
    assert set(t.loc["embeddings"]) == {"lab, sex"}
    assert set(t.loc["stacking"]) == {compare_mod.CLINICAL_IGNORED}
    note = next(n for n in res.notes if "Clinical columns" in n)
    assert "stacking used the images alone" in note and "not like for like" in note
    html = res.write_report(tmp_path / "report", n_bootstrap=20).read_text()
    summary = html[html.index('class="summary"'):html.index("</div>", html.index('class="summary"'))]
    assert "stacking" in summary and "images alone" in summary
    assert "ignored (images only)" in html
    with pytest.warns(UserWarning, match="requested but not used"):  # no family that takes them ran
        only = cxr_embed.compare_transfer(sites["target"], LABELS, clinical="lab", source_models=[_tiny_source(bb)],
                                          approaches=("stacking",), n_splits=3, n_bootstrap=0, random_state=0)
    assert set(only.table["clinical"]) == {compare_mod.CLINICAL_IGNORED}


def test_bad_clinical_columns_are_named_errors(sites):
    bb = _tiny_backbone()
    common = dict(backbones=[bb], classifiers=("logreg",), approaches=("embeddings",), n_splits=3, n_bootstrap=0)
    with pytest.raises(ClinicalDataError, match="no clinical column.*'bp'"):
        cxr_embed.compare_transfer(sites["target"], LABELS, clinical=["age", "bp"], **common)
    with pytest.raises(ClinicalDataError, match="labels being predicted"):
        cxr_embed.compare_transfer(sites["target"], LABELS, clinical=["age", "opacity"], **common)
    with pytest.raises(ClinicalDataError, match="external manifest"):
        cxr_embed.compare_transfer(sites["target"], LABELS, clinical=["lab"], external=sites["external"].drop(
            columns=["lab"]), **common)


def test_estimators_get_a_clinical_step_unless_they_have_one():
    from sklearn.linear_model import LogisticRegression

    from cxr_embed.learn.classifiers import make_classifier

    name, est = compare_mod._classifier(("lr", LogisticRegression()), make_classifier, 0, clinical=["age"])
    assert name == "lr" and isinstance(est.named_steps["features"], ClinicalFeatures)
    own = make_classifier("logreg", clinical=["age", "sex"])
    assert compare_mod._classifier(("own", own), make_classifier, 0, clinical=["age"])[1] is own
    _, named = compare_mod._classifier("knn", make_classifier, 0, clinical=["age"])
    assert named.named_steps["features"].columns == ["age"]


def test_cli_compare_takes_clinical_columns(sites, tmp_path, capsys, monkeypatch):
    from cxr_embed.cli import main

    bb = _tiny_backbone()
    monkeypatch.setattr(compare_mod, "as_extractor", lambda spec: bb)  # no ImageNet download in tests
    target_csv = sites["root"] / "target" / "labels.csv"
    common = ["compare", "--target", str(target_csv), "--labels", "opacity", "--backbones", "tiny",
              "--classifiers", "logreg", "--approaches", "embeddings", "--cv", "3", "--n-bootstrap", "20"]
    rc = main([*common, "--clinical", "wbc, sex", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "tiny + logreg + clinical" in captured.out
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert set(table["clinical"]) == {"wbc, sex"}
    rc = main([*common, "--clinical", "wbc,nope", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "nope" in capsys.readouterr().err
