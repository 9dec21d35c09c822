"""Combining models: out-of-fold stacking and simple / entropy-weighted averaging.

Two of the transfer approaches of Gozzi et al. (2022) combine several models:

* **approach 1, stacking**: the predicted probabilities of the source CNNs are the
  features of a meta-classifier (``StackedEnsemble(members="passthrough")``);
* **approach 2, embeddings**: one classical classifier per backbone embedding; their
  probabilities are averaged (:func:`average_predictions`, :class:`AveragingEnsemble`)
  or stacked (``StackedEnsemble(members=[(name, estimator), ...])``).

A meta-learner must never be trained on predictions a member made for rows it was fitted
on: a member that memorises its training set (a 1-NN, a deep forest) looks perfect
in-sample and the meta-learner would trust it blindly. :class:`StackedEnsemble` therefore
trains the meta-learner on *out-of-fold* member predictions from patient-grouped folds
(no patient is ever predicted by a clone that saw one of its images), then refits every
member on all rows for prediction. scikit-learn's own ``StackingClassifier`` calls
``cross_val_predict`` without ``groups``, so it cannot use a grouped splitter; that is
why this module exists.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "entropy_weights",
    "average_predictions",
    "AveragingEnsemble",
    "StackedEnsemble",
]

logger = logging.getLogger(__name__)

_METHODS = ("mean", "entropy")


# --------------------------------------------------------------------------- averaging
def entropy_weights(p: ArrayLike) -> np.ndarray:
    """Confidence weight ``1 - H2(p)`` of binary probabilities.

    ``H2(p) = -p log2 p - (1 - p) log2 (1 - p)`` is the binary entropy in bits, with
    ``0 log 0 = 0``; the weight is 1 for a certain prediction (p = 0 or 1) and 0 for
    p = 0.5.

    Parameters
    ----------
    p : array-like of any shape
        Probabilities in [0, 1].

    Returns
    -------
    ndarray of the same shape, values in [0, 1].

    Examples
    --------
    >>> entropy_weights([0.0, 0.5, 1.0]).tolist()
    [1.0, 0.0, 1.0]
    >>> round(float(entropy_weights(0.9)), 6)
    0.531004
    """
    p = np.asarray(p, dtype=float)
    bad = ~np.isfinite(p) | (p < 0) | (p > 1)
    if np.any(bad):
        raise ValueError(
            "entropy_weights needs probabilities in [0, 1] without NaN; "
            f"got {int(bad.sum())} value(s) outside, e.g. {p[bad].ravel()[:3].tolist()} (use predict_proba outputs)."
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log2(p), 0.0) + np.where(p < 1, (1 - p) * np.log2(1 - p), 0.0))
    return np.clip(1.0 - h, 0.0, 1.0)


def average_predictions(probas: Sequence[ArrayLike], *, method: str = "mean") -> np.ndarray:
    """Average the probabilities of several models, simply or weighted by confidence.

    Parameters
    ----------
    probas : list of array-like, each of shape (n_samples,) or (n_samples, n_labels)
        Positive-class probabilities of each member for the same samples (and labels).
    method : {"mean", "entropy"}, default="mean"
        ``"mean"``: the plain mean over members. ``"entropy"``: per sample (and label)
        ``sum_k w_k p_k / sum_k w_k`` with ``w_k = 1 - H2(p_k)`` (:func:`entropy_weights`),
        so confident members count more. When every weight is 0 (every member says
        exactly 0.5) the result is the plain mean, i.e. 0.5.

    Returns
    -------
    ndarray of shape (n_samples,) or (n_samples, n_labels)

    Examples
    --------
    >>> average_predictions([[0.9, 0.5], [0.5, 0.5]], method="entropy").tolist()
    [0.9, 0.5]
    >>> average_predictions([[0.9, 0.5], [0.5, 0.5]]).tolist()
    [0.7, 0.5]
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}.")
    if len(probas) == 0:
        raise ValueError("average_predictions needs at least one member's probabilities; got none.")
    arrays = [np.asarray(p, dtype=float) for p in probas]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(
            f"all members must predict the same samples and labels; got shapes {sorted(shapes)}."
        )
    P = np.stack(arrays)  # (n_members, n_samples[, n_labels])
    mean = P.mean(axis=0)
    if method == "mean":
        if np.any(~np.isfinite(P)):
            raise ValueError("probabilities contain NaN or infinite values.")
        return mean
    W = entropy_weights(P)
    total = W.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = (W * P).sum(axis=0) / total
    return np.where(total > 0, weighted, mean)


def _positive_proba(estimator, X) -> np.ndarray:
    proba = np.asarray(estimator.predict_proba(X))
    if proba.ndim == 2 and proba.shape[1] == 2:
        return proba[:, 1]
    raise ValueError(
        f"member {type(estimator).__name__} returned predict_proba of shape {proba.shape}; "
        "expected (n_samples, 2) for a binary target. Fit one ensemble per label for multi-label data."
    )


def _resolve_member(est):
    if isinstance(est, str):
        from .classifiers import make_classifier  # optional convenience: members by name

        return make_classifier(est)
    if not hasattr(est, "fit") or not hasattr(est, "predict_proba"):
        raise TypeError(
            f"ensemble members must be scikit-learn classifiers with predict_proba (or a name for "
            f"make_classifier); got {type(est).__name__}."
        )
    return est


def _check_members(members) -> list[tuple[str, Any]]:
    if isinstance(members, str):
        raise ValueError(f"members must be a list of (name, estimator) pairs or 'passthrough'; got {members!r}.")
    try:
        pairs = [(str(name), est) for name, est in members]
    except (TypeError, ValueError) as e:
        raise TypeError(
            "members must be a list of (name, estimator) pairs, e.g. "
            "[('densenet121', RandomForestClassifier()), ('vgg16', LogisticRegression())]"
        ) from e
    if not pairs:
        raise ValueError("members is empty; give at least one (name, estimator) pair.")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"member names must be unique; got {names}.")
    return [(n, _resolve_member(e)) for n, e in pairs]


def _accepts_groups(estimator) -> bool:
    """True when ``estimator.fit`` takes ``groups`` (e.g. a patient-grouped hyper-parameter search)."""
    import inspect

    try:
        return "groups" in inspect.signature(estimator.fit).parameters
    except (TypeError, ValueError):
        return False


def _split_X(X, n_members: int) -> list[np.ndarray]:
    """One feature matrix per member: a list (one per member) or one array shared by all."""
    if isinstance(X, (list, tuple)):
        if len(X) != n_members:
            raise ValueError(
                f"X is a list of {len(X)} feature arrays but there are {n_members} members; "
                "pass one array per member, in the order of `members`."
            )
        Xs = [np.asarray(x) if not hasattr(x, "iloc") else x for x in X]
    else:
        Xs = [X] * n_members
    lengths = {len(x) for x in Xs}
    if len(lengths) != 1:
        raise ValueError(f"the members' feature arrays have different numbers of rows {sorted(lengths)}.")
    return Xs


def _binary_target(y) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"y must be 1-D binary of shape (n_samples,); got shape {y.shape}. For several labels fit "
            "one ensemble per label on the rows where that label is known (see docs/stacking.md)."
        )
    if y.dtype.kind == "f" and np.any(np.isnan(y)):
        raise ValueError("y contains NaN (missing labels); drop those rows before fitting.")
    classes = np.unique(y)
    if classes.size != 2:
        raise ValueError(f"y must hold exactly two classes; got {classes.tolist()}.")
    return classes, (y == classes[1]).astype(int)


class AveragingEnsemble(ClassifierMixin, BaseEstimator):
    """Average the probabilities of several classifiers (simple or entropy-weighted).

    Parameters
    ----------
    members : list of (str, estimator) or "passthrough"
        Classifiers with ``predict_proba``; member *k* is fitted on ``X[k]`` when ``X`` is a
        list (one embedding per backbone), or on ``X`` itself when it is one array. With
        ``"passthrough"`` the columns of ``X`` already are member probabilities
        (approach 1) and nothing is fitted.
    method : {"mean", "entropy"}, default="mean"
        See :func:`average_predictions`.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    members_ : list of (str, fitted estimator)
        Empty for ``"passthrough"``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 100)
    >>> Xa = y[:, None] + rng.normal(0, 1, (100, 3)); Xb = y[:, None] + rng.normal(0, 1, (100, 5))
    >>> ens = AveragingEnsemble([("a", LogisticRegression()), ("b", LogisticRegression())], method="entropy")
    >>> ens.fit([Xa, Xb], y).predict_proba([Xa, Xb]).shape
    (100, 2)
    """

    def __init__(self, members: Any, method: str = "mean"):
        self.members = members
        self.method = method

    def fit(self, X: Any, y: ArrayLike, **fit_params: Any) -> "AveragingEnsemble":
        """Fit every member on all rows.

        Parameters
        ----------
        X : list of array-like of shape (n_samples, dim_k), or array-like of shape (n_samples, dim)
            Per-member features, one array shared by all members, or (passthrough) member
            probabilities of shape (n_samples, n_members).
        y : array-like of shape (n_samples,)
            Binary target.
        **fit_params
            Passed to every member's ``fit`` (e.g. ``sample_weight``).

        Returns
        -------
        self
        """
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}; got {self.method!r}.")
        self.classes_, y_enc = _binary_target(y)
        if isinstance(self.members, str) and self.members == "passthrough":
            Z = np.asarray(X, dtype=float)
            if Z.ndim != 2:
                raise ValueError(f"passthrough X must be (n_samples, n_members) probabilities; got {Z.shape}.")
            entropy_weights(Z)  # validates the range
            self.members_ = []
            self.n_features_in_ = Z.shape[1]
            return self
        members = _check_members(self.members)
        Xs = _split_X(X, len(members))
        if len(Xs[0]) != len(y_enc):
            raise ValueError(f"X has {len(Xs[0])} rows but y has {len(y_enc)}.")
        self.members_ = [(name, clone(est).fit(x, y_enc, **fit_params)) for (name, est), x in zip(members, Xs)]
        return self

    def _member_probas(self, X) -> list[np.ndarray]:
        if not self.members_:
            Z = np.asarray(X, dtype=float)
            if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
                raise ValueError(f"passthrough X must have shape (n_samples, {self.n_features_in_}); got {Z.shape}.")
            return [Z[:, k] for k in range(Z.shape[1])]
        Xs = _split_X(X, len(self.members_))
        return [_positive_proba(est, x) for (_, est), x in zip(self.members_, Xs)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Averaged probabilities, shape (n_samples, 2), columns ordered as ``classes_``."""
        check_is_fitted(self, "classes_")
        p = average_predictions(self._member_probas(X), method=self.method)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """Class with the larger averaged probability, shape (n_samples,)."""
        return self.classes_[(self.predict_proba(X)[:, 1] > 0.5).astype(int)]


# --------------------------------------------------------------------------- stacking
def _make_meta(meta, random_state, n_jobs):
    if isinstance(meta, str):
        if meta == "logreg":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0, max_iter=1000)
        if meta == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(n_estimators=300, min_samples_leaf=3,
                                          random_state=random_state, n_jobs=n_jobs)
        raise ValueError(f"meta must be 'logreg', 'random_forest' or a classifier; got {meta!r}.")
    if not hasattr(meta, "fit") or not hasattr(meta, "predict_proba"):
        raise TypeError(f"meta must be a classifier with predict_proba; got {type(meta).__name__}.")
    return clone(meta)


def _check_fold_counts(cv, y: np.ndarray) -> None:
    """An int ``cv`` is refused by scikit-learn's stratified splitters when every class has fewer rows."""
    if not isinstance(cv, (int, np.integer)):
        return
    from ..exceptions import InsufficientDataError

    classes, counts = np.unique(y, return_counts=True)
    if np.all(counts < int(cv)):
        shown = ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist()))
        raise InsufficientDataError(
            f"stacking's cv={int(cv)} inner folds need more images: every class has fewer than {int(cv)} ({shown}); "
            "fix: StackedEnsemble(cv=2) or more images")


class StackedEnsemble(ClassifierMixin, BaseEstimator):
    """Stacking with out-of-fold, patient-grouped member predictions.

    Parameters
    ----------
    members : list of (str, estimator) or "passthrough"
        ``[(name, classifier), ...]``: member *k* is fitted on ``X[k]`` when ``X`` is a list
        (e.g. embeddings of different backbones, each with its own classifier) or on ``X``
        when it is one array; a classifier may be given by name for
        :func:`cxr_embed.make_classifier`. A member whose ``fit`` takes ``groups`` (a
        patient-grouped search such as ``make_classifier(name, search="grid")``) receives
        the patient ids of its training rows, so nested tuning stays grouped too.
        ``"passthrough"``: ``X`` already holds member
        probabilities, shape (n_samples, n_members), e.g. the source CNNs' predictions
        (approach 1); those must be out-of-sample for these rows (CNNs trained on other data).
    meta : {"logreg", "random_forest"} or classifier, default="logreg"
        Meta-learner trained on the members' out-of-fold positive-class probabilities.
    cv : int or splitter, default=5
        Folds for the out-of-fold predictions. An int uses
        ``StratifiedGroupKFold(cv, shuffle=True)`` on ``groups`` (``StratifiedKFold`` with a
        warning when ``groups`` is None). A splitter must produce a partition (every row in
        exactly one test fold) and receives ``groups``.
    random_state : int or None
        Shuffling of the folds and seed of ``meta="random_forest"``.
    n_jobs : int or None
        Parallel folds in ``cross_val_predict``.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    members_ : list of (str, fitted estimator)
        Members refitted on all rows (empty for ``"passthrough"``).
    meta_ : fitted classifier
    oof_predictions_ : ndarray of shape (n_samples, n_members)
        The meta-learner's training features: each row predicted by member clones that
        never saw that row's patient (the raw ``X`` for ``"passthrough"``).
    splits_ : list of (train_idx, test_idx)
        The folds used (empty for ``"passthrough"``).
    member_names_ : list of str

    Notes
    -----
    Binary targets only: for multi-label data fit one ensemble per label on the rows where
    that label is known, which is also what missing labels require.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> rng = np.random.default_rng(0)
    >>> patients = np.repeat(np.arange(60), 2)
    >>> y = np.repeat(rng.integers(0, 2, 60), 2)
    >>> Xa = y[:, None] + rng.normal(0, 1, (120, 4)); Xb = y[:, None] + rng.normal(0, 2, (120, 8))
    >>> stack = StackedEnsemble([("a", LogisticRegression()), ("b", KNeighborsClassifier(15))],
    ...                         cv=5, random_state=0)
    >>> stack.fit([Xa, Xb], y, groups=patients).oof_predictions_.shape
    (120, 2)
    >>> stack.predict_proba([Xa, Xb]).shape
    (120, 2)
    """

    def __init__(self, members: Any, meta: Any = "logreg", cv: Any = 5, random_state: int | None = None,
                 n_jobs: int | None = None):
        self.members = members
        self.meta = meta
        self.cv = cv
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _splitter(self, groups):
        if isinstance(self.cv, (int, np.integer)):
            if self.cv < 2:
                raise ValueError(f"cv must be >= 2 folds; got {self.cv}.")
            if groups is None:
                warnings.warn(
                    "StackedEnsemble.fit got no groups: folds are split by image, so images of one "
                    "patient can be on both sides and the out-of-fold predictions are optimistic. "
                    "Pass groups=patient_ids.",
                    UserWarning,
                    stacklevel=3,
                )
                return StratifiedKFold(int(self.cv), shuffle=True, random_state=self.random_state)
            return StratifiedGroupKFold(int(self.cv), shuffle=True, random_state=self.random_state)
        if groups is None:
            warnings.warn(
                "StackedEnsemble.fit got no groups; the splitter cannot keep a patient's images together. "
                "Pass groups=patient_ids.",
                UserWarning,
                stacklevel=3,
            )
        return self.cv

    def fit(self, X: Any, y: ArrayLike, groups: ArrayLike | None = None) -> "StackedEnsemble":
        """Out-of-fold member predictions -> meta-learner; then refit members on all rows.

        Parameters
        ----------
        X : list of array-like of shape (n_samples, dim_k), or array-like
            One feature array per member, one array shared by all members, or (passthrough)
            probabilities of shape (n_samples, n_members).
        y : array-like of shape (n_samples,)
            Binary target.
        groups : array-like of shape (n_samples,), optional
            Patient id per row; strongly recommended (a warning is raised without it).

        Returns
        -------
        self

        Raises
        ------
        LeakageError
            If a fold of the splitter puts one patient on both sides.
        """
        self.classes_, y_enc = _binary_target(y)
        meta = _make_meta(self.meta, self.random_state, self.n_jobs)
        if isinstance(self.members, str):
            if self.members != "passthrough":
                raise ValueError(
                    f"members must be a list of (name, estimator) pairs or 'passthrough'; got {self.members!r}."
                )
            Z = np.asarray(X, dtype=float)
            if Z.ndim != 2 or Z.shape[0] != y_enc.shape[0]:
                raise ValueError(
                    f"passthrough X must be member probabilities of shape (n_samples={y_enc.shape[0]}, "
                    f"n_members); got {Z.shape}."
                )
            self.members_, self.splits_ = [], []
            self.member_names_ = [f"member_{k}" for k in range(Z.shape[1])]
            self.oof_predictions_ = Z.copy()
            self.n_features_in_ = Z.shape[1]
            self.meta_ = meta.fit(Z, y_enc)
            return self

        members = _check_members(self.members)
        Xs = _split_X(X, len(members))
        n = len(Xs[0])
        if n != y_enc.shape[0]:
            raise ValueError(f"X has {n} rows but y has {y_enc.shape[0]}.")
        g = None if groups is None else np.asarray(groups).ravel()
        if g is not None and g.shape[0] != n:
            raise ValueError(f"groups has {g.shape[0]} entries for {n} rows; pass one patient id per row.")
        splitter = self._splitter(g)
        _check_fold_counts(self.cv, y_enc)
        splits = [(np.asarray(tr), np.asarray(te)) for tr, te in splitter.split(np.zeros((n, 1)), y_enc, g)]
        from .validation import _require_both_classes

        if g is not None:
            from .validation import check_no_leakage as check
            for tr, te in splits:
                check(g[tr], g[te])
        _require_both_classes(y_enc, g, splits, what="stacking's inner folds (out-of-fold member predictions)")
        covered = np.zeros(n, dtype=int)
        for _, te in splits:
            covered[te] += 1
        if not np.all(covered == 1):
            raise ValueError(
                "cv must partition the rows (each row in exactly one test fold) for out-of-fold "
                f"stacking; {int(np.sum(covered != 1))} rows are not covered exactly once. "
                "Use a K-fold splitter, not a repeated or shuffle-split one."
            )
        oof = np.empty((n, len(members)))
        for k, ((name, est), x) in enumerate(zip(members, Xs)):
            params = {"groups": g} if (g is not None and _accepts_groups(est)) else None
            proba = cross_val_predict(clone(est), x, y_enc, groups=g, cv=splits, params=params,
                                      method="predict_proba", n_jobs=self.n_jobs)
            oof[:, k] = proba[:, 1]
            logger.debug("member %s: out-of-fold predictions over %d folds", name, len(splits))
        self.splits_ = splits
        self.member_names_ = [name for name, _ in members]
        self.oof_predictions_ = oof
        self.meta_ = meta.fit(oof, y_enc)
        self.members_ = [
            (name, clone(est).fit(x, y_enc, **({"groups": g} if g is not None and _accepts_groups(est) else {})))
            for (name, est), x in zip(members, Xs)
        ]
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Meta-features of new rows: the refitted members' probabilities, shape (n_samples, n_members)."""
        check_is_fitted(self, "meta_")
        if not self.members_:
            Z = np.asarray(X, dtype=float)
            if Z.ndim != 2 or Z.shape[1] != self.n_features_in_:
                raise ValueError(f"passthrough X must have shape (n_samples, {self.n_features_in_}); got {Z.shape}.")
            return Z
        Xs = _split_X(X, len(self.members_))
        return np.column_stack([_positive_proba(est, x) for (_, est), x in zip(self.members_, Xs)])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Meta-learner probabilities, shape (n_samples, 2), columns ordered as ``classes_``."""
        check_is_fitted(self, "meta_")
        return self.meta_.predict_proba(self.transform(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class, shape (n_samples,)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
