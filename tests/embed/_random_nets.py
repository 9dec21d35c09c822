"""Random-weight Keras applications whose features are O(1), for comparisons that can fail."""
from __future__ import annotations

import numpy as np


def random_mobilenet_v2(seed: int = 0, size: int = 32):
    """MobileNetV2 (no top) with random weights and batch-norm statistics set from one batch.

    Freshly initialised batch norms shrink its features to about 1e-11, where any absolute tolerance
    holds for any input (wrong weights, another preparation); with statistics from a batch of inputs
    in [-1, 1] (its preprocessed range) the features are O(1) and comparisons of them mean something.
    """
    import keras

    keras.utils.set_random_seed(seed)
    net = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # the next training-mode call sets the statistics to the batch's
    net(np.random.default_rng(seed).uniform(-1, 1, (32, size, size, 3)).astype("float32"), training=True)
    return net
