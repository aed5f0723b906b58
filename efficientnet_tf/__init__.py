"""EfficientNet for TensorFlow / Keras 3: compound-scaled models, training, data pipelines and export.

    import efficientnet_tf as et
    model = et.build_model("efficientnet-b3", weights=None, classes=1000)

Subpackages: `efficientnet_tf.hparams` (configuration), `efficientnet_tf.data` (input pipelines),
`efficientnet_tf.training` (the distributed training loop), `efficientnet_tf.export` (SavedModel /
TFLite), `efficientnet_tf.app` (train / evaluate / export / predict from a config) and
`efficientnet_tf.cli` (the command line). The model API below is loaded on first use, so that the
command line can check its flags before TensorFlow starts.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "UserError": "efficientnet_tf.errors",
    "EfficientNetB0": "efficientnet_tf.model",
    "EfficientNetB1": "efficientnet_tf.model",
    "EfficientNetB2": "efficientnet_tf.model",
    "EfficientNetB3": "efficientnet_tf.model",
    "EfficientNetB4": "efficientnet_tf.model",
    "EfficientNetB5": "efficientnet_tf.model",
    "EfficientNetB6": "efficientnet_tf.model",
    "EfficientNetB7": "efficientnet_tf.model",
    "build_backbone": "efficientnet_tf.model",
    "build_model": "efficientnet_tf.model",
    "endpoint_layer_names": "efficientnet_tf.model",
    "load_pretrained": "efficientnet_tf.weights",
    "set_normalization": "efficientnet_tf.model",
    "normalization_of": "efficientnet_tf.model",
    "NORMALIZATIONS": "efficientnet_tf.scaling",
    "fetch_weights": "efficientnet_tf.pretrained",
    "normalization_for": "efficientnet_tf.pretrained",
    "load_torch_weights": "efficientnet_tf.torch_weights",
    "VARIANT_NAMES": "efficientnet_tf.scaling",
    "Variant": "efficientnet_tf.scaling",
    "canonical_name": "efficientnet_tf.scaling",
    "compound_variant": "efficientnet_tf.scaling",
    "get_variant": "efficientnet_tf.scaling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'efficientnet_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
