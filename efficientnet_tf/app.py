"""The application layer: what `main.py`, the benchmarks and studies call to train, evaluate, export
and predict. Each entry point takes a config (or a run directory) and returns a result object.

    config = app.layered_config(["hparams/imagenette.yaml"], {"data.dataset": "folder:/photos"})
    outcome = app.train(config, model_dir="runs/mine")          # TrainOutcome
    print(outcome.report())
    evaluation = app.evaluate(app.run_config("runs/mine"), "runs/mine")
    exported = app.export(app.run_config("runs/mine"), "runs/mine")

Data flows one way: config -> strategy -> data source and pipelines -> model and training loop ->
run directory (`efficientnet_tf.rundir`) -> export. Nothing here parses flags or prints. The long-
running entry points take `ready`, a function called once every input has been checked and
before the long work starts (the command line turns on progress logging there).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf import data, hparams, model_io, training
from efficientnet_tf import export as exporter
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import predict as predictions
from efficientnet_tf.models.counting import summary_table
from efficientnet_tf.models.scaling import canonical_name, get_variant
from efficientnet_tf.models.weights import published
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.runlock import RunLock
from efficientnet_tf.training import preemption
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


def layered_config(overrides: Sequence[str] = (), flag_values: Mapping[str, Any] | None = None) -> Any:
    """The config from every layer (defaults, variant, dataset, --hparams, flags), model name checked."""
    config = hparams.build_config(overrides, flag_values)
    get_variant(config.model.name)
    return config


def default_model_dir(config: Any) -> str:
    """runs/<model>-<dataset> (relative to the working directory)."""
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config.data.dataset)).strip("_")
    return os.path.join("runs", f"{config.model.name}-{dataset}")


def run_config(
    model_dir: str,
    overrides: Sequence[str] = (),
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    eval_batch_size: int | None = None,
) -> Any:
    """A run's config.yaml with overrides on top, as eval, export and predict read it.

    `model` / `dataset`, when given, must be what the run was trained with.
    """
    config = RunDir(model_dir).read_config()
    for flag, given, trained in (("model", model and canonical_name(model), config.model.name),
                                 ("dataset", dataset, config.data.dataset)):
        if given and given != trained:
            raise UserError(f"--{flag}={given} but {model_dir} was trained with {trained}; drop --{flag}")
    derived = hparams.flatten(config)
    hparams.apply_overrides(config, overrides)
    for key, value in hparams.flatten(config).items():
        if value is None and derived.get(key) is not None:  # a null in a layer means "derive": the run did
            hparams.set_value(config, key, derived[key], f"{model_dir}/config.yaml")
    if data_dir:
        config.data.data_dir = data_dir
    if eval_batch_size:
        config.eval.batch_size = int(eval_batch_size)
    return config


def configure_randomness(config: Any) -> None:
    """Seed everything and turn on deterministic ops when the config asks."""
    seed = config.train.seed
    if config.train.deterministic and seed is None:
        seed = 0
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(config: Any, hardware: Hardware) -> Any:
    """The strategy for the hardware, with the precision policy set for its device type."""
    info = training.create_strategy(hardware.strategy, tpu=hardware.tpu, num_gpus=hardware.num_gpus,
                                    cpu_devices=hardware.cpu_devices)
    training.set_precision(training.precision_policy(config.runtime.mixed_precision, info.device_type))
    return info


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


def load_source(config: Any) -> Any:
    """The data source the config names."""
    check_data_dir(config.data.data_dir)
    return data.get_source(config.data.dataset, config.data.data_dir,
                           holdout_fraction=float(config.data.holdout_fraction), seed=int(config.data.split_seed),
                           num_classes=config.model.num_classes)


def dataset_functions(config: Any, source: Any) -> tuple[Any, Any]:
    """(train, eval) dataset functions of a tf.distribute.InputContext, batched per replica."""
    size, d = int(config.model.image_size), config.data
    batch, eval_batch = int(config.train.batch_size), int(config.eval.batch_size)
    # data.augment_on_device: the train step augments and mixes; the host only decodes, crops, flips, resizes.
    on_host = not d.augment_on_device

    def train_fn(context: Any, stage: Any = None) -> Any:
        """`stage` (a training.progressive.Stage) overrides the image size and the augmentation strength."""
        size_now = stage.image_size if stage is not None else size
        magnitude = stage.randaug_magnitude if stage is not None else float(d.randaug_magnitude)
        mixup = stage.mixup_alpha if stage is not None else float(d.mixup_alpha)
        cutmix = stage.cutmix_alpha if stage is not None else float(d.cutmix_alpha)
        return data.build_train_dataset(
            source, image_size=size_now, batch_size=context.get_per_replica_batch_size(batch),
            resize_method=d.resize_method, augment=d.augment if on_host else "none",
            randaug_num_layers=int(d.randaug_num_layers), randaug_magnitude=magnitude,
            mixup_alpha=mixup if on_host else 0.0, cutmix_alpha=cutmix if on_host else 0.0,
            min_crop_area=float(d.min_crop_area), seed=config.train.seed,
            deterministic=bool(config.train.deterministic), cache=bool(d.cache), input_context=context,
            augment_backend=str(d.augment_backend),
        )

    def eval_fn(context: Any) -> Any:
        return data.build_eval_dataset(source, image_size=size, batch_size=context.get_per_replica_batch_size(eval_batch),
                                       resize_method=d.resize_method, input_context=context)

    return train_fn, eval_fn


def evaluation_arrays(config: Any, source: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `count` held-out images (eval preprocessing, float 0..255) and their labels, in order."""
    batch = 50
    dataset = data.build_eval_dataset(source, image_size=int(config.model.image_size), batch_size=batch,
                                      resize_method=str(config.data.resize_method))
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

    config: Any  # resolved against the data and the hardware
    info: Any  # training.StrategyInfo
    source: Any  # data.Source
    run: RunDir
    lock: Any = None  # runlock.RunLock held by the chief until training ends

    @property
    def class_names(self) -> list[str]:
        """The dataset's class names, in label order."""
        return list(self.source.class_names)


def resolve_training_config(config: Any, info: Any, source: Any) -> Any:
    """Fill the derived values from the data source and the hardware; check the batch split."""
    resolved = hparams.resolve(config, num_classes=int(source.num_classes), num_train=int(source.num_train))
    if resolved.data.augment_backend == "keras_cv" and resolved.data.augment != "none":
        data.augment_keras_cv.load_keras_cv()  # a missing [keras-cv] extra: one line, before the run dir is touched
    resolved.runtime.mixed_precision = training.precision_policy(resolved.runtime.mixed_precision, info.device_type)
    resolved.runtime.jit_compile = str(training.use_xla(resolved.runtime.jit_compile, info.device_type)).lower()
    training.check_batch_size(int(resolved.train.batch_size), info)
    return resolved


def prepare_run_dir(config: Any, run: RunDir, class_names: Sequence[str], *, is_chief: bool) -> None:
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


def prepare_training(config: Any, *, model_dir: str | None = None, hardware: Hardware = Hardware()) -> PreparedRun:
    """Seed, pick the strategy, open the data, resolve the config and set up the run directory."""
    configure_randomness(config)
    info = make_strategy(config, hardware)
    source = load_source(config)
    resolved = resolve_training_config(config, info, source)
    run = RunDir(model_dir or default_model_dir(resolved))
    # One writer per run directory: the chief locks it before touching config.yaml or checkpoints.
    lock = RunLock.acquire(run.path) if info.is_chief else None
    try:
        prepare_run_dir(resolved, run, source.class_names, is_chief=info.is_chief)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return PreparedRun(resolved, info, source, run, lock)


def weights_normalization(config: Any, init_weights: str | None) -> Any:
    """The layered config with model.normalization set for named pretrained weights (a copy when changed).

    AdvProp weights expect inputs in [-1, 1], the others ImageNet mean/std (Lite: 127/128): the
    normalisation lives in the model, so the run's config, checkpoints and exports carry it.
    """
    if not init_weights or os.path.exists(init_weights):
        return config
    wanted = published.normalization_for(init_weights, canonical_name(str(config.model.name)))
    current = config.model.get("normalization")
    if current is not None:
        if current != wanted:
            logging.warning("model.normalization=%s overrides %s, which the %s weights were trained with",
                            current, wanted, init_weights)
        return config
    updated = ml_collections.ConfigDict(config.to_dict())
    updated.model.normalization = wanted
    logging.info("--init_weights=%s: input normalization %s", init_weights, wanted)
    return updated


@dataclasses.dataclass
class TrainOutcome:
    """What a training run ended with, and where it left its files."""

    config: Any
    run: RunDir
    result: Any  # training.TrainResult
    bad_files: list[str]
    is_chief: bool

    def report(self) -> str:
        """What a user sees at the end: accuracy, where things are, what to run next."""
        config, result, run = self.config, self.result, self.run
        lines = [f"Trained {config.model.name} on {config.data.dataset} to step {result.step}."]
        if result.train_metrics:
            lines.append(f"  last training window: loss {result.train_metrics['loss']:.4f}, "
                         f"top-1 {100 * result.train_metrics['top1']:.1f}%")
        if result.eval_metrics:
            m = result.eval_metrics
            weights = "EMA weights" if float(config.train.ema_decay) > 0 else "final weights"
            lines.append(f"  eval ({int(m['examples'])} held-out images, {weights}): top-1 {100 * m['top1']:.2f}%, "
                         f"top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}")
        if self.bad_files:
            lines.append(f"  {len(self.bad_files)} unreadable item(s) skipped, e.g. {self.bad_files[0]}")
        best = f" (best: {result.best_checkpoint})" if result.best_checkpoint else ""
        lines += [
            f"  checkpoints:      {result.checkpoint}{best}",
            f"  TensorBoard logs: {run.logs_dir}",
            f"  config:           {run.config_path}",
        ]
        if os.path.isfile(run.import_report_path):
            lines.append(f"  import report:    {run.import_report_path}")
        lines += [
            "Next:",
            f"  tensorboard --logdir {run.logs_dir}",
            f"  python main.py --mode=eval --model_dir={run.path}",
            f"  python main.py --mode=export --model_dir={run.path}",
            f"  python main.py --mode=predict --model_dir={run.path} --image=<photo.jpg>",
        ]
        return "\n".join(lines)


def train(
    config: Any,
    *,
    model_dir: str | None = None,
    hardware: Hardware = Hardware(),
    evaluate: bool = True,
    init_weights: str | None = None,
    ready: Callable[[], None] | None = None,
) -> TrainOutcome:
    """Train (and, with `evaluate`, evaluate every train.eval_every_epochs) a layered config.

    `init_weights` is a file or a pretrained-weights name (imagenet, advprop, ...; see
    efficientnet_tf.models.weights.published); a name also sets model.normalization to the one the weights expect.
    """
    # SIGTERM / SIGINT from here on stop the run at a step boundary with a checkpoint (training.preemption).
    with preemption.handle_signals():
        return _train(config, model_dir=model_dir, hardware=hardware, evaluate=evaluate, init_weights=init_weights,
                      ready=ready)


def _train(config: Any, *, model_dir: str | None, hardware: Hardware, evaluate: bool, init_weights: str | None,
           ready: Callable[[], None] | None) -> TrainOutcome:
    config = weights_normalization(config, init_weights)
    prepared = prepare_training(config, model_dir=model_dir, hardware=hardware)
    config, info = prepared.config, prepared.info
    try:
        train_fn, eval_fn = dataset_functions(config, prepared.source)
        if ready:
            ready()
        logging.info("Training %s on %s (%d classes, %d px) for %d steps of %d images, %s, %s, into %s",
                     config.model.name, config.data.dataset, config.model.num_classes, config.model.image_size,
                     config.train.train_steps, config.train.batch_size, info.describe(),
                     config.runtime.mixed_precision, prepared.run.path)
        trainer = training.Trainer(config, info, prepared.run.path, train_dataset_fn=train_fn,
                                   eval_dataset_fn=eval_fn if evaluate else None, init_weights=init_weights)
        result = trainer.train(eval_every_epochs=int(config.train.eval_every_epochs) if evaluate else None)
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

    config: Any
    run: RunDir
    metrics: dict[str, float]
    is_chief: bool

    def report(self) -> str:
        """Two lines: the metrics and where they were written."""
        m = self.metrics
        return (f"Eval of {self.config.model.name} at step {int(m['step'])} on {int(m['examples'])} images: "
                f"top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}\n"
                f"  results: {self.run.eval_results_path}; TensorBoard: {self.run.logs_dir}")


def evaluate(config: Any, model_dir: str, *, checkpoint: str | None = None, hardware: Hardware = Hardware(),
             ready: Callable[[], None] | None = None, explain: bool = False) -> EvalOutcome:
    """Evaluate a run's checkpoint (latest, best or a prefix), or every new one when eval.continuous;
    each gets a report in <model_dir>/evaluation/step-<N> (`explain`: Grad-CAM on its highest-loss grid)."""
    info = make_strategy(config, hardware)
    source = load_source(config)
    if int(source.num_classes) != int(config.model.num_classes):
        raise UserError(f"dataset {config.data.dataset} has {source.num_classes} classes but the model in "
                        f"{model_dir} has {config.model.num_classes}")
    _, eval_fn = dataset_functions(config, source)
    if ready:
        ready()
    metrics = training.evaluate_checkpoints(
        config, info, model_dir, eval_fn, checkpoint=checkpoint, continuous=bool(config.eval.continuous),
        timeout_seconds=float(config.eval.timeout_seconds), poll_seconds=float(config.eval.poll_seconds),
        explain=explain,
    )
    return EvalOutcome(config, RunDir(model_dir), metrics, info.is_chief)


@dataclasses.dataclass
class ExportOutcome:
    """The export report (see `efficientnet_tf.export.run_export`) and where the artifacts are."""

    report: dict
    export_dir: str

    def summary(self) -> str:
        """The verification table, the artifacts' directory and the files in it."""
        files = sorted({row["path"].split(os.sep)[0] for row in self.report["artifacts"] if row.get("path")})
        return (f"{exporter.format_report(self.report)}\nArtifacts in {self.export_dir}: {', '.join(files)} "
                f"(report: export_report.json)")


def export(
    config: Any,
    model_dir: str,
    *,
    checkpoint: str | None = None,
    export_dir: str | None = None,
    formats: Sequence[str] | None = None,
    calibration_images: int,
    eval_images: int,
    int8_io: str = "uint8",
    license: str = "",
    author: str = "",
    ready: Callable[[], None] | None = None,
) -> ExportOutcome:
    """SavedModel, TFLite and ONNX artifacts from a run's checkpoint (EMA weights), verified on held-out images.

    Formats default to every one this installation can write; the .tflite files carry standard
    metadata (name, description, version = the checkpoint, `license`, `author`, normalisation, labels).
    """
    # Formats and extras first: a mistake here costs one line and touches nothing.
    chosen = exporter.default_formats() if not formats else exporter.check_formats(formats)
    if "onnx" in chosen:
        exporter.onnx.check_available()
    run = RunDir(model_dir)
    path = run.checkpoint(checkpoint)
    source = load_source(config)
    if ready:
        ready()
    # float32 artifacts whatever precision trained the checkpoint (app.train may have left a mixed policy set).
    trained_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = model_io.build_model_from_config(config, classifier_activation="softmax")
    finally:
        keras.mixed_precision.set_global_policy(trained_policy)
    model_io.restore_weights(model, path)
    size, method = int(config.model.image_size), str(config.data.resize_method)
    calibration = data.sample_images(source, int(calibration_images), size, method).numpy()
    images, labels = evaluation_arrays(config, source, int(eval_images))
    target = export_dir or run.export_dir
    names = run.read_labels() or []
    model_info = {
        "name": str(config.model.name),
        "description": (f"{config.model.name} image classifier of {len(names) or config.model.num_classes} classes "
                        f"({config.data.dataset}), {size}x{size} RGB; trained and exported with efficientnet-tf "
                        f"{__version__}"),
        "version": os.path.basename(path),
        "license": license,
        "author": author,
    }
    report = exporter.run_export(model, class_names=names, image_size=size, resize_method=method,
                                 export_dir=target, formats=chosen, representative_images=calibration,
                                 eval_images=images, eval_labels=labels, int8_io=int8_io, model_info=model_info)
    return ExportOutcome(report, target)


@dataclasses.dataclass
class PredictOutcome:
    """A prediction run (efficientnet_tf.export.predict.PredictionRun): rows, skipped files, timing."""

    model: str
    run: Any

    @property
    def images(self) -> list[str]:
        return [row.path for row in self.run.rows]

    @property
    def results(self) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) per classified image."""
        return self.run.top_k()

    def report(self) -> str:
        """One block per image when no --output was given, then a summary line (and where files went)."""
        run = self.run
        lines = [] if run.output else [exporter.format_predictions(self.images, self.results)]
        lines.append(f"Classified {len(run.rows)} image(s) with {self.model} in {run.seconds:.1f}s "
                     f"({run.images_per_second:.1f} images/s)"
                     + (f"; {len(run.bad_files)} unreadable file(s) skipped" if run.bad_files else ""))
        if run.output:
            lines.append(f"  results: {run.output}")
        if run.explain_dir:
            lines.append(f"  Grad-CAM overlays: {run.explain_dir}")
        return "\n".join(lines)


def predict(path: str, images: Sequence[str], *, checkpoint: str | None = None, top_k: int = 5,
            output: str | None = None, batch_size: int | None = None, explain_dir: str | None = None,
            progress: bool = True) -> PredictOutcome:
    """Classify image files, folders (recursively) and globs with a run directory, an export directory,
    a SavedModel, or a .keras, .tflite or .onnx file; rows go to `output` (.csv / .jsonl) as they come."""
    run = predictions.predict_files(path, list(images), top_k=top_k, checkpoint=checkpoint, output=output,
                                    batch_size=batch_size or predictions.DEFAULT_BATCH_SIZE,
                                    explain_dir=explain_dir, progress=progress)
    return PredictOutcome(path, run)


def summary(model_names: Sequence[str] | None = None) -> str:
    """Every variant's (or the named ones') resolution, width, depth, parameters and MAdds."""
    for name in model_names or ():
        get_variant(name)  # an unknown name is a one-line error before any building
    return summary_table(tuple(model_names) if model_names else None)
