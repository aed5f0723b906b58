"""Helpers shared by the weight-import tests: random non-trivial weights and random 0-255 images."""

from __future__ import annotations

import keras
import numpy as np


def randomize(model: keras.Model, seed: int) -> None:
    """Give every layer but the input normalisation random weights (positive for 1-D ones, so batch-norm
    variances stay valid), so that a wrong mapping cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.weights:
            continue
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1
                           else rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in layer.get_weights()])


def images(size: int = 32, n: int = 2) -> np.ndarray:
    """n random float32 RGB images in 0..255."""
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype("float32")
