"""Patient-grouped validation: splits, repeated CV, nested CV, external validation,
data-efficiency curves and a leakage guard.

Every split here is grouped by patient: images of one patient are never on both
sides of a split (:func:`check_no_leakage` raises :class:`~cxr_embed.LeakageError`
otherwise). Scores are ROC AUCs computed on out-of-fold (or external)
probabilities, with 95% confidence intervals from a patient-level bootstrap
(:func:`cxr_embed.evaluate.metrics.roc_auc_ci`).

Multi-label targets ``y`` of shape ``(n_samples, n_labels)`` with ``1/0/-1/NaN``
entries are supported when the estimator is a
:class:`cxr_embed.learn.classifiers.MultiLabelClassifier`; each label's AUC is computed on
the rows where that label is certain (0 or 1).
"""
from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils import check_random_state

from .._utils import require_int
from ..exceptions import InsufficientDataError, LeakageError

__all__ = [
    "CVResult",
    "ExternalResult",
    "GroupedRepeatedKFold",
    "check_no_leakage",
    "cross_validate_grouped",
    "external_validation",
    "grouped_kfold",
    "learning_curve_patients",
    "nested_cv",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- guard
def check_no_leakage(train_groups: Any, test_groups: Any) -> None:
    """Raise if any patient appears on both sides of a split.

    Parameters
    ----------
    train_groups : array-like of shape (n_train,)
        Patient id of each training row.
    test_groups : array-like of shape (n_test,)
        Patient id of each test row.

    Raises
    ------
    LeakageError
        Naming up to five shared patients and how many there are.

    Examples
    --------
    >>> check_no_leakage(["p1", "p2"], ["p3"])
    >>> check_no_leakage(["p1", "p2"], ["p2"])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    cxr_embed.exceptions.LeakageError: 1 patient(s) on both sides of the split ...
    """
    shared = np.intersect1d(np.asarray(train_groups).astype(str), np.asarray(test_groups).astype(str))
    if shared.size:
        shown = ", ".join(map(repr, shared[:5].tolist()))
        raise LeakageError(
            f"{shared.size} patient(s) on both sides of the split, e.g. {shown}; "
            "images of one patient must all be in train or all in test: split with "
            "grouped_kfold / GroupedRepeatedKFold and pass patient_id as groups"
        )


# --------------------------------------------------------------------------- helpers
def _as_2d_truth(y: Any) -> tuple[np.ndarray, bool]:
    """Targets as float (n, n_labels) with NaN where not a certain 0/1; flag if input was 1-D."""
    arr = y.to_numpy(dtype=float, na_value=np.nan) if hasattr(y, "to_numpy") else np.asarray(y, dtype=float)
    one_d = arr.ndim == 1
    arr = arr.reshape(-1, 1) if one_d else arr
    truth = np.where(np.isin(arr, (0.0, 1.0)), arr, np.nan)
    return truth, one_d


def _stratification_target(y: Any) -> np.ndarray:
    """1-D target StratifiedGroupKFold can balance: the rarest label (missing as its own class)."""
    if y is None:
        return None
    arr = y.to_numpy(dtype=float, na_value=np.nan) if hasattr(y, "to_numpy") else np.asarray(y)
    if arr.ndim == 1:
        if arr.dtype.kind == "f":
            return np.where(np.isnan(arr), -2.0, arr)
        return arr
    arr = arr.astype(float)
    if arr.shape[1] == 0:
        raise ValueError("y has no label column: give at least one label to stratify on")
    pos = np.nansum(arr == 1.0, axis=0)
    pos = np.where(pos == 0, np.inf, pos)
    col = int(np.argmin(pos))
    return np.where(np.isnan(arr[:, col]), -2.0, arr[:, col])


def _label_names(labels: Sequence[str] | None, y: Any, n_labels: int) -> list[str]:
    if labels is not None:
        names = [str(v) for v in labels]
    elif hasattr(y, "columns"):
        names = [str(c) for c in y.columns]
    elif hasattr(y, "name") and y.name is not None:
        names = [str(y.name)]
    else:
        names = ["y"] if n_labels == 1 else [f"label_{i}" for i in range(n_labels)]
    if len(names) != n_labels:
        raise ValueError(f"labels has {len(names)} names but y has {n_labels} label column(s); give one name per column")
    return names


def _fit(estimator: Any, X: np.ndarray, y: Any, groups: np.ndarray | None) -> Any:
    if groups is not None and "groups" in inspect.signature(estimator.fit).parameters:
        return estimator.fit(X, y, groups=groups)
    return estimator.fit(X, y)


def _positive_scores(estimator: Any, X: np.ndarray, n_labels: int) -> np.ndarray:
    """Probability of the positive class, shape (n, n_labels)."""
    proba = np.asarray(estimator.predict_proba(X), dtype=float)
    if hasattr(estimator, "labels_") and proba.ndim == 2 and proba.shape[1] == n_labels and n_labels > 1:
        return proba  # MultiLabelClassifier: already P(positive) per label
    if hasattr(estimator, "labels_"):
        return proba.reshape(len(X), -1)[:, :n_labels]
    classes = list(getattr(estimator, "classes_", [0, 1]))
    if 1 in classes:
        return proba[:, [classes.index(1)]]
    if len(classes) == 1:  # trained on one class only
        return np.zeros((len(X), 1))
    raise ValueError(f"the estimator's classes_ {classes} do not include the positive class 1")


def _require_multilabel_estimator(estimator: Any, truth: np.ndarray, one_d: bool) -> None:
    if hasattr(estimator, "policy"):  # a MultiLabelClassifier handles -1/NaN itself
        return
    if not one_d:
        raise ValueError(
            "y has several label columns but the estimator is single-label; wrap it: "
            "MultiLabelClassifier(estimator, policy='ignore')"
        )
    if np.isnan(truth).any():
        raise ValueError(
            f"y has {int(np.isnan(truth).sum())} entries that are not 0/1 (uncertain -1 or missing NaN); a plain "
            "classifier cannot use them: wrap it in MultiLabelClassifier(estimator, policy=...) or drop those rows"
        )


def _require_both_classes(y: np.ndarray, groups: np.ndarray | None, splits, *, what: str, label: str = "y") -> None:
    """Refuse, before any fit, splits with a training fold that holds one class of a binary target.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        0/1 (NaN rows are ignored).
    groups : ndarray of shape (n_samples,) or None
        Patient ids (counted in the message).
    splits : iterable of (train, test) index arrays
    what : str
        The analysis, for the message ("the patient-grouped CV", "stacking's inner folds").
    label : str

    Raises
    ------
    InsufficientDataError
        A training fold has only one class: scikit-learn's classifiers would raise a bare ``ValueError``
        for it, after the folds before it had run.
    """
    y = np.asarray(y, dtype=float)
    for train, _ in splits:
        seen = y[train][~np.isnan(y[train])]
        if np.unique(seen).size < 2:
            ids = np.arange(y.size) if groups is None else np.asarray(groups)
            n_pos, n_neg = (int(np.unique(ids[y == c]).size) for c in (1.0, 0.0))
            unit = "image" if groups is None else "patient"
            raise InsufficientDataError(
                f"a training fold of {what} holds only one class of {label!r} ({n_pos} {unit}(s) positive, "
                f"{n_neg} negative): a classifier cannot be fitted on it; fix: at least 2 {unit}s of each class "
                "(a useful AUC needs many more) or fewer folds")


def _auc_ci(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray | None, *,
            n_bootstrap: int, random_state: Any) -> tuple[float, float, float]:
    """AUC and 95% patient-bootstrap CI on rows with a certain label; NaN when a class is absent."""
    from ..evaluate.metrics import roc_auc_ci

    keep = ~np.isnan(y_true) & ~np.isnan(y_score)
    yt, ys = y_true[keep].astype(int), y_score[keep]
    g = np.arange(len(y_true))[keep] if groups is None else np.asarray(groups)[keep]
    if yt.size == 0 or yt.min() == yt.max():
        return np.nan, np.nan, np.nan
    auc, lo, hi = roc_auc_ci(yt, ys, groups=g, n_bootstrap=n_bootstrap, random_state=random_state)
    return float(auc), float(lo), float(hi)


# --------------------------------------------------------------------------- splits
class GroupedRepeatedKFold:
    """Repeated patient-grouped stratified K-fold, usable as ``cv=`` in scikit-learn.

    Each repeat is a :class:`~sklearn.model_selection.StratifiedGroupKFold` with
    ``shuffle=True`` and its own seed drawn from ``random_state``; every split is
    checked by :func:`check_no_leakage`. ``groups`` (patient ids) are required.
    Multi-label ``y`` is stratified on its rarest label.

    Parameters
    ----------
    n_splits : int, default=5
    n_repeats : int, default=1
    random_state : int, RandomState or None, default=None

    Examples
    --------
    >>> import numpy as np
    >>> cv = GroupedRepeatedKFold(n_splits=2, n_repeats=2, random_state=0)
    >>> y = np.array([0, 1] * 4); groups = np.repeat(["a", "b", "c", "d"], 2)
    >>> len(list(cv.split(np.zeros((8, 1)), y, groups)))
    4
    """

    def __init__(self, n_splits: int = 5, n_repeats: int = 1, random_state: Any = None):
        self.n_splits = n_splits
        self.n_repeats = n_repeats
        self.random_state = random_state

    def __repr__(self) -> str:
        return (f"GroupedRepeatedKFold(n_splits={self.n_splits}, n_repeats={self.n_repeats}, "
                f"random_state={self.random_state!r})")

    def get_metadata_routing(self) -> Any:
        """Request ``groups`` for ``split``, so the splitter also works with metadata routing on."""
        from sklearn.utils.metadata_routing import MetadataRequest

        request = MetadataRequest(owner=type(self).__name__)
        request.split.add_request(param="groups", alias=True)
        return request

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of (train, test) pairs: ``n_splits * n_repeats``."""
        self._check_counts()
        return int(self.n_splits) * int(self.n_repeats)

    def _check_counts(self) -> None:
        require_int(self.n_splits, "n_splits", 2)
        require_int(self.n_repeats, "n_repeats", 1)

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_idx, test_idx)`` index arrays, repeat by repeat.

        Parameters
        ----------
        X : array-like of shape (n_samples, dim)
        y : array-like of shape (n_samples,) or (n_samples, n_labels), default=None
        groups : array-like of shape (n_samples,)
            Patient ids. Required.
        """
        if groups is None:
            raise ValueError(
                "GroupedRepeatedKFold needs groups (one patient id per row) so that no patient is on "
                "both sides of a split; pass groups=manifest['patient_id']"
            )
        self._check_counts()
        groups = np.asarray(groups)
        n = len(groups)
        if X is not None and len(X) != n:
            raise ValueError(f"X has {len(X)} rows but groups has {n}; they must match")
        n_groups = np.unique(groups).size
        if n_groups < self.n_splits:
            raise InsufficientDataError(
                f"{n_groups} patients cannot fill n_splits={self.n_splits} grouped folds; "
                "lower n_splits or add patients"
            )
        strat = _stratification_target(y)
        if strat is None:
            strat = np.zeros(n)
        rng = check_random_state(self.random_state)
        seeds = rng.randint(np.iinfo(np.int32).max, size=self.n_repeats)
        for seed in seeds:
            splitter = StratifiedGroupKFold(n_splits=self.n_splits, shuffle=True, random_state=int(seed))
            with warnings.catch_warnings():
                # few positives per fold is common on small sets; the fold AUC shows it
                warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
                pairs = list(splitter.split(np.zeros((n, 1)), strat, groups))
            for train, test in pairs:
                check_no_leakage(groups[train], groups[test])
                yield train, test


def grouped_kfold(y: Any, groups: Any, *, n_splits: int = 5, n_repeats: int = 1,
                  random_state: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, stratified, repeated K-fold splits as a list.

    Parameters
    ----------
    y : array-like of shape (n_samples,) or (n_samples, n_labels)
        Targets used for stratification (multi-label: the rarest label).
    groups : array-like of shape (n_samples,)
        Patient ids.
    n_splits : int, default=5
    n_repeats : int, default=1
        Each repeat reshuffles patients with a new seed.
    random_state : int, RandomState or None, default=None

    Returns
    -------
    splits : list of (train_idx, test_idx)
        ``n_splits * n_repeats`` pairs of integer index arrays; repeat ``r`` is
        ``splits[r * n_splits:(r + 1) * n_splits]``.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([0, 1] * 10); groups = np.repeat(np.arange(10), 2)
    >>> splits = grouped_kfold(y, groups, n_splits=5, n_repeats=2, random_state=0)
    >>> len(splits)
    10
    """
    cv = GroupedRepeatedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=random_state)
    return list(cv.split(None, y, groups))


# --------------------------------------------------------------------------- results
@dataclass
class CVResult:
    """Out-of-fold predictions and AUCs of a patient-grouped (repeated) cross-validation.

    Attributes
    ----------
    labels : list of str
        Label names, length ``n_labels``.
    oof : ndarray of shape (n_repeats, n_samples, n_labels)
        Out-of-fold probability of the positive class, per repeat.
    y_true : ndarray of shape (n_samples, n_labels)
        Certain targets (0/1), NaN where uncertain or missing.
    groups : ndarray of shape (n_samples,)
    folds : DataFrame
        One row per (repeat, fold, label): ``auc``, ``n_train``, ``n_test``,
        ``n_train_patients``, ``n_test_patients``.
    summary : DataFrame
        One row per label (index ``label``): ``auc`` (mean over repeats of the pooled
        out-of-fold AUC), ``ci_low``/``ci_high`` (mean over repeats of the patient
        bootstrap 95% CI bounds), ``fold_auc_mean``, ``fold_auc_std``, ``n``, ``n_pos``,
        ``n_patients``.
    best_params : list of dict
        Per (repeat, fold) the tuned parameters (nested CV), else empty.
    """

    labels: list[str]
    oof: np.ndarray
    y_true: np.ndarray
    groups: np.ndarray
    folds: pd.DataFrame
    summary: pd.DataFrame
    best_params: list[dict] = field(default_factory=list)

    @property
    def mean_auc(self) -> float:
        """Macro average of the per-label AUCs."""
        return float(np.nanmean(self.summary["auc"].to_numpy()))

    @property
    def oof_mean(self) -> np.ndarray:
        """Out-of-fold probabilities averaged over repeats, shape (n_samples, n_labels)."""
        return np.nanmean(self.oof, axis=0)

    def __repr__(self) -> str:
        rows = ", ".join(f"{k}: {r.auc:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for k, r in self.summary.iterrows())
        return f"CVResult({rows})"

    def _repr_html_(self) -> str:
        """The summary as the report shows it (``0.868 [0.821, 0.910]`` cells), for Jupyter."""
        from ..evaluate.formatting import FormattedTable

        return FormattedTable.from_frame(self.summary.reset_index(), caption="Patient-grouped CV: AUC per label",
                                         csv_name="cv_summary.csv")._repr_html_()


def _summarise(labels, oof, truth, groups, folds, n_bootstrap, random_state) -> pd.DataFrame:
    rng = check_random_state(random_state)
    rows = []
    for j, name in enumerate(labels):
        aucs, los, his = [], [], []
        for r in range(oof.shape[0]):
            a, lo, hi = _auc_ci(truth[:, j], oof[r, :, j], groups, n_bootstrap=n_bootstrap,
                                random_state=rng.randint(np.iinfo(np.int32).max))
            aucs.append(a), los.append(lo), his.append(hi)
        known = ~np.isnan(truth[:, j])
        fa = folds.loc[folds["label"] == name, "auc"].to_numpy(dtype=float) if len(folds) else np.array([np.nan])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append({
                "label": name, "auc": np.nanmean(aucs), "ci_low": np.nanmean(los), "ci_high": np.nanmean(his),
                "fold_auc_mean": np.nanmean(fa), "fold_auc_std": np.nanstd(fa),
                "n": int(known.sum()), "n_pos": int(np.nansum(truth[:, j] == 1)),
                "n_patients": int(np.unique(np.asarray(groups)[known]).size),
            })
    return pd.DataFrame(rows).set_index("label")


def _rows(X: Any, idx: np.ndarray) -> Any:
    """Rows of an array, or of a DataFrame (a clinical frame) by position."""
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def _fold_task(estimator, X, y, groups, train, test, n_labels):
    est = clone(estimator)
    y_train = y.iloc[train] if hasattr(y, "iloc") else y[train]
    _fit(est, _rows(X, train), y_train, groups[train])
    scores = _positive_scores(est, _rows(X, test), n_labels)
    params = _best_params(est)
    return scores, params


def _best_params(est: Any) -> dict:
    if hasattr(est, "best_params_"):
        return dict(est.best_params_)
    if hasattr(est, "estimators_") and hasattr(est, "labels_"):
        return {lab: dict(getattr(e, "best_params_", {})) for lab, e in zip(est.labels_, est.estimators_)
                if hasattr(e, "best_params_")}
    return {}


def cross_validate_grouped(estimator: Any, X: Any, y: Any, groups: Any, *, n_splits: int = 5,
                           n_repeats: int = 1, random_state: Any = None, n_jobs: int | None = None,
                           labels: Sequence[str] | None = None, n_bootstrap: int = 1000,
                           clinical: Any = None) -> CVResult:
    """Patient-grouped (repeated) cross-validation with out-of-fold AUCs and CIs.

    Parameters
    ----------
    estimator : scikit-learn classifier
        Cloned for every fold. If its ``fit`` takes ``groups`` (a
        :class:`~cxr_embed.learn.classifiers.MultiLabelClassifier` or a ``search=`` estimator
        from :func:`~cxr_embed.learn.classifiers.make_classifier`), the training patients'
        ids are passed on, so inner searches stay grouped too.
    X : array-like of shape (n_samples, dim)
    y : array-like of shape (n_samples,) or (n_samples, n_labels)
        Binary targets, or multi-label 1/0/-1/NaN (needs a MultiLabelClassifier).
    groups : array-like of shape (n_samples,)
        Patient ids.
    n_splits, n_repeats : int
    random_state : int or None
        Seeds the splits and the bootstrap.
    n_jobs : int or None
        Folds fitted in parallel (joblib).
    labels : list of str, optional
        Label names (default: DataFrame columns, else ``y`` / ``label_i``).
    n_bootstrap : int, default=1000
        Patient-level bootstrap resamples for the CI; 0 skips the CI.
    clinical : DataFrame of shape (n_samples, n_columns), optional
        Per-image columns (clinical variables, a ``site`` column, ...) put beside ``X`` by
        :func:`cxr_embed.learn.clinical.clinical_frame`; each fold's rows of that one table reach
        the estimator, which must take it (``make_classifier(name, clinical=[...])``,
        :func:`~cxr_embed.learn.clinical.with_clinical`). ``X`` may also be such a frame already.

    Returns
    -------
    CVResult

    Raises
    ------
    InsufficientDataError
        Fewer patients than ``n_splits``, or (a single-label estimator) a training fold that would
        hold one class; raised before anything is fitted.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 4)); y = (X[:, 0] > 0).astype(int); groups = np.arange(60) // 2
    >>> res = cross_validate_grouped(LogisticRegression(), X, y, groups, random_state=0, n_bootstrap=100)
    >>> res.mean_auc > 0.8
    True
    """
    from joblib import Parallel, delayed

    if clinical is not None:
        from .clinical import clinical_frame

        X = clinical_frame(X, clinical)
    X = X.reset_index(drop=True) if hasattr(X, "iloc") else np.asarray(X)
    groups = np.asarray(groups)
    truth, one_d = _as_2d_truth(y)
    _require_multilabel_estimator(estimator, truth, one_d)
    names = _label_names(labels, y, truth.shape[1])
    rng = check_random_state(random_state)
    split_seed = rng.randint(np.iinfo(np.int32).max)
    splits = grouped_kfold(y, groups, n_splits=n_splits, n_repeats=n_repeats, random_state=split_seed)
    if not hasattr(estimator, "policy"):  # a MultiLabelClassifier scores a one-class label by a constant
        _require_both_classes(truth[:, 0], groups, splits, what="the patient-grouped CV", label=names[0])
    y_fit = y if hasattr(y, "iloc") else np.asarray(y)
    out = Parallel(n_jobs=n_jobs)(
        delayed(_fold_task)(estimator, X, y_fit, groups, tr, te, truth.shape[1]) for tr, te in splits
    )
    oof = np.full((n_repeats, len(X), truth.shape[1]), np.nan)
    rows, best = [], []
    for k, ((train, test), (scores, params)) in enumerate(zip(splits, out)):
        r, f = divmod(k, n_splits)
        oof[r, test] = scores
        if params:
            best.append(params)
        for j, name in enumerate(names):
            yt = truth[test, j]
            keep = ~np.isnan(yt)
            auc = (roc_auc_score(yt[keep], scores[keep, j])
                   if keep.any() and np.unique(yt[keep]).size == 2 else np.nan)
            rows.append({"repeat": r, "fold": f, "label": name, "auc": auc, "n_train": len(train),
                         "n_test": len(test), "n_train_patients": np.unique(groups[train]).size,
                         "n_test_patients": np.unique(groups[test]).size})
    folds = pd.DataFrame(rows)
    summary = _summarise(names, oof, truth, groups, folds, n_bootstrap, rng)
    logger.info("grouped CV (%d x %d): %s", n_repeats, n_splits, summary["auc"].round(3).to_dict())
    return CVResult(labels=names, oof=oof, y_true=truth, groups=groups, folds=folds, summary=summary,
                    best_params=best)


def _is_search(estimator: Any) -> bool:
    keys = estimator.get_params(deep=True).keys() if hasattr(estimator, "get_params") else ()
    return any(k.split("__")[-1] in ("param_grid", "param_distributions", "param_space") for k in keys)


def nested_cv(estimator_with_search: Any, X: Any, y: Any, groups: Any, *, n_splits: int = 5,
              n_repeats: int = 1, random_state: Any = None, n_jobs: int | None = None,
              labels: Sequence[str] | None = None, n_bootstrap: int = 1000) -> CVResult:
    """Nested patient-grouped CV: an honest estimate of a tuned model.

    The outer grouped folds give the estimate; within each outer training set the
    estimator's own grouped search (``make_classifier(name, search="grid")``) picks
    hyper-parameters on the training patients only. The chosen parameters per outer
    fold are in ``CVResult.best_params``.

    Parameters
    ----------
    estimator_with_search : estimator
        A search estimator (``GroupedSearchCV``, ``GridSearchCV``, ...) or a
        ``MultiLabelClassifier`` wrapping one.
    X, y, groups, n_splits, n_repeats, random_state, n_jobs, labels, n_bootstrap
        As in :func:`cross_validate_grouped`.

    Returns
    -------
    CVResult

    Raises
    ------
    ValueError
        If the estimator does not tune anything (use :func:`cross_validate_grouped`).

    Examples
    --------
    >>> import numpy as np
    >>> from cxr_embed.learn.classifiers import make_classifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(80, 4)); y = (X[:, 0] > 0).astype(int); groups = np.arange(80) // 2
    >>> est = make_classifier("logreg", search="grid", cv=3)
    >>> res = nested_cv(est, X, y, groups, n_splits=3, random_state=0, n_bootstrap=0)
    >>> len(res.best_params)
    3
    """
    if not _is_search(estimator_with_search):
        raise ValueError(
            "nested_cv needs an estimator that tunes itself (e.g. make_classifier(name, search='grid')); "
            f"got {type(estimator_with_search).__name__}: use cross_validate_grouped for a fixed model"
        )
    return cross_validate_grouped(estimator_with_search, X, y, groups, n_splits=n_splits, n_repeats=n_repeats,
                                  random_state=random_state, n_jobs=n_jobs, labels=labels,
                                  n_bootstrap=n_bootstrap)


@dataclass
class ExternalResult:
    """Internal-vs-external validation of one model.

    Attributes
    ----------
    estimator : estimator
        Fitted on the whole training set.
    labels : list of str
    y_score : ndarray of shape (n_ext, n_labels)
        Probabilities on the external set.
    y_true : ndarray of shape (n_ext, n_labels)
        Certain external targets, NaN elsewhere.
    summary : DataFrame
        One row per (setting, label); settings ``"external"`` and, when asked for,
        ``"internal"`` (grouped CV on the training set): ``auc``, ``ci_low``,
        ``ci_high``, ``n``, ``n_pos``, ``n_patients``.
    internal : CVResult or None
    """

    estimator: Any
    labels: list[str]
    y_score: np.ndarray
    y_true: np.ndarray
    summary: pd.DataFrame
    internal: CVResult | None = None

    @property
    def external_auc(self) -> float:
        """Macro average external AUC."""
        return float(self.summary.loc[self.summary["setting"] == "external", "auc"].mean())

    def _repr_html_(self) -> str:
        """The summary as the report shows it, for Jupyter."""
        from ..evaluate.formatting import FormattedTable

        return FormattedTable.from_frame(self.summary, caption="Internal and external AUC per label",
                                         csv_name="external_summary.csv")._repr_html_()


def external_validation(estimator: Any, X_train: Any, y_train: Any, X_ext: Any, y_ext: Any, *,
                        groups_train: Any = None, groups_ext: Any = None, labels: Sequence[str] | None = None,
                        internal_splits: int | None = None, n_bootstrap: int = 1000,
                        random_state: Any = None, n_jobs: int | None = None,
                        check_overlap: bool = True) -> ExternalResult:
    """Fit on one dataset, score on another (never mixing), optionally beside internal CV.

    Parameters
    ----------
    estimator : scikit-learn classifier
        Cloned, then fitted on all of ``X_train``.
    X_train : array-like of shape (n_train, dim)
        Or a clinical frame (:func:`cxr_embed.learn.clinical.clinical_frame`), with ``X_ext`` one too:
        then a :class:`~cxr_embed.learn.harmonization.ComBat` step of the estimator sees the external
        site's label-free columns.
    y_train : array-like of shape (n_train,) or (n_train, n_labels)
    X_ext : array-like of shape (n_ext, dim)
        Embeddings of the external set, from the *same* backbone fingerprint.
    y_ext : array-like of shape (n_ext,) or (n_ext, n_labels)
    groups_train, groups_ext : array-like, optional
        Patient ids; ``groups_ext`` makes the external CI a patient-level bootstrap
        (rows are treated as patients otherwise); ``groups_train`` is passed to the
        estimator's grouped search and needed for ``internal_splits``.
    labels : list of str, optional
    internal_splits : int, optional
        Also run ``cross_validate_grouped`` with this many folds on the training set,
        so internal and external AUCs sit side by side.
    n_bootstrap : int, default=1000
    random_state : int or None
    n_jobs : int or None
    check_overlap : bool, default=True
        Raise :class:`~cxr_embed.LeakageError` when a patient id is in both sets
        (prefix ids with the site name if they merely collide).

    Returns
    -------
    ExternalResult

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 3)); y = (X[:, 0] > 0).astype(int)
    >>> res = external_validation(LogisticRegression(), X[:60], y[:60], X[60:], y[60:], n_bootstrap=100)
    >>> res.external_auc > 0.8
    True
    """
    frames = hasattr(X_train, "iloc") and hasattr(X_ext, "iloc")  # clinical frames (learn/clinical.py)
    X_train, X_ext = (X_train, X_ext) if frames else (np.asarray(X_train), np.asarray(X_ext))
    if X_train.ndim != 2 or X_ext.ndim != 2 or X_train.shape[1] != X_ext.shape[1]:
        raise ValueError(
            f"X_train {X_train.shape} and X_ext {X_ext.shape} must be 2-D with the same dim; "
            "embed both sets with the same backbone fingerprint"
        )
    truth_ext, one_d = _as_2d_truth(y_ext)
    if len(truth_ext) == 0:
        raise InsufficientDataError("the external set has no rows: nothing to validate on (checked before fitting)")
    _require_multilabel_estimator(estimator, _as_2d_truth(y_train)[0], one_d)
    names = _label_names(labels, y_ext if hasattr(y_ext, "columns") else y_train, truth_ext.shape[1])
    if check_overlap and groups_train is not None and groups_ext is not None:
        check_no_leakage(groups_train, groups_ext)
    rng = check_random_state(random_state)
    internal = None
    if internal_splits:
        if groups_train is None:
            raise ValueError("internal_splits needs groups_train (patient ids of the training set)")
        internal = cross_validate_grouped(estimator, X_train, y_train, groups_train, n_splits=internal_splits,
                                          random_state=rng.randint(np.iinfo(np.int32).max), n_jobs=n_jobs,
                                          labels=names, n_bootstrap=n_bootstrap)
    est = clone(estimator)
    y_fit = y_train if hasattr(y_train, "iloc") else np.asarray(y_train)
    _fit(est, X_train, y_fit, None if groups_train is None else np.asarray(groups_train))
    scores = _positive_scores(est, X_ext, truth_ext.shape[1])
    g_ext = np.arange(len(X_ext)) if groups_ext is None else np.asarray(groups_ext)
    rows = []
    for j, name in enumerate(names):
        a, lo, hi = _auc_ci(truth_ext[:, j], scores[:, j], g_ext, n_bootstrap=n_bootstrap,
                            random_state=rng.randint(np.iinfo(np.int32).max))
        known = ~np.isnan(truth_ext[:, j])
        n_pos = int(np.nansum(truth_ext[:, j] == 1))
        if np.isnan(a):
            warnings.warn(f"external_validation: {name!r} has {n_pos} positive and {int(known.sum()) - n_pos} negative "
                          "external images with a known label; an AUC needs both, so it is NaN", UserWarning,
                          stacklevel=2)
        rows.append({"setting": "external", "label": name, "auc": a, "ci_low": lo, "ci_high": hi,
                     "n": int(known.sum()), "n_pos": n_pos,
                     "n_patients": int(np.unique(g_ext[known]).size)})
    summary = pd.DataFrame(rows)
    if internal is not None:
        inner = internal.summary.reset_index()[["label", "auc", "ci_low", "ci_high", "n", "n_pos", "n_patients"]]
        inner.insert(0, "setting", "internal")
        summary = pd.concat([inner, summary], ignore_index=True)
    return ExternalResult(estimator=est, labels=names, y_score=scores, y_true=truth_ext, summary=summary,
                          internal=internal)


# --------------------------------------------------------------------------- learning curve
def _curve_task(estimator, X, y, groups, train, test, order, size, n_labels):
    chosen = order[:size]
    rows = train[np.isin(groups[train], chosen)]
    y_sub = y.iloc[rows] if hasattr(y, "iloc") else y[rows]
    truth, _ = _as_2d_truth(y_sub)
    if not any(np.unique(truth[~np.isnan(truth[:, j]), j]).size == 2 for j in range(n_labels)):
        return None  # no label has both classes among these patients
    est = clone(estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            _fit(est, X[rows], y_sub, groups[rows])
        except ValueError as e:  # e.g. one class only for a plain classifier
            logger.debug("learning curve: %d patients could not be fitted: %s", size, e)
            return None
    return _positive_scores(est, X[test], n_labels)


def learning_curve_patients(estimator: Any, X: Any, y: Any, groups: Any, *,
                            sizes: Sequence[int] | None = None, n_splits: int = 5, n_repeats: int = 3,
                            random_state: Any = None, n_jobs: int | None = None,
                            labels: Sequence[str] | None = None, n_bootstrap: int = 500) -> pd.DataFrame:
    """Data-efficiency curve: AUC against the number of *training patients*, with CIs.

    For each repeat, the patients are split into grouped folds; within each fold's
    training patients a random order is drawn once and the first ``size`` patients
    (all their images) train the model, so larger sizes contain the smaller ones.
    Out-of-fold predictions of all folds are pooled per size and scored (AUC with a
    patient-bootstrap CI), then averaged over repeats.

    Parameters
    ----------
    estimator : scikit-learn classifier
    X : array-like of shape (n_samples, dim)
    y : array-like of shape (n_samples,) or (n_samples, n_labels)
    groups : array-like of shape (n_samples,)
        Patient ids.
    sizes : sequence of int, optional
        Numbers of training patients. Default: 6 sizes spaced geometrically from 10
        (or fewer) to the smallest fold's training-patient count. Larger sizes are
        clipped to that count with a warning.
    n_splits : int, default=5
    n_repeats : int, default=3
    random_state : int or None
    n_jobs : int or None
    labels : list of str, optional
    n_bootstrap : int, default=500

    Returns
    -------
    curve : DataFrame
        One row per (n_patients, label): ``auc``, ``ci_low``, ``ci_high`` (means over
        repeats), ``auc_std`` (between repeats), ``n_repeats`` scored.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4)); y = (X[:, 0] > 0).astype(int); groups = np.arange(200) // 2
    >>> curve = learning_curve_patients(LogisticRegression(), X, y, groups, sizes=[5, 40],
    ...                                 n_repeats=1, random_state=0, n_bootstrap=50)
    >>> list(curve["n_patients"])
    [5, 40]
    """
    from joblib import Parallel, delayed

    X = np.asarray(X)
    groups = np.asarray(groups)
    truth, one_d = _as_2d_truth(y)
    _require_multilabel_estimator(estimator, truth, one_d)
    names = _label_names(labels, y, truth.shape[1])
    n_labels = truth.shape[1]
    rng = check_random_state(random_state)
    splits = grouped_kfold(y, groups, n_splits=n_splits, n_repeats=n_repeats,
                           random_state=rng.randint(np.iinfo(np.int32).max))
    max_patients = min(np.unique(groups[tr]).size for tr, _ in splits)
    if sizes is None:
        lo = min(10, max_patients)
        sizes = np.unique(np.geomspace(lo, max_patients, 6).round().astype(int))
    sizes = sorted({int(s) for s in sizes})
    if not sizes:
        raise ValueError("sizes is empty: give the numbers of training patients to try, or None for six sizes")
    if any(s < 1 for s in sizes):
        raise ValueError(f"sizes must be positive numbers of patients; got {sizes}")
    if sizes[-1] > max_patients:
        warnings.warn(f"learning_curve_patients: sizes above {max_patients} (training patients of the smallest "
                      "fold) are clipped to it", UserWarning, stacklevel=2)
        sizes = sorted({min(s, max_patients) for s in sizes})
    orders = [rng.permutation(np.unique(groups[tr])) for tr, _ in splits]
    y_fit = y if hasattr(y, "iloc") else np.asarray(y)
    tasks = [(k, s_i, tr, te, orders[k], s) for k, (tr, te) in enumerate(splits) for s_i, s in enumerate(sizes)]
    out = Parallel(n_jobs=n_jobs)(
        delayed(_curve_task)(estimator, X, y_fit, groups, tr, te, order, s, n_labels)
        for _, _, tr, te, order, s in tasks
    )
    oof = np.full((n_repeats, len(sizes), len(X), n_labels), np.nan)
    for (k, s_i, _, te, _, _), scores in zip(tasks, out):
        if scores is not None:
            oof[k // n_splits, s_i, te] = scores
    rows = []
    for s_i, s in enumerate(sizes):
        for j, name in enumerate(names):
            res = []
            for r in range(n_repeats):
                sc = oof[r, s_i, :, j]
                if np.isnan(sc[~np.isnan(truth[:, j])]).any():
                    continue  # some fold could not be trained at this size
                res.append(_auc_ci(truth[:, j], sc, groups, n_bootstrap=n_bootstrap,
                                   random_state=rng.randint(np.iinfo(np.int32).max)))
            arr = np.array(res, dtype=float).reshape(-1, 3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                rows.append({"n_patients": s, "label": name, "auc": np.nanmean(arr[:, 0]),
                             "ci_low": np.nanmean(arr[:, 1]), "ci_high": np.nanmean(arr[:, 2]),
                             "auc_std": np.nanstd(arr[:, 0]), "n_repeats": len(res)})
    return pd.DataFrame(rows)
