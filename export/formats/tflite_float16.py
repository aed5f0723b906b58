"""TFLite with float16 weights: half the size, computed in float32 on CPUs (float16 on GPU delegates)."""

from __future__ import annotations

import tensorflow as tf
from efficientnet_tf.export.formats.base import ExportJob, min_agreement
from efficientnet_tf.export.formats.litert import tflite_format


def configure(converter: tf.lite.TFLiteConverter, job: ExportJob) -> None:
    """Weights stored in float16."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


FORMAT = tflite_format("tflite_float16", "TFLite with float16 weights", configure, min_agreement(0.99))
