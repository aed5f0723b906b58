"""TFLite, float32: the model as it is, for any TFLite runtime (LiteRT, MediaPipe Tasks, Android)."""

from __future__ import annotations

import tensorflow as tf
from efficientnet_tf.export.formats.base import ExportJob, max_prob_diff, min_agreement
from efficientnet_tf.export.formats.litert import tflite_format


def configure(converter: tf.lite.TFLiteConverter, job: ExportJob) -> None:
    """No optimisation: float32 weights and activations."""


# LiteRT computes what Keras computes; MediaPipe is fed uint8 frames, so its top-1 class is what must hold.
FORMAT = tflite_format("tflite_float32", "TFLite float32 (LiteRT, MediaPipe, Android)", configure,
                       max_prob_diff(1e-4), mediapipe=min_agreement(0.99))
