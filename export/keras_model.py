"""The Keras model as the exporters see it: probabilities out (a softmax added to a logits model), in batches,
and the SavedModel the converters (TFLite, ONNX, ...) read."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from efficientnet_tf.models.fake_quant import PROBABILITY_RANGE, ActivationQuantizer
from efficientnet_tf.export.checks import model_image_size, model_num_classes

# Signature of the SavedModel that the converters read.
SOURCE_SIGNATURE = "serving_default"
SOURCE_INPUT = "images"


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model already ends in a softmax (True) or returns logits (False)."""
    if model.layers and isinstance(model.layers[-1], ActivationQuantizer):
        # A quantisation-aware model: its softmax is rounded to the fixed 1/256 steps, its logits are not.
        return model.layers[-1].fixed_range == PROBABILITY_RANGE and "softmax" in model.layers[-1].name
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    name = getattr(activation, "__name__", "")
    if name == "softmax":
        return True
    if name == "linear":
        return False
    # Unknown head: look at what it produces on a few inputs.
    size = model_image_size(model) or 32
    probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    out = np.asarray(model(probe, training=False), dtype=np.float64)
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def probabilities_fn(model: keras.Model, probabilities: bool):
    """A function images -> float32 class probabilities (softmax added when the model gives logits)."""

    def fn(images: tf.Tensor) -> tf.Tensor:
        out = tf.cast(model(images, training=False), tf.float32)
        return out if probabilities else tf.nn.softmax(out, axis=-1)

    return fn


def keras_probabilities(
    model: keras.Model, images: np.ndarray, probabilities: bool, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities of the Keras model on float 0..255 images, in batches."""
    fn = tf.function(probabilities_fn(model, probabilities), reduce_retracing=True)
    chunks = [
        fn(tf.constant(images[i : i + batch_size], tf.float32)).numpy() for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, model_num_classes(model)), np.float32)


def write_conversion_source(
    model: keras.Model, directory: str, *, image_size: int, probabilities: bool, batch: int | None = 1
) -> str:
    """Write the SavedModel a converter reads: float images [batch, H, W, 3] -> probabilities.

    TFLite takes one image per call (batch 1); ONNX keeps the batch dynamic (None).

    The converter does not capture Keras 3 variables from a concrete function (the weights come out
    missing), but it freezes them correctly when reading a SavedModel, so we go through one.
    """
    predict = probabilities_fn(model, probabilities)
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        SOURCE_SIGNATURE,
        lambda images: {"probabilities": predict(images)},
        input_signature=[tf.TensorSpec([batch, image_size, image_size, 3], tf.float32, name=SOURCE_INPUT)],
    )
    archive.write_out(directory, verbose=False)
    return directory

