"""Fine-tune a Keras CNN with a new sigmoid head (transfer approach 3, and source pretraining).

:func:`finetune` puts a ``Dense(n_labels, sigmoid)`` head on a :class:`~cxr_embed.Backbone`'s
flat model (``[0, 255]`` image in, pooled embedding out), freezes everything but the last ``k``
layers that carry trainable weights, and trains with a masked multi-label binary cross-entropy
(missing and uncertain labels cost nothing), Adam with a decaying learning rate, light
augmentation, per-label positive-class weights and early stopping on the mean per-label ROC AUC
of a *patient-grouped* validation split. The best epoch's weights are restored and the model can
be saved as a ``.keras`` file that loads with ``safe_mode=True`` and that
``Backbone.from_keras(path, layer=result.feature_layer)`` turns back into an embedding extractor,
which is how a source model trained on CheXpert becomes an embedding backbone (Gozzi et al. 2022).

Design choices
--------------
* Frozen ``BatchNormalization`` layers run in inference mode (Keras 3 does this for any layer
  with ``trainable=False``): their moving statistics stay the pretrained ones, which matters with
  the small batches used for fine-tuning. BatchNormalization layers inside the unfrozen last ``k``
  train normally (gamma/beta learn, moving statistics update).
* Augmentation (small rotation, translation, zoom, contrast; Keras preprocessing layers) is
  applied to training batches in the data pipeline only; the saved model contains no
  augmentation layers, so inference and embedding extraction are deterministic.
* The saved model is the inference graph only (no optimizer state, not compiled), so loading it
  needs no custom objects beyond those of the backbone.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import pandas as pd
from keras import ops

from .._version import __version__
from ..exceptions import ManifestError, MissingFilesError

__all__ = ["finetune", "predict_finetuned", "FineTuneResult", "MaskedBinaryCrossentropy", "HEAD_LAYER"]

logger = logging.getLogger(__name__)

#: Name of the sigmoid head layer added by :func:`finetune`.
HEAD_LAYER = "cxr_embed_head"

_DECAYS = ("cosine", "exponential", None)


# --------------------------------------------------------------------------- loss
@keras.saving.register_keras_serializable(package="cxr_embed")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Multi-label binary cross-entropy in which NaN targets contribute nothing.

    Targets are packed as one float array: ``1``/``0`` (or soft labels in between) where the
    label is known, ``NaN`` where it is missing or was masked by an uncertainty policy. The
    returned value is the mean over the *known* (image, label) entries of the batch::

        loss = sum_{known i,j} -(w_j y_ij log p_ij + (1 - y_ij) log(1 - p_ij)) / n_known

    with ``w_j`` the positive-class weight of label ``j``. A batch without any known entry
    gives 0.

    Parameters
    ----------
    pos_weight : sequence of float of length n_labels, optional
        Weight of the positive term per label (1 for all when omitted).
    epsilon : float
        Probabilities are clipped to ``[epsilon, 1 - epsilon]`` before the logarithm.
    name, reduction, dtype
        As for :class:`keras.losses.Loss`; keep ``reduction="sum_over_batch_size"`` for the
        mean over known entries described above.

    Examples
    --------
    >>> import numpy as np
    >>> loss = MaskedBinaryCrossentropy()
    >>> y = np.array([[1.0, np.nan]], np.float32); p = np.array([[0.5, 0.9]], np.float32)
    >>> round(float(loss(y, p)), 4)  # only the first label counts: -log(0.5)
    0.6931
    """

    def __init__(
        self,
        pos_weight: Sequence[float] | None = None,
        epsilon: float = 1e-7,
        name: str = "masked_binary_crossentropy",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.logical_not(ops.isnan(y_true))
        zeros = ops.zeros_like(y_true)
        y = ops.where(known, y_true, zeros)
        p = ops.clip(y_pred, self.epsilon, 1.0 - self.epsilon)
        pos = y * ops.log(p)
        if self.pos_weight is not None:
            pos = pos * ops.convert_to_tensor(np.asarray(self.pos_weight, np.float32), dtype=y_pred.dtype)
        bce = -(pos + (1.0 - y) * ops.log(1.0 - p))
        bce = ops.where(known, bce, zeros)
        n_known = ops.sum(ops.cast(known, y_pred.dtype))
        n_rows = ops.cast(ops.shape(y_true)[0], y_pred.dtype)
        # per-row values whose batch mean is the mean over the known entries
        return ops.sum(bce, axis=-1) * n_rows / ops.maximum(n_known, 1.0)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"pos_weight": self.pos_weight, "epsilon": self.epsilon})
        return config


def _masked_bce_numpy(y: np.ndarray, p: np.ndarray, pos_weight=None, eps: float = 1e-7) -> float:
    known = ~np.isnan(y)
    if not known.any():
        return 0.0
    yy = np.where(known, y, 0.0)
    pp = np.clip(p, eps, 1 - eps)
    w = 1.0 if pos_weight is None else np.asarray(pos_weight)[None, :]
    bce = -(w * yy * np.log(pp) + (1 - yy) * np.log(1 - pp))
    return float(bce[known].sum() / known.sum())


def _masked_auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-label ROC AUC over the known entries; NaN where a label lacks one of the classes."""
    from sklearn.metrics import roc_auc_score

    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        t = y[known, j] >= 0.5
        if t.any() and (~t).any():
            out[j] = roc_auc_score(t, p[known, j])
    return out


# --------------------------------------------------------------------------- result
@dataclass
class FineTuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model : keras.Model
        The fine-tuned model, ``(None, h, w, 3)`` in ``[0, 255]`` -> ``(None, n_labels)``
        probabilities, with the best epoch's weights.
    history : dict of str to list of float
        Per epoch: ``loss`` (training, masked), ``val_loss``, ``val_auc`` (mean over the labels
        with both classes in the validation split) and ``learning_rate`` (at the epoch's end).
    best_epoch : int
        0-based index into ``history`` of the epoch whose weights were kept.
    val_auc : float
        Mean validation AUC at ``best_epoch``.
    val_auc_per_label : dict of str to float
        Per-label validation AUC at ``best_epoch`` (NaN where not computable).
    labels : list of str
        Label names, in the order of the model's outputs.
    feature_layer : str
        Name of the layer whose pooled output feeds the head; pass it as
        ``Backbone.from_keras(path, layer=feature_layer)``.
    input_size : tuple of int (h, w)
    path : pathlib.Path or None
        Where the ``.keras`` model was saved (``out=``), else None.
    train_patients, val_patients : list of str
        Patient ids on each side of the validation split (disjoint).
    layer : str or list of str
        The backbone's tapped layer(s) (several are concatenated); :meth:`to_backbone` uses it.
    pooling : str
        The backbone's pooling.
    resize : str
        The backbone's resize mode (``"pad"``, ``"resize"`` or ``"crop"``).
    trainable_layers : list of str
        Names of the backbone layers that were trained (the head is always trained).
    pos_weight : list of float
        Positive-class weight per label used in the loss.
    """

    model: Any
    history: dict
    best_epoch: int
    val_auc: float
    labels: list
    feature_layer: str | None
    input_size: tuple
    path: Path | None
    train_patients: list
    val_patients: list
    val_auc_per_label: dict = field(default_factory=dict)
    layer: Any = None
    pooling: str = "avg"
    resize: str = "pad"
    trainable_layers: list = field(default_factory=list)
    pos_weight: list = field(default_factory=list)

    def to_backbone(self, **kwargs):
        """An embedding :class:`~cxr_embed.Backbone` over the fine-tuned weights.

        Parameters
        ----------
        **kwargs
            Passed to ``Backbone.from_keras`` (``name=`` ...); ``layer``, ``pooling`` and
            ``resize`` default to the fine-tuned backbone's, so the embedding is the very vector
            that feeds the head.

        Returns
        -------
        Backbone

        Examples
        --------
        >>> bb = result.to_backbone()  # doctest: +SKIP
        >>> bb.embed(batch).shape      # doctest: +SKIP
        (n, dim)
        """
        from ..embed.backbones import Backbone

        kwargs.setdefault("layer", self.layer if self.layer is not None else self.feature_layer)
        kwargs.setdefault("pooling", self.pooling)
        kwargs.setdefault("resize", self.resize)
        return Backbone.from_keras(self.model, **kwargs)

    def predict(self, images_or_manifest, *, batch_size: int = 32) -> np.ndarray:
        """Probabilities of the fine-tuned model; see :func:`predict_finetuned`."""
        return predict_finetuned(self.model, images_or_manifest, batch_size=batch_size, resize=self.resize)


# --------------------------------------------------------------------------- data
class _Batches(keras.utils.PyDataset):
    """Batches of prepared images (and packed targets) loaded on demand: memory stays bounded."""

    def __init__(self, load, indices, batch_size, y=None, *, shuffle_seed=None, augment=None, workers=1):
        super().__init__(workers=workers, use_multiprocessing=False)
        self._load = load
        self._indices = np.asarray(indices, dtype=np.int64)
        self._batch_size = int(batch_size)
        self._y = y
        self._augment = augment
        self._rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
        self._order = self._indices if self._rng is None else self._rng.permutation(self._indices)

    def __len__(self) -> int:
        return math.ceil(len(self._indices) / self._batch_size)

    def __getitem__(self, i):
        idx = self._order[i * self._batch_size : (i + 1) * self._batch_size]
        x = self._load(idx)
        if self._augment is not None:
            x = np.clip(keras.ops.convert_to_numpy(self._augment(x, training=True)), 0.0, 255.0).astype(np.float32)
        if self._y is None:
            return (x,)
        return x, self._y[idx]

    def on_epoch_end(self):
        if self._rng is not None:
            self._order = self._rng.permutation(self._indices)


def _make_augmenter(seed: int):
    layers = keras.layers
    return keras.Sequential(
        [
            layers.RandomRotation(0.02, fill_mode="constant", seed=seed),  # +-7 degrees
            layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            layers.RandomContrast(0.1, value_range=(0, 255), seed=seed + 3),
        ],
        name="cxr_embed_augment",
    )


def _manifest_loader(paths: Sequence[str], prepare):
    from ..io.images import read_image

    def load(idx):
        return np.stack([np.asarray(prepare(read_image(paths[i])[0]), np.float32) for i in idx])

    return load


def _array_loader(images: np.ndarray):
    def load(idx):
        return np.asarray(images[idx], np.float32)

    return load


# --------------------------------------------------------------------------- callback
class _ValidationAUC(keras.callbacks.Callback):
    """Mean masked AUC on the validation split each epoch; early stopping; best weights restored."""

    def __init__(self, val_batches, y_val, labels, patience, pos_weight):
        super().__init__()
        self.val_batches = val_batches
        self.y_val = y_val
        self.labels = labels
        self.patience = patience
        self.pos_weight = pos_weight
        self.history = {"loss": [], "val_loss": [], "val_auc": [], "learning_rate": []}
        self.best_score = -np.inf
        self.best_val_loss = np.inf
        self.best_epoch = 0
        self.best_weights = None
        self.best_per_label = np.full(len(labels), np.nan)
        self.monitor = "val_auc"
        self._wait = 0

    def _predict(self):
        return np.concatenate(
            [np.asarray(self.model.predict_on_batch(self.val_batches[i][0])) for i in range(len(self.val_batches))]
        )

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        p = self._predict()
        per_label = _masked_auc(self.y_val, p)
        auc = float(np.nanmean(per_label)) if np.isfinite(per_label).any() else float("nan")
        val_loss = _masked_bce_numpy(self.y_val, p, self.pos_weight)
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs.update(val_auc=auc, val_loss=val_loss)
        self.history["loss"].append(float(logs.get("loss", np.nan)))
        self.history["val_loss"].append(val_loss)
        self.history["val_auc"].append(auc)
        self.history["learning_rate"].append(lr)
        score = auc if self.monitor == "val_auc" else -val_loss
        logger.info("epoch %d: loss %.4f val_loss %.4f val_auc %.4f", epoch + 1, logs.get("loss", np.nan), val_loss, auc)
        # a tie in validation AUC (it saturates at 1.0 on easy tasks, and is rank-based, so ties are exact)
        # is broken by the lower validation loss: the later, better-calibrated epoch wins
        tie = self.monitor == "val_auc" and score == self.best_score and val_loss < self.best_val_loss
        if score > self.best_score or tie:
            self.best_score, self.best_epoch, self._wait = score, epoch, 0
            self.best_val_loss = val_loss
            self.best_weights = self.model.get_weights()
            self.best_per_label = per_label
        else:
            self._wait += 1
            if self._wait >= self.patience:
                logger.info("early stopping after epoch %d; best epoch %d", epoch + 1, self.best_epoch + 1)
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


# --------------------------------------------------------------------------- helpers
def _resolve_labels(manifest: pd.DataFrame, labels) -> list[str]:
    if labels is None:
        labels = manifest.attrs.get("labels")
        if not labels:
            raise ManifestError(
                "finetune: no labels given and the manifest has no df.attrs['labels']; "
                "fix: pass labels=[...] naming the label columns"
            )
    if isinstance(labels, str):
        labels = [labels]
    labels = [str(c) for c in labels]
    if not labels:
        raise ValueError("labels is empty: name at least one label column to fine-tune on")
    missing = [c for c in labels if c not in manifest.columns]
    if missing:
        raise ManifestError(
            f"finetune: label columns {missing} are not in the manifest (columns: {list(manifest.columns)}); "
            "fix: pass labels= naming existing columns"
        )
    return labels


def _validation_split(groups: np.ndarray, y: np.ndarray, validation_split, seed: int):
    """Patient-grouped (train_idx, val_idx); a float picks the split with the most evaluable labels."""
    from sklearn.model_selection import GroupShuffleSplit

    if isinstance(validation_split, (float, int)) and not isinstance(validation_split, bool):
        frac = float(validation_split)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"validation_split must be a fraction in (0, 1) or a list of patient ids, got {validation_split!r}")
        if len(np.unique(groups)) < 2:
            raise ValueError(
                "finetune needs at least two patients for a patient-grouped validation split; "
                "fix: add patients or check the manifest's patient_id column"
            )
        splitter = GroupShuffleSplit(n_splits=10, test_size=frac, random_state=seed)
        best, best_n = None, -1
        for tr, va in splitter.split(np.zeros(len(groups)), groups=groups):
            n_eval = int(np.isfinite(_masked_auc(y[va], np.zeros(y[va].shape))).sum())
            if n_eval > best_n:
                best, best_n = (tr, va), n_eval
        return best
    val_patients = {str(g) for g in validation_split}
    is_val = np.isin(groups, list(val_patients))
    if not is_val.any() or is_val.all():
        raise ValueError(
            "validation_split given as patient ids must select some but not all rows "
            f"(selected {int(is_val.sum())} of {len(groups)}); fix: pass ids from the manifest's patient_id column"
        )
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _pos_weights(y: np.ndarray, class_weight, labels: list[str]) -> list[float] | None:
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced', None or one weight per label, got {class_weight!r}")
        out = []
        for j, name in enumerate(labels):
            col = y[:, j][~np.isnan(y[:, j])]
            pos, neg = float(col.sum()), float((1.0 - col).sum())
            if pos <= 0 or neg <= 0:
                warnings.warn(
                    f"label {name!r} has {'no positive' if pos <= 0 else 'no negative'} training examples; "
                    "its positive-class weight is set to 1",
                    stacklevel=3,
                )
                out.append(1.0)
            else:
                out.append(float(np.clip(neg / pos, 0.01, 100.0)))
        return out
    if isinstance(class_weight, dict):
        class_weight = [class_weight.get(name, 1.0) for name in labels]
    weights = [float(w) for w in class_weight]
    if len(weights) != len(labels) or any(w <= 0 for w in weights):
        raise ValueError(f"class_weight needs {len(labels)} positive weights (one per label), got {weights}")
    return weights


def _schedule(learning_rate: float, decay, total_steps: int, steps_per_epoch: int):
    sched = keras.optimizers.schedules
    if isinstance(decay, sched.LearningRateSchedule):
        return decay
    if decay == "cosine":
        return sched.CosineDecay(learning_rate, decay_steps=max(total_steps, 1), alpha=0.01)
    if decay == "exponential":
        return sched.ExponentialDecay(learning_rate, decay_steps=max(steps_per_epoch, 1), decay_rate=0.9)
    if decay is None:
        return float(learning_rate)
    raise ValueError(f"decay must be one of {_DECAYS} or a keras LearningRateSchedule, got {decay!r}")


def _build_model(backbone, n_labels: int, trainable_layers, seed: int):
    base_src = backbone.model
    base = keras.models.clone_model(base_src)
    base.set_weights(base_src.get_weights())
    if len(base.outputs) != 1 or len(base.outputs[0].shape) != 2:
        raise ValueError(
            f"backbone.model must have one pooled output of shape (None, dim), got {[o.shape for o in base.outputs]}; "
            "fix: build the backbone with pooling='avg' or 'max'"
        )
    head = keras.layers.Dense(
        n_labels,
        activation="sigmoid",
        name=HEAD_LAYER,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(base.outputs[0])
    model = keras.Model(base.inputs, head, name=f"{_safe_name(getattr(backbone, 'name', 'backbone'))}_finetuned")

    weighted = [l for l in model.layers if l.name != HEAD_LAYER and l.trainable_weights]
    if trainable_layers == "all":
        unfrozen = weighted
    elif isinstance(trainable_layers, (int, np.integer)) and not isinstance(trainable_layers, bool) and trainable_layers >= 0:
        unfrozen = weighted[len(weighted) - int(trainable_layers) :] if trainable_layers else []
        if trainable_layers > len(weighted):
            warnings.warn(
                f"trainable_layers={trainable_layers} but the backbone has only {len(weighted)} layers with weights; "
                "all of them are trained",
                stacklevel=3,
            )
    else:
        raise ValueError(f"trainable_layers must be a non-negative int or 'all', got {trainable_layers!r}")
    keep = {id(l) for l in unfrozen}
    for layer in model.layers:
        if layer.name == HEAD_LAYER:
            layer.trainable = True
        elif layer.weights:
            layer.trainable = id(layer) in keep
    return model, [l.name for l in unfrozen]


def _jsonable_layer(layer):
    if layer is None or isinstance(layer, str):
        return layer
    return [str(t) for t in layer]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(name)) or "backbone"


def _feature_layer_name(backbone, model) -> str | None:
    name = getattr(backbone, "feature_layer", None)
    if name is not None:
        try:
            model.get_layer(name)
        except ValueError:
            warnings.warn(f"backbone.feature_layer {name!r} is not a layer of the fine-tuned model", stacklevel=3)
    return name


def _check_out(out) -> Path:
    path = Path(out)
    if path.suffix != ".keras":
        raise ValueError(f"out must be a path ending in '.keras' (Keras v3 format), got {str(out)!r}; fix: e.g. out='model.keras'")
    return path


def _save(model, out, meta: dict) -> Path:
    path = _check_out(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    inference = keras.Model(model.inputs, model.outputs, name=model.name)
    flags = {id(l): l.trainable for l in inference.layers}
    try:  # the saved graph is a plain, fully trainable inference model
        for layer in inference.layers:
            layer.trainable = True
        inference.save(path)
    finally:
        for layer in inference.layers:
            layer.trainable = flags[id(layer)]
    sidecar = path.with_name(path.stem + ".finetune.json")
    sidecar.write_text(json.dumps(meta, indent=2, default=str))
    logger.info("saved fine-tuned model to %s (metadata in %s)", path, sidecar)
    return path


# --------------------------------------------------------------------------- public API
def finetune(
    backbone,
    manifest: pd.DataFrame,
    labels: Sequence[str] | str | None = None,
    *,
    policy: str = "ignore",
    trainable_layers: int | str = 6,
    epochs: int = 10,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    decay: str | None | Any = "cosine",
    validation_split: float | Sequence[str] = 0.2,
    patience: int = 3,
    augment: bool = True,
    class_weight: str | Sequence[float] | dict | None = "balanced",
    random_state: int | None = None,
    out: str | Path | None = None,
    images: np.ndarray | None = None,
    workers: int = 1,
    verbose: int = 0,
) -> FineTuneResult:
    """Fine-tune a backbone with a new sigmoid head on a labelled manifest.

    Parameters
    ----------
    backbone : Backbone
        Its ``model`` (flat graph, ``(None, h, w, 3)`` in ``[0, 255]`` -> ``(None, dim)``) is cloned;
        the backbone itself is not modified.
    manifest : DataFrame
        Rows with ``path``, ``patient_id`` and the label columns (1.0, 0.0, NaN missing,
        -1.0 uncertain), as from :func:`cxr_embed.load_manifest`.
    labels : list of str, optional
        Label columns to learn; default ``manifest.attrs["labels"]``.
    policy : str
        Uncertainty policy passed to :func:`cxr_embed.apply_uncertainty` (e.g. ``"ignore"``,
        ``"ones"``, ``"zeros"``); entries it masks, and missing labels, contribute no loss.
    trainable_layers : int or "all"
        Train only the last ``k`` backbone layers that carry trainable weights (the paper: 6),
        ``0`` for the head alone, or ``"all"`` (training from ImageNet or from scratch, e.g. a
        CheXpert source model). Frozen BatchNormalization layers run in inference mode.
    epochs, batch_size : int
    learning_rate : float
        Initial Adam learning rate.
    decay : {"cosine", "exponential", None} or keras LearningRateSchedule
        ``"cosine"`` decays to 1 % over all steps; ``"exponential"`` multiplies by 0.9 per epoch.
    validation_split : float or list of str
        Fraction of *patients* held out for validation (a ``GroupShuffleSplit`` over
        ``patient_id``, choosing among 10 draws the one where most labels have both classes), or
        the validation patient ids themselves. No patient is on both sides (checked).
    patience : int
        Stop after this many epochs without a better validation AUC; the best epoch's weights
        are restored either way. Epochs with equal validation AUC (for example saturated at 1.0)
        are ranked by the lower validation loss.
    augment : bool
        Small random rotation (±7°), translation (5 %), zoom (10 %) and contrast (10 %) of
        training batches; never applied to validation or saved into the model.
    class_weight : "balanced", None, list of float or dict
        Positive-class weight per label in the loss; ``"balanced"`` uses
        ``n_negative / n_positive`` of the training rows (clipped to [0.01, 100]).
    random_state : int, optional
        Seeds the split, shuffling, augmentation and head initialisation (no global seeding).
    out : str or Path, optional
        Save the best model here (must end in ``.keras``) plus ``<stem>.finetune.json`` metadata.
    images : ndarray of shape (n_rows, h, w, 3), optional
        Prepared images in ``[0, 255]`` aligned with the manifest rows; when given no file is read.
        Otherwise images are read with :func:`cxr_embed.read_image` and ``backbone.prepare``,
        one batch at a time.
    workers : int
        Threads loading training batches (``keras.utils.PyDataset``).
    verbose : int
        Passed to ``model.fit``.

    Returns
    -------
    FineTuneResult

    Raises
    ------
    ManifestError
        Missing label or ``patient_id`` columns.
    MissingFilesError
        Image files named by the manifest do not exist (checked before training).
    ImageReadError
        A file exists but cannot be decoded (raised when its batch is read).
    LeakageError
        If the validation split were to share patients with training (cannot happen by
        construction; checked anyway).
    ValueError
        Bad arguments (shapes, fractions, ``out`` not ending in ``.keras``).

    Examples
    --------
    >>> import cxr_embed
    >>> from cxr_embed.transfer.finetuning import finetune
    >>> bb = cxr_embed.Backbone("densenet121", weights="imagenet")             # doctest: +SKIP
    >>> df = cxr_embed.load_manifest("CheXpert-v1.0/train.csv")                # doctest: +SKIP
    >>> res = finetune(bb, df, policy="ones", trainable_layers="all",
    ...                out="densenet121_chexpert.keras", random_state=0)       # doctest: +SKIP
    >>> res.val_auc                                                            # doctest: +SKIP
    0.83
    >>> src = cxr_embed.Backbone.from_keras("densenet121_chexpert.keras",
    ...                                     layer=res.feature_layer)          # doctest: +SKIP
    """
    from ..learn.labels import apply_uncertainty, normalize_policy
    from ..learn.validation import check_no_leakage

    if not isinstance(manifest, pd.DataFrame):
        raise TypeError(f"manifest must be a pandas DataFrame (see cxr_embed.load_manifest), got {type(manifest).__name__}")
    if "patient_id" not in manifest.columns:
        raise ManifestError(
            "finetune needs a 'patient_id' column for the patient-grouped validation split; "
            "fix: load the table with cxr_embed.load_manifest or add the column"
        )
    if int(epochs) < 1 or int(batch_size) < 1 or int(patience) < 1:
        raise ValueError(f"epochs, batch_size and patience must be >= 1, got {epochs}, {batch_size}, {patience}")
    if out is not None:
        _check_out(out)  # fail before training, not after
    labels = _resolve_labels(manifest, labels)
    if normalize_policy(policy) == "multiclass":
        raise ValueError(
            "policy 'multiclass' gives three-class targets, which a sigmoid head cannot learn; "
            "fix: use 'ignore', 'zeros', 'ones' or 'ones_smoothed'"
        )
    n = len(manifest)
    h, w = (int(s) for s in backbone.input_size)

    if images is not None:
        images = np.asarray(images)
        if images.shape[0] != n or images.shape[1:] != (h, w, 3):
            raise ValueError(
                f"images must have shape ({n}, {h}, {w}, 3) (one prepared image per manifest row at the "
                f"backbone's input size), got {images.shape}; fix: prepare them with backbone.prepare"
            )
        if n and float(np.max(images)) <= 1.0:
            warnings.warn("images look scaled to [0, 1]; the backbone expects [0, 255]", stacklevel=2)
        load = _array_loader(images)
    else:
        if "path" not in manifest.columns:
            raise ManifestError("finetune needs a 'path' column (or images=); fix: load the table with cxr_embed.load_manifest")
        paths = manifest["path"].astype(str).tolist()
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:  # fail before training, not in the middle of an epoch
            raise MissingFilesError(
                f"{len(missing)} of {len(paths)} image files named by the manifest do not exist, e.g. {missing[:3]}; "
                "fix: check the manifest's root= or pass images="
            )
        load = _manifest_loader(paths, backbone.prepare)

    rng = np.random.default_rng(random_state)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=4)]

    raw = manifest[labels].to_numpy(dtype=np.float64)
    y, mask = apply_uncertainty(raw, policy, random_state=seeds[0])
    y = np.where(np.asarray(mask, bool), np.asarray(y, np.float64), np.nan).astype(np.float32)

    groups = manifest["patient_id"].astype(str).to_numpy()
    tr_idx, va_idx = _validation_split(groups, y, validation_split, seeds[1])
    check_no_leakage(groups[tr_idx], groups[va_idx])
    if len(tr_idx) == 0 or len(va_idx) == 0:
        raise ValueError(f"the validation split left {len(tr_idx)} training and {len(va_idx)} validation rows; fix: use more patients")

    pos_weight = _pos_weights(y[tr_idx], class_weight, labels)
    model, unfrozen = _build_model(backbone, len(labels), trainable_layers, seeds[2])
    feature_layer = _feature_layer_name(backbone, model)

    train = _Batches(
        load,
        tr_idx,
        batch_size,
        y,
        shuffle_seed=seeds[3],
        augment=_make_augmenter(seeds[3] % (2**30)) if augment else None,
        workers=workers,
    )
    val = _Batches(load, va_idx, batch_size)
    steps = len(train)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=_schedule(learning_rate, decay, steps * int(epochs), steps)),
        loss=MaskedBinaryCrossentropy(pos_weight=pos_weight),
    )
    cb = _ValidationAUC(val, y[va_idx], labels, int(patience), pos_weight)
    if not np.isfinite(_masked_auc(y[va_idx], np.zeros((len(va_idx), len(labels))))).any():
        warnings.warn(
            "no label has both classes in the validation split, so validation AUC is undefined; "
            "early stopping monitors the validation loss instead (fix: more patients or a larger validation_split)",
            stacklevel=2,
        )
        cb.monitor = "val_loss"
    # shuffle=False: _Batches shuffles with its own seeded generator (Keras would use the global `random`)
    model.fit(train, epochs=int(epochs), callbacks=[cb], verbose=verbose, shuffle=False)

    best = cb.best_epoch
    result = FineTuneResult(
        model=model,
        history=cb.history,
        best_epoch=best,
        val_auc=float(cb.history["val_auc"][best]),
        val_auc_per_label={name: float(v) for name, v in zip(labels, cb.best_per_label)},
        labels=labels,
        feature_layer=feature_layer,
        input_size=(h, w),
        path=None,
        train_patients=sorted(set(groups[tr_idx])),
        val_patients=sorted(set(groups[va_idx])),
        layer=_jsonable_layer(getattr(backbone, "layer", None)),
        pooling=str(getattr(backbone, "pooling", "avg")),
        resize=str(getattr(backbone, "resize", "pad")),
        trainable_layers=unfrozen,
        pos_weight=list(pos_weight) if pos_weight is not None else [1.0] * len(labels),
    )
    if out is not None:
        config = getattr(backbone, "config", None)
        meta = {
            "format": "cxr_embed.transfer.finetuning",
            "format_version": 1,
            "library_version": __version__,
            "labels": labels,
            "feature_layer": feature_layer,
            "layer": result.layer,
            "pooling": result.pooling,
            "resize": result.resize,
            "head_layer": HEAD_LAYER,
            "input_size": [h, w],
            "backbone": config if isinstance(config, dict) else getattr(backbone, "name", None),
            "policy": policy,
            "trainable_layers": unfrozen,
            "pos_weight": result.pos_weight,
            "best_epoch": best,
            "val_auc": result.val_auc,
            "val_auc_per_label": result.val_auc_per_label,
            "history": cb.history,
            "n_train_patients": len(result.train_patients),
            "n_val_patients": len(result.val_patients),
        }
        result.path = _save(model, out, meta)
    return result


def predict_finetuned(model_or_path, images_or_manifest, *, batch_size: int = 32, resize: str = "pad") -> np.ndarray:
    """Label probabilities from a fine-tuned model.

    Parameters
    ----------
    model_or_path : keras.Model or str or Path
        A model from :func:`finetune` or the ``.keras`` file it saved (loaded with
        ``safe_mode=True``).
    images_or_manifest : ndarray of shape (n, h, w, 3) or DataFrame
        Prepared images in ``[0, 255]`` at the model's input size, or a manifest whose
        ``path`` column is read with :func:`cxr_embed.read_image` and prepared with
        :func:`cxr_embed.prepare_image` (``mode=resize``), batch by batch.
    batch_size : int
    resize : {"pad", "resize", "crop"}
        How manifest images are fitted to the input size; use the backbone's mode.

    Returns
    -------
    ndarray of shape (n, n_labels), float32 probabilities

    Examples
    --------
    >>> p = predict_finetuned("model.keras", images)  # doctest: +SKIP
    >>> p.shape                                       # doctest: +SKIP
    (n, n_labels)
    """
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file; fix: pass the path that finetune(out=...) wrote")
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    else:
        model = model_or_path
    h, w = (int(s) for s in model.inputs[0].shape[1:3])
    if isinstance(images_or_manifest, pd.DataFrame):
        from ..io.preprocessing import prepare_image

        if "path" not in images_or_manifest.columns:
            raise ManifestError("predict_finetuned needs a manifest with a 'path' column")
        n = len(images_or_manifest)
        load = _manifest_loader(
            images_or_manifest["path"].astype(str).tolist(), lambda im: prepare_image(im, (h, w), mode=resize)
        )
    else:
        images = np.asarray(images_or_manifest)
        if images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ValueError(f"images must have shape (n, {h}, {w}, 3) in [0, 255], got {images.shape}")
        n = len(images)
        load = _array_loader(images)
    batches = _Batches(load, np.arange(n), batch_size)
    n_out = int(model.outputs[0].shape[-1])
    if n == 0:
        return np.zeros((0, n_out), np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(batches[i][0]), np.float32) for i in range(len(batches))])
