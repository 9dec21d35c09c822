"""Rebuild fitted classifier heads as Keras layers on a backbone's own graph.

Saliency methods need a Keras model from image to score. For embeddings + a linear
classifier, the classifier is an affine map followed by a sigmoid (or, for sigmoid-calibrated
linear SVMs, a mean of sigmoids of affine maps); it is recovered *numerically* by probing the
fitted scikit-learn object on the origin and the unit vectors, then verified on random points,
so any linear pipeline (scaler, PCA, logistic regression, linear SVM, SGD ...) works without a
table of special cases. The head becomes a ``Dense`` layer applied to the backbone's output
tensor, in the same graph (tf-keras-vis CAMs fail on nested models).

Non-differentiable classifiers (random forest, XGBoost, kNN) are wrapped in a layer that calls
the fitted object through ``tf.numpy_function``: gradient-free Score-CAM can run through it.
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit

__all__: list[str] = []  # private module

_EPS = 1e-7


def positive_proba(estimator, X: np.ndarray) -> np.ndarray:
    """Probability of the positive class, shape (n,)."""
    proba = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    return proba[:, -1] if proba.ndim == 2 else proba


def _probe_affine(fn, dim: int, rng) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (W (dim, k), b (k,)) with fn(x) == x @ W + b, or None when fn is not affine."""
    probes = np.vstack([np.zeros((1, dim)), np.eye(dim)])
    out = np.asarray(fn(probes), dtype=np.float64).reshape(dim + 1, -1)
    b = out[0]
    W = out[1:] - b
    R = rng.normal(size=(6, dim))
    actual = np.asarray(fn(R), dtype=np.float64).reshape(6, -1)
    pred = R @ W + b
    if not np.all(np.isfinite(actual)) or not np.allclose(actual, pred, rtol=1e-4, atol=1e-4 * (1 + np.abs(actual).max())):
        return None
    return W, b


def _logit(p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _components(est, dim: int, rng) -> list[tuple[np.ndarray, float]] | None:
    """Affine logits (w, b) whose mean sigmoid is the estimator's positive probability."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline

    if isinstance(est, Pipeline):
        if len(est.steps) > 1:
            pre = est[:-1]
            aff = _probe_affine(pre.transform, dim, rng)
            if aff is None:
                return None
            A, c = aff
            inner = _components(est[-1], A.shape[1], rng)
            if inner is None:
                return None
            return [(A @ w, float(c @ w + b)) for w, b in inner]
        return _components(est[-1], dim, rng)
    if isinstance(est, CalibratedClassifierCV):
        comps = []
        for cc in est.calibrated_classifiers_:
            cal = cc.calibrators[0]
            if not (hasattr(cal, "a_") and hasattr(cal, "b_")):
                return None  # isotonic calibration is a step function
            inner = _components_from_fn(cc.estimator.decision_function, dim, rng)
            if inner is None:
                return None
            (w, b), a, bb = inner[0], float(cal.a_), float(cal.b_)
            comps.append((-a * w, -(a * b + bb)))  # sklearn: p = 1 / (1 + exp(a f + b))
        return comps
    if hasattr(est, "decision_function") and len(getattr(est, "classes_", [0, 1])) == 2:
        return _components_from_fn(est.decision_function, dim, rng)
    if hasattr(est, "predict_proba"):
        return _components_from_fn(lambda X: _logit(positive_proba(est, X)), dim, rng)
    return None


def _components_from_fn(fn, dim, rng):
    aff = _probe_affine(fn, dim, rng)
    if aff is None or aff[0].shape[1] != 1:
        return None
    return [(aff[0][:, 0], float(aff[1][0]))]


def linear_head(estimator, dim: int, *, random_state=0):
    """Affine components of a binary classifier on ``dim``-dimensional embeddings.

    Parameters
    ----------
    estimator : fitted scikit-learn classifier (binary)
    dim : int
        Embedding dimension.
    random_state : int, default 0
        Seed of the verification points.

    Returns
    -------
    (W, b) : ndarray of shape (dim, k) and ndarray of shape (k,), or None
        The positive probability is ``mean(sigmoid(x @ W + b))``; None when the classifier
        is not (a mean of sigmoids of) affine maps.
    """
    rng = np.random.default_rng(random_state)
    comps = _components(estimator, dim, rng)
    if not comps:
        return None
    W = np.stack([w for w, _ in comps], axis=1)
    b = np.array([b for _, b in comps])
    R = rng.normal(size=(8, dim))
    expected = positive_proba(estimator, R)
    got = expit(R @ W + b).mean(axis=1)
    if not np.allclose(expected, got, atol=1e-4):
        return None
    return W.astype(np.float32), b.astype(np.float32)


def keras_linear_head(features, W: np.ndarray, b: np.ndarray, name: str = "cxr_embed_linear_head"):
    """Apply the affine head to a Keras tensor; returns the mean logit, shape (None, 1)."""
    import keras

    dense = keras.layers.Dense(W.shape[1], name=name)
    z = dense(features)
    dense.set_weights([W, b])
    if W.shape[1] > 1:
        z = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=1, keepdims=True), name=name + "_mean")(z)
    return z


def keras_numpy_head(features, proba_fn, name: str = "cxr_embed_numpy_head"):
    """Wrap a numpy probability function as a Keras layer emitting [log(1-p), log(p)], shape (None, 2).

    tf-keras-vis' Score-CAM applies a softmax to the model output before scoring; log-probabilities
    make that softmax return ``[1 - p, p]`` exactly.
    """
    import keras
    import tensorflow as tf

    class _NumpyProba(keras.layers.Layer):
        def call(self, x):
            p = tf.numpy_function(lambda a: np.asarray(proba_fn(a), dtype=np.float32).reshape(-1), [x], tf.float32)
            p = tf.clip_by_value(tf.reshape(p, (-1, 1)), _EPS, 1 - _EPS)
            return tf.concat([tf.math.log(1 - p), tf.math.log(p)], axis=1)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], 2)

    return _NumpyProba(name=name)(features)


def keras_two_class_logprob(prob, name: str = "cxr_embed_two_class"):
    """[log(1-p), log(p)] from a Keras probability tensor of shape (None, 1)."""
    import keras

    def f(p):
        p = keras.ops.clip(p, _EPS, 1 - _EPS)
        return keras.ops.concatenate([keras.ops.log(1 - p), keras.ops.log(p)], axis=1)

    return keras.layers.Lambda(f, name=name)(prob)
