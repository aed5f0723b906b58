"""EfficientNet for TensorFlow / Keras 3: compound-scaled models, counting and weight import."""

from efficientnet_tf.errors import UserError
from efficientnet_tf.model import (
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
    build_backbone,
    build_model,
    endpoint_layer_names,
)
from efficientnet_tf.scaling import VARIANT_NAMES, Variant, compound_variant, get_variant

__version__ = "0.1.0"

__all__ = [
    "VARIANT_NAMES",
    "EfficientNetB0",
    "EfficientNetB1",
    "EfficientNetB2",
    "EfficientNetB3",
    "EfficientNetB4",
    "EfficientNetB5",
    "EfficientNetB6",
    "EfficientNetB7",
    "UserError",
    "Variant",
    "build_backbone",
    "build_model",
    "compound_variant",
    "endpoint_layer_names",
    "get_variant",
]
