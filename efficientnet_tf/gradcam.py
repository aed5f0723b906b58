"""Grad-CAM (Selvaraju et al., 2017): where in an image the evidence for a class lies, from the
last convolutional feature map of a Keras classifier.

For a class c with score y_c (the logit, or the probability when the model ends in a softmax) and
the feature map A [h, w, k] of the last layer with a spatial output, the heat map is
ReLU(sum_k alpha_k A_k) with alpha_k the spatial mean of dy_c / dA_k, upsampled to the image and
scaled to 0..1. Needs gradients, so only Keras models (a .keras file, a training run) have it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.errors import UserError


def last_feature_layer(model: keras.Model) -> keras.layers.Layer:
    """The last layer whose output is a 4-D feature map with more than one spatial position."""
    for layer in reversed(model.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and (shape[1] is None or shape[1] > 1 or shape[2] > 1):
            return layer
    raise UserError(f"model {model.name} has no convolutional feature map to explain")


class GradCam:
    """Heat maps for a functional Keras classifier (the layer is found once)."""

    def __init__(self, model: keras.Model, layer_name: str | None = None):
        layer = model.get_layer(layer_name) if layer_name else last_feature_layer(model)
        self.layer_name = layer.name
        self._model = keras.Model(model.inputs, [layer.output, model.output])
        # A softmax head saturates: explain log p_c (the logit minus a constant shared by all classes).
        activation = getattr(model.layers[-1], "activation", None)
        self._log_of_output = getattr(activation, "__name__", "") == "softmax"

    @tf.function(reduce_retracing=True)
    def _maps(self, images: tf.Tensor, classes: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            features, outputs = self._model(images, training=False)
            features = tf.cast(features, tf.float32)
            outputs = tf.cast(outputs, tf.float32)
            chosen = tf.argmax(outputs, axis=-1, output_type=tf.int32) if classes is None else classes
            score = tf.gather(outputs, chosen, axis=1, batch_dims=1)
            if self._log_of_output:
                score = tf.math.log(score + 1e-12)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))
        return cam, chosen

    def heatmaps(self, images: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """0..1 heat maps [N, H, W] at the images' resolution for `classes` (default: the top-1 class)."""
        images = tf.convert_to_tensor(np.asarray(images, np.float32))
        if len(images) == 0:
            return np.zeros((0, *images.shape[1:3]), np.float32)
        chosen = None if classes is None else tf.constant(np.asarray(classes, np.int32).reshape(-1))
        cam, _ = self._maps(images, chosen)
        cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        return (cam / tf.maximum(peak, 1e-12)).numpy()
