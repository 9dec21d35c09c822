"""Saliency maps for every model the library fits, through tf-keras-vis on Keras 3.

Three kinds of model are explained, each by building one flat Keras model from the image
(``(h, w, 3)`` in [0, 255]) to a score, which tf-keras-vis then differentiates or perturbs:

* a Keras CNN with its own sigmoid head (fine-tuned by :func:`cxr_embed.transfer.finetuning`, or a source
  CNN): gradients of the label's logit (the sigmoid is replaced by the identity);
* a backbone + a fitted *linear* scikit-learn classifier (logistic regression, linear SVM, with
  any scaler or PCA before it): the classifier is rebuilt as a ``Dense`` layer on the backbone's
  own graph, so gradients flow from the classifier's logit to the image;
* a backbone + a non-differentiable classifier (random forest, XGBoost, kNN ...): gradient-free
  Score-CAM, with masked images going through backbone -> embedding -> classifier probability;
* ensembles (:class:`cxr_embed.StackedEnsemble`, :class:`cxr_embed.AveragingEnsemble`): member
  maps combined with the ensemble's weights.

Maps are returned in the original image's coordinates (padding or cropping of the model input
undone), scaled to [0, 1].
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._utils import require_int
from ..io.preprocessing import prepare_image, restore_map

__all__ = ["explain", "Saliency", "METHODS", "AUTO_METHODS", "resolve_method", "explain_manifest", "save_overlay", "save_saliency_h5", "load_saliency_h5"]

logger = logging.getLogger(__name__)

METHODS = ("auto", "gradcam", "gradcam++", "layercam", "layercam-stages", "scorecam", "faster-scorecam",
           "smoothgrad", "occlusion")
_GRADIENT_METHODS = {"gradcam", "gradcam++", "layercam", "layercam-stages", "smoothgrad"}
#: What ``method="auto"`` means for each kind of model (chosen by measurement, docs/explain.md).
AUTO_METHODS = {"cnn": "gradcam", "linear": "gradcam", "other": "occlusion"}


@dataclass
class Saliency:
    """A saliency map and what it explains.

    Attributes
    ----------
    map : ndarray of shape (H, W), float32 in [0, 1]
        The map in the original image's coordinates.
    method : str
        One of :data:`METHODS`.
    label : str or int or None
        The explained label.
    score : float
        The model's probability for ``label`` on this image.
    input_map : ndarray of shape (h, w)
        The map in the model input's coordinates (before undoing the resize).
    image : ndarray of shape (H, W) or None
        The explained radiograph, float in [0, 1].
    path : str or None
        The file the image came from.
    """

    map: np.ndarray
    method: str
    label: Any
    score: float
    input_map: np.ndarray = field(repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None


# --------------------------------------------------------------------------- targets
@dataclass
class _Target:
    """A flat Keras model from a prepared image to the explained output, plus how to read it."""

    model: Any  # keras.Model, input (None, h, w, 3) in [0, 255]
    layer: str | None  # convolutional layer for CAM methods
    input_size: tuple
    resize: str
    proba: Any  # callable(batch) -> (n,) probability of the explained label
    kind: str  # "logit" (one output: a logit) or "logprob2" (two outputs [log(1-p), log(p)])
    label: Any


def _is_keras_model(obj) -> bool:
    try:
        import keras
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, keras.Model)


def _on_composite(model, backbone) -> bool:
    """A classifier on a composite embedding (several passes; saliency/ cannot import embed/)."""
    return bool(getattr(backbone, "composite", False)) and not _is_keras_model(model)


def _resize_mode(backbone) -> str:
    mode = getattr(backbone, "resize", None)
    if mode is None:
        mode = (getattr(backbone, "config", {}) or {}).get("preprocessing", {}).get("mode", "pad")
    return mode


def _label_index(label, names: Sequence | None, n_outputs: int) -> tuple[int, Any]:
    if label is None:
        if n_outputs != 1:
            raise ValueError(f"the model has {n_outputs} outputs {list(names) if names is not None else ''}; "
                             "choose one with label=<name or index>")
        return 0, (names[0] if names is not None and len(names) else None)
    if isinstance(label, (int, np.integer)):
        if not 0 <= int(label) < n_outputs:
            raise ValueError(f"label index {label} is out of range for a model with {n_outputs} outputs")
        return int(label), (names[int(label)] if names is not None and len(names) > int(label) else int(label))
    if names is None or label not in list(names):
        raise ValueError(f"unknown label {label!r}; the model's labels are {list(names) if names is not None else 'unnamed'}")
    return list(names).index(label), label


def _call(model, batch):
    """Run a one-input model on a batch, matching the structure it was built with (tensor or [tensor])."""
    x = np.asarray(batch, np.float32)
    return model([x] if isinstance(model.input, (list, tuple)) else x, training=False)


def _last_conv_layer(model) -> str:
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4:
            return layer.name
    raise ValueError("the Keras model has no layer with a 4-D (convolutional) output to explain")


def _cnn_target(model, *, label, labels, method, layer, resize) -> _Target:
    import keras

    if len(model.outputs) != 1:
        raise ValueError(f"the Keras model has {len(model.outputs)} outputs; explain needs one output tensor "
                         "(n, n_labels) of probabilities")
    output = model.outputs[0]  # a model loaded from .keras may report `model.output` as a one-element list
    n_out = int(output.shape[-1])
    idx, name = _label_index(label, labels, n_out)
    h, w = (int(s) for s in model.input_shape[1:3])
    prob_out = keras.layers.Lambda(lambda t: t[:, idx : idx + 1], name="cxr_embed_select")(output)
    if method in _GRADIENT_METHODS:
        last = model.layers[-1]
        act = getattr(last, "activation", None)
        if act is not None and getattr(act, "__name__", "") == "sigmoid":
            # the logit of the sigmoid head, so gradients do not vanish where p is near 0 or 1
            pre = _sigmoid_input(model)
            out = keras.layers.Lambda(lambda t: t[:, idx : idx + 1], name="cxr_embed_logit")(pre)
        else:
            out = prob_out
        kind = "logit"
    else:
        from ._heads import keras_two_class_logprob

        out = keras_two_class_logprob(prob_out)
        kind = "logprob2"
    target_model = keras.Model(model.inputs, out)
    proba_model = keras.Model(model.inputs, prob_out)

    def proba(batch):
        return np.asarray(_call(proba_model, batch))[:, 0]

    return _Target(target_model, layer or _last_conv_layer(model), (h, w), resize, proba, kind, name)


def _sigmoid_input(model):
    """The pre-activation tensor of a final Dense(sigmoid) layer, on the same graph."""
    import keras

    last = model.layers[-1]
    clone = keras.layers.Dense(last.units, activation=None, use_bias=last.use_bias, name="cxr_embed_logit_dense")
    z = clone(last.input)
    clone.set_weights(last.get_weights())
    return z


def _unwrap(estimator, label):
    """(binary estimator, label name, labels) from bundles, multi-label wrappers and searches."""
    labels = None
    if hasattr(estimator, "estimator") and hasattr(estimator, "backbone_fingerprint"):  # ModelBundle
        labels = list(getattr(estimator, "labels", []) or []) or None
        estimator = estimator.estimator
    if hasattr(estimator, "best_estimator_"):
        estimator = estimator.best_estimator_
    if hasattr(estimator, "estimators_") and hasattr(estimator, "labels_"):  # MultiLabelClassifier
        labels = list(estimator.labels_)
        idx, name = _label_index(label, labels, len(labels))
        return estimator.estimators_[idx], name, labels
    name = label if label is not None else (labels[0] if labels else None)
    return estimator, name, labels


def _pipeline_target(backbone, estimator, *, label, method, layer) -> _Target:
    import keras

    from ._heads import keras_linear_head, keras_numpy_head, linear_head, positive_proba

    est, name, _ = _unwrap(estimator, label)
    bb_model = backbone.model
    features = bb_model.output
    dim = int(features.shape[-1])
    embed_model = bb_model

    def proba(batch):
        X = np.asarray(_call(embed_model, batch))
        return positive_proba(est, X)

    if method in _GRADIENT_METHODS:
        head = linear_head(est, dim)
        if head is None:
            raise ValueError(
                f"{type(est).__name__} is not differentiable (not a linear model on the embeddings), so "
                f"method={method!r} cannot send gradients through it; fix: use method='scorecam' or "
                "'faster-scorecam' (gradient-free), or a linear classifier such as make_classifier('logreg')"
            )
        out = keras_linear_head(features, *head)
        kind = "logit"
    else:
        out = keras_numpy_head(features, lambda X: positive_proba(est, X))
        kind = "logprob2"
    model = keras.Model(bb_model.inputs, out)
    return _Target(model, layer or backbone.feature_layer, tuple(backbone.input_size), _resize_mode(backbone), proba, kind, name)


# --------------------------------------------------------------------------- computing maps
def _compute_map(target: _Target, x: np.ndarray, method: str, *, faster_n: int, smooth_samples: int,
                 smooth_noise: float, batch_size: int) -> np.ndarray:
    if target.kind == "logit":
        def score(out):
            return out[:, 0]
    else:
        def score(out):
            return out[:, 1]

    model = target.model
    # tf-keras-vis calls model.predict with Keras' default progress bar; a library must not print
    model.predict = _quiet_predict(model.predict)
    seed = x[None].astype(np.float32)
    with warnings.catch_warnings():
        # tf-keras-vis calls models with a bare tensor; Keras 3 then warns that the input structure
        # (a named input) differs. Harmless, and only silenced here, never globally.
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
        sal = _run_method(model, score, seed, method, target.layer, faster_n=faster_n,
                          smooth_samples=smooth_samples, smooth_noise=smooth_noise, batch_size=batch_size)
    return np.nan_to_num(np.asarray(sal, dtype=np.float32)[0])


def _run_method(model, score, seed, method, layer, *, faster_n, smooth_samples, smooth_noise, batch_size):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency as _TkvSaliency
    from tf_keras_vis.scorecam import Scorecam

    if method == "smoothgrad":
        return _TkvSaliency(model, clone=False)(score, seed, smooth_samples=smooth_samples, smooth_noise=smooth_noise)
    if method in ("scorecam", "faster-scorecam"):
        max_n = faster_n if method == "faster-scorecam" else None
        return Scorecam(model, clone=False)(score, seed, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                                            max_N=max_n, batch_size=batch_size)
    cls = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[method]
    # seek_penultimate_conv_layer=False: the map of exactly this layer. tf-keras-vis' default walks back
    # to the nearest Conv layer, e.g. from EfficientNet's top_activation to top_conv (before batch norm
    # and activation), a different map from the one the pooled embedding is made of
    return cls(model, clone=False)(score, seed, penultimate_layer=layer, seek_penultimate_conv_layer=False)


def _quiet_predict(predict):
    if getattr(predict, "_cxr_quiet", False):
        return predict

    def quiet(*args, **kwargs):
        kwargs.setdefault("verbose", 0)
        return predict(*args, **kwargs)

    quiet._cxr_quiet = True
    return quiet


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.clip(np.nan_to_num(m), 0, None)
    top = m.max()
    return (m / top).astype(np.float32) if top > 0 else m.astype(np.float32)


def _load(image_or_path):
    if isinstance(image_or_path, (str, Path)):
        from ..io.images import read_image

        image, _ = read_image(image_or_path)
        return image, str(image_or_path)
    image = np.asarray(image_or_path, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a path or a 2-D image of shape (H, W) in [0, 1], got shape {image.shape}")
    return image, None


def _ensemble_members(model, backbone):
    """[(backbone, fitted member estimator)] for StackedEnsemble / AveragingEnsemble, else None."""
    from ..learn.stacking import AveragingEnsemble, StackedEnsemble

    if not isinstance(model, (StackedEnsemble, AveragingEnsemble)):
        return None
    members = [est for _, est in getattr(model, "members_", [])]
    if not members:
        raise ValueError("this ensemble has no fitted members (not fitted, or members='passthrough' over "
                         "precomputed probabilities): explain its source models one by one instead")
    if backbone is None or isinstance(backbone, (str, bytes)) or not isinstance(backbone, Sequence):
        raise ValueError("explaining an ensemble needs backbone=[one Backbone per member, in member order]")
    if len(backbone) != len(members):
        raise ValueError(f"the ensemble has {len(members)} members but {len(backbone)} backbones were given")
    return list(zip(backbone, members))


def _ensemble_weights(ensemble, probas: np.ndarray) -> np.ndarray:
    """Weight of each member's map for one image, from the ensemble's own combination rule.

    Averaging: equal (``"mean"``) or ``1 - H2(p_k)`` (``"entropy"``). Stacking with a linear meta-learner:
    the positive part of its coefficients (members whose probability raises the stacked score); with a
    tree meta-learner: its feature importances.
    """
    from ..learn.stacking import AveragingEnsemble, entropy_weights

    k = len(probas)
    if isinstance(ensemble, AveragingEnsemble):
        w = entropy_weights(probas) if ensemble.method == "entropy" else np.ones(k)
    else:
        meta = ensemble.meta_
        if hasattr(meta, "coef_"):
            c = np.ravel(meta.coef_)
            w = np.clip(c, 0, None) if (c > 0).any() else np.abs(c)
        elif hasattr(meta, "feature_importances_"):
            w = np.asarray(meta.feature_importances_, float)
        else:
            w = np.ones(k)
    w = np.asarray(w, float).reshape(-1)
    return w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k)


def explain(image_or_path, model, *, backbone=None, method: str = "auto", label=None, labels=None,
            layer: str | None = None, resize: str = "pad", faster_n: int = 32, smooth_samples: int = 20,
            smooth_noise: float = 0.2, batch_size: int = 32) -> Saliency:
    """Explain one radiograph with a saliency map.

    Parameters
    ----------
    image_or_path : str or Path or ndarray of shape (H, W)
        A file (any format :func:`cxr_embed.read_image` reads) or a decoded image in [0, 1].
    model : keras.Model or fitted scikit-learn classifier or ModelBundle or ensemble
        A CNN with its own sigmoid head (input ``(h, w, 3)`` in [0, 255], as saved by
        :func:`cxr_embed.transfer.finetuning`), or a classifier fitted on ``backbone``'s embeddings
        (binary, :class:`cxr_embed.MultiLabelClassifier`, a search object, a loaded bundle), or a
        :class:`cxr_embed.StackedEnsemble` / :class:`cxr_embed.AveragingEnsemble` whose members were
        fitted on the embeddings of ``backbone[k]``.
    backbone : Backbone or CompositeEmbedding or list of Backbone, optional
        Required for classifiers (the backbone whose embeddings they were fitted on) and ensembles.
        A :class:`cxr_embed.CompositeEmbedding` (e.g. :data:`cxr_embed.DEFAULT_EMBEDDING`'s): a linear
        classifier gets the sum of its passes' class activation maps, any classifier occlusion
        through every pass.
    method : {"auto", "gradcam", "gradcam++", "layercam", "layercam-stages", "scorecam", "faster-scorecam", \
"smoothgrad", "occlusion"}, default "auto"
        ``"auto"`` picks by model kind (:data:`AUTO_METHODS`, :func:`resolve_method`). Gradient
        methods need a differentiable path (a CNN head or a linear classifier); Score-CAM and
        ``"occlusion"`` (blurred patches through the whole pipeline, classifier included) work for
        every model. ``"faster-scorecam"`` uses the ``faster_n`` most variable channels;
        ``"layercam-stages"`` averages LayerCAM over the three coarsest stage outputs.
    label : str or int, optional
        The label to explain; required when the model has several.
    labels : list of str, optional
        Names of a Keras model's outputs.
    layer : str, optional
        The layer (any 4-D output) whose map CAM methods compute, used exactly as given (not the
        convolution before it); default the backbone's tapped layer (the tensor its embedding is
        pooled from) or the CNN's last 4-D layer.
    resize : {"pad", "resize", "crop"}, default "pad"
        How a Keras model's input was prepared (backbones carry their own).
    faster_n, smooth_samples, smooth_noise, batch_size
        Settings of Faster-Score-CAM, SmoothGrad and the Score-CAM batch.

    Returns
    -------
    Saliency
        ``map`` of shape (H, W) in [0, 1] in the original image's coordinates.

    Examples
    --------
    >>> import numpy as np, keras
    >>> inp = keras.Input((32, 32, 3))
    >>> f = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    >>> out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(f))
    >>> sal = explain(np.random.default_rng(0).random((40, 30)).astype("float32"), keras.Model(inp, out))
    >>> sal.map.shape
    (40, 30)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    method = resolve_method(model, method)
    image, path = _load(image_or_path)
    if _on_composite(model, backbone):  # several passes
        _check_fingerprint(model, backbone)
        if method == "occlusion":  # any classifier: the whole pipeline on occluded copies
            from .composite_occlusion import composite_occlusion

            return composite_occlusion(image, path, model, backbone, label=label, batch_size=batch_size)
        from .composite_cam import composite_cam  # a linear head: the exact sum of the passes' CAMs

        return composite_cam(image, path, model, backbone, label=label, method=method)

    members = None if _is_keras_model(model) else _ensemble_members(model, backbone)
    if members is not None:
        return _explain_ensemble(image, path, model, members, method=method, label=label, layer=layer,
                                 faster_n=faster_n, smooth_samples=smooth_samples, smooth_noise=smooth_noise,
                                 batch_size=batch_size)
    target = _make_target(model, backbone=backbone, method=method, label=label, labels=labels, layer=layer,
                          resize=resize)
    return _explain_with(target, image, path, method, faster_n=faster_n, smooth_samples=smooth_samples,
                         smooth_noise=smooth_noise, batch_size=batch_size)


def _make_target(model, *, backbone, method, label, labels=None, layer=None, resize="pad") -> _Target:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    method = "gradcam" if method == "layercam-stages" else resolve_method(model, method)
    if _is_keras_model(model):
        return _cnn_target(model, label=label, labels=labels, method=method, layer=layer, resize=resize)
    if backbone is None:
        raise ValueError("explaining a classifier fitted on embeddings needs backbone=<the Backbone that made them>")
    _check_fingerprint(model, backbone)
    return _pipeline_target(backbone, model, label=label, method=method, layer=layer)


def _explain_with(target: _Target, image, path, method, **kw) -> Saliency:
    x = prepare_image(image, target.input_size, mode=target.resize)
    if method == "occlusion":
        from ._perturbation import occlusion_map

        input_map = occlusion_map(target.proba, x, batch_size=kw.get("batch_size", 32))
    elif method == "layercam-stages":
        input_map = _stages_map(target, x, **kw)
    else:
        input_map = _compute_map(target, x, method, **kw)
    score = float(target.proba(x[None])[0])
    full = _normalise(restore_map(input_map, image.shape, mode=target.resize))
    return Saliency(full, method, target.label, score, input_map, image, path)


def _stages_map(target: _Target, x, **kw) -> np.ndarray:
    """LayerCAM of the three coarsest stage outputs, each scaled to [0, 1], averaged (Jiang et al. 2021)."""
    from dataclasses import replace

    from ._perturbation import stage_layers

    maps = [_normalise(_compute_map(replace(target, layer=name), x, "layercam", **kw))
            for name in stage_layers(target.model)]
    return np.mean(maps, axis=0).astype(np.float32)


def resolve_method(model, method: str = "auto") -> str:
    """The method ``method="auto"`` stands for, by model kind (measured in docs/explain.md).

    Parameters
    ----------
    model : keras.Model or fitted classifier or ModelBundle or ensemble
    method : str, default "auto"
        Returned unchanged unless ``"auto"``.

    Returns
    -------
    str
        ``AUTO_METHODS["cnn"]`` for a Keras CNN with its own head, ``AUTO_METHODS["linear"]`` for a
        linear classifier on embeddings, ``AUTO_METHODS["other"]`` for every other classifier
        and for ensembles.

    Examples
    --------
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> resolve_method(RandomForestClassifier()) == AUTO_METHODS["other"]
    True
    """
    if method != "auto":
        return method
    if _is_keras_model(model):
        return AUTO_METHODS["cnn"]
    from ._heads import linear_head

    est = model
    if hasattr(est, "estimator") and hasattr(est, "backbone_fingerprint"):  # ModelBundle
        est = est.estimator
    if hasattr(est, "best_estimator_"):
        est = est.best_estimator_
    if hasattr(est, "estimators_") and hasattr(est, "labels_"):  # MultiLabelClassifier: one kind for all labels
        est = est.estimators_[0]
    dim = _input_dim(est)
    if dim is not None and hasattr(est, "predict_proba"):
        try:
            if linear_head(est, dim) is not None:
                return AUTO_METHODS["linear"]
        except Exception:  # noqa: BLE001 - any failure of the probe means "not linear"
            pass
    return AUTO_METHODS["other"]


def _input_dim(est):
    for obj in (est, getattr(est, "steps", [[None, None]])[0][1] if hasattr(est, "steps") else None):
        n = getattr(obj, "n_features_in_", None)
        if n is not None:
            return int(n)
    return None


def _check_fingerprint(model, backbone):
    expected = getattr(model, "backbone_fingerprint", None)
    got = getattr(backbone, "fingerprint", None)
    if expected and got and expected != got:
        from ..exceptions import FingerprintMismatchError

        raise FingerprintMismatchError(
            f"the model was fitted on embeddings of backbone {expected[:12]}... but backbone {got[:12]}... was given; "
            "fix: pass the Backbone (same weights, layer, pooling, input size, preprocessing) used at fit time"
        )


def _explain_ensemble(image, path, ensemble, members, *, method, label, layer=None, **kw) -> Saliency:
    """Combine member maps with the ensemble's weights for this image."""
    parts = [_explain_with(_pipeline_target(bb, est, label=label, method=method, layer=layer), image, path, method, **kw)
             for bb, est in members]
    probas = np.array([p.score for p in parts])
    weights = _ensemble_weights(ensemble, probas)
    full = _normalise(np.tensordot(weights, np.stack([p.map for p in parts]), axes=1))
    score = _ensemble_score(ensemble, probas)
    return Saliency(full, method, label, score, parts[int(np.argmax(weights))].input_map, image, path)


def _ensemble_score(ensemble, probas: np.ndarray) -> float:
    """The ensemble's probability for this image from its members' probabilities."""
    from ..learn.stacking import AveragingEnsemble, average_predictions

    if isinstance(ensemble, AveragingEnsemble):
        return float(average_predictions([np.array([p]) for p in probas], method=ensemble.method)[0])
    return float(ensemble.meta_.predict_proba(probas[None, :])[0, -1])


# --------------------------------------------------------------------------- outputs
def save_overlay(saliency: Saliency, path, *, image: np.ndarray | None = None, cmap: str = "jet",
                 alpha: float = 0.4, colorbar: bool = True, title: str | None = None, dpi: int = 100,
                 contour=None, boxes=None, caption: str | None = None) -> Path:
    """Write a PNG with the radiograph, the saliency map as a coloured overlay and a colour bar.

    Parameters
    ----------
    saliency : Saliency
        From :func:`explain`.
    path : str or Path
        Output PNG.
    image : ndarray of shape (H, W), optional
        The radiograph; default ``saliency.image``.
    cmap : str, default "jet"
        Matplotlib colormap of the map.
    alpha : float, default 0.4
        Opacity of the map.
    colorbar : bool, default True
    title : str, optional
        Default: method, label (when named) and score, e.g. ``"gradcam | opacity | p=0.91"``.
    dpi : int, default 100
    contour : ndarray of shape (H, W), bool, optional
        A region (lesion mask) to outline in white.
    boxes : ndarray of shape (n_boxes, 4) or DataFrame, optional
        Rectangles ``x, y, w, h`` in the image's pixels (a radiologist's regions) drawn in white.
    caption : str, optional
        A line of text under the image (for example the pointing-game result).

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> s = Saliency(np.ones((8, 8), np.float32), "gradcam", "x", 0.5, np.ones((8, 8)), np.zeros((8, 8)))
    >>> p = save_overlay(s, os.path.join(tempfile.mkdtemp(), "o.png"))
    >>> p.suffix
    '.png'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = saliency.image if image is None else image
    if img is None:
        raise ValueError("no image to draw under the map: pass image=")
    fig = Figure(figsize=(5.2, 4.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    im = ax.imshow(saliency.map, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    if contour is not None:
        ax.contour(np.asarray(contour, float), levels=[0.5], colors="white", linewidths=1)
    if boxes is not None:
        from matplotlib.patches import Rectangle

        arr = boxes[["x", "y", "w", "h"]].to_numpy(float) if hasattr(boxes, "columns") else np.asarray(boxes, float)
        for x, y, w, h in arr.reshape(-1, 4):
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="white", linewidth=1.2))
    ax.set_axis_off()
    if title is None:  # a single-label model explains an unnamed label: no "None" in the title
        title = " | ".join([str(x) for x in (saliency.method, saliency.label) if x is not None]
                           + [f"p={saliency.score:.2f}"])
    ax.set_title(title, fontsize=9)
    if caption:
        ax.text(0.5, -0.02, caption, transform=ax.transAxes, ha="center", va="top", fontsize=8)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="saliency")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def save_saliency_h5(path, saliencies: Sequence[Saliency], *, ids: Sequence[str] | None = None) -> Path:
    """Store maps in a self-describing HDF5 file (one group per image).

    Parameters
    ----------
    path : str or Path
    saliencies : sequence of Saliency
    ids : sequence of str, optional
        Group names; default the image paths or running numbers.

    Returns
    -------
    Path
    """
    import h5py

    from .._version import __version__

    ids = list(ids) if ids is not None else [s.path or str(i) for i, s in enumerate(saliencies)]
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": "cxr_embed.saliency.maps", "format_version": 1, "library_version": __version__})
        for key, s in zip(ids, saliencies):
            g = f.create_group(str(key).replace("/", "|"))
            g.create_dataset("map", data=s.map, compression="gzip")
            g.create_dataset("input_map", data=s.input_map, compression="gzip")
            g.attrs.update({"id": str(key), "method": s.method, "label": str(s.label), "score": s.score,
                            "path": s.path or ""})
    return Path(path)


def load_saliency_h5(path) -> dict:
    """Read maps written by :func:`save_saliency_h5`.

    Returns
    -------
    dict of id -> Saliency (without the image)
    """
    import h5py

    from ..exceptions import StoreError

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "cxr_embed.saliency.maps":
            raise StoreError(f"{path}: not a cxr_embed saliency file (format attribute {f.attrs.get('format')!r})")
        return {g.attrs["id"]: Saliency(g["map"][()], g.attrs["method"], g.attrs["label"], float(g.attrs["score"]),
                                        g["input_map"][()], None, g.attrs["path"] or None) for g in f.values()}


def explain_manifest(manifest, model, out_dir, *, backbone=None, method: str = "auto", label=None,
                     h5: bool = True, limit: int | None = None, **kwargs):
    """Explain every image of a manifest: one overlay PNG per image (and optionally one HDF5 file).

    Parameters
    ----------
    manifest : DataFrame
        With ``image_id`` and ``path`` (from :func:`cxr_embed.load_manifest`).
    model, backbone, method, label
        As in :func:`explain`.
    out_dir : str or Path
        Created if needed.
    h5 : bool, default True
        Also write ``saliency.h5`` with every map.
    limit : int, optional
        Only the first ``limit`` rows.
    **kwargs
        Passed to :func:`explain`.

    Returns
    -------
    DataFrame
        ``image_id``, ``path``, ``overlay``, ``score``, ``error`` (a failed image is listed, not fatal).
    """
    import pandas as pd

    from ..exceptions import ImageReadError

    if limit is not None:
        require_int(limit, "limit", 1, also=" or None (every row)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, maps, ids = [], [], []
    df = manifest if limit is None else manifest.head(limit)
    opts = {k: kwargs.pop(k) for k in ("faster_n", "smooth_samples", "smooth_noise", "batch_size") if k in kwargs}
    opts = {"faster_n": 32, "smooth_samples": 20, "smooth_noise": 0.2, "batch_size": 32, **opts}
    method = resolve_method(model, method)
    ensemble = None if _is_keras_model(model) else _ensemble_members(model, backbone)
    target = None if ensemble or _on_composite(model, backbone) else \
        _make_target(model, backbone=backbone, method=method, label=label, **kwargs)
    for image_id, path in zip(df["image_id"], df["path"]):
        safe = str(image_id).replace("/", "_").replace("\\", "_")
        try:
            if target is None:
                s = explain(path, model, backbone=backbone, method=method, label=label, **opts, **kwargs)
            else:
                image, _ = _load(path)
                s = _explain_with(target, image, str(path), method, **opts)
        except ImageReadError as e:
            logger.warning("skipping %s: %s", path, e)
            rows.append({"image_id": image_id, "path": path, "overlay": None, "score": np.nan, "error": str(e)})
            continue
        png = save_overlay(s, out / f"{safe}_{method}.png")
        rows.append({"image_id": image_id, "path": path, "overlay": str(png), "score": s.score, "error": None})
        maps.append(s)
        ids.append(str(image_id))
    if h5 and maps:
        save_saliency_h5(out / "saliency.h5", maps, ids=ids)
    if not rows:
        logger.warning("explain_manifest: no image to explain (%d manifest rows, limit %s)", len(manifest), limit)
    return pd.DataFrame(rows, columns=["image_id", "path", "overlay", "score", "error"])


class _Explainer:
    """``explain`` with the explanation model built once: ``explainer(image, path) -> Saliency``.

    ``method`` holds the resolved method; ``deletion(image, saliency, rng)`` measures the deletion AUC
    of the map and of one smooth random map in the model input's coordinates (NaN for ensembles).
    """

    def __init__(self, model, *, backbone=None, method="auto", label=None, labels=None, layer=None, resize="pad",
                 faster_n=32, smooth_samples=20, smooth_noise=0.2, batch_size=32):
        self.model, self.backbone, self.label = model, backbone, label
        self.method = resolve_method(model, method)
        self.opts = {"faster_n": faster_n, "smooth_samples": smooth_samples, "smooth_noise": smooth_noise,
                     "batch_size": batch_size}
        self.layer = layer
        members = None if _is_keras_model(model) else _ensemble_members(model, backbone)
        self.composite = _on_composite(model, backbone)
        self.target = None if members or self.composite else _make_target(
            model, backbone=backbone, method=self.method, label=label, labels=labels, layer=layer, resize=resize)

    def __call__(self, image, path=None) -> Saliency:
        if self.target is None:
            return explain(image, self.model, backbone=self.backbone, method=self.method, label=self.label,
                           layer=self.layer, **self.opts)
        return _explain_with(self.target, image, path, self.method, **self.opts)

    def deletion(self, image, saliency: Saliency, rng, *, steps: int = 20) -> dict:
        from .faithfulness import deletion_auc, random_saliency

        if self.composite:  # on the image the passes are run on, through every pass
            from .composite_occlusion import deletion_inputs

            x, m, proba = deletion_inputs(image, saliency, self.model, self.backbone, label=self.label)
        elif self.target is None or saliency.input_map is None:
            return {"deletion_auc": np.nan, "random_deletion_auc": np.nan}
        else:
            x = prepare_image(image, self.target.input_size, mode=self.target.resize)
            m, proba = saliency.input_map, self.target.proba
        h, w = x.shape[:2]
        rand = random_saliency((h, w), smooth=max(h, w) / 16.0, random_state=rng)
        kw = {"steps": steps, "baseline": 0.0}
        return {"deletion_auc": deletion_auc(x, m, proba, **kw), "random_deletion_auc": deletion_auc(x, rand, proba, **kw)}
