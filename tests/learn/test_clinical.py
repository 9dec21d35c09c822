"""Clinical variables beside the embeddings: per-fold preprocessing, missing values, importance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_embed.exceptions import ClinicalDataError
from cxr_embed.learn import clinical as clin_mod
from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier
from cxr_embed.learn.clinical import (ClinicalFeatures, clinical_frame, clinical_importance, embedding_columns,
                                      plot_importance, with_clinical)
from cxr_embed.learn.validation import cross_validate_grouped, external_validation


def _data(n=160, d=12, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.normal(size=n)
    y = (lab + 0.6 * rng.normal(size=n) > 0).astype(int)
    X = rng.normal(size=(n, d))
    X[:, 0] += 0.8 * y
    clin = pd.DataFrame({"lab": lab, "noise": rng.normal(size=n),
                         "sex": rng.choice(np.array(["F", "M"], dtype=object), n)})
    clin.loc[::9, "lab"] = np.nan
    clin.loc[::13, "sex"] = None
    return X, y, clin, np.arange(n) // 2


def test_clinical_frame_columns_and_errors():
    X, _, clin, _ = _data(n=10)
    f = clinical_frame(X, clin)
    assert embedding_columns(f)[:2] == ["emb_0000", "emb_0001"] and list(f.columns[-3:]) == ["lab", "noise", "sex"]
    assert clinical_frame(f) is not None and len(clinical_frame(f).columns) == len(f.columns)
    with pytest.raises(ClinicalDataError, match="rows"):
        clinical_frame(X, clin.iloc[:5])
    with pytest.raises(ClinicalDataError, match="prefix"):
        clinical_frame(X, pd.DataFrame({"emb_x": range(10)}))
    with pytest.raises(ClinicalDataError, match="not in the input"):
        ClinicalFeatures(["age"]).fit(f)
    with pytest.raises(ClinicalDataError, match="DataFrame"):
        ClinicalFeatures(["lab"]).fit(X)
    with pytest.raises(ClinicalDataError, match="non-numbers"):
        ClinicalFeatures(["sex"], categorical=[]).fit(f)


def test_missing_values_and_unseen_categories_are_handled():
    X, y, clin, _ = _data(n=40)
    train = clinical_frame(X, clin)
    ft = ClinicalFeatures(["lab", "noise", "sex"]).fit(train)
    assert ft.numeric_ == ["lab", "noise"] and ft.categorical_ == ["sex"]
    names = list(ft.get_feature_names_out())
    assert "numeric__missingindicator_lab" in names  # lab had missing training values
    assert {"categorical__sex_F", "categorical__sex_M", "categorical__sex_missing"} <= set(names)
    new = clinical_frame(X[:3], pd.DataFrame({"lab": [np.nan, 1.0, 2.0], "noise": [0.0, np.nan, 1.0],
                                              "sex": ["X", "F", None]}))
    out = ft.transform(new)
    assert out.shape == (3, len(names)) and np.isfinite(out).all()
    onehot = out[:, [i for i, n in enumerate(names) if n.startswith("categorical__")]]
    assert onehot[0].sum() == 0  # unseen category "X": all zeros, no error
    assert onehot[2, names.index("categorical__sex_missing") - len(names) + onehot.shape[1]] == 1
    lab_missing = out[:, names.index("numeric__missingindicator_lab")]
    assert lab_missing[0] > lab_missing[1]  # the indicator marks the missing row
    # a classifier fits and predicts with holes and unseen levels
    clf = with_clinical("logreg", ["lab", "noise", "sex"]).fit(train, y)
    assert np.isfinite(clf.predict_proba(new)).all()


def test_preprocessing_is_fitted_inside_each_training_fold_only(monkeypatch):
    X, y, clin, groups = _data(n=120)
    clin["lab"] = np.arange(120, dtype=float)  # every fold's median differs from the full data's
    seen = []
    original = ClinicalFeatures.fit

    def spy(self, Xf, y=None):
        out = original(self, Xf, y)
        median = self.transformer_.named_transformers_["numeric"].named_steps["impute"].statistics_[0]
        seen.append((set(Xf.index), median, float(np.nanmedian(Xf["lab"]))))
        return out

    monkeypatch.setattr(ClinicalFeatures, "fit", spy)
    est = make_classifier("logreg", clinical=["lab", "noise", "sex"])
    res = cross_validate_grouped(est, X, y, groups, clinical=clin, n_splits=4, random_state=0, n_bootstrap=0)
    assert len(seen) == 4
    held_out = set()
    for rows, median, train_median in seen:
        assert len(rows) < 120 and median == train_median  # learnt from the training rows it was given
        assert median != float(np.median(clin["lab"]))
        test = set(range(120)) - rows
        assert not ({groups[i] for i in rows} & {groups[i] for i in test})  # patients never on both sides
        held_out |= test
    assert held_out == set(range(120))  # each row scored by a model that never saw it
    assert np.isfinite(res.oof).all()


def test_clinical_columns_help_when_they_carry_the_signal_and_go_through_multilabel_and_search():
    X, y, clin, groups = _data()
    base = cross_validate_grouped(make_classifier("logreg", C=1.0), X, y, groups, n_splits=3, random_state=0,
                                  n_bootstrap=0)
    both = cross_validate_grouped(make_classifier("logreg", clinical=["lab", "noise", "sex"], C=1.0), X, y, groups,
                                  clinical=clin, n_splits=3, random_state=0, n_bootstrap=0)
    assert both.mean_auc > base.mean_auc + 0.1
    frame = clinical_frame(X, clin)
    ml = MultiLabelClassifier(make_classifier("logreg", clinical=["lab", "sex"])).fit(frame, y.astype(float), groups=groups)
    assert ml.predict_proba(frame).shape == (len(y), 1)
    search = make_classifier("logreg", clinical=["lab"], search="grid", cv=2,
                             param_space={"features__pca": [None, 4]})
    search.fit(frame, y, groups=groups)
    assert set(search.best_params_) == {"features__pca"}
    ext = external_validation(with_clinical("logreg", ["lab"]), frame.iloc[:100], y[:100], frame.iloc[100:],
                              y[100:], n_bootstrap=0)
    assert ext.external_auc > 0.7


def test_pca_reduces_only_the_embedding_block():
    X, y, clin, _ = _data(n=60, d=20)
    ft = ClinicalFeatures(["lab", "sex"], pca=3).fit(clinical_frame(X, clin))
    names = list(ft.get_feature_names_out())
    assert sum(n.startswith("image__") for n in names) == 3
    assert any(n.startswith("numeric__") for n in names) and any(n.startswith("categorical__") for n in names)


@pytest.fixture(scope="module")
def phantoms():
    from cxr_embed.datasets import make_synthetic_cxr

    ds = make_synthetic_cxr(240, size=32, seed=3, findings=("opacity",), clinical=True)
    # cheap image features of the phantoms: 4x4 block means of the pixels
    img = ds.images.reshape(len(ds), 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(ds), -1)
    return img, ds.labels


def test_importance_recovers_a_planted_covariate_and_ranks_noise_near_zero(phantoms):
    X, labels = phantoms
    y = labels["opacity"].to_numpy()
    cols = ["wbc", "bmi", "smoker"]
    imp = clinical_importance(make_classifier("logreg", clinical=cols, C=1.0), X, y, labels["patient_id"],
                              clinical=labels[cols], n_splits=3, n_permutations=2, random_state=0)
    imp = imp.set_index("feature")
    assert list(imp.index[:1]) == ["wbc"]  # the planted predictive covariate comes first
    assert imp.loc["wbc", "importance"] > 0.05 and imp.loc["wbc", "ci_low"] > 0  # its CI excludes zero
    assert abs(imp.loc["bmi", "importance"]) < 0.02 and imp.loc["bmi", "ci_low"] < 0 < imp.loc["bmi", "ci_high"] + 1e-9
    assert abs(imp.loc["smoker", "importance"]) < 0.02
    assert imp.loc["image", "kind"] == "image" and imp.loc["image", "n_columns"] == X.shape[1]
    assert imp.loc["wbc", "kind"] == "numeric" and imp.loc["smoker", "kind"] == "categorical"
    assert len(imp.attrs["per_fold"]["wbc"]) == 3
    fig = plot_importance(imp.reset_index())
    assert fig.axes[0].get_xlabel() == "ROC AUC lost"


def test_the_importance_table_goes_into_the_report_as_it_is(tmp_path):
    from cxr_embed.evaluate.figures import plot_importance as figure_of_evaluate
    from cxr_embed.evaluate.report import write_report

    assert plot_importance is figure_of_evaluate  # one figure, re-exported by learn.clinical
    X, y, clin, groups = _data(n=80)
    imp = clinical_importance(with_clinical("logreg", ["lab", "sex"], C=1.0), X, y, groups, clinical=clin,
                              n_splits=3, n_permutations=2, random_state=0)
    html = write_report(tmp_path, title="clinical", importance=imp).read_text()
    assert "3 folds, 2 shuffles per block and fold" in html
    assert pd.read_csv(tmp_path / "importance.csv")["feature"].tolist() == imp["feature"].tolist()


def test_soft_targets_keep_the_clinical_frame_whole():
    X, y, clin, groups = _data(n=80)
    Y = y.astype(float)
    Y[::5] = -1.0  # uncertain: soft targets under ones_smoothed, expanded into weighted rows
    frame = clinical_frame(X, clin)
    ml = MultiLabelClassifier(make_classifier("logreg", clinical=["lab", "sex"]), policy="ones_smoothed",
                              random_state=0).fit(frame, Y, groups=groups)
    assert ml.predict_proba(frame).shape == (80, 1)
    from cxr_embed.learn.labels import soft_to_weighted

    Xw, yw, w = soft_to_weighted(frame.iloc[:4], np.array([1.0, 0.7, 0.0, 0.2]))
    assert isinstance(Xw, pd.DataFrame) and list(Xw.columns) == list(frame.columns) and len(Xw) == 6
    assert Xw["sex"].iloc[4] == frame["sex"].iloc[1] and yw.tolist() == [1, 1, 0, 1, 0, 0]


def test_importance_input_checks():
    X, y, clin, groups = _data(n=40)
    est = with_clinical("logreg", ["lab"])
    with pytest.raises(ValueError, match="0/1"):
        clinical_importance(est, X, y * 2, groups, clinical=clin)
    with pytest.raises(ClinicalDataError, match="not in the input"):
        clinical_importance(est, X, y, groups, clinical=clin, blocks={"x": ["nope"]})
    with pytest.raises(TypeError, match="only apply"):
        with_clinical(make_classifier("logreg"), ["lab"], C=1.0)
    assert clin_mod.__all__ and all(hasattr(clin_mod, n) for n in clin_mod.__all__)
