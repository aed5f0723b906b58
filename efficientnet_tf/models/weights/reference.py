"""Reference (tensorflow/tpu) TF1 checkpoints: variable scopes mapped to our layers, moving averages preferred."""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.models.weights.assign import HEAD_LAYER


def _find_reference_prefix(names: set[str]) -> str:
    for name in names:
        match = re.match(r"^(.*?)/stem/conv2d/kernel$", name)
        if match:
            return match.group(1)
    raise UserError("checkpoint has no '<model>/stem/conv2d/kernel': not an EfficientNet reference checkpoint")


def reference_layer_map(model: keras.Model) -> dict[str, tuple[str, str]]:
    """Map our layer names to (reference scope, kind) of tensorflow/tpu's variable naming."""
    mapping = {
        "stem_conv": ("stem/conv2d", "conv"),
        "stem_bn": ("stem/tpu_batch_normalization", "bn"),
        "top_conv": ("head/conv2d", "conv"),
        "top_bn": ("head/tpu_batch_normalization", "bn"),
        HEAD_LAYER: ("head/dense", "dense"),
    }
    block_names = []
    for layer in model.layers:
        match = re.match(r"^(block\d+[a-z]+_)dwconv$", layer.name)
        if match:
            block_names.append(match.group(1))
    names = {layer.name for layer in model.layers}
    for index, prefix in enumerate(block_names):
        scope = f"blocks_{index}"
        expanded = prefix + "expand_conv" in names
        bns = ["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"]
        convs = ["conv2d", "conv2d_1"]
        if expanded:
            mapping[prefix + "expand_conv"] = (f"{scope}/{convs[0]}", "conv")
            mapping[prefix + "expand_bn"] = (f"{scope}/{bns[0]}", "bn")
            bns, convs = bns[1:], convs[1:]
        mapping[prefix + "dwconv"] = (f"{scope}/depthwise_conv2d", "depthwise")
        mapping[prefix + "bn"] = (f"{scope}/{bns[0]}", "bn")
        mapping[prefix + "se_reduce"] = (f"{scope}/se/conv2d", "conv_bias")
        mapping[prefix + "se_expand"] = (f"{scope}/se/conv2d_1", "conv_bias")
        mapping[prefix + "project_conv"] = (f"{scope}/{convs[0]}", "conv")
        mapping[prefix + "project_bn"] = (f"{scope}/{bns[1]}", "bn")
    return {k: v for k, v in mapping.items() if k in names}


_KIND_VARS = {
    "conv": ["kernel"],
    "conv_bias": ["kernel", "bias"],
    "depthwise": ["depthwise_kernel"],
    "dense": ["kernel", "bias"],
    "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
}


def weights_of_reference_checkpoint(path: str, model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Read a tensorflow/tpu TF1 checkpoint, preferring ExponentialMovingAverage shadows."""
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    names = set(reader.get_variable_to_shape_map())
    prefix = _find_reference_prefix(names)
    ema = any(n.endswith("/ExponentialMovingAverage") for n in names)
    logging.info("reference checkpoint %s: scope %r, EMA shadows %s", path, prefix, "used" if ema else "absent")

    def read(var: str) -> np.ndarray | None:
        for candidate in (f"{prefix}/{var}/ExponentialMovingAverage", f"{prefix}/{var}"):
            if candidate in names:
                return reader.get_tensor(candidate)
        # Checkpoints trained off-TPU name batch norm `batch_normalization`.
        alt = var.replace("tpu_batch_normalization", "batch_normalization")
        if alt != var:
            return read(alt)
        return None

    out: dict[str, list[np.ndarray]] = {}
    for layer_name, (scope, kind) in reference_layer_map(model).items():
        values = [read(f"{scope}/{v}") for v in _KIND_VARS[kind]]
        if all(v is not None for v in values):
            out[layer_name] = values
    return out
