"""The application layer: what `main.py`, the benchmarks and studies call to train, evaluate, export
and predict. Each entry point takes a configuration (or a run directory) and returns an outcome object
holding data; what a user reads is written by the command line (efficientnet_tf.cli).

    layered = app.layered_config(["hparams/imagenette.yaml"], {"data.dataset": "folder:/photos"})
    outcome = app.train(layered, model_dir="runs/mine")          # TrainOutcome (config: the run's RunConfig)
    evaluation = app.evaluate(app.run_config("runs/mine"), "runs/mine")
    exported = app.export(app.run_config("runs/mine"), "runs/mine")

Data flows one way: layered config -> strategy and data source -> the resolved RunConfig (hparams.resolve,
against the dataset's counts and the hardware) -> model and training loop -> run directory
(`efficientnet_tf.rundir`) -> export. The long-running entry points take `ready`, a function called once
every input has been checked and before the long work starts (the command line turns on progress
logging there).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf import data, hparams, prediction, run_model, training
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import exporter, registry
from efficientnet_tf.hparams import LayeredConfig, RunConfig
from efficientnet_tf.models.counting import summary_table
from efficientnet_tf.models.scaling import canonical_name, get_variant
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.runlock import RunLock
from efficientnet_tf.training import inputs, preemption
from efficientnet_tf.training.strategy import StrategyInfo
from efficientnet_tf.version import __version__


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where to run: a strategy kind (or auto), a TPU address, a GPU limit, logical CPU devices."""

    strategy: str = "auto"
    tpu: str | None = None
    num_gpus: int | None = None
    cpu_devices: int = 1


# ------------------------------------------------------------------------------------------------
# Configuration


def layered_config(overrides: Sequence[str] = (), flag_values: Mapping[str, Any] | None = None) -> LayeredConfig:
    """The config from every layer (defaults, variant, dataset, --hparams, flags), model name checked."""
    config = hparams.build_config(overrides, flag_values)
    get_variant(config.model.name)
    return config


def default_model_dir(config: LayeredConfig | RunConfig) -> str:
    """runs/<model>-<dataset> (relative to the working directory)."""
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config.data.dataset)).strip("_")
    return os.path.join("runs", f"{config.model.name}-{dataset}")


def run_config(
    model_dir: str,
    overrides: Sequence[str] = (),
    flag_values: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
) -> RunConfig:
    """A run's config.yaml with --hparams overrides and flag values on top, as eval, export and predict read it.

    `model` / `dataset`, when given, must be what the run was trained with. A null in an override means
    "derive", as the run did (its facts are kept).
    """
    config = RunDir(model_dir).read_config()
    for flag, given, trained in (("model", model and canonical_name(model), config.model.name),
                                 ("dataset", dataset, config.data.dataset)):
        if given and given != trained:
            raise UserError(f"--{flag}={given} but {model_dir} was trained with {trained}; drop --{flag}")
    return hparams.with_overrides(config, overrides, flag_values or {}, f"{model_dir}/config.yaml")


def configure_randomness(config: RunConfig) -> None:
    """Seed everything and turn on deterministic ops when the config asks."""
    if config.train.seed is not None:
        keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(hardware: Hardware) -> StrategyInfo:
    """The strategy for the hardware."""
    return training.create_strategy(hardware.strategy, tpu=hardware.tpu, num_gpus=hardware.num_gpus,
                                    cpu_devices=hardware.cpu_devices)


def on_strategy(config: RunConfig, info: StrategyInfo) -> RunConfig:
    """A run's config resolved for this strategy's hardware, with its precision policy set for the models."""
    config = hparams.on_hardware(config, info.device_type, info.num_replicas)
    training.set_precision(config.runtime.mixed_precision)
    return config


# ------------------------------------------------------------------------------------------------
# Data


def check_data_dir(path: str | None) -> None:
    """A given local data directory must exist and be readable."""
    if not path or "://" in path:
        return
    if not os.path.exists(path):
        raise UserError(f"data directory {path} does not exist; check --data_dir")
    if not os.path.isdir(path):
        raise UserError(f"--data_dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"data directory {path} is not readable (permission denied); check --data_dir")


def load_source(config: LayeredConfig | RunConfig) -> data.Source:
    """The data source the config names."""
    check_data_dir(config.data.data_dir)
    return data.get_source(config.data.dataset, config.data.data_dir,
                           holdout_fraction=float(config.data.holdout_fraction), seed=int(config.data.split_seed),
                           num_classes=config.model.num_classes)


def evaluation_arrays(config: RunConfig, source: data.Source, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` held-out images (eval preprocessing, float 0..255) and their labels, in order."""
    batch = 50
    dataset = data.build_eval_dataset(source, image_size=config.model.image_size, batch_size=batch,
                                      resize_method=config.data.resize_method)
    images, labels = [], []
    for batch_images, batch_labels in dataset.take(-(-int(count) // batch)):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    if not images:
        raise UserError(f"dataset {source.name} has no evaluation images")
    return np.concatenate(images)[:count], np.concatenate(labels)[:count]


# ------------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class PreparedRun:
    """Everything a training run needs before the model is built."""

    config: RunConfig  # resolved against the data and the hardware
    info: StrategyInfo
    source: data.Source
    run: RunDir
    lock: RunLock | None = None  # held by the chief until training ends

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names, in label order."""
        return list(self.source.class_names)


def resolve_training_config(layered: LayeredConfig, info: StrategyInfo, source: data.Source) -> RunConfig:
    """The run's RunConfig: the layered config resolved against the data source and the hardware."""
    config = hparams.resolve(layered, num_classes=int(source.num_classes), num_train=int(source.num_train),
                             device_type=info.device_type, num_replicas=info.num_replicas)
    if config.data.augment_backend == "keras_cv" and config.data.augment != "none":
        data.augment_keras_cv.load_keras_cv()  # a missing [keras-cv] extra: one line, before the run dir is touched
    return config


def prepare_run_dir(config: RunConfig, run: RunDir, class_names: Sequence[str], *, is_chief: bool) -> None:
    """The resume policy: refuse to mix runs of different models; record config.yaml and labels.txt."""
    run.ensure_writable()
    if run.has_config():
        previous = run.read_config()
        changed = {k: v for k, v in hparams.differences(previous, config).items() if k.startswith("model.")}
        if changed and run.latest_checkpoint():
            key, (old, new) = next(iter(changed.items()))
            raise UserError(f"{run.path} holds a run with {key}={old}, this command has {new}; "
                            "use another --model_dir or the same settings to resume")
        other = hparams.differences(previous, config)
        if other:
            logging.info("Config changed since the last run in %s: %s", run.path,
                         ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in list(other.items())[:8]))
    if is_chief:
        run.write_config(config)
        run.write_labels(class_names)


def check_qat_start(config: RunConfig, run: RunDir) -> None:
    """Quantisation-aware training fine-tunes a trained model: a one-line error when there is none to start from."""
    if config.qat.enabled and not config.train.init_weights and run.latest_checkpoint() is None:
        raise UserError("quantisation-aware training fine-tunes a trained model: pass --init_weights=RUN_DIR (a "
                        "training run, whose best checkpoint it starts from) or a weights file")
    source = config.train.init_weights
    if config.qat.distill > 0 and not (source and RunDir(source).has_config()):
        raise UserError(f"qat.distill learns from the trained run a quantisation-aware run starts from: pass "
                        f"--init_weights=RUN_DIR (a training run directory), not {source or 'nothing'}")


def prepare_training(layered: LayeredConfig, *, model_dir: str | None = None,
                     hardware: Hardware = Hardware()) -> PreparedRun:
    """Pick the strategy, open the data, resolve the config, seed, and set up the run directory."""
    info = make_strategy(hardware)
    source = load_source(layered)
    config = resolve_training_config(layered, info, source)
    configure_randomness(config)
    training.set_precision(config.runtime.mixed_precision)
    run = RunDir(model_dir or default_model_dir(config))
    check_qat_start(config, run)
    # One writer per run directory: the chief locks it before touching config.yaml or checkpoints.
    lock = RunLock.acquire(run.path) if info.is_chief else None
    try:
        prepare_run_dir(config, run, source.class_names, is_chief=info.is_chief)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return PreparedRun(config, info, source, run, lock)


@dataclasses.dataclass
class TrainOutcome:
    """What a training run ended with, and where it left its files."""

    config: RunConfig
    run: RunDir
    result: training.TrainResult
    bad_files: list[str]
    is_chief: bool


def train(
    layered: LayeredConfig,
    *,
    model_dir: str | None = None,
    hardware: Hardware = Hardware(),
    evaluate: bool = True,
    ready: Callable[[], None] | None = None,
) -> TrainOutcome:
    """Train (and, with `evaluate`, evaluate every train.eval_every_epochs) a layered config.

    `train.init_weights` names the weights to start from: a file or a pretrained-weights name (imagenet,
    advprop, ...; see efficientnet_tf.models.weights.published), whose input normalisation the run takes.
    """
    # SIGTERM / SIGINT from here on stop the run at a step boundary with a checkpoint (training.preemption).
    with preemption.handle_signals():
        prepared = prepare_training(layered, model_dir=model_dir, hardware=hardware)
        config, info = prepared.config, prepared.info
        try:
            if ready:
                ready()
            logging.info("Training %s on %s (%d classes, %d px) for %d steps of %d images, %s, %s, into %s",
                         config.model.name, config.data.dataset, config.model.num_classes, config.model.image_size,
                         config.train.train_steps, config.train.batch_size, info.describe(),
                         config.runtime.mixed_precision, prepared.run.path)
            trainer = training.Trainer(config, info, prepared.run.path,
                                       train_dataset_fn=inputs.train_dataset_fn(config, prepared.source),
                                       eval_dataset_fn=inputs.eval_dataset_fn(config, prepared.source)
                                       if evaluate else None)
            result = trainer.train(eval_every_epochs=config.train.eval_every_epochs if evaluate else None)
        finally:
            if prepared.lock is not None:
                prepared.lock.release()
    bad = list(prepared.source.bad_files)
    if bad:
        logging.warning("%d unreadable item(s) were skipped, e.g. %s", len(bad), bad[0])
    return TrainOutcome(config, prepared.run, result, bad, info.is_chief)


# ------------------------------------------------------------------------------------------------
# Evaluation, export, prediction


@dataclasses.dataclass
class EvalOutcome:
    """The metrics of an evaluated checkpoint."""

    config: RunConfig
    run: RunDir
    metrics: dict[str, float]
    is_chief: bool


def evaluate(config: RunConfig, model_dir: str, *, checkpoint: str | None = None, hardware: Hardware = Hardware(),
             ready: Callable[[], None] | None = None, explain: bool = False) -> EvalOutcome:
    """Evaluate a run's checkpoint (latest, best or a prefix), or every new one when eval.continuous;
    each gets a report in <model_dir>/evaluation/step-<N> (`explain`: Grad-CAM on its highest-loss grid)."""
    info = make_strategy(hardware)
    config = on_strategy(config, info)
    source = load_source(config)
    if int(source.num_classes) != config.model.num_classes:
        raise UserError(f"dataset {config.data.dataset} has {source.num_classes} classes but the model in "
                        f"{model_dir} has {config.model.num_classes}")
    eval_fn = inputs.eval_dataset_fn(config, source)
    if ready:
        ready()
    metrics = training.evaluate_checkpoints(
        config, info, model_dir, eval_fn, checkpoint=checkpoint, continuous=config.eval.continuous,
        timeout_seconds=config.eval.timeout_seconds, poll_seconds=config.eval.poll_seconds, explain=explain,
    )
    return EvalOutcome(config, RunDir(model_dir), metrics, info.is_chief)


@dataclasses.dataclass
class ExportOutcome:
    """The export report (see `efficientnet_tf.export.exporter.run_export`) and where the artifacts are."""

    report: dict
    export_dir: str


def float_start(config: RunConfig) -> keras.Model | None:
    """A quantisation-aware run's float start (the run directory it started from, best checkpoint, softmax
    output), when it is still there: the export report compares the int8 file with it too."""
    return run_model.float_start_model(config, classifier_activation="softmax")


def export(config: RunConfig, model_dir: str, *, checkpoint: str | None = None, export_dir: str | None = None,
           ready: Callable[[], None] | None = None) -> ExportOutcome:
    """The artifacts of export.formats from a run's checkpoint (EMA weights), verified on held-out images.

    Formats default to every one this installation can write; the .tflite files carry standard
    metadata (name, description, version = the checkpoint, export.license, export.author,
    normalisation, labels).
    """
    settings = config.export
    # Formats and extras first: a mistake here costs one line and touches nothing.
    chosen = registry.choose(settings.formats)
    run = RunDir(model_dir)
    path = run.checkpoint(checkpoint)
    source = load_source(config)
    if ready:
        ready()
    # float32 artifacts whatever precision trained the checkpoint (app.train may have left a mixed policy set).
    trained_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = run_model.build_model_from_config(config, classifier_activation="softmax")
    finally:
        keras.mixed_precision.set_global_policy(trained_policy)
    run_model.restore_weights(model, path)
    size, method = config.model.image_size, config.data.resize_method
    calibration = data.sample_images(source, settings.calibration_images, size, method).numpy()
    images, labels = evaluation_arrays(config, source, settings.eval_images)
    target = export_dir or run.export_dir
    names = run.read_labels() or []
    model_info = {
        "name": config.model.name,
        "description": (f"{config.model.name} image classifier of {len(names) or config.model.num_classes} classes "
                        f"({config.data.dataset}), {size}x{size} RGB; trained and exported with efficientnet-tf "
                        f"{__version__}"),
        "version": os.path.basename(path),
        "license": settings.license,
        "author": settings.author,
    }
    report = exporter.run_export(model, class_names=names, image_size=size, resize_method=method,
                                 export_dir=target, formats=chosen, representative_images=calibration,
                                 eval_images=images, eval_labels=labels, int8_io=settings.int8_io,
                                 model_info=model_info, float_reference=float_start(config))
    return ExportOutcome(report, target)


@dataclasses.dataclass
class PredictOutcome:
    """A prediction run (efficientnet_tf.prediction.PredictionRun): rows, skipped files, timing."""

    model: str
    run: prediction.PredictionRun

    @property
    def images(self) -> list[str]:
        return [row.path for row in self.run.rows]

    @property
    def results(self) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per classified image."""
        return self.run.top_k()


def predict(path: str, images: Sequence[str], *, checkpoint: str | None = None, top_k: int = 5,
            output: str | None = None, batch_size: int | None = None, explain_dir: str | None = None,
            progress: bool = True) -> PredictOutcome:
    """Classify image files, folders (recursively) and globs with a run directory, an export directory,
    a SavedModel, a .keras file or a file of any export format (.tflite, .onnx, ...); rows go to
    `output` (.csv / .jsonl) as they come."""
    run = prediction.predict_files(path, list(images), top_k=top_k, checkpoint=checkpoint, output=output,
                                   batch_size=batch_size or prediction.DEFAULT_BATCH_SIZE,
                                   explain_dir=explain_dir, progress=progress)
    return PredictOutcome(path, run)


def summary(model_names: Sequence[str] | None = None) -> str:
    """Every variant's (or the named ones') resolution, width, depth, parameters and MAdds."""
    for name in model_names or ():
        get_variant(name)  # an unknown name is a one-line error before any building
    return summary_table(tuple(model_names) if model_names else None)
