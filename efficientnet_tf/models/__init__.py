"""The model library: everything about the network and nothing about training it.

    scaling        the families and their block tables (V1, Lite, V2), the variant table (architecture facts),
                   compound scaling and rounding, named input normalisations; pure Python, read by the
                   configuration without TensorFlow
    layers         Keras layers: the block kinds (MBConv, Fused-MBConv) with squeeze-excite, drop-connect, fused
                   batch norm, initialisers
    normalization  the input normalisation inside a model, set and read by name
    weights/       weight import: published weights as data, cache / mirror / download, readers for
                   Keras, reference TF1 and PyTorch files, assignment by layer name, one ImportReport
    builder        `build_model` / `build_backbone` (keras.applications' API shape and layer names)
    counting       parameters, multiply-adds and activations; counted networks for the scaling study
    ema            exponential moving average of weights and batch-norm statistics

Imports run one way: scaling, layers, normalization <- weights <- builder <- counting. The names below
load on first use, so `efficientnet_tf.models.scaling` is read without starting TensorFlow.
"""

from __future__ import annotations

from efficientnet_tf.lazy import lazy_names

LAZY_NAMES = {  # public name -> module: the model API, also handed on by efficientnet_tf itself
    "build_model": "efficientnet_tf.models.builder",
    **{f"EfficientNetB{i}": "efficientnet_tf.models.builder" for i in range(8)},  # keras.applications-style
    **{f"EfficientNetV2{v}": "efficientnet_tf.models.builder" for v in ("B0", "B1", "B2", "B3", "S", "M", "L", "XL")},
    "build_backbone": "efficientnet_tf.models.builder",
    "endpoint_layer_names": "efficientnet_tf.models.builder",
    "load_pretrained": "efficientnet_tf.models.weights.load",
    "fetch_weights": "efficientnet_tf.models.weights.fetch",
    "normalization_for": "efficientnet_tf.models.weights.published",
    "load_torch_weights": "efficientnet_tf.models.weights.torch_names",
    "ImportReport": "efficientnet_tf.models.weights.import_report",
    "set_normalization": "efficientnet_tf.models.normalization",
    "normalization_of": "efficientnet_tf.models.normalization",
    "compound_variant": "efficientnet_tf.models.scaling",
    "get_variant": "efficientnet_tf.models.scaling",
    "canonical_name": "efficientnet_tf.models.scaling",
    "Variant": "efficientnet_tf.models.scaling",
    "VARIANT_NAMES": "efficientnet_tf.models.scaling",
    "NORMALIZATIONS": "efficientnet_tf.models.scaling",
}

__all__ = sorted(LAZY_NAMES)

__getattr__, __dir__ = lazy_names(globals(), LAZY_NAMES)
