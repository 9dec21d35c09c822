"""Patient-grouped validation: leakage guard, repeated splits, CV, nested CV, external, learning curve."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score

from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier
from cxr_embed.exceptions import LeakageError
from cxr_embed.learn.validation import (
    CVResult,
    GroupedRepeatedKFold,
    check_no_leakage,
    cross_validate_grouped,
    external_validation,
    grouped_kfold,
    learning_curve_patients,
    nested_cv,
)


def _data(n_patients=60, per=2, dim=6, seed=0, noise=0.7):
    rng = np.random.default_rng(seed)
    n = n_patients * per
    groups = np.repeat([f"p{i:03d}" for i in range(n_patients)], per)
    patient_effect = np.repeat(rng.normal(size=(n_patients, dim)), per, axis=0)
    X = patient_effect + 0.3 * rng.normal(size=(n, dim))
    y = (X[:, 0] + noise * rng.normal(size=n) > 0).astype(int)
    return X, y, groups


def test_leakage_guard_raises_naming_patient():
    check_no_leakage(["a", "b"], ["c"])
    with pytest.raises(LeakageError, match="'b'") as info:
        check_no_leakage(["a", "b", "b"], ["b", "c"])
    assert isinstance(info.value, ValueError)
    assert "1 patient(s)" in str(info.value)


def test_grouped_kfold_never_leaks_over_5_repeats_and_covers_rows():
    X, y, groups = _data(n_patients=40, per=3)
    splits = grouped_kfold(y, groups, n_splits=5, n_repeats=5, random_state=0)
    assert len(splits) == 25
    for r in range(5):
        tests = np.concatenate([te for _, te in splits[r * 5:(r + 1) * 5]])
        assert np.array_equal(np.sort(tests), np.arange(len(y)))  # each row tested once per repeat
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    # repeats differ, and the seed makes them reproducible
    assert not np.array_equal(splits[0][1], splits[5][1]) or not np.array_equal(splits[1][1], splits[6][1])
    again = grouped_kfold(y, groups, n_splits=5, n_repeats=5, random_state=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))


def test_splitter_usable_in_sklearn_and_requires_groups():
    X, y, groups = _data()
    cv = GroupedRepeatedKFold(n_splits=3, n_repeats=2, random_state=0)
    assert cv.get_n_splits() == 6
    scores = cross_val_score(LogisticRegression(), X, y, groups=groups, cv=cv, scoring="roc_auc")
    assert scores.shape == (6,) and scores.mean() > 0.7
    search = GridSearchCV(LogisticRegression(), {"C": [1.0]}, cv=cv, scoring="roc_auc")
    search.fit(X, y, groups=groups)
    assert search.n_splits_ == 6
    import sklearn

    with sklearn.config_context(enable_metadata_routing=True):  # also works with routing switched on
        routed = GridSearchCV(LogisticRegression(), {"C": [1.0]}, cv=cv).fit(X, y, groups=groups)
        assert routed.n_splits_ == 6
    with pytest.raises(ValueError, match="needs groups"):
        list(cv.split(X, y))
    with pytest.raises(ValueError, match="cannot fill"):
        list(GroupedRepeatedKFold(n_splits=5).split(X[:8], y[:8], groups[:8]))


def test_cross_validate_grouped_matches_manual_oof():
    X, y, groups = _data()
    res = cross_validate_grouped(LogisticRegression(), X, y, groups, n_splits=4, n_repeats=2,
                                 random_state=1, n_bootstrap=200)
    assert isinstance(res, CVResult)
    assert res.oof.shape == (2, len(y), 1) and not np.isnan(res.oof).any()
    assert len(res.folds) == 8 and set(res.folds["repeat"]) == {0, 1}
    row = res.summary.loc["y"]
    assert row.ci_low <= row.auc <= row.ci_high
    assert 0.75 < res.mean_auc <= 1.0
    assert row.n_patients == 60 and row.n == 120
    # the pooled out-of-fold AUC of repeat 0 is the one reported inside the mean
    from sklearn.metrics import roc_auc_score
    aucs = [roc_auc_score(y, res.oof[r, :, 0]) for r in range(2)]
    assert np.isclose(row.auc, np.mean(aucs))


def test_cross_validate_multilabel_needs_wrapper_and_scores_known_rows():
    X, y, groups = _data()
    Y = np.stack([y, (X[:, 1] > 0).astype(float)], axis=1).astype(float)
    Y[:20, 0] = np.nan
    Y[20:40, 1] = -1
    with pytest.raises(ValueError, match="MultiLabelClassifier"):
        cross_validate_grouped(LogisticRegression(), X, Y, groups)
    with pytest.raises(ValueError, match="not 0/1"):
        cross_validate_grouped(LogisticRegression(), X, Y[:, 1], groups)
    Ydf = pd.DataFrame(Y, columns=["a", "b"])
    res = cross_validate_grouped(MultiLabelClassifier(LogisticRegression(), policy="ignore"), X, Ydf, groups,
                                 n_splits=3, random_state=0, n_bootstrap=100)
    assert list(res.summary.index) == ["a", "b"]
    assert res.summary.loc["a", "n"] == 100 and res.summary.loc["b", "n"] == 100
    assert (res.summary["auc"] > 0.7).all()


def test_nested_cv_tunes_inside_outer_training_patients():
    X, y, groups = _data()
    est = make_classifier("logreg", search="grid", cv=3, random_state=0, param_space={"clf__C": [0.001, 1.0]})
    res = nested_cv(est, X, y, groups, n_splits=3, random_state=0, n_bootstrap=0)
    assert len(res.best_params) == 3 and all("clf__C" in p for p in res.best_params)
    assert res.summary.loc["y", "auc"] > 0.7
    assert np.isnan(res.summary.loc["y", "ci_low"])  # n_bootstrap=0: no interval
    with pytest.raises(ValueError, match="tunes itself"):
        nested_cv(LogisticRegression(), X, y, groups)


def test_external_validation_never_mixes_and_reports_both():
    X, y, groups = _data(n_patients=80)
    train = np.isin(groups, np.unique(groups)[:50])
    res = external_validation(LogisticRegression(), X[train], y[train], X[~train], y[~train],
                              groups_train=groups[train], groups_ext=groups[~train], internal_splits=3,
                              n_bootstrap=200, random_state=0)
    assert list(res.summary["setting"]) == ["internal", "external"]
    ext = res.summary.iloc[1]
    assert ext.n == (~train).sum() and ext.n_patients == 30
    assert ext.ci_low <= ext.auc <= ext.ci_high and res.external_auc > 0.7
    # scores equal those of a model fitted on the training set alone
    ref = LogisticRegression().fit(X[train], y[train]).predict_proba(X[~train])[:, 1]
    np.testing.assert_allclose(res.y_score[:, 0], ref)
    with pytest.raises(LeakageError):
        external_validation(LogisticRegression(), X[train], y[train], X, y, groups_train=groups[train],
                            groups_ext=groups)


def test_learning_curve_rises_with_patients():
    X, y, groups = _data(n_patients=100, per=2, noise=0.3)
    curve = learning_curve_patients(LogisticRegression(), X, y, groups, sizes=[3, 10, 70], n_splits=4,
                                    n_repeats=2, random_state=0, n_bootstrap=50)
    assert list(curve["n_patients"]) == [3, 10, 70]
    auc = curve["auc"].to_numpy()
    assert auc[0] < auc[1] < auc[2] and auc[-1] > 0.9
    assert (curve["n_repeats"] >= 1).all()
    assert (curve["ci_low"] <= curve["auc"]).all() and (curve["auc"] <= curve["ci_high"]).all()
    with pytest.warns(UserWarning, match="clipped"):
        learning_curve_patients(LogisticRegression(), X, y, groups, sizes=[500], n_splits=4, n_repeats=1,
                                random_state=0, n_bootstrap=0)


# ----------------------------------------------------------------- a class held by too few patients
def test_a_training_fold_without_one_class_is_a_named_error_before_any_fit():
    """One positive patient: the fold that tests it trains on negatives only, which scikit-learn's
    classifiers refuse with a bare ValueError after the other folds ran; say so first, by name."""
    from cxr_embed.exceptions import InsufficientDataError
    from cxr_embed.learn.classifiers import MultiLabelClassifier, make_classifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    groups = np.repeat(np.arange(10), 2).astype(str)
    y = (groups == "0").astype(int)  # both images of one patient are the only positives
    with pytest.raises(InsufficientDataError, match=r"only one class of 'y' \(1 patient\(s\) positive"):
        cross_validate_grouped(make_classifier("logreg"), X, y, groups, n_splits=3, n_bootstrap=10)
    # a MultiLabelClassifier gives such a label a constant score in that fold, and the AUC is still defined
    res = cross_validate_grouped(MultiLabelClassifier(make_classifier("logreg")), X, y, groups, n_splits=3,
                                 n_bootstrap=10)
    assert np.isfinite(res.summary["auc"]).all()


def test_a_stack_whose_inner_fold_lacks_a_class_says_so_by_name():
    from cxr_embed.exceptions import InsufficientDataError
    from cxr_embed.learn.classifiers import make_classifier
    from cxr_embed.learn.stacking import StackedEnsemble

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4))
    groups = np.repeat(np.arange(6), 2).astype(str)
    y = (groups == "0").astype(int)
    stack = StackedEnsemble([("a", make_classifier("logreg")), ("b", make_classifier("knn"))], meta="logreg", cv=3)
    with pytest.raises(InsufficientDataError, match="stacking"):
        stack.fit(X, y, groups=groups)


def test_too_few_images_for_the_stacks_folds_and_a_one_class_auc_are_named_errors():
    from cxr_embed.evaluate.metrics import roc_auc_ci
    from cxr_embed.exceptions import InsufficientDataError
    from cxr_embed.learn.stacking import StackedEnsemble

    X = np.random.default_rng(0).normal(size=(4, 3))
    stack = StackedEnsemble([("a", make_classifier("logreg")), ("b", make_classifier("knn"))], meta="logreg", cv=3)
    with pytest.raises(InsufficientDataError, match=r"every class has fewer than 3 \(0: 2, 1: 2\).*cv=2"):
        stack.fit(X, [0, 1, 0, 1], groups=["a", "b", "c", "d"])
    with pytest.raises(InsufficientDataError, match="only negatives"):
        roc_auc_ci(np.zeros(10), np.linspace(0, 1, 10), n_bootstrap=10)
