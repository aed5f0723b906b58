"""Building the model a config describes, class-name files, and restoring a run for inference."""

from __future__ import annotations

import os
from typing import Any

import keras
import ml_collections
import tensorflow as tf
import yaml
from absl import logging

from efficientnet_tf.errors import UserError
from efficientnet_tf.model import build_model
from efficientnet_tf.training import checkpoints
from efficientnet_tf.training.ema import ExponentialMovingAverage, averaged_variables

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.txt"


def build_model_from_config(config: Any, *, classifier_activation: str | None = None) -> keras.Model:
    """The EfficientNet a resolved config describes (float32 logits unless an activation is given)."""
    model = config.model
    size = int(model.image_size)
    kwargs: dict[str, Any] = {
        "include_top": True,
        "weights": None,
        "input_shape": (size, size, 3),
        "classes": int(model.num_classes),
        "classifier_activation": classifier_activation,
        "drop_connect_rate": model.drop_connect_rate,
        "dropout_rate": model.dropout_rate,
    }
    if model.width_coefficient is not None:
        kwargs["width_coefficient"] = float(model.width_coefficient)
    if model.depth_coefficient is not None:
        kwargs["depth_coefficient"] = float(model.depth_coefficient)
    built = build_model(model.name, **kwargs)
    momentum = model.get("batch_norm_momentum")
    if momentum is not None:
        for layer in built._flatten_layers(include_self=False):  # noqa: SLF001 - Keras has no public walk
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(momentum)
    if model.get("zero_init_residual"):
        zero_init_residual_blocks(built)
    return built


def zero_init_residual_blocks(model: keras.Model) -> int:
    """Set the last batch-norm gamma of every block with an identity skip to 0 (Goyal et al., 2017).

    Each such block then starts as the identity, which speeds up training from scratch. Blocks are
    found by keras.applications naming: `<block>add` joins the skip, `<block>project_bn` ends the branch.
    """
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Add) and layer.name.endswith("add"):
            bn = model.get_layer(layer.name[: -len("add")] + "project_bn")
            bn.gamma.assign(keras.ops.zeros_like(bn.gamma))
            count += 1
    return count


def write_labels(model_dir: str, class_names: list[str]) -> str:
    """Write the class names, one per line in label order, to model_dir/labels.txt."""
    path = os.path.join(model_dir, LABELS_FILE)
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(f"{name}\n" for name in class_names))
    return path


def read_labels(model_dir: str) -> list[str] | None:
    """The class names saved with a run, or None when it has none."""
    path = os.path.join(model_dir, LABELS_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return [line.rstrip("\n") for line in handle if line.rstrip("\n")]


def read_config(model_dir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote to model_dir/config.yaml."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise UserError(f"no {CONFIG_FILE} in {model_dir}; is it the --model_dir of a training run?")
    with tf.io.gfile.GFile(path) as handle:
        values = yaml.safe_load(handle.read())
    if not isinstance(values, dict) or "model" not in values:
        raise UserError(f"{path} is not a config written by training (no model: section)")
    return ml_collections.ConfigDict(values)


def checkpoint_has_ema(path: str) -> bool:
    """Whether a checkpoint holds moving averages."""
    return any(name.startswith("ema/") for name, _ in tf.train.list_variables(path))


def restore_weights(model: keras.Model, path: str, *, use_ema: bool = True, ema_decay: float = 0.9999) -> int:
    """Load a training checkpoint's weights into `model` (the averages when present); returns its step."""
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    has_ema = use_ema and checkpoint_has_ema(path)
    ema = ExponentialMovingAverage(averaged_variables(model), ema_decay or 0.9999) if has_ema else None
    objects: dict[str, Any] = {"model": model, "step": step}
    if ema is not None:
        objects["ema"] = ema
    try:
        tf.train.Checkpoint(**objects).restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"checkpoint {path} does not fit this model ({first}); check the config") from None
    if ema is not None:
        ema.copy_to_model()
    logging.info("Loaded %s weights from %s (step %d)", "EMA" if ema is not None else "raw", path, int(step.numpy()))
    return int(step.numpy())


def restore_for_inference(
    model_dir: str,
    checkpoint: str | None = None,
    *,
    classifier_activation: str | None = "softmax",
) -> tuple[keras.Model, ml_collections.ConfigDict, list[str] | None]:
    """(model with the EMA weights of a checkpoint, the run's resolved config, its class names).

    `checkpoint` is a prefix, a directory, "latest" (default) or "best". The model returns
    probabilities by default (`classifier_activation=None` gives logits).
    """
    config = read_config(model_dir)
    path = checkpoints.resolve_checkpoint(model_dir, checkpoint)
    model = build_model_from_config(config, classifier_activation=classifier_activation)
    restore_weights(model, path, ema_decay=float(config.train.ema_decay) if "train" in config else 0.9999)
    return model, config, read_labels(model_dir)
