"""Classical classifiers for cached embeddings: a named catalogue, grouped searches,
an XGBoost wrapper and a multi-label wrapper for uncertain/missing labels.

:func:`make_classifier` returns an unfitted scikit-learn :class:`~sklearn.pipeline.Pipeline`
whose last step is named ``"clf"`` (optionally preceded by ``"scale"`` and ``"pca"``),
so ``sample_weight`` reaches the classifier as ``clf__sample_weight`` and search
spaces use ``clf__<param>`` keys. With ``search="grid"|"random"`` it returns a
:class:`GroupedSearchCV` that tunes that pipeline over patient-grouped folds with
ROC AUC scoring; pass the patient ids as ``fit(X, y, groups=...)``.

Defaults follow what was measured on the shared data (DESIGN.md): a strongly
regularised logistic regression on standardised last-layer features is the most
robust across sites, so ``logreg`` uses ``C=0.01``.
"""
from __future__ import annotations

import inspect
import logging
import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.dummy import DummyClassifier
from sklearn.calibration import CalibratedClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils import get_tags
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .._utils import require
from ..exceptions import InsufficientDataError
from .labels import apply_uncertainty, normalize_policy, soft_to_weighted
from .validation import GroupedRepeatedKFold

__all__ = [
    "GroupedCalibratedClassifierCV",
    "GroupedPipeline",
    "GroupedSearchCV",
    "MultiLabelClassifier",
    "XGBoostClassifier",
    "default_search_space",
    "list_classifiers",
    "make_classifier",
]

logger = logging.getLogger(__name__)

_NAMES = ("logreg", "linear_svm", "rbf_svm", "knn", "random_forest", "extra_trees",
          "hist_gradient_boosting", "mlp", "xgboost")
_ALIASES = {"logistic_regression": "logreg", "lr": "logreg", "svm": "linear_svm", "svc": "rbf_svm",
            "rf": "random_forest", "et": "extra_trees", "hgb": "hist_gradient_boosting",
            "gradient_boosting": "hist_gradient_boosting", "xgb": "xgboost", "kneighbors": "knn"}


def list_classifiers() -> list[str]:
    """Names accepted by :func:`make_classifier`.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> "random_forest" in list_classifiers()
    True
    """
    return list(_NAMES)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _NAMES:
        raise ValueError(f"unknown classifier {name!r}; expected one of {list(_NAMES)}")
    return key


# --------------------------------------------------------------------------- XGBoost
class XGBoostClassifier(ClassifierMixin, BaseEstimator):
    """XGBoost gradient-boosted trees with class imbalance handled in ``fit``.

    A thin scikit-learn estimator around :class:`xgboost.XGBClassifier`: any class
    labels (encoded internally), ``scale_pos_weight="auto"`` computed from the
    training data as ``sum(weight of negatives) / sum(weight of positives)`` for
    binary targets, ``tree_method="hist"``, ``n_jobs`` respected. The fitted booster
    is ``model_`` (an ``XGBClassifier``); :func:`cxr_embed.learn.persistence.save_model`
    also stores it in XGBoost's own JSON format.

    Parameters
    ----------
    n_estimators, max_depth, learning_rate, subsample, colsample_bytree, reg_lambda, min_child_weight
        Passed to ``XGBClassifier``.
    scale_pos_weight : "auto", float or None, default="auto"
        ``"auto"``: negatives/positives of the (weighted) training data; None: 1.
        Ignored for more than two classes.
    tree_method : str, default="hist"
    n_jobs : int or None, default=None
    random_state : int, RandomState or None, default=None

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    model_ : xgboost.XGBClassifier
    scale_pos_weight_ : float
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(40, 3)); y = (X[:, 0] > 0.5).astype(int)
    >>> clf = XGBoostClassifier(n_estimators=10, random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape
    (40, 2)
    """

    def __init__(self, n_estimators: int = 300, max_depth: int = 4, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.8, reg_lambda: float = 1.0,
                 min_child_weight: float = 1.0, scale_pos_weight: Any = "auto", tree_method: str = "hist",
                 n_jobs: int | None = None, random_state: Any = None):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.min_child_weight = min_child_weight
        self.scale_pos_weight = scale_pos_weight
        self.tree_method = tree_method
        self.n_jobs = n_jobs
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "XGBoostClassifier":
        """Fit the booster.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self
        """
        xgb = require("xgboost", extra="xgboost")
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(
                f"XGBoostClassifier needs at least 2 classes in y; only one class is present ({self.classes_[0]!r})"
            )
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
            if not np.any(sample_weight > 0):
                raise ValueError("sample_weight is zero for every row: there is nothing to fit; "
                                 "give some rows a positive weight")
        w = np.ones(len(y)) if sample_weight is None else sample_weight
        spw = 1.0
        if self.classes_.size == 2:
            if isinstance(self.scale_pos_weight, str):
                if self.scale_pos_weight != "auto":
                    raise ValueError(f"scale_pos_weight must be 'auto', a number or None; got {self.scale_pos_weight!r}")
                pos = w[y_enc == 1].sum()
                spw = float(w[y_enc == 0].sum() / pos) if pos > 0 else 1.0
            elif self.scale_pos_weight is not None:
                spw = float(self.scale_pos_weight)
        seed = self.random_state if isinstance(self.random_state, numbers.Integral) else \
            int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        kwargs = dict(n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
                      subsample=self.subsample, colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
                      min_child_weight=self.min_child_weight, tree_method=self.tree_method, n_jobs=self.n_jobs,
                      random_state=seed)
        if self.classes_.size == 2:
            kwargs.update(objective="binary:logistic", scale_pos_weight=spw)
        else:
            kwargs.update(objective="multi:softprob")
        self.model_ = xgb.XGBClassifier(**kwargs)
        self.model_.fit(X, y_enc, sample_weight=sample_weight)
        self.scale_pos_weight_ = spw
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return np.asarray(self.model_.predict_proba(X), dtype=float)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class, shape (n_samples,)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


# --------------------------------------------------------------------------- patient-aware building blocks
def _accepts_groups(est: Any) -> bool:
    try:
        return "groups" in inspect.signature(est.fit).parameters
    except (TypeError, ValueError, AttributeError):
        return False


class GroupedCalibratedClassifierCV(CalibratedClassifierCV):
    """:class:`~sklearn.calibration.CalibratedClassifierCV` whose internal folds keep patients apart.

    Scikit-learn's calibration splits the training rows into ``cv`` folds (fit the classifier on
    some, fit the sigmoid/isotonic map on the rest). With several images per patient, an
    ungrouped split puts a patient's images on both sides and calibrates on near-duplicates of
    training images, so the probabilities come out over-confident. Given ``groups`` (patient
    ids), this class uses :class:`~sklearn.model_selection.StratifiedGroupKFold` instead.
    Without ``groups`` it is ``CalibratedClassifierCV``. Either way, when the rarer class has fewer
    patients (images, without ``groups``) than ``cv``, it calibrates on as many folds as there are
    (at least 2; logged at INFO) instead of failing, and raises
    :class:`~cxr_embed.exceptions.InsufficientDataError` below that.

    Parameters
    ----------
    estimator, method, cv, n_jobs, ensemble
        As for :class:`~sklearn.calibration.CalibratedClassifierCV`; ``cv`` must be an int for
        the grouped split (a splitter or an iterable of splits is used as given).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.svm import LinearSVC
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); y = np.tile([0, 1], 30); groups = np.repeat(np.arange(20), 3)
    >>> clf = GroupedCalibratedClassifierCV(LinearSVC(), cv=3).fit(X, y, groups=groups)
    >>> clf.predict_proba(X).shape
    (60, 2)
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None, groups: Any = None,
            **fit_params: Any) -> "GroupedCalibratedClassifierCV":
        """Fit and calibrate, with patient-grouped internal folds when ``groups`` is given.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
        groups : array-like of shape (n_samples,), optional
            Patient ids.
        **fit_params
            Passed to the underlying estimator's ``fit``.

        Returns
        -------
        self
        """
        if not isinstance(self.cv, numbers.Integral):
            return super().fit(X, y, sample_weight=sample_weight, **fit_params)
        from sklearn.model_selection import StratifiedGroupKFold

        from .validation import check_no_leakage

        y_arr = np.asarray(y)
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != y_arr.shape[0]:
                raise ValueError(f"groups has {groups.shape[0]} rows but y has {y_arr.shape[0]}; they must match")
            n_groups = np.unique(groups).size
            if n_groups < self.cv:
                raise InsufficientDataError(f"{n_groups} patients cannot fill cv={self.cv} grouped calibration "
                                            "folds; pass fewer folds (cv=2) or more patients")
        folds = _calibration_folds(y_arr, groups, int(self.cv), type(self.estimator).__name__)
        if groups is None:
            splits = folds  # scikit-learn's stratified folds, as many as the rarer class allows
        else:
            splits = list(StratifiedGroupKFold(n_splits=folds).split(np.zeros((len(y_arr), 1)), y_arr, groups))
            for train, test in splits:
                check_no_leakage(groups[train], groups[test])
                if np.unique(y_arr[train]).size < np.unique(y_arr).size:
                    raise InsufficientDataError(
                        f"a grouped calibration fold of {type(self.estimator).__name__} has no training patient of "
                        "one class; fix: make_classifier('logreg') (its own probabilities) or more patients")
        cv = self.cv
        self.cv = splits  # restored below: the parameter the user set stays an int
        try:
            super().fit(X, y, sample_weight=sample_weight, **fit_params)
        finally:
            self.cv = cv
        return self


def _calibration_folds(y: np.ndarray, groups, cv: int, name: str) -> int:
    """``cv``, or fewer folds when the rarer class has fewer patients (images without groups) than ``cv``."""
    classes, codes = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise InsufficientDataError(f"{name} cannot be calibrated on one class ({classes.tolist()}); fix: "
                                    "training rows of both classes")
    unit = "image" if groups is None else "patient"
    counts = [int(np.sum(codes == c)) if groups is None else int(np.unique(groups[codes == c]).size)
              for c in range(classes.size)]
    rarest = int(np.argmin(counts))
    k, label = counts[rarest], classes[rarest]
    label = label.item() if hasattr(label, "item") else label  # a numpy scalar prints as np.int64(1)
    if k >= cv:
        return cv
    if k < 2:
        raise InsufficientDataError(
            f"{name} is calibrated by internal cross-validation, which needs at least 2 {unit}s of each class; "
            f"class {label!r} has {k} {unit}(s) among these {len(y)} training rows; fix: "
            f"make_classifier('logreg') (its own probabilities) or more {unit}s of that class")
    logger.info("calibration of %s: class %r has %d %ss, so %d calibration folds instead of %d",
                name, label, k, unit, k, cv)
    return k


class GroupedPipeline(Pipeline):
    """A :class:`~sklearn.pipeline.Pipeline` whose ``fit`` also takes ``groups``.

    ``groups`` (patient ids) are handed to the last step when its ``fit`` accepts them (for
    example :class:`GroupedCalibratedClassifierCV`), so that the library's validation code,
    which passes ``groups`` to every estimator that asks for them, keeps patients apart inside
    the classifier too. Everything else is a plain scikit-learn pipeline.

    Examples
    --------
    >>> from sklearn.preprocessing import StandardScaler
    >>> from sklearn.svm import LinearSVC
    >>> import numpy as np
    >>> pipe = GroupedPipeline([("scale", StandardScaler()), ("clf", GroupedCalibratedClassifierCV(LinearSVC()))])
    >>> X = np.random.default_rng(0).normal(size=(60, 3)); y = np.tile([0, 1], 30)
    >>> pipe.fit(X, y, groups=np.repeat(np.arange(20), 3)).predict(X).shape
    (60,)
    """

    def fit(self, X: Any, y: Any = None, groups: Any = None, **params: Any) -> "GroupedPipeline":
        """Fit every step; ``groups`` go to the last step if it accepts them.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), optional
        groups : array-like of shape (n_samples,), optional
            Patient ids.
        **params
            ``step__param`` fit parameters, as for :class:`~sklearn.pipeline.Pipeline`.

        Returns
        -------
        self
        """
        params.update(_inner_groups_kwargs(self, groups))
        return super().fit(X, y, **params)


# --------------------------------------------------------------------------- fitting helpers
def _check_X(est: Any, X: Any, *, reset: bool, **kwargs: Any) -> Any:
    """``validate_data``, except that a DataFrame (embeddings beside clinical columns, see
    :mod:`cxr_embed.learn.clinical`) passes through whole, so its column names reach the pipeline."""
    if not (hasattr(X, "columns") and hasattr(X, "iloc")):
        return validate_data(est, X, reset=reset, **kwargs)
    names = np.asarray([str(c) for c in X.columns], dtype=object)
    if reset:
        est.n_features_in_, est.feature_names_in_ = X.shape[1], names
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} columns but {type(est).__name__} was fitted with {est.n_features_in_}")
    return X


def _final_step(est: Any) -> Any:
    return est.steps[-1][1] if isinstance(est, Pipeline) else est


def _accepts_sample_weight(est: Any) -> bool:
    if isinstance(est, GroupedSearchCV):
        return _accepts_sample_weight(est.estimator)
    final = _final_step(est)
    try:
        return "sample_weight" in inspect.signature(final.fit).parameters
    except (TypeError, ValueError):
        return False


def _weight_kwargs(est: Any, sample_weight: Any) -> dict:
    if sample_weight is None:
        return {}
    if isinstance(est, Pipeline):
        return {f"{est.steps[-1][0]}__sample_weight": sample_weight}
    return {"sample_weight": sample_weight}


def _inner_groups_kwargs(est: Any, groups: Any) -> dict:
    """``{"<last step>__groups": groups}`` when a pipeline's last step takes ``groups``, else ``{}``.

    Used by :meth:`GroupedPipeline.fit` and by :class:`GroupedSearchCV`, whose GridSearchCV keeps
    its own ``groups`` for the splitter and slices these per training fold."""
    if groups is None or not isinstance(est, Pipeline):
        return {}
    name, last = est.steps[-1]
    return {f"{name}__groups": groups} if last not in (None, "passthrough") and _accepts_groups(last) else {}


def _fit_with(est: Any, X: Any, y: Any, *, groups: Any = None, sample_weight: Any = None) -> Any:
    kwargs = {}
    if groups is not None and "groups" in inspect.signature(est.fit).parameters:
        kwargs["groups"] = groups
    if isinstance(est, GroupedSearchCV) and sample_weight is not None:
        kwargs["sample_weight"] = sample_weight
    else:
        kwargs.update(_weight_kwargs(est, sample_weight))
    return est.fit(X, y, **kwargs)


# --------------------------------------------------------------------------- grouped search
class GroupedSearchCV(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Grid or randomised hyper-parameter search over patient-grouped folds, ROC AUC scored.

    ``fit(X, y, groups=patient_ids)`` passes the groups to a
    :class:`~cxr_embed.learn.validation.GroupedRepeatedKFold` splitter through
    ``GridSearchCV.fit(..., groups=...)`` (no global metadata-routing switch is
    touched). Without groups every row counts as its own patient, with a warning.

    Parameters
    ----------
    estimator : estimator
        The pipeline to tune (from :func:`make_classifier`).
    param_space : dict
        Grid (lists) for ``search="grid"``; lists or scipy distributions for ``"random"``.
    search : {"grid", "random"}, default="grid"
    cv : int or splitter, default=5
        An int means ``GroupedRepeatedKFold(cv, random_state=random_state)``.
    n_iter : int, default=20
        Candidates of a random search (capped at the grid size for list-only spaces).
    scoring : str, default="roc_auc"
        ``"roc_auc_ovr"`` is used automatically for more than two classes.
    n_jobs : int or None, default=None
    random_state : int or None, default=None
    refit : bool, default=True

    Attributes
    ----------
    search_ : GridSearchCV or RandomizedSearchCV
    best_estimator_, best_params_, best_score_, cv_results_, classes_, n_features_in_

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(60, 4)); y = (X[:, 0] > 0).astype(int)
    >>> est = make_classifier("logreg", search="grid", cv=3, random_state=0)
    >>> est.fit(X, y, groups=np.arange(60) // 2).best_params_.keys()
    dict_keys(['clf__C'])
    """

    def __init__(self, estimator: Any, param_space: dict, *, search: str = "grid", cv: Any = 5,
                 n_iter: int = 20, scoring: str = "roc_auc", n_jobs: int | None = None,
                 random_state: Any = None, refit: bool = True):
        self.estimator = estimator
        self.param_space = param_space
        self.search = search
        self.cv = cv
        self.n_iter = n_iter
        self.scoring = scoring
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.refit = refit

    def fit(self, X: Any, y: Any, groups: Any = None, sample_weight: Any = None) -> "GroupedSearchCV":
        """Search, then refit the best candidate on all rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
        y : array-like of shape (n_samples,)
        groups : array-like of shape (n_samples,), optional
            Patient ids (strongly recommended).
        sample_weight : array-like of shape (n_samples,), optional
            Passed to the pipeline's last step.

        Returns
        -------
        self
        """
        from sklearn.model_selection import GridSearchCV, ParameterGrid, RandomizedSearchCV

        if self.search not in ("grid", "random"):
            raise ValueError(f"search must be 'grid' or 'random'; got {self.search!r}")
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if hasattr(X, "iloc") and hasattr(X, "columns"):  # a clinical frame keeps its columns
            X, y = _check_X(self, X, reset=True), np.asarray(y)
        else:
            X, y = validate_data(self, X, y, ensure_all_finite=False, ensure_min_samples=2, dtype=None)
        check_classification_targets(y)
        y_arr = np.asarray(y)
        if groups is None:
            warnings.warn("GroupedSearchCV.fit got no groups: every row is treated as its own patient, "
                          "which leaks when a patient has several images; pass groups=patient_ids",
                          UserWarning, stacklevel=2)
            groups = np.arange(len(y_arr))
        cv = (GroupedRepeatedKFold(n_splits=self.cv, random_state=self.random_state)
              if isinstance(self.cv, numbers.Integral) else self.cv)
        scoring = self.scoring
        if scoring == "roc_auc" and np.unique(y_arr).size > 2:
            scoring = "roc_auc_ovr"
        common = dict(scoring=scoring, cv=cv, n_jobs=self.n_jobs, refit=self.refit, error_score=np.nan)
        if self.search == "grid":
            search = GridSearchCV(clone(self.estimator), self.param_space, **common)
        else:
            n_iter = self.n_iter
            if all(isinstance(v, (list, tuple)) for v in self.param_space.values()):
                n_iter = min(n_iter, len(ParameterGrid(self.param_space)))
            search = RandomizedSearchCV(clone(self.estimator), self.param_space, n_iter=n_iter,
                                        random_state=self.random_state, **common)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*One or more of the test scores are non-finite.*")
            search.fit(X, y, groups=groups, **_weight_kwargs(self.estimator, sample_weight),
                       **_inner_groups_kwargs(self.estimator, groups))
        self.search_ = search
        self.cv_results_ = search.cv_results_
        self.best_params_ = search.best_params_
        self.best_score_ = search.best_score_
        if self.refit:
            self.best_estimator_ = search.best_estimator_
            self.classes_ = search.best_estimator_.classes_
        self.n_features_in_ = search.n_features_in_
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = get_tags(self.estimator).input_tags.allow_nan
        return tags

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of the refitted best estimator, shape (n_samples, n_classes)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the refitted best estimator, shape (n_samples,)."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)


# --------------------------------------------------------------------------- catalogue
def default_search_space(name: str) -> dict[str, list]:
    """The default hyper-parameter grid of a named classifier (``clf__`` keys).

    Parameters
    ----------
    name : str
        One of :func:`list_classifiers`.

    Returns
    -------
    space : dict of str -> list
        Usable as ``param_grid`` and as ``param_distributions``.

    Examples
    --------
    >>> default_search_space("logreg")
    {'clf__C': [0.0001, 0.001, 0.01, 0.1, 1.0]}
    """
    spaces = {
        "logreg": {"clf__C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
        "linear_svm": {"clf__estimator__C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
        "rbf_svm": {"clf__estimator__C": [0.1, 1.0, 10.0], "clf__estimator__gamma": ["scale", 1e-3, 1e-2]},
        "knn": {"clf__n_neighbors": [5, 15, 31], "clf__weights": ["uniform", "distance"]},
        "random_forest": {"clf__max_features": ["sqrt", 0.05, 0.2], "clf__min_samples_leaf": [1, 3, 10]},
        "extra_trees": {"clf__max_features": ["sqrt", 0.05, 0.2], "clf__min_samples_leaf": [1, 3, 10]},
        "hist_gradient_boosting": {"clf__learning_rate": [0.03, 0.1], "clf__max_leaf_nodes": [7, 15, 31],
                                   "clf__l2_regularization": [0.0, 1.0]},
        "mlp": {"clf__hidden_layer_sizes": [(64,), (256,)], "clf__alpha": [1e-3, 1e-2, 1e-1]},
        "xgboost": {"clf__max_depth": [2, 4, 6], "clf__learning_rate": [0.03, 0.1],
                    "clf__n_estimators": [100, 300]},
    }
    return {k: list(v) for k, v in spaces[_canonical(name)].items()}


def _base_classifier(name: str, *, class_weight: Any, n_jobs: int | None, random_state: Any) -> tuple[Any, bool]:
    """(estimator, wants_scaling)."""
    from sklearn import ensemble, linear_model, neural_network, svm

    from .neighbors import ClampedKNeighborsClassifier

    if name == "logreg":
        return linear_model.LogisticRegression(C=0.01, class_weight=class_weight, max_iter=5000,
                                               random_state=random_state), True
    if name == "linear_svm":
        return GroupedCalibratedClassifierCV(svm.LinearSVC(C=0.01, class_weight=class_weight,
                                                           random_state=random_state, max_iter=5000),
                                             method="sigmoid", cv=3, n_jobs=n_jobs), True
    if name == "rbf_svm":
        return GroupedCalibratedClassifierCV(svm.SVC(C=1.0, gamma="scale", class_weight=class_weight,
                                                     random_state=random_state), method="sigmoid", cv=3,
                                             ensemble=False, n_jobs=n_jobs), True
    if name == "knn":  # every row votes when a (small, inner) training set has fewer than 15
        return ClampedKNeighborsClassifier(n_neighbors=15, weights="distance", n_jobs=n_jobs), True
    if name == "random_forest":
        return ensemble.RandomForestClassifier(n_estimators=300, class_weight=class_weight, n_jobs=n_jobs,
                                               random_state=random_state), False
    if name == "extra_trees":
        return ensemble.ExtraTreesClassifier(n_estimators=300, class_weight=class_weight, n_jobs=n_jobs,
                                             random_state=random_state), False
    if name == "hist_gradient_boosting":
        return ensemble.HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200,
                                                       class_weight=class_weight, random_state=random_state), False
    if name == "mlp":
        return neural_network.MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-2, max_iter=500,
                                            random_state=random_state), True
    return XGBoostClassifier(scale_pos_weight="auto" if class_weight == "balanced" else None, n_jobs=n_jobs,
                             random_state=random_state), False


def make_classifier(name: str, *, search: str | None = None, cv: Any = 5, n_iter: int = 20,
                    n_jobs: int | None = None, random_state: Any = None, class_weight: Any = "balanced",
                    pca: Any = None, scale: bool | None = None, param_space: dict | None = None,
                    clinical: Any = None, **params: Any) -> Any:
    """A named, unfitted scikit-learn classifier for embeddings, optionally with a grouped search.

    =========================  ===========================================================
    name                       pipeline (``scale`` = StandardScaler)
    =========================  ===========================================================
    ``logreg``                 scale + LogisticRegression(C=0.01) (strongly regularised)
    ``linear_svm``             scale + GroupedCalibratedClassifierCV(LinearSVC(C=0.01), sigmoid)
    ``rbf_svm``                scale + GroupedCalibratedClassifierCV(SVC(rbf), sigmoid, ensemble=False)
    ``knn``                    scale + KNeighborsClassifier(15, distance-weighted; at most one per row)
    ``random_forest``          RandomForestClassifier(300 trees)
    ``extra_trees``            ExtraTreesClassifier(300 trees)
    ``hist_gradient_boosting`` HistGradientBoostingClassifier
    ``mlp``                    scale + MLPClassifier((128,), alpha=0.01)
    ``xgboost``                :class:`XGBoostClassifier` (hist, ``scale_pos_weight`` from the data)
    =========================  ===========================================================

    Parameters
    ----------
    name : str
        One of :func:`list_classifiers` (a few aliases such as ``"rf"``, ``"xgb"`` work).
    search : {None, "grid", "random"}, default=None
        Wrap the pipeline in a :class:`GroupedSearchCV` over ``param_space``
        (default :func:`default_search_space`); pass ``groups=`` to ``fit``.
    cv : int or splitter, default=5
        Folds of the search (patient-grouped).
    n_iter : int, default=20
        Candidates of a random search.
    n_jobs : int or None, default=None
        Parallelism of the classifier (forests, kNN, XGBoost, calibration) and search.
    random_state : int or None, default=None
    class_weight : "balanced", dict or None, default="balanced"
        Imbalance handling; for ``xgboost`` "balanced" means ``scale_pos_weight="auto"``.
        ``knn`` and ``mlp`` have no class weights (ignored, logged).
    pca : int, float or None, default=None
        Insert ``PCA(n_components=pca)`` before the classifier (an int is a number of
        components, a float in (0, 1) a fraction of variance). Helps kNN, RBF-SVM and
        MLP on 1,000+ dimensional embeddings with few samples.
    scale : bool or None, default=None
        Force the StandardScaler on or off (default: on for distance/linear models).
    param_space : dict, optional
        Replaces the default search space.
    clinical : sequence of str, optional
        Clinical columns used beside the embeddings: the estimator then takes a DataFrame from
        :func:`cxr_embed.learn.clinical.clinical_frame`, and a
        :class:`~cxr_embed.learn.clinical.ClinicalFeatures` step (named ``"features"``; scaling,
        imputation, one-hot, and ``pca`` of the embedding block only) replaces ``scale``/``pca``,
        fitted inside each training fold. ``[]`` takes the frame with the embeddings alone.
    **params
        Parameters of the classifier step, e.g. ``C=0.1`` or ``n_estimators=500``
        (for the calibrated SVMs they reach the inner SVM); keys with ``__`` are set
        on the pipeline as they are.

    Returns
    -------
    estimator : Pipeline or GroupedSearchCV
        Unfitted; has ``predict_proba``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(60, 8)); y = (X[:, 0] > 0).astype(int)
    >>> clf = make_classifier("random_forest", n_estimators=50, random_state=0).fit(X, y)
    >>> clf.predict_proba(X).shape
    (60, 2)
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    key = _canonical(name)
    base, wants_scaling = _base_classifier(key, class_weight=class_weight, n_jobs=n_jobs, random_state=random_state)
    if class_weight is not None and key in ("knn", "mlp"):
        logger.info("%s has no class_weight; class_weight=%r is ignored", key, class_weight)
    if pca is not None and (isinstance(pca, bool) or not 0 < pca or (isinstance(pca, float) and pca >= 1)):
        raise ValueError(f"pca is a number of components >= 1 or a share of variance in (0, 1), got {pca!r}")
    steps = []
    if clinical is not None:
        from .clinical import ClinicalFeatures

        steps.append(("features", ClinicalFeatures([clinical] if isinstance(clinical, str) else list(clinical),
                                                   pca=pca, random_state=random_state)))
    elif (wants_scaling if scale is None else scale):
        steps.append(("scale", StandardScaler()))
    if pca is not None and clinical is None:
        steps.append(("pca", PCA(n_components=pca, random_state=random_state)))
    steps.append(("clf", base))
    pipe = GroupedPipeline(steps)
    if params:
        names = pipe.get_params(deep=True)
        resolved = {}
        for k, v in params.items():
            for candidate in (k, f"clf__{k}", f"clf__estimator__{k}"):
                if candidate in names:
                    resolved[candidate] = v
                    break
            else:
                raise ValueError(f"{k!r} is not a parameter of {key} ({type(base).__name__}); "
                                 f"valid: {sorted(n for n in names if n.startswith('clf__'))}")
        pipe.set_params(**resolved)
    if search is None:
        return pipe
    if search not in ("grid", "random"):
        raise ValueError(f"search must be None, 'grid' or 'random'; got {search!r}")
    space = default_search_space(key) if param_space is None else dict(param_space)
    return GroupedSearchCV(pipe, space, search=search, cv=cv, n_iter=n_iter, n_jobs=n_jobs,
                           random_state=random_state)


# --------------------------------------------------------------------------- multi-label
class MultiLabelClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """One classifier per label, each trained only where its label is known.

    ``fit(X, Y)`` applies the uncertainty ``policy`` (:func:`cxr_embed.learn.labels.apply_uncertainty`)
    to ``Y`` and fits a clone of ``estimator`` per label column on the rows whose
    label survives the policy (missing labels, and uncertain ones under
    ``"ignore"``, are left out). Soft targets of ``"ones_smoothed"`` are turned into
    weighted hard rows (:func:`cxr_embed.learn.labels.soft_to_weighted`); an estimator
    without ``sample_weight`` gets them rounded, with a warning. Under
    ``"multiclass"`` each label is a 3-class problem (negative/positive/uncertain)
    and ``predict_proba`` reports ``p(positive) / (p(positive) + p(negative))``, as
    in CheXpert. A label with one class only among its known rows gets a constant
    prior (``DummyClassifier``) and a warning. Native multi-output fitting is not
    used: per-label fitting is what makes per-label masks possible.

    Parameters
    ----------
    estimator : estimator or None, default=None
        Cloned per label; None means ``make_classifier("logreg")``. May be a
        ``GroupedSearchCV`` (then ``groups`` reach its grouped search).
    policy : str, default="ignore"
        Uncertainty policy (see :mod:`cxr_embed.learn.labels`).
    random_state : int or None, default=None
        Seeds the soft targets of ``"ones_smoothed"``.

    Attributes
    ----------
    labels_ : list of str
        Label names (DataFrame columns, else ``label_i``).
    estimators_ : list of fitted estimators, one per label
    n_labels_ : int
    y_ndim_ : int
        1 when fitted on a 1-D ``Y`` (then ``predict`` returns shape (n_samples,)).
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(80, 4))
    >>> Y = np.stack([(X[:, 0] > 0), (X[:, 1] > 0)], axis=1).astype(float)
    >>> Y[:10, 0] = np.nan; Y[10:20, 1] = -1
    >>> clf = MultiLabelClassifier(make_classifier("logreg"), policy="ones").fit(X, Y)
    >>> clf.predict_proba(X).shape
    (80, 2)
    """

    def __init__(self, estimator: Any = None, *, policy: str = "ignore", random_state: Any = None):
        self.estimator = estimator
        self.policy = policy
        self.random_state = random_state

    def fit(self, X: Any, Y: Any, groups: Any = None) -> "MultiLabelClassifier":
        """Fit one estimator per label on that label's known rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
        Y : array-like or DataFrame of shape (n_samples, n_labels) or (n_samples,)
            1 positive, 0 negative, -1 uncertain, NaN missing.
        groups : array-like of shape (n_samples,), optional
            Patient ids, passed on to estimators whose ``fit`` takes ``groups``.

        Returns
        -------
        self
        """
        policy = normalize_policy(self.policy)
        if Y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        X = _check_X(self, X, reset=True, ensure_all_finite=False)
        if hasattr(Y, "columns"):
            names = [str(c) for c in Y.columns]
        elif getattr(Y, "name", None) is not None and np.ndim(Y) == 1:  # a named Series
            names = [str(Y.name)]
        else:
            arr = np.asarray(Y)
            names = [f"label_{i}" for i in range(1 if arr.ndim == 1 else arr.shape[1])]
        y, mask = apply_uncertainty(Y, policy, random_state=self.random_state)
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {y.shape[0]}; they must match")
        y, mask = y.reshape(len(X), -1), mask.reshape(len(X), -1)
        if y.shape[1] == 0:
            raise ValueError(f"{type(self).__name__}: Y has no label column; give at least one")
        base = self.estimator
        if base is None:
            base = make_classifier("logreg")
        groups = None if groups is None else np.asarray(groups)
        estimators = []
        for j, name in enumerate(names):
            rows = mask[:, j]
            Xj, yj = X[rows], y[rows, j]
            gj = None if groups is None else groups[rows]
            weights = None
            soft = (yj > 0) & (yj < 1)
            if soft.any():
                est = clone(base)
                if _accepts_sample_weight(est):
                    Xj, yj, weights = soft_to_weighted(Xj, yj)
                    gj = None if gj is None else np.concatenate([gj, gj[soft]])
                else:
                    warnings.warn(f"{type(_final_step(est)).__name__} takes no sample_weight: soft targets of "
                                  f"label {name!r} are rounded to 0/1", UserWarning, stacklevel=2)
                    yj = np.rint(yj)
            yj = yj.astype(np.int64)
            if yj.size == 0 or np.unique(yj).size < 2:
                warnings.warn(f"label {name!r} has {yj.size} known rows and {np.unique(yj).size} class(es) after "
                              f"policy {policy!r}: a constant prior is used for it", UserWarning, stacklevel=2)
                est = DummyClassifier(strategy="prior").fit(Xj if yj.size else X[:1],
                                                            yj if yj.size else np.zeros(1, dtype=np.int64))
            else:
                est = _fit_with(clone(base), Xj, yj, groups=gj, sample_weight=weights)
            estimators.append(est)
            logger.debug("label %s: %d rows, %d positive", name, yj.size, int((yj == 1).sum()))
        self.labels_ = names
        self.y_ndim_ = int(np.ndim(Y))
        self.estimators_ = estimators
        self.n_labels_ = len(names)
        self.policy_ = policy
        return self

    def _positive(self, est: Any, X: np.ndarray) -> np.ndarray:
        proba = np.asarray(est.predict_proba(X), dtype=float)
        classes = list(est.classes_)
        if self.policy_ == "multiclass":
            p1 = proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))
            p0 = proba[:, classes.index(0)] if 0 in classes else np.zeros(len(X))
            with np.errstate(invalid="ignore", divide="ignore"):
                out = p1 / (p0 + p1)
            return np.where(np.isfinite(out), out, 0.5)
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probability of the positive class per label.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_labels)
        """
        check_is_fitted(self)
        X = _check_X(self, X, reset=False, ensure_all_finite=False)
        return np.column_stack([self._positive(e, X) for e in self.estimators_])

    def predict(self, X: Any) -> np.ndarray:
        """Positive (1) where the probability is at least 0.5.

        Returns
        -------
        y_pred : ndarray of int64 of shape (n_samples, n_labels), or (n_samples,) when fitted on a 1-D ``Y``
        """
        pred = (self.predict_proba(X) >= 0.5).astype(np.int64)
        return pred[:, 0] if self.y_ndim_ == 1 else pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        inner = self.estimator if self.estimator is not None else make_classifier("logreg")
        tags.input_tags.allow_nan = get_tags(inner).input_tags.allow_nan
        return tags
