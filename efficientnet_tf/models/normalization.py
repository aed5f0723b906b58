"""The input normalisation inside a model: its `normalization` layer, set to and read as a named one."""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling


def fix_normalization(layer: layers.Normalization, mean, std) -> None:
    """Fix a keras Normalization layer to (x/255 - mean/255) / (std/255), as float constants."""
    layer.adapt_mean.assign([m / 255.0 for m in mean])
    layer.adapt_variance.assign([(s / 255.0) ** 2 for s in std])
    layer.finalize_state()


def normalization_layer(model: keras.Model) -> layers.Normalization:
    """The model's `normalization` layer (or its first Normalization layer); a one-line error when it has none."""
    try:
        layer = model.get_layer("normalization")
    except ValueError:
        layer = next((x for x in model.layers if isinstance(x, layers.Normalization)), None)
    if not isinstance(layer, layers.Normalization):
        raise UserError(f"model {model.name} has no Normalization layer to set the input normalisation of")
    return layer


def set_normalization(model: keras.Model, name: str) -> None:
    """Set the input normalisation inside `model` to a named one of `scaling.NORMALIZATIONS`.

    The mean / variance are the Normalization layer's variables, so .keras files, checkpoints and
    SavedModel exports made afterwards carry them. Compiled predict / train / eval functions are
    dropped, since they hold the previous values as constants.
    """
    mean, std = scaling.normalization_values(name)
    fix_normalization(normalization_layer(model), mean, std)
    for attr in ("predict_function", "train_function", "test_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def normalization_of(model: keras.Model) -> str | None:
    """The name of the input normalisation `model` holds now, or None when it is none of the named ones."""
    layer = normalization_layer(model)
    mean = np.asarray(layer.adapt_mean).reshape(-1) * 255.0
    std = np.sqrt(np.asarray(layer.adapt_variance).reshape(-1)) * 255.0
    for name, (m, s) in scaling.NORMALIZATIONS.items():
        if mean.shape == (len(m),) and np.allclose(mean, m, atol=1e-3) and np.allclose(std, s, atol=1e-3):
            return name
    return None


def refresh_normalization(model: keras.Model) -> None:
    """Recompute the constants Keras derives from each Normalization layer's mean / variance variables, after
    those variables were assigned behind its back (a checkpoint restore)."""
    for layer in model.layers:
        if isinstance(layer, layers.Normalization):
            layer.finalize_state()
