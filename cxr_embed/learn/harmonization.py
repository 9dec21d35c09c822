"""Site harmonisation of embeddings with ComBat, as a scikit-learn transformer.

ComBat (Johnson, Li & Rabinovic 2007; Fortin et al. 2017/2018 for imaging) models every feature as
``x = alpha + covariates @ beta + gamma_site + delta_site * eps`` and removes the site's location
``gamma`` and scale ``delta``, shrunk towards the other features' by empirical Bayes, while keeping
the effects of the biological covariates named explicitly (age, sex ...). The estimation is done
by ``neuroCombat`` (the maintained Python implementation by J.-P. Fortin, PyPI ``neuroCombat``);
this module wraps its functions and does not re-implement them:

* ``fit`` runs ``neuroCombat.neuroCombat`` on the training rows (a fold's training patients);
* ``transform`` of rows from a site seen in ``fit`` standardises them with the fitted grand mean,
  covariate effects and pooled variance, and applies the fitted ``gamma*``/``delta*`` through
  ``neuroCombat.adjust_data_final``;
* a site *not* seen in ``fit`` (an external hospital) gets its own ``gamma*``/``delta*`` estimated
  from the rows handed to ``transform`` with ``neuroCombat``'s ``fit_LS_model_and_find_priors`` and
  ``find_parametric_adjustments`` (``unseen_site="estimate"``): only its images (and the
  covariates) are used, never its labels. ``unseen_site="error"`` refuses instead.

Why neuroCombat and not neuroHarmonize (measured, see docs/clinical.md): neuroHarmonize 2.5.2
pins ``numpy<2`` and ``pandas<3`` (installing it downgrades both), and its apply paths fail on a
held-out set that lacks one of the training sites (``harmonizationApply``: design-matrix width) or
holds a number of new sites different from the training sites (``harmonizationLearn(orig_model=)``).

Sites and covariates arrive as columns of the input DataFrame (a clinical frame,
:func:`cxr_embed.learn.clinical.clinical_frame`), so the transformer works inside any
``Pipeline``, ``clone``, grouped search and :func:`~cxr_embed.learn.validation.cross_validate_grouped`
without metadata routing: each fold's rows carry their own site labels.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._utils import require
from ..exceptions import HarmonizationError
from .clinical import EMBEDDING_PREFIX, _is_numeric, _require_frame, embedding_columns

__all__ = ["ComBat"]

logger = logging.getLogger(__name__)

_SITE = "__site__"


def _neurocombat():
    return require("neuroCombat.neuroCombat", extra="harmonize", package="neuroCombat")


@contextlib.contextmanager
def _quiet():
    """neuroCombat prints its progress; send it to this module's logger instead of stdout.

    Its iterative EB solver divides by gamma (0 for a single site, whose centred location is 0):
    those floating-point warnings are silenced for the call only (``np.errstate``).
    """
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), np.errstate(divide="ignore", invalid="ignore"):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            logger.debug("%s", line.strip())


class ComBat(TransformerMixin, BaseEstimator):
    """ComBat harmonisation of the embedding columns across sites (wraps ``neuroCombat``).

    Parameters
    ----------
    site : str, default="site"
        Column of the input holding the site (scanner, hospital) of each image. Required.
    covariates : sequence of str, default=()
        Biological covariates whose effects are preserved (e.g. ``["age", "sex"]``); they must
        have no missing values. Never the label being predicted: it is unknown at prediction time.
    categorical : sequence of str or None, default=None
        Categorical ones among ``covariates`` (None: text/bool columns are categorical).
    eb : bool, default=True
        Empirical-Bayes shrinkage of the site parameters (ComBat proper); False: plain
        per-site location/scale.
    parametric : bool, default=True
        Parametric priors (False: neuroCombat's non-parametric, much slower).
    mean_only : bool, default=False
        Adjust locations only, not scales.
    unseen_site : {"estimate", "error"}, default="estimate"
        What ``transform`` does with a site absent from ``fit``: estimate its parameters from the
        rows of that site in this call (its images and covariates, never labels; pass all of a
        new site's rows in one call), or raise :class:`~cxr_embed.HarmonizationError`.
    prefix : str, default="emb_"
        Prefix of the embedding columns (the features harmonised).

    Attributes
    ----------
    sites_ : ndarray of str
        Sites seen in ``fit``, in ComBat's (sorted) order.
    embedding_columns_ : list of str
    grand_mean_ : ndarray of shape (dim,)
    var_pooled_ : ndarray of shape (dim,)
    beta_ : ndarray of shape (n_covariate_columns, dim)
        Covariate effects (rows follow ``covariate_columns_``).
    covariate_columns_ : list of str
        Design columns of the covariates (continuous as named, categorical as ``name=level``).
    gamma_star_, delta_star_ : ndarray of shape (n_sites, dim)
        Site location and scale after shrinkage.
    estimated_sites_ : dict of str -> (gamma_star, delta_star)
        Parameters estimated for unseen sites by the latest ``transform``.
    n_features_in_ : int
    feature_names_in_ : ndarray of str

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from cxr_embed.learn.clinical import clinical_frame
    >>> rng = np.random.default_rng(0)
    >>> site = np.repeat(["a", "b"], 50); X = rng.normal(size=(100, 20)) + 3.0 * (site == "b")[:, None]
    >>> frame = clinical_frame(X, pd.DataFrame({"site": site}))
    >>> out = ComBat(site="site").fit_transform(frame)
    >>> bool(abs(out.loc[site == "b", "emb_0000"].mean() - out.loc[site == "a", "emb_0000"].mean()) < 0.5)
    True
    """

    def __init__(self, site: str = "site", covariates: Sequence[str] = (), *,
                 categorical: Sequence[str] | None = None, eb: bool = True, parametric: bool = True,
                 mean_only: bool = False, unseen_site: str = "estimate", prefix: str = EMBEDDING_PREFIX):
        self.site = site
        self.covariates = covariates
        self.categorical = categorical
        self.eb = eb
        self.parametric = parametric
        self.mean_only = mean_only
        self.unseen_site = unseen_site
        self.prefix = prefix

    # ------------------------------------------------------------------ input checks
    def _sites(self, X: pd.DataFrame) -> np.ndarray:
        if self.site not in X.columns:
            raise HarmonizationError(f"ComBat needs the site column {self.site!r} in its input; it has "
                                     f"{[c for c in X.columns if not str(c).startswith(self.prefix)][:20]}; fix: "
                                     "add it, e.g. clinical_frame(X, manifest[['site', ...]])")
        sites = X[self.site]
        if sites.isna().any():
            raise HarmonizationError(f"site column {self.site!r} has {int(sites.isna().sum())} missing values; "
                                     "every image needs a site")
        return sites.astype(str).to_numpy()

    def _covariate_frame(self, X: pd.DataFrame) -> pd.DataFrame:
        covs = [self.covariates] if isinstance(self.covariates, str) else list(self.covariates)
        missing = [c for c in covs if c not in X.columns]
        if missing:
            raise HarmonizationError(f"covariate column(s) {missing} are not in the input; fix: add them to the frame")
        frame = X[covs].copy()
        bad = [c for c in covs if frame[c].isna().any()]
        if bad:
            raise HarmonizationError(f"covariate(s) {bad} have missing values; ComBat's design matrix cannot "
                                     "hold them: impute them first or leave them out of covariates=")
        return frame

    def _design(self, cov: pd.DataFrame) -> np.ndarray:
        """Covariate part of ComBat's design, encoded with the training levels."""
        cols = []  # neuroCombat's order: categorical one-hots (first level dropped), then continuous
        for c in self.categorical_:
            values = cov[c].astype(str).to_numpy()
            unseen = sorted(set(values) - set(self.levels_[c]))
            if unseen:
                warnings.warn(f"ComBat: covariate {c!r} has level(s) {unseen} not seen in fit; they are treated "
                              f"as the reference level {self.levels_[c][0]!r}", UserWarning, stacklevel=3)
            for level in self.levels_[c][1:]:  # neuroCombat drops the first level of each
                cols.append((values == level).astype(float))
        for c in self.continuous_:
            cols.append(pd.to_numeric(cov[c]).to_numpy(dtype=float))
        return np.column_stack(cols) if cols else np.zeros((len(cov), 0))

    # ------------------------------------------------------------------ fit
    def fit(self, X: pd.DataFrame, y: Any = None) -> "ComBat":
        """Estimate ComBat's parameters on these rows with ``neuroCombat.neuroCombat``.

        Parameters
        ----------
        X : DataFrame
            Embedding columns, the ``site`` column and the ``covariates``.
        y : ignored
            (Never used: the label is not a covariate.)

        Returns
        -------
        self
        """
        nc = _neurocombat()
        X = _require_frame(X, type(self).__name__)
        if len(X) == 0:
            from ..exceptions import InsufficientDataError

            raise InsufficientDataError("ComBat was given no rows to fit on; fit it on the training images")
        if self.unseen_site not in ("estimate", "error"):
            raise ValueError(f"unseen_site must be 'estimate' or 'error'; got {self.unseen_site!r}")
        emb = embedding_columns(X, prefix=self.prefix)
        if len(emb) < 2:
            raise HarmonizationError(f"ComBat needs at least 2 embedding columns (prefix {self.prefix!r}); "
                                     f"found {len(emb)}")
        sites = self._sites(X)
        levels, counts = np.unique(sites, return_counts=True)
        if counts.min() < 2:
            raise HarmonizationError(f"site(s) {levels[counts < 2].tolist()} have fewer than 2 images in the training "
                                     "rows; ComBat needs a variance per site: merge small sites or drop them")
        cov = self._covariate_frame(X)
        if self.categorical is None:
            categorical = [c for c in cov.columns if not _is_numeric(cov[c])]
        else:
            categorical = [str(c) for c in self.categorical]
        self.categorical_ = categorical
        self.continuous_ = [c for c in cov.columns if c not in categorical]
        self.levels_ = {c: sorted(cov[c].astype(str).unique().tolist()) for c in categorical}
        covars = pd.DataFrame({_SITE: sites}, index=range(len(X)))
        for c in self.continuous_:
            covars[c] = pd.to_numeric(cov[c]).to_numpy(dtype=float)
        for c in categorical:
            covars[c] = cov[c].astype(str).to_numpy()
        dat = X[emb].to_numpy(dtype=float).T  # ComBat's convention: (features, samples)
        with _quiet():
            out = nc.neuroCombat(dat, covars.astype(object), _SITE, categorical_cols=categorical,
                                 continuous_cols=self.continuous_, eb=self.eb, parametric=self.parametric,
                                 mean_only=self.mean_only)
        est, info = out["estimates"], out["info"]
        design = np.asarray(info["design"], dtype=float)
        n_batch = int(info["n_batch"])
        cov_design = design[:, n_batch:]
        # neuroCombat returns the covariate part of the fitted means (mod.mean), not its coefficients:
        # recover them by least squares on its own design (exact when the design has full rank)
        mod_mean = np.asarray(est["mod.mean"], dtype=float)
        self.beta_ = (np.linalg.lstsq(cov_design, mod_mean.T, rcond=None)[0] if cov_design.shape[1]
                      else np.zeros((0, dat.shape[0])))
        self.covariate_columns_ = [f"{c}={lv}" for c in categorical for lv in self.levels_[c][1:]] + self.continuous_
        self.sites_ = np.asarray([str(s) for s in info["batch_levels"]], dtype=object)
        self.grand_mean_ = np.asarray(est["stand.mean"], dtype=float)[:, 0]
        self.var_pooled_ = np.asarray(est["var.pooled"], dtype=float).ravel()
        self.gamma_star_ = np.asarray(est["gamma.star"], dtype=float)
        self.delta_star_ = np.asarray(est["delta.star"], dtype=float)
        self.embedding_columns_ = emb
        self.estimated_sites_ = {}
        self.n_features_in_ = X.shape[1]
        self.feature_names_in_ = np.asarray([str(c) for c in X.columns], dtype=object)
        logger.info("ComBat fitted on %d images of %d site(s) %s, %d covariate column(s)", len(X), n_batch,
                    self.sites_.tolist(), len(self.covariate_columns_))
        return self

    # ------------------------------------------------------------------ transform
    def _standardise(self, x: np.ndarray, design_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s_data (dim, n), covariate means (dim, n)) with the training parameters."""
        mod_mean = (design_cov @ self.beta_).T
        s = (x.T - self.grand_mean_[:, None] - mod_mean) / np.sqrt(self.var_pooled_)[:, None]
        return s, mod_mean

    def _estimate_site(self, nc: Any, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ComBat parameters of one new site from its standardised rows (dim, n_site), by neuroCombat."""
        n = s.shape[1]
        design = np.ones((n, 1))
        info = {"n_batch": 1, "batch_info": [list(range(n))], "ref_level": None, "sample_per_batch": np.array([n]),
                "n_sample": n, "batch_levels": np.array([0])}
        with _quiet():
            ls = nc.fit_LS_model_and_find_priors(s, design, info, self.mean_only)
            if not self.eb:
                gamma, delta = nc.find_non_eb_adjustments(s, ls, info)
            elif self.parametric:
                gamma, delta = nc.find_parametric_adjustments(s, ls, info, self.mean_only)
            else:
                gamma, delta = nc.find_non_parametric_adjustments(s, ls, info, self.mean_only)
        return np.asarray(gamma, dtype=float).reshape(1, -1), np.asarray(delta, dtype=float).reshape(1, -1)

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        """Harmonise the embedding columns; every other column passes through unchanged.

        Parameters
        ----------
        X : DataFrame
            Same columns as in ``fit`` (rows of any sites).

        Returns
        -------
        DataFrame
            A copy of ``X`` whose embedding columns are harmonised.

        Raises
        ------
        HarmonizationError
            A site unseen in ``fit`` while ``unseen_site="error"``, or with fewer than 2 rows.
        """
        check_is_fitted(self, "gamma_star_")
        nc = _neurocombat()
        X = _require_frame(X, type(self).__name__)
        missing = [c for c in self.embedding_columns_ if c not in X.columns]
        if missing:
            raise HarmonizationError(f"the input lacks {len(missing)} embedding column(s) seen in fit (e.g. "
                                     f"{missing[:3]}); harmonise embeddings of the same backbone")
        sites = self._sites(X)
        design_cov = self._design(self._covariate_frame(X))
        x = X[self.embedding_columns_].to_numpy(dtype=float)
        s, mod_mean = self._standardise(x, design_cov)
        out = np.empty_like(s)
        known = {site: k for k, site in enumerate(self.sites_)}
        new = sorted(set(sites) - set(known))
        if new and self.unseen_site == "error":
            raise HarmonizationError(f"site(s) {new} were not in the training rows (seen: {self.sites_.tolist()}); "
                                     "fix: unseen_site='estimate' to estimate them from their unlabelled images")
        estimated = {}
        for site in np.unique(sites):
            rows = np.flatnonzero(sites == site)
            if site in known:
                gamma = self.gamma_star_[[known[site]]]
                delta = self.delta_star_[[known[site]]]
            else:
                if rows.size < 2:
                    raise HarmonizationError(f"unseen site {site!r} has {rows.size} image in this call; its "
                                             "parameters need several: transform all of its images at once")
                gamma, delta = self._estimate_site(nc, s[:, rows])
                estimated[site] = (gamma[0], delta[0])
                logger.info("ComBat: estimated parameters of unseen site %r from %d unlabelled images", site, rows.size)
            n = rows.size
            info = {"sample_per_batch": np.array([n]), "n_batch": 1, "n_sample": n, "batch_info": [list(range(n))],
                    "ref_level": None}
            out[:, rows] = nc.adjust_data_final(s[:, rows].copy(), np.ones((n, 1)), gamma, delta,
                                                self.grand_mean_[:, None] * np.ones((1, n)), mod_mean[:, rows],
                                                self.var_pooled_.reshape(-1, 1), info, None)
        self.estimated_sites_ = estimated
        result = X.copy()
        result[self.embedding_columns_] = out.T
        return result

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The input's column names (``transform`` keeps every column)."""
        check_is_fitted(self, "gamma_star_")
        return self.feature_names_in_.copy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.allow_nan = True
        return tags
