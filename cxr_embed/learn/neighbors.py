"""k-nearest neighbours that stays defined when fitted on fewer rows than neighbours.

Small labelled sets are this library's use case, and the library fits classifiers on parts of them:
the inner folds of a stack (:class:`~cxr_embed.StackedEnsemble`), of a nested search, of a
calibration. scikit-learn's :class:`~sklearn.neighbors.KNeighborsClassifier` accepts ``fit`` on 12
rows with ``n_neighbors=15`` and then raises ``ValueError: Expected n_neighbors <= n_samples_fit`` at
prediction time, ending the whole run. :class:`ClampedKNeighborsClassifier` lets every training row
vote in that case (``n_neighbors_ = min(n_neighbors, n_rows)``) and notes it in the log (INFO); with enough
rows it is scikit-learn's estimator, bit for bit.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

logger = logging.getLogger(__name__)

__all__ = ["ClampedKNeighborsClassifier"]


class ClampedKNeighborsClassifier(ClassifierMixin, BaseEstimator):
    """:class:`~sklearn.neighbors.KNeighborsClassifier` using at most as many neighbours as training rows.

    Parameters
    ----------
    n_neighbors : int, default=15
        Neighbours asked for; ``min(n_neighbors, n_training_rows)`` are used.
    weights : {"distance", "uniform"} or callable, default="distance"
    metric : str, default="minkowski"
    p : float, default=2
    n_jobs : int or None, default=None

    Attributes
    ----------
    n_neighbors_ : int
        Neighbours actually used.
    estimator_ : sklearn.neighbors.KNeighborsClassifier
        The fitted estimator, built with ``n_neighbors_``.
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(12.0).reshape(6, 2); y = [0, 0, 0, 1, 1, 1]
    >>> clf = ClampedKNeighborsClassifier(n_neighbors=15, weights="uniform").fit(X, y)
    >>> clf.n_neighbors_, clf.predict_proba(X[:1]).tolist()
    (6, [[0.5, 0.5]])
    """

    def __init__(self, n_neighbors: int = 15, weights: Any = "distance", metric: str = "minkowski", p: float = 2,
                 n_jobs: int | None = None):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.metric = metric
        self.p = p
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # as KNeighborsClassifier's
        return tags

    def fit(self, X, y):
        """Fit on ``X`` of shape (n_rows, n_features) and labels ``y`` of shape (n_rows,).

        Returns
        -------
        self
        """
        from sklearn.neighbors import KNeighborsClassifier

        X, y = validate_data(self, X, y, accept_sparse="csr")
        n = X.shape[0]
        self.n_neighbors_ = min(self.n_neighbors, n)  # below 1: KNeighborsClassifier's parameter check says so
        if self.n_neighbors_ < self.n_neighbors:
            logger.info("kNN fitted on %d training rows with n_neighbors=%d: all %d rows vote", n, self.n_neighbors, n)
        self.estimator_ = KNeighborsClassifier(n_neighbors=self.n_neighbors_, weights=self.weights,
                                               metric=self.metric, p=self.p, n_jobs=self.n_jobs).fit(X, y)
        self.classes_ = self.estimator_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_rows, n_classes)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(validate_data(self, X, accept_sparse="csr", reset=False))

    def predict(self, X) -> np.ndarray:
        """Predicted class labels, shape (n_rows,)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(validate_data(self, X, accept_sparse="csr", reset=False))
