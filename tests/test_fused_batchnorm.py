"""FusedBatchNormalization in training mode against keras.layers.BatchNormalization: outputs, input and
parameter gradients and the moving statistics after three calls, for small and large batch x spatial
counts (where the variance correction shows) in float32 and float16; and a whole model against
keras.applications on logits, at inference and in training mode.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as et
from efficientnet_tf.models.layers import BN_EPSILON, BN_MOMENTUM, FusedBatchNormalization
from efficientnet_tf.models.weights import load_pretrained

CHANNELS = 5


def _pair(dtype: str) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """A fused layer and a Keras one with the same (random) gamma, beta and moving statistics."""
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, CHANNELS), rng.normal(0, 0.5, CHANNELS), rng.normal(0, 0.5, CHANNELS),
               rng.uniform(0.5, 2.0, CHANNELS)]
    policy = "mixed_float16" if dtype == "float16" else "float32"
    layers = []
    for cls in (FusedBatchNormalization, keras.layers.BatchNormalization):
        layer = cls(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=policy)
        layer.build((None, None, None, CHANNELS))
        layer.set_weights([w.astype(np.float32) for w in weights])
        layers.append(layer)
    return layers[0], layers[1]


def _run(layer: keras.layers.Layer, inputs: list[np.ndarray], dtype: str, upstream: np.ndarray):
    """Three training-mode calls; the last one's output and its gradients (input, gamma, beta)."""
    for batch in inputs[:-1]:
        layer(tf.constant(batch, dtype), training=True)
    x = tf.constant(inputs[-1], dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    return (np.asarray(tf.cast(y, tf.float32)), np.asarray(tf.cast(dx, tf.float32)), np.asarray(dgamma),
            np.asarray(dbeta), np.asarray(layer.moving_mean.value), np.asarray(layer.moving_variance.value), y.dtype)


# (batch, height, width): 2 and 3 values per channel, where n/(n-1) is 2 and 1.5, up to 1024.
SHAPES = [(2, 1, 1), (1, 1, 3), (3, 2, 2), (4, 16, 16)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_training_mode_matches_keras_batch_norm(shape: tuple[int, int, int], dtype: str) -> None:
    rng = np.random.default_rng(sum(shape))
    inputs = [rng.normal(1.0 + k, 2.0 + k, (*shape, CHANNELS)).astype(np.float32) for k in range(3)]
    upstream = rng.normal(0, 1, (*shape, CHANNELS)).astype(np.float32)
    fused, reference = _pair(dtype)
    assert fused._fusable(tf.zeros((1, 1, 1, CHANNELS), dtype), None)
    got = _run(fused, inputs, dtype, upstream)
    expected = _run(reference, inputs, dtype, upstream)
    assert got[-1] == expected[-1] == tf.as_dtype(dtype)
    tolerance = {"float32": 1e-5, "float16": 3e-3}[dtype]
    names = ["output", "input gradient", "gamma gradient", "beta gradient", "moving mean", "moving variance"]
    for name, a, b in zip(names, got[:-1], expected[:-1]):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * scale, err_msg=f"{name} {shape} {dtype}")


def test_moving_variance_averages_the_biased_batch_variance() -> None:
    """Two values per channel: the biased variance is half the Bessel-corrected one, so a missing or
    doubled correction moves the moving variance by a whole factor; and the momentum weighs the old value
    (moving·m + batch·(1 − m)), not the batch's."""
    fused = FusedBatchNormalization(momentum=0.75, epsilon=BN_EPSILON)
    fused.build((None, 1, 1, 1))
    fused(tf.constant([[[[0.0]]], [[[2.0]]]]), training=True)
    # moving variance = 0.75·1 + 0.25·var, biased var of {0, 2} = 1 (the corrected one, 2, would give 1.25);
    # mean = 0.75·0 + 0.25·1 (the momentum the other way round would give 0.75).
    assert float(np.asarray(fused.moving_variance.value)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(np.asarray(fused.moving_mean.value)[0]) == pytest.approx(0.25, abs=1e-6)


def _without_randomness(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) or hasattr(layer, "rate"):
            layer.rate = 0.0


@pytest.mark.parametrize("training", [False, True])
def test_model_logits_match_keras_applications(training: bool) -> None:
    """B0 with keras.applications' weights: logits (not probabilities, which a 1000-way random head makes all
    tiny) agree, at inference and in training mode (batch statistics in every batch norm)."""
    resolution = 64
    reference = keras.applications.EfficientNetB0(weights=None, input_shape=(resolution, resolution, 3),
                                                  classifier_activation=None)
    ours = et.build_model("efficientnet-b0", resolution=resolution, classifier_activation=None)
    rng = np.random.default_rng(3)
    for layer in reference.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.get_weights():
            continue
        layer.set_weights([
            rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1
            else (rng.normal(0, 1, w.shape) * np.sqrt(2.0 / max(1, np.prod(w.shape[:-1])))).astype(w.dtype)
            for w in layer.get_weights()])
    _without_randomness(reference)
    # Each image its own colour and brightness gradient (i.i.d. noise images all look alike after pooling).
    ramp = np.linspace(0, 1, resolution, dtype=np.float32)[None, :, None, None]
    colour = rng.uniform(0, 255, (4, 1, 1, 3)).astype(np.float32)
    images = tf.constant(np.clip(colour * (0.5 + ramp) + rng.normal(0, 8, (4, resolution, resolution, 3)), 0, 255)
                         .astype(np.float32))
    # Moving statistics of these images, as a trained network has them for its data: with arbitrary ones the
    # inference outputs hardly depend on the input.
    norms = [layer for layer in reference.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    reference(images, training=True)
    for layer in norms:
        layer.momentum = 0.99
    load_pretrained(ours, reference)
    _without_randomness(ours)
    expected = np.asarray(reference(images, training=training))
    got = np.asarray(ours(images, training=training))
    # Logits that differ between images (not only between classes), so that the comparison means something.
    assert np.std(expected, axis=0).mean() > 0.1, np.std(expected, axis=0).mean()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
