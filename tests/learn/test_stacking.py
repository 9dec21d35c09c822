"""Tests of cxr_embed.learn.stacking: entropy weights by hand, and stacking that never sees
in-sample member predictions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import StackingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedGroupKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from cxr_embed.exceptions import LeakageError
from cxr_embed.learn.stacking import AveragingEnsemble, StackedEnsemble, average_predictions, entropy_weights

# hand-computed: 1 - H2(p), H2(p) = -p log2 p - (1-p) log2(1-p)
# H2(0.9) = 0.9*0.1520031 + 0.1*3.3219281 = 0.4689956 -> w = 0.5310044
# H2(0.2) = 0.2*2.3219281 + 0.8*0.3219281 = 0.7219281 -> w = 0.2780719
W_09, W_02 = 0.5310044064, 0.2780719051


# --------------------------------------------------------------------------- averaging
def test_entropy_weights_hand_computed():
    w = entropy_weights([0.0, 0.1, 0.2, 0.5, 0.8, 0.9, 1.0])
    np.testing.assert_allclose(w, [1.0, W_09, W_02, 0.0, W_02, W_09, 1.0], atol=1e-9)
    assert entropy_weights(np.array([[0.0, 1.0]])).shape == (1, 2)  # 0 log 0 = 0, no NaN
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        entropy_weights([1.2])
    with pytest.raises(ValueError):
        entropy_weights([np.nan])


def test_entropy_weighted_average_hand_computed():
    members = [[0.9, 0.5, 0.0], [0.5, 0.5, 0.6], [0.2, 0.5, 1.0]]
    got = average_predictions(members, method="entropy")
    # sample 0: (0.9*W_09 + 0.5*0 + 0.2*W_02) / (W_09 + W_02) = 0.53351835 / 0.80907631
    assert got[0] == pytest.approx(0.6594165954, abs=1e-9)
    # sample 1: every member says 0.5 -> all weights 0 -> plain mean 0.5
    assert got[1] == 0.5
    # sample 2: weights 1, 1 - H2(0.6) = 0.0290052, 1
    w06 = 1 + 0.6 * np.log2(0.6) + 0.4 * np.log2(0.4)
    assert got[2] == pytest.approx((0.0 + 0.6 * w06 + 1.0) / (2 + w06))
    np.testing.assert_allclose(average_predictions(members), np.mean(members, axis=0))


def test_average_predictions_multilabel_and_errors():
    rng = np.random.default_rng(0)
    P = [rng.uniform(size=(10, 3)) for _ in range(4)]
    out = average_predictions(P, method="entropy")
    assert out.shape == (10, 3)
    W = entropy_weights(np.stack(P))
    np.testing.assert_allclose(out, (W * np.stack(P)).sum(0) / W.sum(0))
    with pytest.raises(ValueError, match="same samples"):
        average_predictions([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="method"):
        average_predictions(P, method="median")
    with pytest.raises(ValueError, match="at least one"):
        average_predictions([])


def _informative(rng, n_patients=80, per=2, dims=(4, 6)):
    groups = np.repeat(np.arange(n_patients), per)
    y = np.repeat(rng.integers(0, 2, n_patients), per)
    Xs = [y[:, None] * 0.8 + rng.normal(0, 1, (len(y), d)) for d in dims]
    return Xs, y, groups


def test_averaging_ensemble_matches_average_of_members():
    rng = np.random.default_rng(1)
    Xs, y, _ = _informative(rng)
    members = [("a", LogisticRegression()), ("b", KNeighborsClassifier(9))]
    for method in ("mean", "entropy"):
        ens = AveragingEnsemble(members, method=method).fit(Xs, y)
        ref = [clone(e).fit(x, y).predict_proba(x)[:, 1] for (_, e), x in zip(members, Xs)]
        np.testing.assert_allclose(ens.predict_proba(Xs)[:, 1], average_predictions(ref, method=method))
        assert set(ens.predict(Xs)) <= {0, 1}
    # passthrough: the columns are member probabilities already
    Z = np.column_stack([np.full(5, 0.9), np.full(5, 0.2)])
    pt = AveragingEnsemble("passthrough", method="entropy").fit(Z, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(pt.predict_proba(Z)[:, 1], 0.6594165954)


# --------------------------------------------------------------------------- stacking: no in-sample leakage
def test_memorising_member_gets_out_of_fold_predictions_only():
    """A 1-NN on pure noise is perfect in-sample and at chance out of fold.

    Stacking on in-sample predictions would make the meta-learner trust it; with OOF
    predictions the stack's held-out AUC stays at chance.
    """
    rng = np.random.default_rng(2)
    n, n_test = 300, 400
    groups = np.arange(n) // 2
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    X = rng.normal(size=(n, 10))
    X[1::2] = X[::2] + rng.normal(0, 0.01, (n // 2, 10))  # a patient's two images look alike
    member = KNeighborsClassifier(n_neighbors=1)
    assert roc_auc_score(y, clone(member).fit(X, y).predict_proba(X)[:, 1]) == 1.0  # in-sample: perfect

    meta_seen = {}

    class SpyMeta(LogisticRegression):
        def fit(self, Z, t, sample_weight=None):
            meta_seen["Z"] = np.array(Z)
            return super().fit(Z, t, sample_weight=sample_weight)

    stack = StackedEnsemble([("nn", member)], meta=SpyMeta(), cv=5, random_state=0).fit(X, y, groups=groups)
    ref = cross_val_predict(clone(member), X, y, cv=stack.splits_, method="predict_proba")[:, 1]
    np.testing.assert_array_equal(stack.oof_predictions_[:, 0], ref)
    np.testing.assert_array_equal(meta_seen["Z"], stack.oof_predictions_)
    assert abs(roc_auc_score(y, stack.oof_predictions_[:, 0]) - 0.5) < 0.12  # chance out of fold

    X_test = rng.normal(size=(n_test, 10))
    y_test = rng.integers(0, 2, n_test)
    assert abs(roc_auc_score(y_test, stack.predict_proba(X_test)[:, 1]) - 0.5) < 0.1
    # the meta-learner learned that the memoriser is worthless (small coefficient)
    assert abs(stack.meta_.coef_[0, 0]) < 1.0


class SpyClassifier(ClassifierMixin, BaseEstimator):
    """Records which rows (column 0 of X holds the row id) each fitted instance trained on and predicted."""

    log: list = []

    def __init__(self, k=5):
        self.k = k

    def fit(self, X, y):
        X = np.asarray(X)
        self.classes_ = np.unique(y)
        self.rows_ = X[:, 0].astype(int)
        self._inner = KNeighborsClassifier(min(self.k, len(y))).fit(X[:, 1:], y)
        SpyClassifier.log.append(("fit", id(self), self.rows_))
        return self

    def predict_proba(self, X):
        X = np.asarray(X)
        SpyClassifier.log.append(("predict", id(self), X[:, 0].astype(int)))
        return self._inner.predict_proba(X[:, 1:])

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def test_no_patient_is_predicted_by_a_clone_trained_on_it():
    rng = np.random.default_rng(3)
    n_patients = 60
    images = rng.integers(1, 5, n_patients)  # 1 to 4 images per patient
    groups = np.repeat(np.arange(n_patients), images)
    y = np.repeat(rng.integers(0, 2, n_patients), images)
    n = len(y)
    rows = np.arange(n)[:, None]
    Xa = np.hstack([rows, y[:, None] + rng.normal(0, 1, (n, 3))])
    Xb = np.hstack([rows, rng.normal(0, 1, (n, 2))])
    SpyClassifier.log = []
    stack = StackedEnsemble([("a", SpyClassifier()), ("b", SpyClassifier(k=3))], cv=4, random_state=1)
    stack.fit([Xa, Xb], y, groups=groups)
    trained = {}
    n_checked = 0
    for event, obj, seen in SpyClassifier.log:
        if event == "fit":
            trained[obj] = set(groups[seen])
        else:
            assert trained[obj].isdisjoint(groups[seen]), "a clone predicted a patient it was trained on"
            n_checked += len(seen)
    assert n_checked == 2 * n  # every row predicted out of fold once per member
    # the final members are refitted on all rows and predicted nothing during fit
    assert [e for e, *_ in SpyClassifier.log].count("fit") == 2 * 4 + 2
    for tr, te in stack.splits_:
        assert set(groups[tr]).isdisjoint(groups[te])


def test_stack_beats_chance_with_informative_members_and_handles_labels():
    rng = np.random.default_rng(4)
    Xs, y, groups = _informative(rng, n_patients=150)
    labels = np.where(y == 1, "pneumonia", "normal")
    stack = StackedEnsemble([("a", LogisticRegression()), ("b", LogisticRegression())],
                            meta="random_forest", cv=3, random_state=0)
    stack.fit(Xs, labels, groups=groups)
    assert list(stack.classes_) == ["normal", "pneumonia"]
    Xt, yt, _ = _informative(rng, n_patients=200)
    assert roc_auc_score(yt, stack.predict_proba(Xt)[:, 1]) > 0.8
    assert set(stack.predict(Xt)) <= {"normal", "pneumonia"}
    assert stack.member_names_ == ["a", "b"]
    assert stack.transform(Xt).shape == (400, 2)


def test_passthrough_stacking_on_source_cnn_probabilities():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    Z = np.clip(np.column_stack([0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 300) for _ in range(3)]), 0, 1)
    stack = StackedEnsemble("passthrough", cv=5).fit(Z, y, groups=np.arange(300))
    ref = LogisticRegression(max_iter=1000).fit(Z, y)
    np.testing.assert_allclose(stack.predict_proba(Z), ref.predict_proba(Z), rtol=1e-6)
    np.testing.assert_array_equal(stack.oof_predictions_, Z)
    with pytest.raises(ValueError, match="shape"):
        stack.predict_proba(Z[:, :2])


def test_groups_none_warns_and_leaky_splitter_is_refused():
    rng = np.random.default_rng(6)
    Xs, y, groups = _informative(rng)
    members = [("a", LogisticRegression())]
    with pytest.warns(UserWarning, match="no groups"):
        StackedEnsemble(members, cv=3, random_state=0).fit(Xs[:1], y)
    with pytest.raises(LeakageError, match="both sides"), pytest.warns(UserWarning, match="ignored by KFold"):
        StackedEnsemble(members, cv=KFold(3, shuffle=True, random_state=0)).fit(Xs[:1], y, groups=groups)
    with pytest.raises(ValueError, match="partition"), pytest.warns(UserWarning, match="no groups"):
        StackedEnsemble(members, cv=ShuffleSplit(3, random_state=0)).fit(Xs[:1], y)


def test_estimator_contract_and_input_errors():
    rng = np.random.default_rng(7)
    Xs, y, groups = _informative(rng)
    est = StackedEnsemble([("a", LogisticRegression())], cv=3)
    assert clone(est).get_params()["cv"] == 3
    with pytest.raises(NotFittedError):
        est.predict_proba(Xs[:1])
    with pytest.raises(ValueError, match="one array per member"):
        est.fit(Xs, y, groups=groups)
    with pytest.raises(ValueError, match="two classes"):
        est.fit(Xs[:1], np.zeros(len(y)), groups=groups)
    with pytest.raises(ValueError, match="1-D binary"):
        est.fit(Xs[:1], np.column_stack([y, y]), groups=groups)
    with pytest.raises(ValueError, match="unique"):
        StackedEnsemble([("a", LogisticRegression()), ("a", LogisticRegression())]).fit(Xs, y, groups=groups)
    with pytest.raises(ValueError, match="meta"):
        StackedEnsemble([("a", LogisticRegression())], meta="svm").fit(Xs[:1], y, groups=groups)
    with pytest.raises(TypeError, match="predict_proba"):
        StackedEnsemble([("a", object())]).fit(Xs[:1], y, groups=groups)


def test_sklearn_stacking_classifier_cannot_group_its_folds():
    """Why StackedEnsemble exists: sklearn's StackingClassifier passes no groups to its cv."""
    rng = np.random.default_rng(8)
    Xs, y, groups = _informative(rng)
    sk = StackingClassifier([("a", LogisticRegression())], cv=StratifiedGroupKFold(3))
    with pytest.raises((ValueError, TypeError)):
        sk.fit(Xs[0], y, groups=groups)
    with pytest.raises(ValueError, match="groups"):
        sk.fit(Xs[0], y)


class GroupAwareSpy(ClassifierMixin, BaseEstimator):
    """A member whose fit takes groups (like a grouped hyper-parameter search)."""

    seen: list = []

    def fit(self, X, y, groups=None):
        GroupAwareSpy.seen.append((np.asarray(X)[:, 0].astype(int), None if groups is None else np.asarray(groups)))
        self.classes_ = np.unique(y)
        self._inner = LogisticRegression().fit(np.asarray(X)[:, 1:], y)
        return self

    def predict_proba(self, X):
        return self._inner.predict_proba(np.asarray(X)[:, 1:])

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def test_members_that_take_groups_receive_their_training_patients():
    rng = np.random.default_rng(9)
    Xs, y, groups = _informative(rng, n_patients=50)
    X = np.hstack([np.arange(len(y))[:, None], Xs[0]])
    GroupAwareSpy.seen = []
    StackedEnsemble([("spy", GroupAwareSpy())], cv=5, random_state=0).fit(X, y, groups=groups)
    assert len(GroupAwareSpy.seen) == 6  # 5 folds + the final refit
    for rows, g in GroupAwareSpy.seen:
        np.testing.assert_array_equal(g, groups[rows])
    assert len(GroupAwareSpy.seen[-1][0]) == len(y)
