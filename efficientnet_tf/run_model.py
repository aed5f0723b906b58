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
from efficientnet_tf.models import quantize
from efficientnet_tf.models.builder import build_model
from efficientnet_tf.models.ema import ExponentialMovingAverage, averaged_variables
from efficientnet_tf.models.normalization import refresh_normalization
from efficientnet_tf.models.weights import import_weights
from efficientnet_tf.models.weights.import_report import ImportReport
from efficientnet_tf.rundir import RunDir


def build_model_from_config(config: RunConfig, *, classifier_activation: str | None = None,
                            any_size: bool = False, quantized: bool | None = None) -> keras.Model:
    """The EfficientNet a resolved config describes (float32 logits unless an activation is given); with
    `any_size` it takes images of any height and width (progressive learning trains at several sizes).

    Every argument comes from the config: the builder's own defaults are for people who call it directly.
    The dropout layer gets the highest rate any training stage uses (progressive stages set it per stage).
    With qat.enabled (or `quantized`) the model is its quantisation-aware version (models/quantize.py).
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
    for layer in built.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = model.batch_norm_momentum
    if model.zero_init_residual:
        zero_init_residual_blocks(built)
    if config.qat.enabled if quantized is None else quantized:
        return quantize.quantize_model(built, range_momentum=config.qat.range_momentum)
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


def start_checkpoint(run: RunDir) -> str:
    """The checkpoint a run started from a run directory takes: its best, else its latest."""
    try:
        return run.checkpoint("best")
    except UserError:
        path = run.checkpoint("latest")
        logging.info("%s has no best checkpoint (it ran without evaluation); starting from its latest", run.path)
        return path


def float_start_model(config: RunConfig, *, classifier_activation: str | None = None) -> keras.Model | None:
    """The model a quantisation-aware run started from: its train.init_weights run directory's best (else
    latest) checkpoint in that run's own model. None when the run is not quantisation-aware or did not start
    from a run directory (or the directory is gone)."""
    source = config.train.init_weights
    if not config.qat.enabled or not source or not RunDir(source).has_config():
        return None
    start = RunDir(source)
    model = build_model_from_config(start.read_config(), classifier_activation=classifier_activation)
    restore_weights(model, start_checkpoint(start))
    return model


def import_initial_weights(model: keras.Model, config: RunConfig, source: str, record: RunDir | None = None
                           ) -> ImportReport:
    """Load train.init_weights into a new run's model: a run directory's best checkpoint (else its latest,
    averaged weights when it kept them), or a weights file or name through the importer. A float start goes
    into a quantisation-aware model through its float model. With `record`, the report is logged and saved
    there as import_report.json."""
    # A quantisation-aware run's model takes float weights through its float model.
    target = build_model_from_config(config, quantized=False) if config.qat.enabled else model
    run = RunDir(source)
    if run.has_config():
        start = run.read_config()
        if start.model.name != config.model.name:
            raise UserError(f"--init_weights={source} is a run of {start.model.name}, but this run trains "
                            f"{config.model.name}; start from a run of {config.model.name}")
        target = model if start.qat.enabled else target
        path = start_checkpoint(run)
        restore_weights(target, path)
        report = ImportReport(loaded=[layer.name for layer in target.layers if layer.weights], path=path,
                              kind="training run checkpoint")
    else:
        # A normalisation the config names (or a weights name implies) wins; null: the weights file's own.
        report = import_weights(target, source, new_head=config.finetune.new_head,
                                keep_normalization=config.model.normalization is not None)
    if target is not model:
        quantize.load_float_weights(model, target)
    logging.info("Initial weights from %s:\n%s", source, report.format())
    if record is not None:
        record.write_import_report(source, report.to_dict())
    return report
