"""Clinical variables beside the image embeddings: one input table, preprocessing fitted per fold,
and the importance of each variable and of the image as a whole.

The input of every estimator here is a :class:`pandas.DataFrame` that holds the embedding block
(columns ``emb_0000 ... emb_<dim-1>``, made by :func:`clinical_frame`) beside per-image columns
from the manifest (``age``, ``sex``, ``view``, lab values, a ``site`` column for
:class:`~cxr_embed.learn.harmonization.ComBat` ...). Because the table travels as one ``X``, every
scikit-learn tool (``Pipeline``, ``clone``, grouped searches, :func:`cross_validate_grouped`)
hands each fold's rows to :class:`ClinicalFeatures`, which learns its scaling, imputation and
one-hot categories from the training rows only and applies them to the held-out rows.

:func:`clinical_importance` measures, on held-out patient-grouped folds, how much ROC AUC is
lost when one column (or the whole image block) is shuffled among the test images; its table is
drawn by :func:`~cxr_embed.evaluate.figures.plot_importance` (re-exported here) and shown in the
HTML report by ``write_report(..., importance=table)``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from .._utils import require_int
from ..evaluate.figures import plot_importance  # re-exported: the figure lives with the report's figures
from ..exceptions import ClinicalDataError
from .classifiers import GroupedPipeline, make_classifier

__all__ = [
    "EMBEDDING_PREFIX",
    "ClinicalFeatures",
    "clinical_frame",
    "clinical_importance",
    "embedding_columns",
    "plot_importance",
    "with_clinical",
]

logger = logging.getLogger(__name__)

#: Prefix of the embedding columns of a clinical frame (``emb_0000``, ``emb_0001``, ...).
EMBEDDING_PREFIX = "emb_"
_MISSING = "missing"  # category given to missing values of categorical columns


# --------------------------------------------------------------------------- the input table
def clinical_frame(X: Any, clinical: Any = None, *, prefix: str = EMBEDDING_PREFIX) -> pd.DataFrame:
    """Embeddings and per-image columns side by side: the input of the clinical estimators.

    Parameters
    ----------
    X : array-like of shape (n_samples, dim)
        Embeddings (e.g. from :meth:`cxr_embed.EmbeddingStore.load`), same row order as ``clinical``.
    clinical : DataFrame of shape (n_samples, n_columns), optional
        Per-image columns kept as they are (numbers, strings, NaN for missing), e.g.
        ``manifest[["age", "sex", "view"]]``. Its index is dropped: rows are matched by position.
    prefix : str, default "emb_"
        Prefix of the embedding column names.

    Returns
    -------
    frame : DataFrame of shape (n_samples, dim + n_columns)
        Columns ``emb_0000 ... emb_<dim-1>`` (float) then the clinical columns; a fresh
        ``RangeIndex``.

    Raises
    ------
    ClinicalDataError
        Row counts differ, ``X`` is not 2-D, or a clinical column name starts with ``prefix``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frame = clinical_frame(np.zeros((2, 3)), pd.DataFrame({"age": [61, np.nan], "sex": ["F", "M"]}))
    >>> list(frame.columns)
    ['emb_0000', 'emb_0001', 'emb_0002', 'age', 'sex']
    """
    if isinstance(X, pd.DataFrame) and clinical is None and embedding_columns(X, prefix=prefix):
        return X.reset_index(drop=True)
    arr = np.asarray(X, dtype=float)
    if arr.ndim != 2:
        raise ClinicalDataError(f"X must be 2-D embeddings of shape (n_samples, dim); got shape {arr.shape}")
    width = max(4, len(str(arr.shape[1] - 1)))
    emb = pd.DataFrame(arr, columns=[f"{prefix}{j:0{width}d}" for j in range(arr.shape[1])])
    if clinical is None:
        return emb
    clin = clinical.to_frame() if isinstance(clinical, pd.Series) else pd.DataFrame(clinical)
    if len(clin) != len(emb):
        raise ClinicalDataError(f"clinical has {len(clin)} rows but X has {len(emb)}; pass the manifest rows in the "
                                "same order as the embeddings (e.g. manifest.loc[have] after store.load)")
    clash = [c for c in clin.columns if str(c).startswith(prefix)]
    if clash:
        raise ClinicalDataError(f"clinical column(s) {clash} start with the embedding prefix {prefix!r}; "
                                "rename them or pass another prefix=")
    clin = clin.reset_index(drop=True)
    clin.columns = [str(c) for c in clin.columns]
    return pd.concat([emb, clin], axis=1)


def embedding_columns(frame: pd.DataFrame, *, prefix: str = EMBEDDING_PREFIX) -> list[str]:
    """Names of the embedding columns of a clinical frame, in order.

    Parameters
    ----------
    frame : DataFrame
    prefix : str, default "emb_"

    Returns
    -------
    list of str

    Examples
    --------
    >>> import numpy as np
    >>> embedding_columns(clinical_frame(np.zeros((1, 2))))
    ['emb_0000', 'emb_0001']
    """
    return [c for c in frame.columns if isinstance(c, str) and c.startswith(prefix)]


def _require_frame(X: Any, who: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise ClinicalDataError(
            f"{who} takes a DataFrame of embeddings beside clinical columns, got {type(X).__name__}; "
            "build it with clinical_frame(X, manifest[columns]) or pass clinical= to cross_validate_grouped")
    return X


def _category_strings(frame: pd.DataFrame) -> np.ndarray:
    """Categorical columns as str, missing values as the category "missing" (picklable, module level)."""
    frame = pd.DataFrame(frame)
    return frame.astype(object).where(frame.notna(), _MISSING).astype(str).to_numpy(dtype=object)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


# --------------------------------------------------------------------------- the transformer
class ClinicalFeatures(TransformerMixin, BaseEstimator):
    """Embedding block + clinical columns -> one numeric matrix, learnt from the training rows only.

    A :class:`~sklearn.compose.ColumnTransformer` built in ``fit``:

    ============  ==================================================================
    block         steps (all fitted in ``fit``, i.e. on a fold's training rows)
    ============  ==================================================================
    image         StandardScaler, then ``PCA(pca)`` when ``pca`` is set
    numeric       median imputation (+ a missing-indicator column per column that had
                  missing values), StandardScaler
    categorical   missing -> category ``"missing"``, one-hot with
                  ``handle_unknown="ignore"`` (an unseen category is all zeros)
    ============  ==================================================================

    Other columns of the input (a ``site`` column, ids) are dropped.

    Parameters
    ----------
    columns : sequence of str, default=()
        Clinical columns to use beside the embeddings.
    categorical : sequence of str or None, default=None
        Which of ``columns`` are categorical; None infers it from the training rows' dtypes
        (numbers are numeric, text/bool/category are categorical).
    pca : int, float or None, default=None
        Reduce the embedding block (components, or fraction of variance in (0, 1)), so a
        handful of clinical variables are not drowned by 1,280 image dimensions.
    missing_indicator : bool, default=True
        Add a 0/1 column "was missing" for numeric columns with missing training values.
    prefix : str, default="emb_"
        Prefix of the embedding columns.
    random_state : int or None, default=None
        Seeds the PCA solver.

    Attributes
    ----------
    embedding_columns_ : list of str
    numeric_ : list of str
    categorical_ : list of str
    transformer_ : ColumnTransformer
        Fitted.
    blocks_ : dict of str -> list of str
        Input block name (``"image"`` or a clinical column) -> its input columns.
    feature_names_in_ : ndarray of str
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> frame = clinical_frame(np.random.default_rng(0).normal(size=(6, 4)),
    ...                        pd.DataFrame({"age": [60, 70, np.nan, 50, 40, 30], "sex": list("FMFMF") + [None]}))
    >>> ClinicalFeatures(["age", "sex"]).fit_transform(frame).shape  # 4 image + age + age missing + 3 sex
    (6, 9)
    """

    def __init__(self, columns: Sequence[str] = (), *, categorical: Sequence[str] | None = None,
                 pca: Any = None, missing_indicator: bool = True, prefix: str = EMBEDDING_PREFIX,
                 random_state: Any = None):
        self.columns = columns
        self.categorical = categorical
        self.pca = pca
        self.missing_indicator = missing_indicator
        self.prefix = prefix
        self.random_state = random_state

    def fit(self, X: pd.DataFrame, y: Any = None) -> "ClinicalFeatures":
        """Learn scaling, imputation, categories (and PCA) from these rows.

        Parameters
        ----------
        X : DataFrame of shape (n_samples, dim + n_columns)
            From :func:`clinical_frame`.
        y : ignored

        Returns
        -------
        self
        """
        from sklearn.compose import ColumnTransformer
        from sklearn.decomposition import PCA
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

        X = _require_frame(X, type(self).__name__)
        columns = [str(c) for c in ([self.columns] if isinstance(self.columns, str) else self.columns)]
        emb = embedding_columns(X, prefix=self.prefix)
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ClinicalDataError(f"clinical column(s) {missing} are not in the input; it has "
                                    f"{[c for c in X.columns if c not in emb][:20]} beside {len(emb)} embedding "
                                    "columns; fix: add them with clinical_frame(X, manifest[columns])")
        if not emb and not columns:
            raise ClinicalDataError(f"the input has no embedding columns (prefix {self.prefix!r}) and no clinical "
                                    "columns were chosen; build it with clinical_frame")
        if self.categorical is None:
            categorical = [c for c in columns if not _is_numeric(X[c])]
        else:
            categorical = [str(c) for c in self.categorical]
            stray = [c for c in categorical if c not in columns]
            if stray:
                raise ClinicalDataError(f"categorical={stray} are not among columns={columns}; list them in both")
        numeric = [c for c in columns if c not in categorical]
        for c in numeric:
            try:
                pd.to_numeric(X[c])
            except (TypeError, ValueError) as e:
                raise ClinicalDataError(f"numeric clinical column {c!r} holds non-numbers (e.g. "
                                        f"{X[c].dropna().astype(str).head(3).tolist()}); fix: list it in "
                                        "categorical=, or clean it") from e
        parts = []
        if emb:
            image = [("scale", StandardScaler())]
            if self.pca is not None:
                image.append(("pca", PCA(n_components=self.pca, random_state=self.random_state)))
            parts.append(("image", Pipeline(image), emb))
        if numeric:
            parts.append(("numeric", Pipeline([
                ("impute", SimpleImputer(strategy="median", add_indicator=bool(self.missing_indicator),
                                         keep_empty_features=True)),
                ("scale", StandardScaler())]), numeric))
        if categorical:
            parts.append(("categorical", Pipeline([
                ("strings", FunctionTransformer(_category_strings, feature_names_out="one-to-one")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))]), categorical))
        Xn = X.copy()
        for c in numeric:
            Xn[c] = pd.to_numeric(Xn[c]).astype(float)
        self.transformer_ = ColumnTransformer(parts, remainder="drop", verbose_feature_names_out=True).fit(Xn, y)
        self.embedding_columns_ = emb
        self.numeric_ = numeric
        self.categorical_ = categorical
        self.blocks_ = {**({"image": emb} if emb else {}), **{c: [c] for c in columns}}
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        self.n_features_in_ = X.shape[1]
        logger.debug("ClinicalFeatures: %d embedding, %d numeric, %d categorical columns", len(emb),
                     len(numeric), len(categorical))
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        """Apply what ``fit`` learnt.

        Parameters
        ----------
        X : DataFrame with the columns seen in ``fit``

        Returns
        -------
        Xt : ndarray of shape (n_samples, n_features_out)
            Image block, then numeric (with missing indicators), then one-hot columns.
        """
        check_is_fitted(self, "transformer_")
        X = _require_frame(X, type(self).__name__)
        need = self.embedding_columns_ + self.numeric_ + self.categorical_
        missing = [c for c in need if c not in X.columns]
        if missing:
            raise ClinicalDataError(f"the input lacks column(s) {missing[:10]} seen in fit; fix: build it with "
                                    "clinical_frame from the same manifest columns")
        Xn = X.copy()
        for c in self.numeric_:
            try:
                Xn[c] = pd.to_numeric(Xn[c]).astype(float)
            except (TypeError, ValueError) as e:
                raise ClinicalDataError(f"numeric clinical column {c!r} holds non-numbers at prediction time; "
                                        "fix: clean it (missing values may be blank/NaN)") from e
        return np.asarray(self.transformer_.transform(Xn), dtype=float)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output column names, e.g. ``image__pca0``, ``numeric__age``, ``categorical__sex_F``."""
        check_is_fitted(self, "transformer_")
        return self.transformer_.get_feature_names_out()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.string = True
        return tags


def with_clinical(estimator: Any, columns: Sequence[str] = (), *, categorical: Sequence[str] | None = None,
                  pca: Any = None, harmonizer: Any = None, random_state: Any = None, **params: Any) -> GroupedPipeline:
    """A classifier that takes embeddings beside clinical columns (one DataFrame ``X``).

    Parameters
    ----------
    estimator : str or scikit-learn classifier
        A name for :func:`~cxr_embed.learn.classifiers.make_classifier` (then ``params`` go to it;
        its scaling/PCA are replaced by :class:`ClinicalFeatures`), or any classifier.
    columns : sequence of str, default=()
        Clinical columns, e.g. ``["age", "sex", "view"]``.
    categorical : sequence of str or None, default=None
        Categorical ones among ``columns`` (None: inferred from dtypes in ``fit``).
    pca : int, float or None, default=None
        PCA of the embedding block only (see :class:`ClinicalFeatures`).
    harmonizer : transformer or None, default=None
        A step run first, on the whole frame, e.g.
        ``ComBat(site="site", covariates=["age", "sex"])``.
    random_state : int or None, default=None
    **params
        Passed to :func:`~cxr_embed.learn.classifiers.make_classifier` when ``estimator`` is a name.

    Returns
    -------
    GroupedPipeline
        Steps ``[("harmonize", ...)], ("features", ClinicalFeatures), ("clf", classifier)``: search
        spaces use ``clf__<param>`` and ``features__pca``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> age = rng.normal(60, 10, 80); y = (age + rng.normal(0, 5, 80) > 60).astype(int)
    >>> frame = clinical_frame(rng.normal(size=(80, 16)), pd.DataFrame({"age": age}))
    >>> clf = with_clinical("logreg", ["age"], C=1.0).fit(frame, y)
    >>> clf.predict_proba(frame).shape
    (80, 2)
    """
    if isinstance(estimator, str):
        clf = make_classifier(estimator, scale=False, random_state=random_state, **params).steps[-1][1]
    else:
        if params:
            raise TypeError(f"params {sorted(params)} only apply when estimator is a name; set them on the "
                            "estimator instead")
        clf = clone(estimator)
    steps = [] if harmonizer is None else [("harmonize", clone(harmonizer))]
    steps.append(("features", ClinicalFeatures(list(columns), categorical=categorical, pca=pca,
                                               random_state=random_state)))
    steps.append(("clf", clf))
    return GroupedPipeline(steps)


# --------------------------------------------------------------------------- importance
def _default_blocks(frame: pd.DataFrame, prefix: str) -> dict[str, list[str]]:
    emb = embedding_columns(frame, prefix=prefix)
    blocks = {"image": emb} if emb else {}
    blocks.update({c: [c] for c in frame.columns if c not in emb})
    return blocks


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if np.unique(y).size == 2 else math.nan


def _importance_fold(estimator, frame, y, groups, train, test, blocks, n_permutations, seed):
    from .validation import _fit, _positive_scores

    est = clone(estimator)
    _fit(est, frame.iloc[train], y[train], groups[train])
    X_test = frame.iloc[test].reset_index(drop=True)
    y_test = y[test]
    base = _roc_auc(y_test, _positive_scores(est, X_test, 1)[:, 0])
    rng = np.random.default_rng(seed)
    out = {}
    for name, cols in blocks.items():
        drops = []
        for _ in range(n_permutations):
            perm = rng.permutation(len(X_test))
            shuffled = X_test.copy()
            shuffled[cols] = X_test[cols].iloc[perm].to_numpy()  # the block moves as one: rows stay whole
            drops.append(base - _roc_auc(y_test, _positive_scores(est, shuffled, 1)[:, 0]))
        out[name] = float(np.mean(drops))
    return base, out, len(train), len(test)


def clinical_importance(estimator: Any, X: Any, y: Any, groups: Any, *, clinical: Any = None,
                        blocks: Mapping[str, Sequence[str]] | None = None, n_splits: int = 5, n_repeats: int = 1,
                        n_permutations: int = 5, ci: float = 0.95, random_state: Any = None,
                        n_jobs: int | None = None, prefix: str = EMBEDDING_PREFIX) -> pd.DataFrame:
    """Grouped permutation importance of each clinical column and of the image block, on held-out folds.

    For every patient-grouped fold (:func:`~cxr_embed.learn.validation.grouped_kfold`) a clone of
    ``estimator`` is fitted on the training patients; on the held-out patients the ROC AUC is
    measured as it is, then again after shuffling one *block* of columns among the test images
    (``n_permutations`` times, averaged). A block is the whole embedding (``"image"``: its 1,280
    columns move together, so it is one feature) or one clinical column. The importance is the
    AUC lost; near 0 (or below) means the model does not rely on it.

    Parameters
    ----------
    estimator : classifier taking a clinical frame
        E.g. from :func:`with_clinical` or ``make_classifier(name, clinical=[...])``.
    X : DataFrame or array-like of shape (n_samples, dim)
        A clinical frame, or the embeddings when ``clinical`` is given.
    y : array-like of shape (n_samples,)
        Binary 0/1 target.
    groups : array-like of shape (n_samples,)
        Patient ids.
    clinical : DataFrame, optional
        Columns beside ``X`` (see :func:`clinical_frame`).
    blocks : dict of str -> list of str, optional
        Name -> columns shuffled together. Default: ``"image"`` and every other column of the frame.
    n_splits, n_repeats : int, default=5, 1
    n_permutations : int, default=5
        Shuffles per block and fold.
    ci : float, default=0.95
    random_state : int or None
    n_jobs : int or None
        Folds in parallel (joblib).
    prefix : str, default="emb_"

    Returns
    -------
    DataFrame
        One row per block, most important first: ``feature``, ``kind`` (``image``, ``numeric``,
        ``categorical``), ``n_columns``, ``importance`` (mean AUC drop over folds), ``ci_low``,
        ``ci_high``, ``std`` (between folds), ``n_folds``, ``baseline_auc`` (mean held-out AUC).
        The interval is a t interval over the folds with the Nadeau & Bengio (2003) correction
        for overlapping training sets (variance times ``1/k + n_test/n_train``), so it is wider
        than the naive fold spread. Per-fold values are in ``attrs["per_fold"]`` (block -> list).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> n = 120; lab = rng.normal(size=n); y = (lab + 0.3 * rng.normal(size=n) > 0).astype(int)
    >>> frame = clinical_frame(rng.normal(size=(n, 8)), pd.DataFrame({"lab": lab, "noise": rng.normal(size=n)}))
    >>> imp = clinical_importance(with_clinical("logreg", ["lab", "noise"], C=1.0), frame, y, np.arange(n),
    ...                           n_splits=3, n_permutations=2, random_state=0)
    >>> imp["feature"].iloc[0]
    'lab'
    """
    from joblib import Parallel, delayed
    from scipy import stats

    from .validation import grouped_kfold

    frame = clinical_frame(X, clinical, prefix=prefix) if clinical is not None or not isinstance(X, pd.DataFrame) \
        else X.reset_index(drop=True)
    y = np.asarray(y)
    if y.ndim != 1:
        y = y.reshape(len(y), -1)
        if y.shape[1] != 1:
            raise ValueError(f"clinical_importance scores one binary label; y has {y.shape[1]} columns: "
                             "call it once per label")
        y = y[:, 0]
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y must be 0/1 for clinical_importance; drop uncertain (-1) or missing rows first")
    y = y.astype(int)
    groups = np.asarray(groups)
    if not (len(frame) == len(y) == len(groups)):
        raise ValueError(f"X has {len(frame)} rows, y {len(y)} and groups {len(groups)}; they must match")
    require_int(n_permutations, "n_permutations", 1)
    blocks = _default_blocks(frame, prefix) if blocks is None else {str(k): list(v) for k, v in blocks.items()}
    if not blocks:
        raise ValueError("blocks is empty: name at least one group of columns to permute, or pass None for "
                         "the image block and each clinical column")
    absent = {k: [c for c in v if c not in frame.columns] for k, v in blocks.items()}
    absent = {k: v for k, v in absent.items() if v}
    if absent:
        raise ClinicalDataError(f"blocks name columns that are not in the input: {absent}")
    rng = np.random.default_rng(random_state)
    splits = grouped_kfold(y, groups, n_splits=n_splits, n_repeats=n_repeats,
                           random_state=int(rng.integers(2**31 - 1)))
    seeds = rng.integers(2**31 - 1, size=len(splits))
    out = Parallel(n_jobs=n_jobs)(
        delayed(_importance_fold)(estimator, frame, y, groups, tr, te, blocks, n_permutations, int(s))
        for (tr, te), s in zip(splits, seeds))
    bases = np.array([o[0] for o in out])
    ratio = float(np.mean([o[3] / o[2] for o in out]))
    k = len(out)
    rows = []
    per_fold = {}
    for name, cols in blocks.items():
        vals = np.array([o[1][name] for o in out], dtype=float)
        per_fold[name] = vals.tolist()
        vals = vals[np.isfinite(vals)]
        mean = float(np.mean(vals)) if vals.size else math.nan
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else math.nan
        if vals.size > 1:
            half = stats.t.ppf(0.5 + ci / 2, vals.size - 1) * math.sqrt((1 / vals.size + ratio) * sd ** 2)
        else:
            half = math.nan
        if name == "image" or (len(cols) > 1 and all(str(c).startswith(prefix) for c in cols)):
            kind = "image"
        else:
            kind = "numeric" if all(_is_numeric(frame[c]) for c in cols) else "categorical"
        rows.append({"feature": name, "kind": kind, "n_columns": len(cols), "importance": mean,
                     "ci_low": mean - half, "ci_high": mean + half, "std": sd, "n_folds": int(vals.size),
                     "baseline_auc": float(np.nanmean(bases))})
    table = pd.DataFrame(rows).sort_values("importance", ascending=False, ignore_index=True)
    table.attrs.update({"ci": ci, "n_folds": k, "n_permutations": n_permutations, "per_fold": per_fold,
                        "metric": "roc_auc drop"})
    return table
