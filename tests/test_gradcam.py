"""Grad-CAM: the heat map points at the evidence."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from efficientnet_tf.errors import UserError
from efficientnet_tf.gradcam import GradCam, last_feature_layer

SIZE = 32
SQUARE = (slice(20, 28), slice(4, 12))  # rows, columns of the bright square


def _square_detector(softmax: bool) -> keras.Model:
    """Class 1 = "there is something bright": a brightness feature map (16 x 16), pooled, then a dense
    layer with fixed weights (+1 for class 1, -1 for class 0)."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(1, 1, use_bias=False, name="brightness")(inputs)
    x = keras.layers.ReLU()(x)
    x = keras.layers.AveragePooling2D(2, name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax" if softmax else None, name="head")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("brightness").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    model.get_layer("head").set_weights([np.array([[-0.05, 0.05]], np.float32), np.zeros(2, np.float32)])
    return model


@pytest.mark.parametrize("softmax", [False, True])
def test_heat_map_peaks_inside_the_bright_square(softmax):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 40, (SIZE, SIZE, 3)).astype(np.float32)  # dim noise everywhere
    image[SQUARE] = 250.0
    model = _square_detector(softmax)
    assert model.predict(image[None], verbose=0).argmax() == 1
    cam = GradCam(model)
    assert cam.layer_name == "features"
    heatmap = cam.heatmaps(image[None])[0]
    assert heatmap.shape == (SIZE, SIZE)
    assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    # Most of the heat lies on the square (a quarter of a 16 x 16 cell of blur at its border).
    inside = heatmap[SQUARE].mean()
    outside = np.delete(heatmap.reshape(-1), np.ravel_multi_index(np.mgrid[SQUARE].reshape(2, -1), heatmap.shape))
    assert inside > 4 * outside.mean()


def test_models_without_a_feature_map_are_refused():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(UserError):
        last_feature_layer(model)
