"""Choose the whole pipeline -- backbone, input size, layer, test-time augmentation, classifier --
by nested patient-grouped cross-validation, with acquisition-shift stress tests in the ranking.

:func:`search_pipeline` embeds each embedding configuration once into the store (cached and
resumable like :func:`cxr_embed.extract`), tunes each classifier in an inner patient-grouped
search inside every outer training fold (so the reported AUC is not the tuned one), and scores
every pipeline's out-of-fold predictions on the held-out images and on perturbed copies of them
(:mod:`cxr_embed.io.perturbations`). Every pipeline sees the same outer folds, so their
out-of-fold predictions are paired (DeLong against the best).

Ranking rule (``rank="worst"``, the default): a pipeline's score is the lowest of its clean
out-of-fold AUC and its AUC under each stress perturbation -- the AUC it keeps under its worst
acquisition shift. Ties go to the higher clean AUC. ``rank="clean"`` ranks by clean AUC alone.
With ``stress_top=k`` only the embedding configurations of the ``k`` best pipelines by clean AUC
are stress-tested (each perturbation costs one extraction of the internal set per
configuration); the others rank after them.

The embedding configurations themselves (one backbone and its sizes, layer and TTA, or a fusion
of several) and their extract-once cache live in :mod:`cxr_embed.embed.composite`, the grid in
:mod:`cxr_embed.transfer.search_grid`.

Training-time shift augmentation (``train_augment=``, a grid dimension): a pipeline may also be
trained on perturbed copies of its training images (same label, same patient). A stress
perturbation it trains on is then scored by outer-fold models refitted without that
perturbation's copies (leave-one-perturbation-out), so its stress columns stay a test of shifts
the model has not seen.

External data (``external=``) is only ever embedded and predicted by the pipelines refitted on
the whole internal set: it never reaches a fit, a search or the ranking.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .._utils import sha256_text, stable_json
from ..exceptions import LeakageError, ManifestError
from ..io.perturbations import perturbation_config
from ..learn.persistence import _jsonable
from ..embed.composite import AnyConfig, EmbeddingConfig, FusedConfig, _Embeddings
from .search_grid import _configs, _require_options

__all__ = ["EmbeddingConfig", "FusedConfig", "PipelineSearchResult", "SearchedPipeline", "search_pipeline",
           "SEARCH_SPACES"]

logger = logging.getLogger(__name__)

#: Compact default grids of the inner search (``clf__`` keys): two or three candidates each, so
#: that a search over many embedding configurations stays affordable on a laptop.
SEARCH_SPACES: dict[str, dict[str, list]] = {
    "logreg": {"clf__C": [1e-3, 1e-2, 1e-1]},
    "linear_svm": {"clf__estimator__C": [1e-4, 1e-3, 1e-2]},
    "mlp": {"clf__alpha": [1e-1, 1.0]},
    "xgboost": {"clf__max_depth": [2, 3]},
}
#: Fixed settings of the classifiers in a search, cheaper than make_classifier's defaults on
#: 1,000+ dimensional embeddings: XGBoost grows 100 trees on 30% of the columns each, after a PCA to
#: 128 components fitted inside the fold (2.2 s per fit on 570 x 1,280 here, single-threaded,
#: instead of 8 s on the raw columns); the MLP stops early on a validation split of its training rows.
_CLASSIFIER_PARAMS = {"xgboost": {"n_estimators": 100, "colsample_bytree": 0.3, "pca": 128},
                      "mlp": {"hidden_layer_sizes": (128,), "early_stopping": True}}
RANK_RULES = ("worst", "clean")
DEFAULT_STRESS = ("lowres", "jpeg", "gamma", "noise", "squash")


@dataclass
class SearchedPipeline:
    """The chosen pipeline, refitted on the whole internal set.

    Attributes
    ----------
    embedding : EmbeddingConfig or FusedConfig
    classifier : str
    estimator : fitted estimator
        The tuned classifier refitted on every internal image (its inner search chose
        ``best_params``).
    best_params : dict
    fingerprint : str
        SHA-256 of the fingerprints of the embedding functions it combines and the combination.
    label : str
    train_augment : tuple of dict
        The perturbations whose copies of the training images it was also trained on (empty:
        none). They only change the fit; the pipeline embeds and predicts clean images.
    """

    embedding: AnyConfig
    classifier: str
    estimator: Any
    best_params: dict
    fingerprint: str
    label: str
    train_augment: tuple = ()
    _backbone_kwargs: dict = field(default_factory=dict, repr=False)
    _backbones: dict = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        # the cached Backbone objects hold compiled TensorFlow functions, which do not pickle; a
        # loaded pipeline rebuilds them from their names (same weights for registered backbones)
        return {**self.__dict__, "_backbones": {}, "_rebuild": True}

    def _check_rebuildable(self) -> None:
        if self.__dict__.get("_rebuild") and self._backbone_kwargs.get("weights", "imagenet") is None:
            from ..exceptions import BackboneError

            raise BackboneError(
                f"this searched pipeline ({self.embedding.label}) was made with random backbone weights "
                "(weights=None), which cannot be rebuilt after pickling: its classifier would see another "
                "network's embeddings; fix: use the pipeline in the process that searched, or search with "
                "'imagenet' or file weights")

    def backbone(self, size: int | None = None):
        """The :class:`~cxr_embed.Backbone` of one input size of this pipeline, with its ``tta``.

        Its embeddings equal the pipeline's within float tolerance (the search builds flip TTA
        from cached plain and mirrored passes).

        Raises
        ------
        ValueError
            For a fused pipeline (several backbones): use :meth:`embed` or :meth:`predict_proba`.
        """
        from ..embed.backbones import Backbone

        if isinstance(self.embedding, FusedConfig):
            raise ValueError(f"this pipeline fuses several embeddings ({self.embedding.label}), so no single "
                             "Backbone makes its input; use embed() or predict_proba()")
        size = self.embedding.sizes[0] if size is None else size
        if not self.embedding.tta and (self.embedding.backbone, size, self.embedding.layer) in self._backbones:
            return self._backbones[(self.embedding.backbone, size, self.embedding.layer)]
        return Backbone(self.embedding.backbone, input_size=size, layer=self.embedding.layer, tta=self.embedding.tta,
                        **self._backbone_kwargs)

    @property
    def _one_pass(self) -> bool:
        """One backbone at one input size (a Backbone makes its input; otherwise a CompositeEmbedding)."""
        return isinstance(self.embedding, EmbeddingConfig) and len(self.embedding.sizes) == 1

    def extractor(self):
        """What :func:`cxr_embed.extract` takes to embed images as this pipeline does.

        Returns
        -------
        Backbone or CompositeEmbedding
            A :class:`~cxr_embed.Backbone` for one backbone at one size; otherwise a
            :class:`~cxr_embed.embed.composite.CompositeEmbedding` (several sizes, or a fusion)
            whose group fingerprint is this pipeline's :attr:`fingerprint`, the group its saved
            bundle predicts on (``cxr-embed extract --backbone '<label>'`` makes the same).
        """
        from ..embed.composite import CompositeEmbedding

        if self._one_pass:
            return self.backbone()
        self._check_rebuildable()
        # the search's backbones, where this process still holds them (the same keys), are not built again
        return CompositeEmbedding(self.embedding, _backbones=dict(self._backbones), **self._backbone_kwargs)

    def embed(self, manifest, store, **extract_kwargs) -> tuple[np.ndarray, np.ndarray]:
        """Embed a manifest's images as this pipeline does (extracting what the store lacks).

        Returns
        -------
        ids : ndarray of str, shape (n_ok,)
            The images that could be embedded (failures are logged by :func:`cxr_embed.extract`).
        X : ndarray of shape (n_ok, dim)
        """
        self._check_rebuildable()
        cache = _Embeddings(store, self._backbone_kwargs, extract_kwargs, backbones=self._backbones)
        df = _load(manifest, "new")
        return cache.matrix(self.embedding, df)

    def predict_proba(self, manifest, store, **extract_kwargs) -> pd.DataFrame:
        """Probability of the positive class for each image of a manifest.

        Returns
        -------
        DataFrame
            Columns ``image_id`` and ``proba``; images that could not be embedded are absent.
        """
        ids, X = self.embed(manifest, store, **extract_kwargs)
        return pd.DataFrame({"image_id": ids, "proba": _positive(self.estimator, X)})

    def save(self, path, *, manifest=None, metrics=None, overwrite: bool = False, key=None):
        """Save as a model bundle (:func:`cxr_embed.save_model`) recording the embedding configuration.

        The recorded ``backbone_fingerprint`` is that of :meth:`extractor`, so ``cxr-embed
        predict`` works on a store extracted with it: for a single backbone at a single input size
        the :class:`~cxr_embed.Backbone`'s, for several sizes or a fusion the
        :class:`~cxr_embed.embed.composite.CompositeEmbedding`'s (this pipeline's
        :attr:`fingerprint`; ``cxr-embed extract --backbone '<embedding label>'``).
        """
        from ..learn.persistence import save_model

        fp = self.backbone().fingerprint if self._one_pass else self.fingerprint
        return save_model(path, self.estimator, labels=[self.label], backbone_fingerprint=fp, manifest=manifest,
                          metrics=metrics, key=key, overwrite=overwrite,
                          extra={"search": {"embedding": self.embedding.to_dict(), "classifier": self.classifier,
                                            "best_params": _jsonable(self.best_params),
                                            "train_augment": [dict(c) for c in self.train_augment],
                                            "pipeline_fingerprint": self.fingerprint}})


@dataclass
class PipelineSearchResult:
    """What :func:`search_pipeline` found.

    Attributes
    ----------
    table : DataFrame
        One row per pipeline, best first: ``rank``, ``pipeline``, ``embedding``, ``classifier``,
        ``train_augment`` (the perturbations trained on, ``"none"``), ``auc`` / ``ci_low`` / ``ci_high`` (nested out-of-fold, patient-bootstrap 95% CI),
        ``delong_p`` (paired DeLong against the best), ``auc_<perturbation>`` for each stress
        perturbation, ``worst_shift`` (lowest of them), ``drop`` (``auc - worst_shift``),
        ``score`` (what ranked it), ``stressed`` (bool), ``params`` (tuned parameters per outer
        fold), and with ``external=``: ``ext_auc`` / ``ext_ci_low`` / ``ext_ci_high`` /
        ``ext_delong_p`` (refitted on all internal data; reported, never used to rank).
    best : SearchedPipeline
    oof : dict of str -> ndarray of shape (n_samples,)
        Clean out-of-fold probabilities per pipeline (mean over repeats).
    stressed_oof : dict of (str, str) -> ndarray of shape (n_samples,)
        Out-of-fold probabilities on perturbed copies, per (pipeline, perturbation).
    y_true, groups, image_ids : ndarray of shape (n_samples,)
    folds : list of (train_idx, test_idx)
    external_proba : dict of str -> ndarray
        Per pipeline, probabilities on the external images (``external_ids`` order).
    settings : dict
    seconds : dict
        Wall time of ``extract`` (every extraction, stress copies included), ``cv``, ``stress``
        (its extractions and predictions) and ``external``.
    """

    table: pd.DataFrame
    best: SearchedPipeline
    oof: dict
    stressed_oof: dict
    y_true: np.ndarray
    groups: np.ndarray
    image_ids: np.ndarray
    folds: list
    external_proba: dict = field(default_factory=dict)
    external_ids: np.ndarray | None = None
    external_y: np.ndarray | None = None
    settings: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    def summary(self, n: int = 10) -> str:
        """The top ``n`` rows as fixed-width text."""
        cols = [c for c in self.table.columns if c in ("rank", "pipeline", "auc", "ci_low", "ci_high", "delong_p",
                                                       "worst_shift", "score", "ext_auc")]
        return self.table[cols].head(n).to_string(index=False, float_format=lambda v: f"{v:.3f}")

    def __repr__(self) -> str:
        return f"PipelineSearchResult(best={self.best.label!r}, {len(self.table)} pipelines)"


# --------------------------------------------------------------------------- helpers
def _load(manifest, what: str) -> pd.DataFrame:
    from .compare import _load as load_checked

    return load_checked(manifest, what, required=("image_id", "path"))


def _positive(est, X: np.ndarray) -> np.ndarray:
    from ..learn.validation import _positive_scores

    return _positive_scores(est, X, 1)[:, 0]


def _auc_ci(y, s, groups, n_bootstrap, seed) -> tuple[float, float, float]:
    """AUC and patient-bootstrap CI on the rows with a score (NaN when a class is missing)."""
    from ..learn.validation import _auc_ci as auc_ci

    return auc_ci(np.asarray(y, float), np.asarray(s, float), groups, n_bootstrap=n_bootstrap, random_state=seed)


def _binary_target(df: pd.DataFrame, label: str, what: str) -> pd.DataFrame:
    if label not in df.columns:
        raise ManifestError(f"{what} has no label column {label!r}; it has {list(df.columns)}")
    y = pd.to_numeric(df[label], errors="coerce")
    keep = y.isin([0, 1])
    if (~keep).any():
        logger.info("%s: %d rows without a certain 0/1 %r are left out", what, int((~keep).sum()), label)
    out = df.loc[keep].reset_index(drop=True)
    out["_y"] = y[keep].astype(int).to_numpy()
    if out["_y"].nunique() < 2:
        raise ManifestError(f"{what}: {label!r} needs both classes among its certain rows; found {out['_y'].unique()}")
    return out


def _augment_options(train_augment) -> list[tuple]:
    """Each training-augmentation option as a tuple of full perturbation configs (``()``: none)."""
    if isinstance(train_augment, (str, dict)):
        raise ValueError("train_augment is a list of options, each None or a list of perturbations, "
                         f"e.g. [None, ['lowres', 'jpeg']]; got {train_augment!r}")
    out = []
    for opt in train_augment:
        items = [opt] if isinstance(opt, (str, dict)) else list(opt or ())
        cfgs = tuple(perturbation_config(p) for p in items)
        names = [stable_json(c) for c in cfgs]
        if len(set(names)) != len(names):
            raise ValueError(f"train_augment option {opt!r} repeats a perturbation")
        out.append(cfgs)
    keys = [stable_json(list(o)) for o in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"train_augment repeats an option: {list(train_augment)!r}")
    return out


def _space(name: str, param_spaces: dict | None) -> dict:
    from ..learn.classifiers import _canonical, default_search_space

    key = _canonical(name)
    if param_spaces and (name in param_spaces or key in param_spaces):
        return dict(param_spaces.get(name, param_spaces.get(key)))
    return dict(SEARCH_SPACES.get(key) or default_search_space(key))


def _make(name: str, inner_cv: int, param_spaces, random_state, n_jobs):
    """The tuned classifier: single-threaded fits (no oversubscription), ``n_jobs`` candidates at once."""
    from ..learn.classifiers import _canonical, make_classifier

    key = _canonical(name)
    est = make_classifier(key, search="grid", cv=inner_cv, param_space=_space(name, param_spaces),
                          random_state=random_state, n_jobs=1, **_CLASSIFIER_PARAMS.get(key, {}))
    return est.set_params(n_jobs=n_jobs)


def _key(cfg, name: str, aug: tuple) -> str:
    """A pipeline's name in the table: embedding · classifier [· aug:perturbations trained on]."""
    return f"{cfg.label} · {name}" + (f" · aug:{_aug_label(aug)}" if aug else "")


def _aug_label(aug: tuple) -> str:
    """``lowres+jpeg``; a perturbation with other than its default parameters shows them: ``jpeg(quality=60)``."""
    def one(c):
        if c == perturbation_config(c["name"]):
            return c["name"]
        return c["name"] + "(" + ",".join(f"{k}={v}" for k, v in c.items() if k != "name") + ")"

    return "+".join(one(c) for c in aug) or "none"


def _with_copies(X, y, g, train, copies):
    """The training rows of one fold and the perturbed copies of those same images (same label, same patient).

    ``copies`` is a list of ``(mask, X_p)`` aligned to the rows of ``X``; ``mask`` marks the images
    whose perturbed copy could be embedded. Only rows of ``train`` are ever taken.
    """
    parts, ys, gs = [X[train]], [y[train]], [g[train]]
    for mask, X_p in copies:
        t = train[mask[train]]
        parts.append(X_p[t])
        ys.append(y[t])
        gs.append(g[t])
    return np.concatenate(parts), np.concatenate(ys), np.concatenate(gs)


def _fit_folds(cfg, name, copies, X_of, y, g, folds, inner_cv, param_spaces, random_state, n_jobs):
    """One tuned model per outer fold, trained on the fold's training images (and their copies)."""
    from ..learn.validation import check_no_leakage

    models = []
    for train, test in folds:
        check_no_leakage(g[train], g[test])
        Xt, yt, gt = _with_copies(X_of[cfg], y, g, train, copies)
        models.append(_make(name, inner_cv, param_spaces, random_state, n_jobs).fit(Xt, yt, groups=gt))
    return models


def _nested_cv(pipes, X_of, copies_of, y, g, folds, inner_cv, param_spaces, random_state, n_jobs):
    """Out-of-fold probabilities (mean over repeats), fitted outer models and tuned parameters per pipeline."""
    fitted: dict = {}
    oof: dict = {}
    params: dict = {}
    for key, cfg, name, aug in pipes:
        models = _fit_folds(cfg, name, copies_of(cfg, aug), X_of, y, g, folds, inner_cv, param_spaces,
                            random_state, n_jobs)
        sums, counts = np.zeros(len(y)), np.zeros(len(y))
        for est, (_, test) in zip(models, folds):
            sums[test] += _positive(est, X_of[cfg][test])
            counts[test] += 1
        oof[key] = sums / np.maximum(counts, 1)
        fitted[key] = models
        params[key] = [_jsonable(getattr(est, "best_params_", {})) for est in models]
        logger.info("nested CV %s: AUC %.3f", key, _auc_ci(y, oof[key], g, 0, random_state)[0])
    return oof, fitted, params


def _held_out_proba(models, folds, ids_p, X_p, order) -> np.ndarray:
    """Each outer-fold model's probabilities on the perturbed copies of its own held-out images.

    Mean over repeats; NaN for an image whose perturbed copy could not be embedded.
    """
    pos = pd.Index(ids_p).get_indexer(order)
    sums, counts = np.zeros(len(order)), np.zeros(len(order))
    for est, (_, test) in zip(models, folds):
        ok = test[pos[test] >= 0]
        if ok.size:
            sums[ok] += _positive(est, X_p[pos[ok]])
            counts[ok] += 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# --------------------------------------------------------------------------- public
def search_pipeline(
    manifest,
    label: str,
    *,
    store,
    backbones: Sequence[str] = ("efficientnet_lite0",),
    input_sizes: Sequence[int | None] | Mapping[str, Sequence[int | None]] | None = None,
    layers: Sequence[str | None] = (None,),
    tta: Sequence[str | None] = (None,),
    multiscale: bool = False,
    fuse: str | Sequence[Sequence[str]] | None = None,
    classifiers: Sequence[str] = ("logreg",),
    param_spaces: dict | None = None,
    cv: int = 5,
    inner_cv: int = 3,
    n_repeats: int = 1,
    groups: str = "patient_id",
    stress: Sequence[str | dict] | None = DEFAULT_STRESS,
    stress_top: int | None = None,
    train_augment: Sequence[Sequence[str | dict] | None] = (None,),
    rank: str = "worst",
    external=None,
    external_store=None,
    backbone_kwargs: dict | None = None,
    extract_kwargs: dict | None = None,
    n_bootstrap: int = 1000,
    n_jobs: int | None = None,
    random_state: int = 0,
) -> PipelineSearchResult:
    """Choose backbone, input size, layer, TTA and classifier by nested patient-grouped CV under stress.

    Parameters
    ----------
    manifest : DataFrame or path
        The internal data (from :func:`cxr_embed.load_manifest`): ``image_id``, ``path``, the
        ``label`` column and the ``groups`` column.
    label : str
        A binary label column; rows without a certain 0/1 value are left out.
    store : EmbeddingStore or path
        Where the internal embeddings (clean, mirrored, perturbed: one group each) are cached;
        a second run reuses them.
    backbones : sequence of str
        Registered backbone names.
    input_sizes : sequence of int or None, or dict, optional
        Input sizes (None: each backbone's native size), for every backbone; or a dict
        ``{backbone: sizes}`` (a backbone it does not name gets its native size).
    layers : sequence of str or None
        Tapped layers (None: the default last layer).
    tta : sequence of {None, "flip"}
        Test-time augmentation options to compare.
    multiscale : bool, default False
        Also compare, per backbone, the mean of the embeddings over all ``input_sizes``.
    fuse : "backbones" or sequence of sequence of str, optional
        Also compare concatenations of embeddings (:class:`FusedConfig`; no extraction beyond their
        parts). ``"backbones"``: every pair, triple, ... of the backbones, each by its
        multi-resolution embedding (or its single size), per layer and TTA option. Or explicit
        groups of labels of the grid, e.g. ``[["efficientnet_lite0@224", "efficientnet_lite2@260"]]``.
    classifiers : sequence of str
        Names of :func:`cxr_embed.make_classifier`.
    param_spaces : dict, optional
        Classifier name -> grid for the inner search (default :data:`SEARCH_SPACES`, then
        :func:`cxr_embed.learn.classifiers.default_search_space`).
    cv, inner_cv : int
        Outer and inner patient-grouped folds.
    n_repeats : int
        Repeats of the outer split; out-of-fold probabilities are averaged over repeats.
    groups : str
        Patient column.
    stress : sequence of str or dict, optional
        Perturbations (:data:`cxr_embed.io.perturbations.PERTURBATIONS`) applied to evaluation
        copies of the held-out images; ``None`` or ``()`` to skip.
    stress_top : int, optional
        Stress-test only the embedding configurations of the ``stress_top`` best pipelines by
        clean AUC (default: all).
    train_augment : sequence of (None or sequence of str or dict), default (None,)
        Training-time shift augmentation options to compare (a grid dimension, like ``tta``):
        ``None`` trains on the images alone; a sequence of perturbations also trains on the
        perturbed copies of each *training* image (same label, same patient, so the inner folds
        keep them with their image). A stress perturbation an option trains on is scored by
        outer-fold models refitted without the copies of its kind (leave-one-perturbation-out, by
        name), so no stress column measures a shift the model was trained on. Each perturbation costs one extraction
        of the internal set per configuration (shared with ``stress``).
    rank : {"worst", "clean"}
        The ranking rule (module docstring).
    external : DataFrame or path, optional
        External data with the same ``label``: embedded and scored by every pipeline refitted on
        all internal images; never used to fit, tune or rank.
    external_store : EmbeddingStore or path, optional
        Its cache (default: beside ``store``, ``<name>.external.h5``).
    backbone_kwargs : dict, optional
        Passed to every :class:`~cxr_embed.Backbone` (e.g. ``weights``, ``resize``).
    extract_kwargs : dict, optional
        Passed to :func:`cxr_embed.extract` (e.g. ``batch_size``, ``workers``).
    n_bootstrap : int, default 1000
        Patient-bootstrap resamples of each CI (0: none).
    n_jobs : int, optional
        Candidates x inner folds fitted at once (joblib processes). Each fit is single-threaded
        (BLAS/OpenMP limited to one thread during the search), which avoids oversubscription:
        measured here, a 2-thread XGBoost fit took 46 s on a busy 2-core machine, 8 s on one thread.
    random_state : int, default 0
        Seeds the folds, the searches and the bootstrap: the same call gives the same table.

    Returns
    -------
    PipelineSearchResult

    Raises
    ------
    ManifestError
        Missing columns, a label without both classes.
    LeakageError
        A patient in both the internal and the external manifest.
    ValueError
        Unknown classifier, perturbation, rank rule or TTA option; a fusion that names an
        embedding not in the grid; a ``train_augment`` option that repeats a perturbation.

    Examples
    --------
    >>> res = search_pipeline("labels.csv", "pneumonia", store="search.h5",  # doctest: +SKIP
    ...                       backbones=["efficientnet_lite0"], input_sizes=[224, 320], tta=[None, "flip"],
    ...                       classifiers=["logreg", "xgboost"], external="external.csv")
    >>> print(res.summary())  # doctest: +SKIP
    """
    from ..learn.classifiers import _canonical
    from ..learn.validation import _require_both_classes, grouped_kfold
    from ..evaluate.metrics import delong_test

    if rank not in RANK_RULES:
        raise ValueError(f"rank must be one of {RANK_RULES}, got {rank!r}")
    _require_options(classifiers=classifiers, train_augment=train_augment)
    clf_names = [_canonical(c) for c in classifiers]
    if len(set(clf_names)) != len(clf_names):
        raise ValueError(f"classifiers repeat a name: {list(classifiers)}")
    stress_cfgs = [perturbation_config(p) for p in (stress or ())]
    stress_names = [c["name"] if sum(d["name"] == c["name"] for d in stress_cfgs) == 1
                    else sha256_text(stable_json(c))[:8] for c in stress_cfgs]
    configs = _configs(backbones, input_sizes, layers, tta, multiscale, fuse)
    aug_options = _augment_options(train_augment)
    pipes = [(_key(cfg, name, aug), cfg, name, aug) for cfg, name, aug in product(configs, clf_names, aug_options)]
    df = _binary_target(_load(manifest, "internal"), label, "manifest")
    if groups not in df.columns:
        raise ManifestError(f"manifest has no patient column {groups!r}; patient-grouped CV needs one")
    edf = None
    if external is not None:  # checked before anything is computed
        edf = _binary_target(_load(external, "external"), label, "external manifest")
        if groups in edf.columns:
            shared = set(edf[groups].astype(str)) & set(df[groups].astype(str))
            if shared:
                raise LeakageError(
                    f"{len(shared)} patient(s) are in both the internal and the external manifest (e.g. "
                    f"{sorted(shared)[:3]}); an external set must be other patients; fix: drop them from one side")
    settings = {"label": label, "cv": cv, "inner_cv": inner_cv, "n_repeats": n_repeats, "rank": rank,
                "stress": stress_cfgs, "stress_top": stress_top, "random_state": random_state,
                "classifiers": clf_names, "configs": [c.to_dict() for c in configs], "fuse": fuse,
                "train_augment": [list(a) for a in aug_options],
                "param_spaces": {c: _jsonable(_space(c, param_spaces)) for c in clf_names}}
    y0, g0 = df["_y"].to_numpy(), df[groups].astype(str).to_numpy()  # folds that can train: checked before extracting
    _require_both_classes(y0, g0, grouped_kfold(y0, g0, n_splits=cv, n_repeats=n_repeats, random_state=random_state),
                          what="the search's outer folds", label=label)
    seconds = {"extract": 0.0, "cv": 0.0, "stress": 0.0, "external": 0.0}
    emb = _Embeddings(store, backbone_kwargs or {}, extract_kwargs or {})

    # 1. every configuration extracted once; rows every configuration could embed
    mats = {cfg: emb.matrix(cfg, df) for cfg in configs}
    common = set(df["image_id"].astype(str))
    for ids, _ in mats.values():
        common &= set(ids)
    n_left = len(df) - len(common)
    if n_left:
        logger.warning("%d images could not be embedded by every configuration and are left out of the search", n_left)
    df = df[df["image_id"].astype(str).isin(common)].reset_index(drop=True)
    order = df["image_id"].astype(str).to_numpy()
    X_of = {cfg: X[pd.Index(ids).get_indexer(order)] for cfg, (ids, X) in mats.items()}
    y = df["_y"].to_numpy()
    g = df[groups].astype(str).to_numpy()
    aug_cache: dict = {}

    def copies_of(cfg, aug) -> list:
        """(mask, rows aligned to ``order``) of each perturbation of ``aug``; extracted once per configuration."""
        out = []
        for pcfg in aug:
            ck = (cfg, stable_json(pcfg))
            if ck not in aug_cache:
                ids_p, X_p = emb.matrix(cfg, df, perturbation=pcfg)
                pos = pd.Index(ids_p).get_indexer(order)
                aligned = np.zeros((len(order), X_p.shape[1]), X_p.dtype)
                aligned[pos >= 0] = X_p[pos[pos >= 0]]
                aug_cache[ck] = (pos >= 0, aligned)
            out.append(aug_cache[ck])
        return out

    for _, cfg, _, aug in pipes:  # augmentation copies extracted before the clock of the CV starts
        copies_of(cfg, aug)
    seconds["extract"] = emb.seconds

    # 2. nested CV: the same outer folds for every pipeline; the inner search sees training patients only
    folds = grouped_kfold(y, g, n_splits=cv, n_repeats=n_repeats, random_state=random_state)
    _require_both_classes(y, g, folds, what="the search's outer folds", label=label)
    t0 = time.perf_counter()
    with threadpool_limits(limits=1):  # BLAS/OpenMP: parallelism comes from n_jobs, not from threads
        oof, fitted, params = _nested_cv(pipes, X_of, copies_of, y, g, folds, inner_cv, param_spaces,
                                         random_state, n_jobs)
    seconds["cv"] = time.perf_counter() - t0

    rows = []
    for key, cfg, name, aug in pipes:
        auc, lo, hi = _auc_ci(y, oof[key], g, n_bootstrap, random_state)
        rows.append({"pipeline": key, "embedding": cfg.label, "classifier": name,
                     "train_augment": _aug_label(aug), "auc": auc, "ci_low": lo,
                     "ci_high": hi, "params": params[key], "_cfg": cfg, "_aug": aug})
    table = pd.DataFrame(rows)

    # 3. stress: the outer-fold models predict perturbed copies of their own held-out images
    t0 = time.perf_counter()
    stressed_oof: dict = {}
    if stress_cfgs:
        ranked = table.sort_values("auc", ascending=False)
        chosen_cfgs = list(dict.fromkeys(ranked["_cfg"])) if stress_top is None else \
            list(dict.fromkeys(ranked["_cfg"].head(int(stress_top))))
        for cfg in chosen_cfgs:
            for pname, pcfg in zip(stress_names, stress_cfgs):
                ids_p, X_p = emb.matrix(cfg, df, perturbation=pcfg)
                for key, cfg_, name, aug in pipes:
                    if cfg_ != cfg:
                        continue
                    models = fitted[key]
                    rest = tuple(c for c in aug if c["name"] != pcfg["name"])
                    if len(rest) < len(aug):  # leave-one-perturbation-out: models that never saw this kind of shift
                        with threadpool_limits(limits=1):
                            models = _fit_folds(cfg, name, copies_of(cfg, rest), X_of, y, g, folds, inner_cv,
                                                param_spaces, random_state, n_jobs)
                    stressed_oof[(key, pname)] = _held_out_proba(models, folds, ids_p, X_p, order)
        for pname in stress_names:
            col = []
            for key in table["pipeline"]:
                s = stressed_oof.get((key, pname))
                col.append(np.nan if s is None else _auc_ci(y, s, g, 0, random_state)[0])
            table[f"auc_{pname}"] = col
        stress_cols = [f"auc_{p}" for p in stress_names]
        table["worst_shift"] = table[stress_cols].min(axis=1, skipna=False)
        table["drop"] = table["auc"] - table["worst_shift"]
        table["stressed"] = table["worst_shift"].notna()
    else:
        table["worst_shift"], table["drop"], table["stressed"] = np.nan, np.nan, False
    seconds["stress"] = time.perf_counter() - t0
    seconds["extract"] = emb.seconds

    # 4. rank (internal data only), DeLong against the best
    if rank == "worst" and table["stressed"].any():
        table["score"] = np.minimum(table["auc"], table["worst_shift"])
    else:
        table["score"] = table["auc"]
    table = table.sort_values(["stressed", "score", "auc"], ascending=[False, False, False], kind="mergesort") \
        if rank == "worst" else table.sort_values(["score"], ascending=False, kind="mergesort")
    table = table.reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    best_key = table.loc[0, "pipeline"]
    table["delong_p"] = [1.0 if k == best_key else float(delong_test(y, oof[best_key], oof[k])[3])
                         for k in table["pipeline"]]

    # 5. refit the best on all internal images (its own inner search); external only predicted
    best_cfg, best_name, best_aug = table.loc[0, "_cfg"], table.loc[0, "classifier"], table.loc[0, "_aug"]
    refits = {}

    def refit(cfg, name, aug):
        Xt, yt, gt = _with_copies(X_of[cfg], y, g, np.arange(len(y)), copies_of(cfg, aug))
        with threadpool_limits(limits=1):
            return _make(name, inner_cv, param_spaces, random_state, n_jobs).fit(Xt, yt, groups=gt)

    refits[best_key] = refit(best_cfg, best_name, best_aug)
    external_proba, ext_ids, ext_y = {}, None, None
    if edf is not None:
        t0 = time.perf_counter()
        if external_store is None:
            base = Path(emb.store.path)
            external_store = base.with_name(base.stem + ".external" + base.suffix)
        eemb = _Embeddings(external_store, backbone_kwargs or {}, extract_kwargs or {}, backbones=emb._backbones)
        emats = {cfg: eemb.matrix(cfg, edf) for cfg in configs}
        ecommon = set(edf["image_id"].astype(str))
        for ids, _ in emats.values():
            ecommon &= set(ids)
        edf = edf[edf["image_id"].astype(str).isin(ecommon)].reset_index(drop=True)
        ext_ids = edf["image_id"].astype(str).to_numpy()
        ext_y = edf["_y"].to_numpy()
        eg = edf[groups].astype(str).to_numpy() if groups in edf.columns else ext_ids
        ext_cols = {"ext_auc": [], "ext_ci_low": [], "ext_ci_high": []}
        for key, cfg, name, aug in zip(table["pipeline"], table["_cfg"], table["classifier"], table["_aug"]):
            est = refits.get(key) or refit(cfg, name, aug)
            ids_e, X_e = emats[cfg]
            p = _positive(est, X_e[pd.Index(ids_e).get_indexer(ext_ids)])
            external_proba[key] = p
            auc, lo, hi = _auc_ci(ext_y, p, eg, n_bootstrap, random_state)
            for c, v in zip(ext_cols, (auc, lo, hi)):
                ext_cols[c].append(v)
        for c, v in ext_cols.items():
            table[c] = v
        table["ext_delong_p"] = [1.0 if k == best_key else float(delong_test(ext_y, external_proba[best_key],
                                                                              external_proba[k])[3])
                                 for k in table["pipeline"]]
        seconds["external"] = time.perf_counter() - t0
    best = SearchedPipeline(embedding=best_cfg, classifier=best_name, estimator=refits[best_key],
                            best_params=_jsonable(getattr(refits[best_key], "best_params_", {})),
                            fingerprint=emb.fingerprint(best_cfg), label=label, train_augment=tuple(best_aug),
                            _backbone_kwargs=dict(backbone_kwargs or {}), _backbones=emb._backbones)
    cols = ["rank", "pipeline", "embedding", "classifier", "train_augment", "auc", "ci_low", "ci_high", "delong_p"]
    cols += [c for c in table.columns if c.startswith("auc_")] + ["worst_shift", "drop", "score", "stressed"]
    cols += [c for c in ("ext_auc", "ext_ci_low", "ext_ci_high", "ext_delong_p") if c in table.columns] + ["params"]
    settings["n_images"], settings["n_left_out"] = int(len(y)), int(n_left)
    return PipelineSearchResult(table=table[cols], best=best, oof=oof, stressed_oof=stressed_oof, y_true=y,
                                groups=g, image_ids=order, folds=folds, external_proba=external_proba,
                                external_ids=ext_ids, external_y=ext_y, settings=settings, seconds=seconds)
