"""The model a config describes, and a run's checkpoint weights restored for evaluation and export.

This module knows models, configs and checkpoints, not training: the exporter and predictor use it
without importing `efficientnet_tf.training`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.hparams import RunConfig
from efficientnet_tf.models.builder import build_model
from efficientnet_tf.models.ema import ExponentialMovingAverage, averaged_variables, batch_norm_layers
from efficientnet_tf.models.normalization import refresh_normalization
from efficientnet_tf.rundir import RunDir


def build_model_from_config(config: RunConfig, *, classifier_activation: str | None = None,
                            any_size: bool = False) -> keras.Model:
    """The EfficientNet a resolved config describes (float32 logits unless an activation is given); with
    `any_size` it takes images of any height and width (progressive learning trains at several sizes).

    Every argument comes from the config: the builder's own defaults are for people who call it directly.
    The dropout layer gets the highest rate any training stage uses (progressive stages set it per stage).
    """
    model = config.model
    size = model.image_size
    built = build_model(
        model.name,
        include_top=True,
        weights=None,
        input_shape=(None, None, 3) if any_size else (size, size, 3),
        classes=model.num_classes,
        classifier_activation=classifier_activation,
        drop_connect_rate=model.drop_connect_rate,
        dropout_rate=config.derived.model_dropout_rate,
        width_coefficient=model.width_coefficient,
        depth_coefficient=model.depth_coefficient,
        normalization=model.normalization,
    )
    for layer in batch_norm_layers(built):
        layer.momentum = model.batch_norm_momentum
    if model.zero_init_residual:
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


def checkpoint_has_ema(path: str) -> bool:
    """Whether a checkpoint holds moving averages."""
    return any(name.startswith("ema/") for name, _ in tf.train.list_variables(path))


def restore_weights(model: keras.Model, path: str, *, use_ema: bool = True) -> int:
    """Load a training checkpoint's weights into `model` (the averages when present); returns its step."""
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    has_ema = use_ema and checkpoint_has_ema(path)
    # The decay does not matter here: only the shadow values are read back.
    ema = ExponentialMovingAverage(averaged_variables(model), decay=0.0) if has_ema else None
    objects: dict[str, Any] = {"model": model, "step": step}
    if ema is not None:
        objects["ema"] = ema
    try:
        tf.train.Checkpoint(**objects).restore(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise UserError(f"checkpoint {path} does not fit this model ({first_line(error)}); check the config") from None
    if ema is not None:
        ema.copy_to_model()
    refresh_normalization(model)  # the checkpoint's input normalisation applies, whatever the model was built with
    logging.info("Loaded %s weights from %s (step %d)", "EMA" if ema is not None else "raw", path, int(step.numpy()))
    return int(step.numpy())


def restore_for_inference(
    model_dir: str,
    checkpoint: str | None = None,
    *,
    classifier_activation: str | None = "softmax",
) -> tuple[keras.Model, RunConfig, list[str] | None]:
    """(model with the EMA weights of a checkpoint, the run's resolved config, its class names).

    `checkpoint` is a prefix, a directory, "latest" (default) or "best". The model returns
    probabilities by default (`classifier_activation=None` gives logits).
    """
    run = RunDir(model_dir)
    config = run.read_config()
    path = run.checkpoint(checkpoint)
    model = build_model_from_config(config, classifier_activation=classifier_activation)
    restore_weights(model, path)
    return model, config, run.read_labels()
