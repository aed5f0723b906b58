"""TFLite with dynamic-range quantisation: 8-bit weights, float activations, a quarter of the float size."""

from __future__ import annotations

import tensorflow as tf
from efficientnet_tf.export.formats.base import EIGHT_BIT_WEIGHTS, ExportJob
from efficientnet_tf.export.formats.litert import tflite_format


def configure(converter: tf.lite.TFLiteConverter, job: ExportJob) -> None:
    """The converter's default optimisation without calibration data: weights quantised to 8 bits."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


FORMAT = tflite_format("tflite_dynamic", "TFLite dynamic-range (8-bit weights, float activations)", configure,
                       EIGHT_BIT_WEIGHTS)
