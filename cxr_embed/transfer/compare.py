"""The paper's three-way transfer comparison on one set of patient-grouped splits.

Gozzi et al. (2022) compared three ways of transferring CNNs trained on a large source
dataset (CheXpert) to a small local (target) dataset:

1. **stacking**: the source CNNs' predicted probabilities on the target images are the
   features of a meta-classifier;
2. **embeddings**: the global-average-pooled output of each backbone feeds classical
   classifiers; the predictions of all (backbone, classifier) pairs are combined by simple
   and by entropy-weighted averaging;
3. **fine-tuning**: the source CNN gets a new sigmoid head and its last layers are trained on
   the target data.

:func:`compare_transfer` runs all three on the *same* patient-grouped folds of the target
manifest (one :func:`cxr_embed.learn.validation.grouped_kfold` call; every approach is fitted on the
training rows of a fold and predicts its test rows), so the out-of-fold predictions of all
approaches are paired image by image and their AUCs can be compared with DeLong's test.
With ``external=`` every approach is also refitted on all target rows and scored on the
external manifest, which is never used to fit or tune anything.

The embeddings are read from an :class:`~cxr_embed.EmbeddingStore`; images already in the store
are never embedded again, so re-running the comparison costs only the classifiers (and the
CNN training of approaches 1 and 3).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..exceptions import ClinicalDataError, LeakageError, ManifestError
from ..embed.composite import as_extractor, is_composite
from ._scoring import _add_delong, _evaluate

__all__ = ["compare_transfer", "ComparisonResult", "SourceModel", "DEFAULT_FINETUNE_OPTIONS"]

logger = logging.getLogger(__name__)

#: Fine-tuning settings used by :func:`compare_transfer` unless ``finetune_options`` overrides them
#: (they are passed to :func:`cxr_embed.transfer.finetuning.finetune`). The paper unfroze the last 6 layers.
DEFAULT_FINETUNE_OPTIONS: dict = {
    "trainable_layers": 6,
    "epochs": 5,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "patience": 2,
    "validation_split": 0.2,
}

_FAMILIES = ("stacking", "embeddings", "fine-tuning")
#: Value of the table's ``clinical`` column for a family that cannot take clinical columns.
CLINICAL_IGNORED = "ignored (images only)"


# --------------------------------------------------------------------------- source models
@dataclass
class SourceModel:
    """A source CNN with a sigmoid head, as used by approaches 1 and 3.

    Attributes
    ----------
    name : str
    model : keras.Model
        ``(None, h, w, 3)`` in ``[0, 255]`` -> ``(None, n_outputs)`` probabilities.
    resize : str
        How images are fitted to the input size (``"pad"``, ``"resize"``, ``"crop"``).
    outputs : list of str
        Names of the model's outputs (the source labels).

    Examples
    --------
    >>> import keras
    >>> inp = keras.Input((32, 32, 3))
    >>> x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    >>> out = keras.layers.Dense(2, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    >>> src = SourceModel("toy", keras.Model(inp, out), outputs=["a", "b"])
    >>> src.input_size, src.backbone().dim
    ((32, 32), 4)
    """

    name: str
    model: Any
    resize: str = "pad"
    outputs: list = field(default_factory=list)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the model's input."""
        shape = self.model.inputs[0].shape
        return int(shape[1]), int(shape[2])

    def backbone(self):
        """The CNN without its head, as a :class:`~cxr_embed.Backbone` (for fine-tuning it again)."""
        from ..embed.backbones import Backbone

        return Backbone.from_keras(self.model, preprocess="none", resize=self.resize, name=f"{self.name}_body")


def _as_source_model(obj, k: int) -> SourceModel:
    """Accept a keras.Model, a ``.keras`` path (with its ``.finetune.json`` sidecar) or a FineTuneResult."""
    import keras

    from .finetuning import FineTuneResult

    if isinstance(obj, SourceModel):
        return obj
    if isinstance(obj, FineTuneResult):
        name = obj.path.stem if obj.path is not None else f"source{k}"
        return SourceModel(name, obj.model, obj.resize, list(obj.labels))
    if isinstance(obj, keras.Model):
        n = int(obj.outputs[0].shape[-1])
        return SourceModel(obj.name or f"source{k}", obj, "pad", [f"{obj.name}_{j}" for j in range(n)])
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: source model not found; pass a .keras file written by cxr_embed.finetune(out=...)")
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        sidecar = path.with_name(path.stem + ".finetune.json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        n = int(model.outputs[0].shape[-1])
        outputs = list(meta.get("labels") or [f"{path.stem}_{j}" for j in range(n)])
        return SourceModel(path.stem, model, str(meta.get("resize", "pad")), outputs)
    raise TypeError(
        f"source_models[{k}] must be a keras.Model, a .keras path or a FineTuneResult, got {type(obj).__name__}"
    )


# --------------------------------------------------------------------------- result
@dataclass
class ComparisonResult:
    """What :func:`compare_transfer` returns.

    Attributes
    ----------
    table : DataFrame
        One row per (setting, approach, label) with columns ``setting`` (``"internal"``: out-of-fold
        on the target; ``"external"``), ``family`` (``"stacking"``, ``"embeddings"``,
        ``"fine-tuning"``), ``approach``, ``label`` (a label name, or ``"macro"`` when there are
        several), ``auc``, ``ci_low``, ``ci_high`` (95 % patient-level bootstrap),
        ``delong_p`` (DeLong test against the best approach of the setting, on the same images;
        NaN for the best itself and for macro rows), ``best`` (bool), ``wall_time_s``
        (fitting and predicting this approach over all folds, plus the refit for the external
        set; shared costs such as embedding extraction and source training are in ``timings``),
        ``n``, ``n_pos``, ``n_patients``, ``clinical`` (the clinical columns the approach used
        beside the images, comma-separated; ``"ignored (images only)"`` for a stacking or
        fine-tuning approach of a run with ``clinical=``, which use the images alone; ``"none"``
        when the run had no clinical columns).
    labels : list of str
    image_ids : ndarray of shape (n_samples,)
        Target image ids, the row order of ``oof`` and ``y_true``.
    groups : ndarray of shape (n_samples,)
        Target patient ids.
    y_true : ndarray of shape (n_samples, n_labels)
        Certain target labels (1/0), NaN where uncertain or missing.
    oof : dict of str -> ndarray of shape (n_samples, n_labels)
        Out-of-fold probabilities of each approach.
    splits : list of (train_idx, test_idx)
        The folds every approach used.
    fold : ndarray of shape (n_samples,)
        Test fold of each target row.
    external_ids, external_groups : ndarray of shape (n_external,) or None
    y_external : ndarray of shape (n_external, n_labels) or None
    external : dict of str -> ndarray of shape (n_external, n_labels)
        Probabilities of each approach (refitted on all target rows) on the external set.
    timings : dict of str -> float
        Wall time in seconds of every stage (extraction per backbone, source training,
        each approach, evaluation).
    families : dict of str -> str
        Approach name -> family.
    notes : list of str
        What was run (source models, options), for the report.
    models : dict of str -> fitted model
        With ``refit``: each approach refitted on all target rows: a
        :class:`~cxr_embed.MultiLabelClassifier` (embeddings), the fine-tuned ``keras.Model``
        (fine-tuning) or the list of per-label meta-classifiers (stacking). Explain them with
        :func:`cxr_embed.saliency.maps` (classifiers with ``backbone=result.backbones[name]``).
        With ``clinical=`` the embeddings classifiers take a clinical frame
        (``clinical_frame(X, manifest[result.clinical])``), not the embeddings alone.
    backbones : dict of str -> Backbone
        The embedding backbone of every embeddings approach, by approach name.
    sources : list of SourceModel
        The source CNNs of approaches 1 and 3.
    clinical : list of str
        The manifest columns used beside the embeddings (``clinical=``), empty without.

    Examples
    --------
    >>> res = cxr_embed.compare_transfer(target, ["opacity"], source=source)  # doctest: +SKIP
    >>> res.summary("internal")                                               # doctest: +SKIP
        family                            approach    auc  ci_low  ci_high  delong_p  wall_time_s
    embeddings  efficientnet_lite0 + random_forest  0.868  ...
    >>> res.oof[res.best()].shape                                              # doctest: +SKIP
    (120, 1)
    >>> res.write_report("report")                                             # doctest: +SKIP
    PosixPath('report/index.html')
    """

    table: pd.DataFrame
    labels: list
    image_ids: np.ndarray
    groups: np.ndarray
    y_true: np.ndarray
    oof: dict
    splits: list
    fold: np.ndarray
    timings: dict
    families: dict
    external_ids: np.ndarray | None = None
    external_groups: np.ndarray | None = None
    y_external: np.ndarray | None = None
    external: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    models: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)
    sources: list = field(default_factory=list)
    clinical: list = field(default_factory=list)

    def summary(self, setting: str = "internal") -> pd.DataFrame:
        """The macro rows (or the single label's rows) of one setting, best first.

        Parameters
        ----------
        setting : {"internal", "external"}

        Returns
        -------
        DataFrame
            Columns ``family, approach, auc, ci_low, ci_high, delong_p, wall_time_s`` for one
            label; with several labels ``auc`` is the macro AUC and the DeLong p-values are per
            label, in columns ``p[<label>]`` (DeLong compares two AUCs of one label). A run with
            clinical columns adds ``clinical`` after ``approach`` (which columns each approach
            used, or ``"ignored (images only)"``).
        """
        t = self.table[self.table["setting"] == setting]
        clin = ["clinical"] if self.clinical and "clinical" in t.columns else []
        if len(self.labels) == 1:
            t = t[t["label"] == self.labels[0]]
            cols = ["family", "approach", *clin, "auc", "ci_low", "ci_high", "delong_p", "wall_time_s"]
            return t.sort_values("auc", ascending=False)[cols].reset_index(drop=True)
        macro = t[t["label"] == "macro"].set_index("approach")
        res = macro[["family", *clin, "auc", "ci_low", "ci_high"]].copy()
        for lab in self.labels:
            res[f"p[{lab}]"] = t[t["label"] == lab].set_index("approach")["delong_p"]
        res["wall_time_s"] = macro["wall_time_s"]
        return res.sort_values("auc", ascending=False).reset_index()[["family", "approach", *res.columns[1:]]]

    def best(self, setting: str = "internal") -> str:
        """Name of the approach with the highest (macro) AUC in ``setting``."""
        return str(self.summary(setting)["approach"].iloc[0])

    def colors(self) -> dict:
        """Approach -> colour, the one mapping every figure of the report uses."""
        from ._report import colors

        return colors(self)

    def write_report(self, out_dir, *, title: str = "Transfer-learning comparison", images: Mapping[str, Any] | None = None,
                     tables: Mapping[str, pd.DataFrame] | None = None, notes: str | Sequence[str] | None = None,
                     n_bootstrap: int = 1000, random_state: int | None = 0,
                     importance: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None) -> Path:
        """Write the HTML report: the answer first, then the comparison, the best approach and the details.

        The page opens with one sentence per setting (best approach, AUC [95 % CI], the
        runner-up and its DeLong p) and a forest plot of every approach and label, internal and
        external side by side; then one table per setting, the full table (folded, with its CSV),
        ROC and calibration curves per setting and label side by side, the metrics of the best
        internal approach, the extra tables, the images in a grid, notes and wall times. One
        self-contained file, readable offline (see :mod:`cxr_embed.evaluate.report`).

        Parameters
        ----------
        out_dir : str or Path
            Created if needed; receives ``index.html``, ``comparison.csv``, ``oof.csv``,
            ``forest.png``, ``roc_<setting>_<label>.png``, ``calibration_<setting>_<label>.png``
            and ``metrics.json`` (all metrics of the best internal approach).
        title : str
        images : dict of str -> path, optional
            Extra images (e.g. saliency overlays), caption -> PNG/JPEG, shown in a grid.
        tables : dict of str -> DataFrame, optional
            Extra tables, shown after the best approach's metrics.
        notes : str or list of str, optional
            Extra paragraphs, after the comparison's own notes.
        n_bootstrap : int, default=1000
            Resamples of the full metrics table of the best approach.
        random_state : int or None
        importance : DataFrame or dict of str -> DataFrame, optional
            Importance of the image and of each clinical variable for an approach that used
            clinical columns: the table of :func:`cxr_embed.learn.clinical.clinical_importance`
            (or one per label), shown before the images (``importance.png``, ``importance.csv``).

        Returns
        -------
        Path
            The ``index.html``.
        """
        from ._report import write

        return write(self, out_dir, title=title, images=images, tables=tables, notes=notes,
                     n_bootstrap=n_bootstrap, random_state=random_state, importance=importance)

    def _repr_html_(self) -> str:
        """The report's summary, forest plot and tables, for Jupyter."""
        from ._report import build_page

        page, _ = build_page(self, title="Transfer-learning comparison", fragment=True)
        return page.to_html(fragment=True)

    def __repr__(self) -> str:
        s = self.summary("internal")
        rows = ", ".join(f"{r.approach}: {r.auc:.3f}" for r in s.itertuples())
        return f"ComparisonResult({rows})"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(name))


# --------------------------------------------------------------------------- helpers
def _load(manifest, what: str, required=("image_id", "path", "patient_id")) -> pd.DataFrame:
    """The manifest as a DataFrame with the ``required`` columns and unique ``image_id`` (also used by search)."""
    from ..io.manifest import load_manifest

    if isinstance(manifest, pd.DataFrame):
        df = manifest
    elif isinstance(manifest, (str, os.PathLike)):
        df = load_manifest(manifest)
    else:
        raise TypeError(f"{what} must be a DataFrame from cxr_embed.load_manifest or a path, got {type(manifest).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ManifestError(f"{what} manifest lacks columns {missing}; fix: load it with cxr_embed.load_manifest")
    if df["image_id"].duplicated().any():
        raise ManifestError(f"{what} manifest has duplicate image_id values; each image needs a unique id")
    return df.reset_index(drop=True)


def _labels_of(df: pd.DataFrame, labels, what: str) -> list[str]:
    if labels is None:
        labels = list(df.attrs.get("labels", []))
    elif isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",") if s.strip()]
    labels = [str(x) for x in labels]
    if not labels:
        raise ManifestError(f"{what}: no label columns given and none recorded in manifest.attrs['labels']; pass labels=[...]")
    missing = [x for x in labels if x not in df.columns]
    if missing:
        raise ManifestError(f"{what} manifest has no label column(s) {missing}; it has {list(df.columns)}")
    return labels


def _certain(df: pd.DataFrame, labels: list[str]) -> np.ndarray:
    raw = df[labels].to_numpy(dtype=float)
    return np.where(np.isin(raw, (0.0, 1.0)), raw, np.nan)


def _cnn(backbones):
    """The CNN that stacking and fine-tuning train: the first single backbone of ``backbones``."""
    for spec in backbones:
        if not is_composite(spec):
            return as_extractor(spec)
    raise ValueError("stacking and fine-tuning train one CNN, but every entry of backbones is a composite embedding "
                     f"({[getattr(b, 'name', b) for b in backbones]}); fix: add a single backbone, e.g. "
                     "'efficientnet_lite0', or run approaches=('embeddings',)")


def _prepare_images(df: pd.DataFrame, size: tuple[int, int], resize: str) -> np.ndarray:
    """Every image of ``df`` read and fitted to ``size``: (n, h, w, 3) float32 in [0, 255]."""
    from ..io.images import read_image
    from ..io.preprocessing import prepare_image

    out = np.empty((len(df), size[0], size[1], 3), np.float32)
    for i, path in enumerate(df["path"].astype(str)):
        out[i] = prepare_image(read_image(path)[0], size, mode=resize)
    return out


class _Images:
    """Prepared images per (size, resize) of one manifest, read once."""

    def __init__(self, df: pd.DataFrame):
        self.df = df
        self._cache: dict = {}

    def get(self, size, resize) -> np.ndarray:
        key = (tuple(int(s) for s in size), resize)
        if key not in self._cache:
            t = time.perf_counter()
            self._cache[key] = _prepare_images(self.df, key[0], resize)
            logger.info("prepared %d images at %s (%s) in %.1f s", len(self.df), key[0], resize, time.perf_counter() - t)
        return self._cache[key]


def _predict_model(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    from .finetuning import predict_finetuned

    return np.asarray(predict_finetuned(model, images, batch_size=batch_size), dtype=float)


def _fit_meta(meta, P: np.ndarray, y: np.ndarray, random_state):
    from ..learn.stacking import StackedEnsemble

    return StackedEnsemble("passthrough", meta=meta, random_state=random_state).fit(P, y)


def _stacking_scores(P_fit, Y_fit, P_pred, meta, random_state, keep: list | None = None) -> np.ndarray:
    """One meta-classifier per label on the source probabilities of the rows where it is known."""
    out = np.full((len(P_pred), Y_fit.shape[1]), np.nan)
    for j in range(Y_fit.shape[1]):
        known = ~np.isnan(Y_fit[:, j])
        y = Y_fit[known, j]
        if np.unique(y).size < 2:
            out[:, j] = float(y.mean()) if y.size else 0.5
            if keep is not None:
                keep.append(None)
            warnings.warn(f"stacking: label {j} has one class only in a training fold; a constant prior is used",
                          RuntimeWarning, stacklevel=3)
            continue
        fitted = _fit_meta(meta, P_fit[known], (y >= 0.5).astype(int), random_state)
        out[:, j] = fitted.predict_proba(P_pred)[:, 1]
        if keep is not None:
            keep.append(fitted)
    return out


def _policy_targets(df: pd.DataFrame, labels: list[str], policy: str, random_state) -> np.ndarray:
    """Training targets after the uncertainty policy, NaN where masked."""
    from ..learn.labels import apply_uncertainty

    y, mask = apply_uncertainty(df[labels].to_numpy(dtype=float), policy, random_state=random_state)
    return np.where(mask, y, np.nan)


# --------------------------------------------------------------------------- public API
def compare_transfer(
    target,
    labels: Sequence[str] | str | None,
    *,
    source=None,
    source_models: Sequence[Any] | None = None,
    backbones: Sequence[Any] = ("efficientnet_lite0",),
    store=None,
    classifiers: Sequence[Any] = ("logreg", "random_forest"),
    clinical: Sequence[str] | str | None = None,
    external=None,
    n_splits: int = 5,
    finetune_options: Mapping[str, Any] | None = None,
    n_bootstrap: int = 1000,
    random_state: int | None = 0,
    out=None,
    refit: bool | None = None,
    policy: str = "ignore",
    meta: Any = "logreg",
    approaches: Sequence[str] = _FAMILIES,
    source_labels: Sequence[str] | str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> ComparisonResult:
    """Stacking vs embeddings vs fine-tuning on the same patient-grouped folds of a target set.

    Parameters
    ----------
    target : DataFrame or path
        The local (target) manifest (:func:`cxr_embed.load_manifest`): ``image_id``, ``path``,
        ``patient_id`` and the label columns.
    labels : str or list of str or None
        Target labels (a comma-separated string is split); None: ``target.attrs["labels"]``.
    source : DataFrame or path, optional
        A source manifest. When given and ``source_models`` is not, one source CNN is trained
        on it: the first single backbone of ``backbones`` (ImageNet weights), all layers of the last
        ``trainable_layers`` trainable, a sigmoid head over ``source_labels``
        (:func:`cxr_embed.transfer.finetuning.finetune`); it is saved in ``out`` when ``out`` is given.
    source_models : list of keras.Model, .keras paths or FineTuneResult, optional
        Source CNNs with sigmoid heads (``(None, h, w, 3)`` in ``[0, 255]`` -> probabilities), e.g.
        written by ``finetune(..., out="src.keras")`` on CheXpert. Approach 1 uses the
        concatenation of their outputs on the target images as meta-features; approach 3
        fine-tunes each of them. With neither ``source`` nor ``source_models``, approach 1 is
        skipped (with a warning) and approach 3 fine-tunes the first single backbone from its ImageNet
        weights.
    backbones : list of str, Backbone or CompositeEmbedding, default=("efficientnet_lite0",)
        Embedding backbones of approach 2: names for :class:`cxr_embed.Backbone`, or embedding
        labels such as :data:`cxr_embed.DEFAULT_EMBEDDING` for a
        :class:`~cxr_embed.embed.composite.CompositeEmbedding` (multi-size, fused). Stacking and
        fine-tuning train the first single backbone among them.
    store : EmbeddingStore or path, optional
        Embedding cache; missing images are extracted once, cached ones are never recomputed.
        Default ``<out>/embeddings.h5``, or a temporary file when ``out`` is None.
    classifiers : list of str, (name, estimator) or estimator, default=("logreg", "random_forest")
        Classifiers of approach 2: names for :func:`cxr_embed.make_classifier`, or unfitted
        binary estimators (named by their class, or by the name of a ``(name, estimator)``
        pair); each is wrapped in a :class:`cxr_embed.MultiLabelClassifier`.
    clinical : str or list of str, optional
        Manifest columns (e.g. ``["age", "sex", "view"]``; a comma-separated string is split)
        used beside the embeddings by every classifier of approach 2: the embeddings and these
        columns travel as one :func:`~cxr_embed.learn.clinical.clinical_frame`, and a
        :class:`~cxr_embed.learn.clinical.ClinicalFeatures` step scales, imputes and one-hot
        encodes them inside each training fold (names get it through
        ``make_classifier(name, clinical=...)``, estimators through
        :func:`~cxr_embed.learn.clinical.with_clinical` unless they hold such a step already).
        The approaches are named ``"<backbone> + <classifier> + clinical"``. Stacking and
        fine-tuning use the images alone: their rows of ``result.table`` say
        ``"ignored (images only)"`` in the ``clinical`` column, and the notes say so. Missing
        values are allowed (imputed per fold); the external manifest needs the same columns.
    external : DataFrame or path, optional
        External test manifest with the same label columns. Every approach is refitted on all
        target rows and scored on it; it is never used to fit, tune or select anything. Its
        patients must differ from the target's (:class:`~cxr_embed.LeakageError`) and its
        image ids must not collide with the target's (they share the store).
    n_splits : int, default=5
        Patient-grouped, stratified folds shared by every approach.
    finetune_options : dict, optional
        Overrides of :data:`DEFAULT_FINETUNE_OPTIONS`, passed to :func:`cxr_embed.transfer.finetuning.finetune`
        for approach 3 and for training the source CNN.
    n_bootstrap : int, default=1000
        Patient-level bootstrap resamples of each AUC's 95 % CI.
    random_state : int or None, default=0
        Seeds the folds, classifiers, fine-tuning and bootstrap.
    out : str or Path, optional
        Working folder (store, source model, ``comparison.csv``); the report is written by
        :meth:`ComparisonResult.write_report`.
    refit : bool, optional
        Refit every approach on all target rows and keep the models in ``result.models``
        (e.g. to explain them). Default: only when ``external`` is given (the refitted models
        are the ones scored on it).
    policy : str, default="ignore"
        Uncertainty policy for training targets (:func:`cxr_embed.apply_uncertainty`); AUCs are
        always computed on certain labels (1/0) only.
    meta : {"logreg", "random_forest"} or classifier, default="logreg"
        Meta-classifier of approach 1 (:class:`cxr_embed.StackedEnsemble`).
    approaches : sequence of {"stacking", "embeddings", "fine-tuning"}
        Which families to run (default all three).
    source_labels : str or list of str, optional
        Labels the source CNN is trained on when ``source`` is given; default the source
        manifest's labels.
    batch_size : int, default=32
        Extraction and prediction batch size.
    progress : bool, default=False
        Show extraction progress bars.

    Returns
    -------
    ComparisonResult
        ``result.table`` (AUC + CI + DeLong p + wall time per approach and label),
        ``result.oof``, ``result.external``, ``result.write_report(dir)``.

    Raises
    ------
    ManifestError
        Missing columns or labels, duplicate or colliding image ids.
    ClinicalDataError
        A ``clinical`` column is missing from the target or external manifest, or is a label.
    LeakageError
        A patient in both the target and the external set (or across a fold; cannot happen).
    ValueError
        Bad arguments (unknown approach, fewer patients than folds).

    Notes
    -----
    Out-of-fold predictions of all approaches come from the same folds: fold ``k``'s models
    (meta-classifiers, classical classifiers, fine-tuned CNNs) are fitted on its training rows
    only (fine-tuning also takes its early-stopping validation patients from them). The
    embedding averages are computed per image from the members' out-of-fold predictions, so
    they are out-of-fold too. DeLong p-values treat images as independent; with several images
    per patient prefer the bootstrap CIs.

    Examples
    --------
    >>> import cxr_embed
    >>> from cxr_embed.datasets import make_demo_sites
    >>> sites = make_demo_sites("demo_data", n_source=160, n_target=120)          # doctest: +SKIP
    >>> res = cxr_embed.compare_transfer(sites["target"], ["opacity", "effusion"],
    ...                                  source=sites["source"], external=None,
    ...                                  out="demo_output")                       # doctest: +SKIP
    >>> res.summary()                                                              # doctest: +SKIP
    >>> res.write_report("demo_output/report")                                    # doctest: +SKIP
    """
    from ..learn.classifiers import MultiLabelClassifier, make_classifier
    from ..learn.clinical import clinical_frame
    from ..embed.extraction import extract
    from ..learn.stacking import average_predictions
    from ..embed.store import EmbeddingStore
    from ..learn.validation import check_no_leakage, grouped_kfold

    unknown = [a for a in approaches if a not in _FAMILIES]
    if unknown or not approaches:
        raise ValueError(f"approaches must be a non-empty subset of {_FAMILIES}; got {list(approaches)}")
    for name, options in (("backbones", backbones), ("classifiers", classifiers)):
        if "embeddings" in approaches and not list(options):
            raise ValueError(f"{name} is empty: the embeddings approach needs at least one (or leave 'embeddings' "
                             "out of approaches)")
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    target = _load(target, "target")
    labels = _labels_of(target, labels, "target")
    ext = None if external is None else _load(external, "external")
    if ext is not None:
        _labels_of(ext, labels, "external")
        check_no_leakage(target["patient_id"].astype(str).to_numpy(), ext["patient_id"].astype(str).to_numpy())
        clash = set(target["image_id"].astype(str)) & set(ext["image_id"].astype(str))
        if clash:
            raise ManifestError(
                f"target and external manifests share {len(clash)} image ids (e.g. {sorted(clash)[:3]}); they share "
                "one embedding store, so ids must be unique across both; fix: prefix ids with the site name"
            )
    clinical = _clinical_columns(clinical, target, labels, "target")
    if ext is not None and clinical:
        _clinical_columns(clinical, ext, labels, "external")
    rs = np.random.RandomState(random_state)
    seeds = {k: int(rs.randint(np.iinfo(np.int32).max)) for k in ("split", "clf", "ft", "boot", "src", "policy")}
    ft_opts = {**DEFAULT_FINETUNE_OPTIONS, **dict(finetune_options or {})}

    ids = target["image_id"].astype(str).to_numpy()
    groups = target["patient_id"].astype(str).to_numpy()
    truth = _certain(target, labels)
    Y_fit = _policy_targets(target, labels, policy, seeds["policy"])
    Y_df = target[labels]
    splits = grouped_kfold(truth, groups, n_splits=n_splits, random_state=seeds["split"])
    fold = np.full(len(target), -1)
    for k, (tr, te) in enumerate(splits):
        check_no_leakage(groups[tr], groups[te])
        fold[te] = k
    if np.any(fold < 0):
        raise ValueError("the folds do not cover every target row; this is a bug, please report it")
    if ext is not None:
        ext_ids = ext["image_id"].astype(str).to_numpy()
        ext_groups = ext["patient_id"].astype(str).to_numpy()
        ext_truth = _certain(ext, labels)
    else:
        ext_ids = ext_groups = ext_truth = None
    refit = ext is not None if refit is None else bool(refit)
    models: dict[str, Any] = {}
    used_backbones: dict[str, Any] = {}
    timings["setup"] = time.perf_counter() - t0

    oof: dict[str, np.ndarray] = {}
    ext_scores: dict[str, np.ndarray] = {}
    families: dict[str, str] = {}
    wall: dict[str, float] = {}
    tmp = None

    # ---------------------------------------------------------------- approach 2: embeddings
    if "embeddings" in approaches:
        if store is None:
            if out is not None:
                Path(out).mkdir(parents=True, exist_ok=True)
                store = Path(out) / "embeddings.h5"
            else:
                tmp = tempfile.TemporaryDirectory(prefix="cxr_embed_compare_")
                store = Path(tmp.name) / "embeddings.h5"
        store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
        members: list[str] = []
        for spec in backbones:
            bb = as_extractor(spec)
            t = time.perf_counter()
            both = target if ext is None else pd.concat([target, ext], ignore_index=True)
            rep = extract(both[["image_id", "path"]], bb, store, batch_size=batch_size, progress=progress)
            timings[f"extract {bb.name}"] = time.perf_counter() - t
            if rep.n_failed:
                raise ManifestError(
                    f"{rep.n_failed} images could not be embedded with {bb.name}, e.g. {rep.failures[:3]}; "
                    "fix or drop them from the manifests"
                )
            notes.append(f"Embeddings: {bb.name} ({bb.dim}-d, fingerprint {bb.fingerprint[:12]}): {rep.n_done} "
                         f"images embedded, {rep.n_cached} read from the cache {store.path}.")
            _, X = store.load(bb, ids)
            X_ext = store.load(bb, ext_ids)[1] if ext is not None else None
            if clinical:  # one table per manifest: embeddings beside the raw clinical columns, nothing fitted yet
                X = clinical_frame(X, target[clinical])
                X_ext = clinical_frame(X_ext, ext[clinical]) if ext is not None else None
            for c in classifiers:
                cname, base = _classifier(c, make_classifier, seeds["clf"], clinical=clinical or None)
                name = f"{bb.name} + {cname}" + (" + clinical" if clinical else "")
                est = MultiLabelClassifier(base, policy=policy, random_state=seeds["policy"])
                t = time.perf_counter()
                p = np.full((len(target), len(labels)), np.nan)
                for tr, te in splits:
                    m = _clone(est).fit(_take(X, tr), Y_df.iloc[tr], groups=groups[tr])
                    p[te] = m.predict_proba(_take(X, te))
                oof[name] = p
                if refit:
                    models[name] = _clone(est).fit(X, Y_df, groups=groups)
                    if ext is not None:
                        ext_scores[name] = models[name].predict_proba(X_ext)
                used_backbones[name] = bb
                wall[name] = time.perf_counter() - t
                families[name] = "embeddings"
                members.append(name)
        if len(members) > 1:
            for method, label in (("mean", "simple average"), ("entropy", "entropy-weighted average")):
                name = f"embeddings: {label}"
                t = time.perf_counter()
                oof[name] = average_predictions([oof[m] for m in members], method=method)
                if ext is not None:
                    ext_scores[name] = average_predictions([ext_scores[m] for m in members], method=method)
                wall[name] = sum(wall[m] for m in members) + time.perf_counter() - t
                families[name] = "embeddings"

    # ---------------------------------------------------------------- source CNNs
    sources: list[SourceModel] = [_as_source_model(m, k) for k, m in enumerate(source_models or [])]
    if not sources and source is not None and ({"stacking", "fine-tuning"} & set(approaches)):
        from .finetuning import finetune

        src = _load(source, "source")
        src_labels = _labels_of(src, source_labels, "source")
        if set(src["patient_id"].astype(str)) & set(groups):
            raise LeakageError("source and target manifests share patient ids; the source CNN would have seen target patients")
        bb = _cnn(backbones)
        t = time.perf_counter()
        src_images = _Images(src).get(bb.input_size, bb.resize)
        res = finetune(bb, src, src_labels, policy=policy, images=src_images, random_state=seeds["src"],
                       out=None if out is None else Path(out) / f"source_{_safe(bb.name)}.keras", **ft_opts)
        del src_images
        timings["source CNN training"] = time.perf_counter() - t
        sources = [SourceModel(f"{bb.name}-source", res.model, res.resize, list(src_labels))]
        notes.append(f"Source CNN: {bb.name} (ImageNet) fine-tuned on the source manifest ({len(src)} images, "
                     f"labels {src_labels}); validation AUC {res.val_auc:.3f} at epoch {res.best_epoch + 1}; "
                     f"{timings['source CNN training']:.0f} s.")
    images = _Images(target)
    ext_images = _Images(ext) if ext is not None else None

    # ---------------------------------------------------------------- approach 1: stacking
    if "stacking" in approaches:
        if not sources:
            warnings.warn("stacking (approach 1) skipped: it needs source CNNs; pass source= or source_models=",
                          UserWarning, stacklevel=2)
        else:
            t = time.perf_counter()
            P = np.column_stack([_predict_model(s.model, images.get(s.input_size, s.resize), batch_size) for s in sources])
            P_ext = (np.column_stack([_predict_model(s.model, ext_images.get(s.input_size, s.resize), batch_size)
                                      for s in sources]) if ext is not None else None)
            timings["source CNN predictions"] = time.perf_counter() - t
            name = f"stacking ({', '.join(s.name for s in sources)}; meta {meta if isinstance(meta, str) else type(meta).__name__})"
            t = time.perf_counter()
            p = np.full((len(target), len(labels)), np.nan)
            for k, (tr, te) in enumerate(splits):
                p[te] = _stacking_scores(P[tr], Y_fit[tr], P[te], meta, seeds["clf"])
            oof[name] = p
            if refit:
                metas: list = []
                full = _stacking_scores(P, Y_fit, P_ext if ext is not None else P, meta, seeds["clf"], keep=metas)
                models[name] = metas
                if ext is not None:
                    ext_scores[name] = full
            wall[name] = time.perf_counter() - t
            families[name] = "stacking"
            notes.append(f"Stacking meta-features: {P.shape[1]} source outputs "
                         f"({', '.join(o for s in sources for o in s.outputs)}).")

    # ---------------------------------------------------------------- approach 3: fine-tuning
    if "fine-tuning" in approaches:
        from .finetuning import finetune

        if sources:
            bodies = [(f"fine-tuned {s.name}", s.backbone()) for s in sources]
        else:
            bb = _cnn(backbones)
            bodies = [(f"fine-tuned {bb.name} (ImageNet init)", bb)]
            notes.append("No source CNN given: approach 3 fine-tunes the ImageNet backbone directly.")
        for name, body in bodies:
            X_img = images.get(body.input_size, body.resize)
            t = time.perf_counter()
            p = np.full((len(target), len(labels)), np.nan)
            for k, (tr, te) in enumerate(splits):
                res = finetune(body, target.iloc[tr], labels, policy=policy, images=X_img[tr],
                               random_state=seeds["ft"] + k, **ft_opts)
                p[te] = _predict_model(res.model, X_img[te], batch_size)
                logger.info("%s fold %d: val AUC %.3f", name, k, res.val_auc)
            oof[name] = p
            if refit:
                res = finetune(body, target, labels, policy=policy, images=X_img, random_state=seeds["ft"] + len(splits),
                               **ft_opts)
                models[name] = res.model
                if ext is not None:
                    ext_scores[name] = _predict_model(res.model, ext_images.get(body.input_size, body.resize), batch_size)
            wall[name] = time.perf_counter() - t
            families[name] = "fine-tuning"
        notes.append(f"Fine-tuning options: {ft_opts}.")

    if not oof:
        raise ValueError("no approach could run; pass source= or source_models= for stacking, or keep 'embeddings'")
    del images, ext_images

    # ---------------------------------------------------------------- evaluation
    t = time.perf_counter()
    tables = []
    for setting, tr_truth, scores, g in (("internal", truth, oof, groups), ("external", ext_truth, ext_scores, ext_groups)):
        if tr_truth is None or not scores:
            continue
        rows = []
        for name, s in scores.items():
            rows += _evaluate(name, families[name], tr_truth, s, g, labels, n_bootstrap, seeds["boot"])
        tab = pd.DataFrame(rows)
        tab["wall_time_s"] = tab["approach"].map(wall)
        tab = _add_delong(tab, tr_truth, scores, labels)
        tab.insert(0, "setting", setting)
        tables.append(tab)
    table = pd.concat(tables, ignore_index=True)
    table["clinical"] = (np.where(table["family"] == "embeddings", ", ".join(clinical), CLINICAL_IGNORED)
                         if clinical else "none")
    table = table[["setting", "family", "approach", "label", "auc", "ci_low", "ci_high", "delong_p", "best",
                   "wall_time_s", "n", "n_pos", "n_patients", "clinical"]]
    timings["evaluation"] = time.perf_counter() - t
    timings.update({f"approach: {k}": v for k, v in wall.items()})
    notes.insert(0, f"Target: {len(target)} images of {np.unique(groups).size} patients, labels {labels}; "
                    f"{n_splits} patient-grouped folds shared by every approach"
                    + (f"; external: {len(ext)} images of {np.unique(ext_groups).size} patients, never used for fitting."
                       if ext is not None else "."))
    if clinical:
        note = _clinical_note(clinical, set(families.values()))
        notes.insert(1, note)
        logger.info(note)
        if "embeddings" not in families.values():
            warnings.warn(note, UserWarning, stacklevel=2)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        table.to_csv(Path(out) / "comparison.csv", index=False)
    if tmp is not None:
        tmp.cleanup()
    return ComparisonResult(table=table, labels=labels, image_ids=ids, groups=groups, y_true=truth, oof=oof,
                            splits=splits, fold=fold, timings=timings, families=families,
                            external_ids=ext_ids, external_groups=ext_groups, y_external=ext_truth,
                            external=ext_scores, notes=notes, models=models, backbones=used_backbones,
                            sources=sources, clinical=list(clinical))


def _classifier(spec, make_classifier, seed, *, clinical: list[str] | None = None) -> tuple[str, Any]:
    """(approach name, unfitted binary estimator); with ``clinical`` the estimator takes a clinical frame."""
    if isinstance(spec, str):
        return spec, make_classifier(spec, random_state=seed, **({} if clinical is None else {"clinical": clinical}))
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, est = spec
    elif hasattr(spec, "fit") and hasattr(spec, "predict_proba"):
        name, est = type(spec).__name__, spec
    else:
        raise TypeError(f"classifiers entries must be a name, a (name, estimator) pair or an estimator; got {spec!r}")
    return name, (est if clinical is None else _clinical_estimator(est, clinical, seed))


def _clinical_estimator(est, clinical: list[str], seed):
    """``est`` as it is when it already holds a ClinicalFeatures step, else ``with_clinical(est, clinical)``."""
    from ..learn.clinical import ClinicalFeatures, with_clinical

    params = est.get_params(deep=True).values() if hasattr(est, "get_params") else ()
    if isinstance(est, ClinicalFeatures) or any(isinstance(v, ClinicalFeatures) for v in params):
        return est
    return with_clinical(est, clinical, random_state=seed)


def _clinical_columns(clinical, df: pd.DataFrame, labels: list[str], what: str) -> list[str]:
    """The ``clinical=`` columns as a list, checked against one manifest."""
    if clinical is None:
        return []
    cols = ([s.strip() for s in clinical.split(",") if s.strip()] if isinstance(clinical, str)
            else [str(c) for c in clinical])
    leaking = [c for c in cols if c in labels]
    if leaking:
        raise ClinicalDataError(f"clinical column(s) {leaking} are labels being predicted; a label used as a feature "
                                "leaks the answer; fix: remove them from clinical=")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ClinicalDataError(f"{what} manifest has no clinical column(s) {missing}; it has {list(df.columns)}; "
                                "fix: add them to the manifest or change clinical=")
    return cols


def _clinical_note(clinical: list[str], families: set[str]) -> str:
    ignored = sorted(families - {"embeddings"})
    if "embeddings" not in families:
        return (f"Clinical columns {', '.join(clinical)} were requested but not used: only {' and '.join(ignored)} "
                "ran, which use the images alone; keep 'embeddings' in approaches to use them.")
    text = (f"Clinical columns {', '.join(clinical)} were used beside the embeddings of approach 2 (embeddings), "
            "scaled, imputed and one-hot encoded inside each training fold (ClinicalFeatures)")
    if ignored:
        text += (f"; {' and '.join(ignored)} used the images alone (their rows read '{CLINICAL_IGNORED}' in the "
                 "clinical column), so the comparison between families is not like for like")
    return text + "."


def _take(X, idx: np.ndarray):
    """Rows of the embeddings, or of a clinical frame by position."""
    return X.iloc[idx] if hasattr(X, "iloc") else X[idx]


def _clone(est):
    from sklearn.base import clone

    return clone(est)
