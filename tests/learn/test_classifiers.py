"""The classifier catalogue, the grouped search, the XGBoost and multi-label wrappers."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from cxr_embed.learn.classifiers import (
    GroupedSearchCV,
    MultiLabelClassifier,
    XGBoostClassifier,
    default_search_space,
    list_classifiers,
    make_classifier,
)
from cxr_embed.learn.neighbors import ClampedKNeighborsClassifier


def _data(n=60, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0.3).astype(int)
    groups = np.arange(n) // 2
    return X, y, groups


@pytest.mark.parametrize("name", list_classifiers())
def test_every_classifier_fits_tiny_data_with_probabilities(name):
    X, y, _ = _data()
    params = {"n_estimators": 30} if name in ("random_forest", "extra_trees", "xgboost") else {}
    if name == "hist_gradient_boosting":
        params = {"max_iter": 30}
    clf = make_classifier(name, random_state=0, n_jobs=1, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP convergence on 60 rows
        clf.fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (60, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert roc_auc_score(y, proba[:, 1]) > 0.75  # learns the signal, not constant
    assert clf.steps[-1][0] == "clf"
    # the default space names real parameters of this pipeline
    assert set(default_search_space(name)) <= set(clf.get_params(deep=True))


def test_make_classifier_options_and_errors():
    pipe = make_classifier("knn", pca=3, n_neighbors=7)
    assert [s for s, _ in pipe.steps] == ["scale", "pca", "clf"]
    assert pipe.get_params()["clf__n_neighbors"] == 7
    assert make_classifier("linear_svm", C=0.5).get_params()["clf__estimator__C"] == 0.5
    assert make_classifier("logreg").get_params()["clf__C"] == 0.01  # strongly regularised default
    assert make_classifier("rf").get_params()["clf__class_weight"] == "balanced"
    assert make_classifier("xgboost", class_weight=None).get_params()["clf__scale_pos_weight"] is None
    assert make_classifier("random_forest", n_jobs=2).get_params()["clf__n_jobs"] == 2
    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("decision_stump")
    with pytest.raises(ValueError, match="not a parameter"):
        make_classifier("logreg", n_estimators=5)
    with pytest.raises(ValueError, match="search must be"):
        make_classifier("logreg", search="bayes")


def test_xgboost_scale_pos_weight_computed_in_fit():
    X, y, _ = _data(n=80)
    y = np.where(np.arange(80) < 20, 1, 0)  # 20 positives, 60 negatives
    clf = XGBoostClassifier(n_estimators=5, n_jobs=1, random_state=0).fit(X, y)
    assert clf.scale_pos_weight_ == pytest.approx(3.0)
    assert clf.model_.get_params()["scale_pos_weight"] == pytest.approx(3.0)
    assert clf.model_.get_params()["tree_method"] == "hist" and clf.model_.get_params()["n_jobs"] == 1
    w = np.where(y == 1, 3.0, 1.0)
    assert XGBoostClassifier(n_estimators=5).fit(X, y, sample_weight=w).scale_pos_weight_ == pytest.approx(1.0)
    assert XGBoostClassifier(n_estimators=5, scale_pos_weight=None).fit(X, y).scale_pos_weight_ == 1.0
    labels = np.array(["neg", "pos"])[y]
    assert set(XGBoostClassifier(n_estimators=5).fit(X, labels).predict(X)) <= {"neg", "pos"}


def test_grouped_search_passes_groups_to_the_splitter(monkeypatch):
    X, y, groups = _data()
    seen = []
    from cxr_embed.learn import validation

    original = validation.check_no_leakage

    def spy(train_groups, test_groups):
        seen.append((set(train_groups), set(test_groups)))
        return original(train_groups, test_groups)

    monkeypatch.setattr(validation, "check_no_leakage", spy)
    est = make_classifier("logreg", search="grid", cv=3, random_state=0).fit(X, y, groups=groups)
    assert isinstance(est, GroupedSearchCV)
    assert len(seen) == 3 and all(not (tr & te) for tr, te in seen)
    assert all(max(tr | te) < 30 for tr, te in seen)  # the splitter saw patient ids, not row numbers
    assert est.best_params_["clf__C"] in default_search_space("logreg")["clf__C"]
    assert est.predict_proba(X).shape == (60, 2)
    rnd = make_classifier("extra_trees", search="random", n_iter=2, cv=3, random_state=0, n_estimators=10)
    rnd.fit(X, y, groups=groups)
    assert len(rnd.cv_results_["params"]) == 2
    with pytest.warns(UserWarning, match="own patient"):
        make_classifier("logreg", search="grid", cv=2, param_space={"clf__C": [1.0]}).fit(X, y)


class _Recorder(LogisticRegression):
    """LogisticRegression that remembers its training rows (to see which rows each label used)."""

    def fit(self, X, y, sample_weight=None):
        self.fit_y_ = np.asarray(y).copy()
        self.fit_weight_ = None if sample_weight is None else np.asarray(sample_weight).copy()
        return super().fit(X, y, sample_weight=sample_weight)


@pytest.mark.parametrize("policy, rows_b, classes_b", [
    ("ignore", 100, [0, 1]), ("zeros", 120, [0, 1]), ("ones", 120, [0, 1]),
    ("ones_smoothed", 140, [0, 1]), ("multiclass", 120, [0, 1, 2]),
])
def test_multilabel_trains_each_label_on_its_known_rows(policy, rows_b, classes_b):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 5))
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(float)
    Y[:30, 0] = np.nan
    Y[30:50, 1] = -1
    Ydf = pd.DataFrame(Y, columns=["a", "b"])
    clf = MultiLabelClassifier(_Recorder(), policy=policy, random_state=0).fit(X, Ydf)
    assert clf.labels_ == ["a", "b"] and len(clf.estimators_) == 2
    est_a, est_b = clf.estimators_
    assert len(est_a.fit_y_) == 90  # missing labels never used
    assert len(est_b.fit_y_) == rows_b  # uncertain rows used except under ignore (soft rows twice)
    assert list(est_b.classes_) == classes_b
    if policy == "ones_smoothed":
        w = est_b.fit_weight_
        assert w is not None and np.all((w[-20:] >= 0.15 - 1e-12) & (w[-20:] <= 0.45 + 1e-12))
    proba = clf.predict_proba(X)
    assert proba.shape == (120, 2) and ((proba >= 0) & (proba <= 1)).all()
    assert clf.predict(X).shape == (120, 2)
    known = ~np.isnan(Y[:, 1]) & (Y[:, 1] != -1)
    assert roc_auc_score(Y[known, 1], proba[known, 1]) > 0.9
    if policy == "multiclass":  # p(pos) / (p(pos) + p(neg)), as in CheXpert
        p = est_b.predict_proba(X)
        np.testing.assert_allclose(proba[:, 1], p[:, 1] / (p[:, 0] + p[:, 1]))


def test_multilabel_soft_labels_use_sample_weights():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(100, 3))
    Y = (X[:, :1] > 0).astype(float)
    Y[::4, 0] = -1
    clf = MultiLabelClassifier(make_classifier("logreg", C=1.0), policy="ones_smoothed", random_state=0)
    clf.fit(X, Y, groups=np.arange(100) // 2)
    # the expanded data: 25 soft rows appear twice (positive and negative copies)
    ref_X, ref_y, ref_w = _expanded(Y, X)
    ref = make_classifier("logreg", C=1.0).fit(ref_X, ref_y, clf__sample_weight=ref_w)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 0], ref.predict_proba(X)[:, 1], rtol=1e-6)
    with pytest.warns(UserWarning, match="rounded"):
        MultiLabelClassifier(make_classifier("knn"), policy="ones_smoothed", random_state=0).fit(X, Y)


def _expanded(Y, X):
    from cxr_embed.learn.labels import apply_uncertainty, soft_to_weighted

    y, mask = apply_uncertainty(Y, "ones_smoothed", random_state=0)
    return soft_to_weighted(X[mask[:, 0]], y[mask[:, 0], 0])


def test_multilabel_single_class_label_gets_prior_and_search_gets_groups():
    X, y, groups = _data()
    Y = np.stack([y, np.zeros(60)], axis=1)
    with pytest.warns(UserWarning, match="constant prior"):
        clf = MultiLabelClassifier(LogisticRegression()).fit(X, Y)
    np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 0.0)
    inner = make_classifier("logreg", search="grid", cv=3, random_state=0, param_space={"clf__C": [0.1, 1.0]})
    clf = MultiLabelClassifier(inner).fit(X, y[:, None].astype(float), groups=groups)
    assert hasattr(clf.estimators_[0], "best_params_")
    assert clf.predict(X).shape == (60, 1)
    assert MultiLabelClassifier(LogisticRegression()).fit(X, y).predict(X).shape == (60,)


_MLC_REASON = ("MultiLabelClassifier's target is a CheXpert-coded label matrix (1/0/-1/NaN, NaN = missing "
               "is valid); scikit-learn's generic classifier checks feed arbitrary class labels (2, 'one', "
               "continuous values) that are refused by design")
_MLC_XFAIL = {name: _MLC_REASON for name in (
    "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
    "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_dtype_object",
    "check_f_contiguous_array_estimator", "check_classifier_data_not_an_array", "check_classifiers_classes",
    "check_classifiers_train", "check_classifiers_regression_target", "check_supervised_y_no_nan",
    "check_supervised_y_2d", "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1feature", "check_dict_unchanged", "check_fit2d_predict1d",
)}
_XGB_XFAIL = {"check_sample_weight_equivalence_on_dense_data":
              "row subsampling (subsample=0.8) and histogram binning make weights differ from repeated rows"}


def _expected_failed(estimator):
    if isinstance(estimator, MultiLabelClassifier):
        return _MLC_XFAIL
    if isinstance(estimator, XGBoostClassifier):
        return _XGB_XFAIL
    return {}


@parametrize_with_checks(
    [XGBoostClassifier(n_estimators=3, max_depth=2, n_jobs=1, random_state=0),
     MultiLabelClassifier(LogisticRegression()), ClampedKNeighborsClassifier()],
)
def test_sklearn_estimator_checks(estimator, check):
    # Checks that do not apply by design are skipped with their reason, not run as xfail: pytest
    # formats an xfail's traceback with ast.parse, which CPython 3.11.7 can crash on
    # ("AST constructor recursion depth mismatch", an INTERNALERROR that ended a CI run).
    reason = _expected_failed(estimator).get(getattr(check, "func", check).__name__)
    if reason:
        pytest.skip(f"not applicable: {reason}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.slow
@parametrize_with_checks([GroupedSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=2)])
def test_sklearn_estimator_checks_grouped_search(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_clone_keeps_params():
    est = MultiLabelClassifier(make_classifier("knn"), policy="U-Zeros", random_state=3)
    c = clone(est)
    assert c.policy == "U-Zeros" and c.random_state == 3 and c.estimator is not est.estimator


# ----------------------------------------------------------------- patient-grouped calibration
from sklearn.svm import LinearSVC  # noqa: E402

from cxr_embed.learn.classifiers import GroupedCalibratedClassifierCV, GroupedPipeline  # noqa: E402


class _RecordingSVC(LinearSVC):
    """LinearSVC that remembers which patients (column 0 of X holds the patient id) it was fitted on.

    Scaling is off in these tests, so column 0 reaches it unchanged."""

    seen: list = []

    def fit(self, X, y, sample_weight=None):
        type(self).seen.append(np.asarray(X)[:, 0].round().astype(int).copy())
        return super().fit(X, y, sample_weight=sample_weight)


def _patient_data(n_patients=30, per=4, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per)
    y = np.repeat(rng.permutation(np.tile([0, 1], n_patients // 2)), per)
    X = np.column_stack([groups.astype(float), y + rng.normal(size=groups.size), rng.normal(size=(groups.size, 3))])
    order = rng.permutation(groups.size)  # images of one patient are not adjacent
    return X[order], y[order], groups[order]


def _split_patients(groups, seen):
    """Patients some of whose images were fitted and some not, per recorded fit."""
    counts = {g: int((groups == g).sum()) for g in np.unique(groups)}
    bad = []
    for fitted in seen:
        ids, n = np.unique(fitted, return_counts=True)
        bad.extend(int(g) for g, k in zip(ids, n) if k != counts[g])
    return bad


def test_grouped_calibration_keeps_patients_whole():
    X, y, groups = _patient_data()
    _RecordingSVC.seen = []
    clf = GroupedCalibratedClassifierCV(_RecordingSVC(max_iter=5000), cv=3).fit(X, y, groups=groups)
    assert len(_RecordingSVC.seen) == 3 and clf.cv == 3  # the user's parameter is restored
    assert _split_patients(groups, _RecordingSVC.seen) == []
    # the plain scikit-learn split does cut patients (what the class exists to avoid)
    _RecordingSVC.seen = []
    GroupedCalibratedClassifierCV(_RecordingSVC(max_iter=5000), cv=3).fit(X, y)
    assert _split_patients(groups, _RecordingSVC.seen) != []
    assert clf.predict_proba(X).shape == (len(y), 2)


def test_grouped_calibration_errors_and_pipeline_passes_groups():
    X, y, groups = _patient_data()
    two = np.isin(groups, [0, 1])  # two patients cannot fill three grouped folds
    with pytest.raises(ValueError, match="2 patients cannot fill cv=3"):
        GroupedCalibratedClassifierCV(LinearSVC(), cv=3).fit(X[two], y[two], groups=groups[two])
    with pytest.raises(ValueError, match="groups has 5 rows"):
        GroupedCalibratedClassifierCV(LinearSVC(), cv=3).fit(X, y, groups=groups[:5])
    pipe = make_classifier("linear_svm", scale=False, random_state=0)
    assert isinstance(pipe, GroupedPipeline)
    pipe.set_params(clf__estimator=_RecordingSVC(max_iter=5000))
    _RecordingSVC.seen = []
    pipe.fit(X, y, groups=groups)
    assert len(_RecordingSVC.seen) == 3 and _split_patients(groups, _RecordingSVC.seen) == []


def test_grouped_search_hands_groups_to_each_candidate():
    X, y, groups = _patient_data(n_patients=40)
    search = make_classifier("linear_svm", search="grid", cv=2, scale=False, random_state=0,
                             param_space={"clf__estimator__C": [0.1, 1.0]})
    search.set_params(estimator__clf__estimator=_RecordingSVC(max_iter=5000))
    _RecordingSVC.seen = []
    search.fit(X, y, groups=groups)
    # 2 candidates x 2 outer folds x 3 calibration folds, then the refit's 3
    assert len(_RecordingSVC.seen) == 15
    assert _split_patients(groups, _RecordingSVC.seen) == []


def test_cross_validate_grouped_calibrates_within_training_patients():
    from cxr_embed.learn.validation import cross_validate_grouped

    X, y, groups = _patient_data(n_patients=30)
    pipe = make_classifier("linear_svm", scale=False, random_state=0)
    pipe.set_params(clf__estimator=_RecordingSVC(max_iter=5000))
    _RecordingSVC.seen = []
    res = cross_validate_grouped(pipe, X, y, groups, n_splits=3, n_bootstrap=50, random_state=0)
    assert len(_RecordingSVC.seen) == 9 and _split_patients(groups, _RecordingSVC.seen) == []
    assert res.oof.shape[-1] >= 1


# ----------------------------------------------------------------- kNN on fewer rows than neighbours
def test_knn_fitted_on_fewer_rows_than_its_neighbours_lets_them_all_vote(caplog):
    """Small data (an inner fold of a stack, a nested search) may hold fewer rows than n_neighbors=15:
    every row votes, with a log line, instead of scikit-learn's ValueError at predict time."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 5)), np.array([0, 1] * 4)
    caplog.set_level("INFO", logger="cxr_embed")
    clf = make_classifier("knn").fit(X, y)  # 15 neighbours, 8 rows
    assert clf[-1].n_neighbors_ == 8 and "8 training rows" in caplog.text
    p = clf.predict_proba(rng.normal(size=(3, 5)))
    assert p.shape == (3, 2) and np.isfinite(p).all()
    # uniform weights over all 8 rows: every query gets the class shares
    np.testing.assert_allclose(make_classifier("knn", weights="uniform").fit(X, y).predict_proba(X)[:, 1], 0.5)
    # enough rows: exactly scikit-learn's answer, and no log line
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X2, y2 = rng.normal(size=(40, 5)), np.array([0, 1] * 20)
    caplog.clear()
    ours = make_classifier("knn").fit(X2, y2)
    theirs = make_pipeline(StandardScaler(), KNeighborsClassifier(15, weights="distance")).fit(X2, y2)
    np.testing.assert_array_equal(ours.predict_proba(X2[:7]), theirs.predict_proba(X2[:7]))
    assert ours[-1].n_neighbors_ == 15 and "training rows" not in caplog.text


def test_a_stack_with_knn_runs_on_few_patients():
    """The demo's stage 5 (logreg + kNN stacked, patient-grouped CV) with 2 outer folds of 36 images
    ended in scikit-learn's 'Expected n_neighbors <= n_samples_fit' (found by `demo.py --quick --folds 2`)."""
    from cxr_embed import StackedEnsemble, cross_validate_grouped

    rng = np.random.default_rng(1)
    X = rng.normal(size=(36, 6))
    Y = np.stack([(X[:, 0] + rng.normal(0, 0.5, 36) > 0), (X[:, 1] > 0)], axis=1).astype(float)
    groups = np.repeat(np.arange(18), 2).astype(str)
    stack = StackedEnsemble([("logreg", make_classifier("logreg")), ("knn", make_classifier("knn"))],
                            meta="logreg", cv=3, random_state=0)
    cv = cross_validate_grouped(MultiLabelClassifier(stack), X, Y, groups, n_splits=2, random_state=0, n_bootstrap=20)
    assert np.isfinite(cv.summary["auc"]).all()


# ----------------------------------------------------------------- calibrated SVMs on few positives
@pytest.mark.parametrize("name", ["linear_svm", "rbf_svm"])
def test_calibrated_svms_use_as_many_calibration_folds_as_the_rarer_class_allows(name, caplog):
    """Three internal calibration folds need three patients of each class; with two they use two
    (scikit-learn raised 'Requesting 3-fold cross-validation ...' or 'needs samples of at least 2
    classes'), with one they raise a named error that says what to do."""
    from cxr_embed.exceptions import InsufficientDataError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 6))
    y = np.zeros(12, int)
    y[[0, 2]] = 1  # two positive images of two patients
    groups = np.repeat(np.arange(6), 2).astype(str)
    caplog.set_level("INFO", logger="cxr_embed")
    for fit_groups in (groups, None):
        clf = make_classifier(name, random_state=0).fit(X, y, groups=fit_groups)
        p = clf.predict_proba(X)
        assert p.shape == (12, 2) and np.isfinite(p).all()
        assert clf[-1].cv == 3  # the parameter stays as set
    assert "2 calibration folds" in caplog.text
    y1 = np.zeros(12, int)
    y1[[0, 1]] = 1  # two positive images of one patient
    with pytest.raises(InsufficientDataError, match="1 patient.*logreg"):
        make_classifier(name, random_state=0).fit(X, y1, groups=groups)
    y1[1] = 0
    with pytest.raises(InsufficientDataError, match="logreg"):
        make_classifier(name, random_state=0).fit(X, y1)


def test_fewer_patients_than_folds_is_a_named_error():
    from cxr_embed import cross_validate_grouped
    from cxr_embed.exceptions import CxrEmbedError, InsufficientDataError

    X, y = np.zeros((6, 2)), np.array([0, 1] * 3)
    with pytest.raises(InsufficientDataError, match="3 patients cannot fill n_splits=5") as info:
        cross_validate_grouped(make_classifier("logreg"), X, y, np.repeat(["a", "b", "c"], 2), n_splits=5)
    assert isinstance(info.value, CxrEmbedError) and isinstance(info.value, ValueError)
