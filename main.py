"""efficientnet-tf command line: flags -> config -> strategy -> data -> model -> train / eval / export.

    python main.py                                   # B0 on the embedded images, a few minutes on a CPU
    python main.py --model=efficientnet-b2 --dataset=imagenet --data_dir=gs://... --tpu=my-tpu
    python main.py --mode=eval --model_dir=runs/efficientnet-b0-imagenette_mini
    python main.py --mode=export --model_dir=...     # SavedModel + TFLite, verified
    python main.py --mode=predict --model_dir=... --image=cat.jpg
    python main.py --mode=summary                    # every variant's size and cost

Wrong input ends with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from absl import app, flags, logging

MODES = ("train", "eval", "train_and_eval", "export", "predict", "summary")
# Kept in step with efficientnet_tf.training.strategy (a test checks); listed here so that flag
# values are checked before TensorFlow is imported.
STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "one_device", "default")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
EXIT_USER_ERROR = 1
EXIT_FLAGS_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model name: efficientnet-b0 ... b8, -l2, -lite0 ... lite4, -phi<φ>. "
                    "Default: model.name of the config (efficientnet-b0).")
flags.DEFINE_alias("model_name", "model")
flags.DEFINE_enum("mode", "train_and_eval", MODES, "What to do.")
flags.DEFINE_string("dataset", None, "imagenette_mini (embedded, the default), imagenet, tfds:<name>[:<config>], "
                    "folder:<path> or synthetic.")
flags.DEFINE_string("data_dir", None, "Where the dataset lives (ImageNet TFRecords, TFDS data, ...).")
flags.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs and config.yaml of the run. "
                    "Default: runs/<model>-<dataset>.")
flags.DEFINE_multi_string("hparams", [], "YAML files and/or dotted overrides such as "
                          "train.batch_size=256,data.augment=randaugment; repeatable, applied in order.")
flags.DEFINE_string("tpu", None, "Cloud TPU name, grpc://host:port, or 'local'.")
flags.DEFINE_enum("strategy", "auto", STRATEGIES, "Distribution strategy; auto picks from --tpu, TF_CONFIG "
                  "and the GPUs present.")
flags.DEFINE_integer("num_gpus", None, "Use only this many GPUs (default: all).")
flags.DEFINE_integer("cpu_devices", 1, "Split the CPU into this many logical devices and mirror over them "
                     "(runs multi-replica code without GPUs).")
flags.DEFINE_integer("train_steps", None, "Stop at exactly this global step (overrides --epochs).")
flags.DEFINE_float("epochs", None, "Training epochs.")
flags.DEFINE_integer("batch_size", None, "Global batch size, split across replicas.")
flags.DEFINE_enum("mixed_precision", None, PRECISIONS, "Precision policy (auto: bfloat16 on TPU, float16 on "
                  "GPU, float32 on CPU).")
flags.DEFINE_string("init_weights", None, "Fine-tune from a .keras file, a keras.applications .h5 or a "
                    "reference TF checkpoint (the head is re-initialised when the class count differs).")
flags.DEFINE_string("checkpoint", None, "eval / export: checkpoint prefix, 'latest' (default) or 'best'.")
flags.DEFINE_integer("seed", None, "Random seed for weights, input pipeline and dropout.")
flags.DEFINE_boolean("deterministic", None, "Deterministic ops and input order (slower); with --seed, "
                     "reruns and resumed runs give the same weights.")
flags.DEFINE_multi_string("image", [], "predict: an image file to classify (repeatable).")
flags.DEFINE_string("export_dir", None, "export: where the artifacts go (default: <model_dir>/export).")
flags.DEFINE_list("export_formats", None, "export: formats to write (default: all the exporter knows).")
flags.DEFINE_integer("export_calibration_images", 200, "export: training images used to calibrate int8.")
flags.DEFINE_integer("export_eval_images", 500, "export: held-out images used to verify the artifacts.")

# Dotted config keys set by explicit flags (these win over every --hparams layer).
FLAG_TO_KEY = {
    "model": "model.name",
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "batch_size": "train.batch_size",
    "epochs": "train.epochs",
    "train_steps": "train.train_steps",
    "seed": "train.seed",
    "deterministic": "train.deterministic",
    "mixed_precision": "runtime.mixed_precision",
}


class CommandError(Exception):
    """A failure to report as one line with a given exit status."""

    def __init__(self, message: str, status: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.status = status


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return " ".join(lines[:1]) if lines else "unknown error"


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Hide the C++ start-up chatter TensorFlow writes to fd 2 (CUDA probing); replay it on failure."""
    if FLAGS.is_parsed() and FLAGS.verbosity >= 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _import_tensorflow() -> None:
    """Import TensorFlow and probe devices quietly (its native start-up logs bypass Python logging)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()


def start_logging() -> None:
    """Inputs are checked: from here on, log progress at INFO (unless --verbosity says otherwise)."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)


def layered_config() -> Any:
    """The config from every layer and flag, with its model name checked."""
    import hparams
    from efficientnet_tf import get_variant

    config = hparams.build_config(FLAGS.hparams, flag_overrides())
    get_variant(config.model.name)
    return config


def flag_overrides() -> dict[str, Any]:
    """Config keys for the flags the user gave explicitly."""
    values = {}
    for flag, key in FLAG_TO_KEY.items():
        if FLAGS[flag].present:
            values[key] = FLAGS[flag].value
    return values


def default_model_dir(config: Any) -> str:
    """runs/<model>-<dataset> (relative to the working directory)."""
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(config.data.dataset)).strip("_")
    return os.path.join("runs", f"{config.model.name}-{dataset}")


def check_writable_dir(path: str, what: str = "--model_dir") -> None:
    """Create `path` if needed and prove it writable, or raise a one-line UserError."""
    import tensorflow as tf

    from efficientnet_tf.errors import UserError

    try:
        tf.io.gfile.makedirs(path)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with tf.io.gfile.GFile(probe, "w") as handle:
            handle.write("ok")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as error:
        reason = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
        raise UserError(f"cannot write to {what} {path}: {_one_line(reason)}; choose a writable directory") from None


def check_data_dir(path: str | None) -> None:
    """A given local data directory must exist and be readable."""
    from efficientnet_tf.errors import UserError

    if not path or "://" in path:
        return
    if not os.path.exists(path):
        raise UserError(f"data directory {path} does not exist; check --data_dir")
    if not os.path.isdir(path):
        raise UserError(f"--data_dir {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"data directory {path} is not readable (permission denied); check --data_dir")


def configure_randomness(config: Any) -> None:
    """Seed everything and turn on deterministic ops when the config asks."""
    import keras
    import tensorflow as tf

    seed = config.train.seed
    if config.train.deterministic and seed is None:
        seed = 0
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def make_strategy(config: Any) -> Any:
    """The strategy for the flags, with the precision policy set for its device type."""
    from efficientnet_tf import training

    info = training.create_strategy(
        FLAGS.strategy, tpu=FLAGS.tpu, num_gpus=FLAGS.num_gpus, cpu_devices=FLAGS.cpu_devices
    )
    policy = training.precision_policy(config.runtime.mixed_precision, info.device_type)
    training.set_precision(policy)
    return info


def load_source(config: Any) -> Any:
    """The data source the config names (a synthetic stand-in for `synthetic`)."""
    check_data_dir(config.data.data_dir)
    if config.data.dataset == "synthetic":
        return None
    import data

    return data.get_source(
        config.data.dataset,
        config.data.data_dir,
        holdout_fraction=float(config.data.holdout_fraction),
        seed=int(config.data.split_seed),
    )


SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_IMAGES = 1280


def dataset_functions(config: Any, source: Any) -> tuple[Any, Any]:
    """(train, eval) dataset functions of an input context, batched per replica."""
    from efficientnet_tf import training

    size = int(config.model.image_size)
    batch, eval_batch = int(config.train.batch_size), int(config.eval.batch_size)
    if source is None:
        classes = int(config.model.num_classes)
        seed = int(config.train.seed or 0)
        return (training.synthetic_dataset_fn(size, classes, batch, seed=seed),
                training.synthetic_dataset_fn(size, classes, eval_batch, seed=seed, eval=True, eval_examples=256))
    import data

    d = config.data

    def train_fn(context: Any) -> Any:
        return data.build_train_dataset(
            source,
            image_size=size,
            batch_size=context.get_per_replica_batch_size(batch),
            resize_method=d.resize_method,
            augment=d.augment,
            randaug_num_layers=int(d.randaug_num_layers),
            randaug_magnitude=float(d.randaug_magnitude),
            mixup_alpha=float(d.mixup_alpha),
            cutmix_alpha=float(d.cutmix_alpha),
            seed=config.train.seed if config.train.seed is not None else (0 if config.train.deterministic else None),
            deterministic=bool(config.train.deterministic),
            cache=bool(d.cache),
            input_context=context,
            min_crop_area=float(d.min_crop_area),
        )

    def eval_fn(context: Any) -> Any:
        return data.build_eval_dataset(
            source,
            image_size=size,
            batch_size=context.get_per_replica_batch_size(eval_batch),
            resize_method=d.resize_method,
            input_context=context,
        )

    return train_fn, eval_fn


def resolve_training_config(config: Any, info: Any) -> tuple[Any, Any, list[str]]:
    """Resolve a layered config against its data source; returns (config, source, class names)."""
    import hparams
    from efficientnet_tf import training

    source = load_source(config)
    if source is None:
        classes = int(config.model.num_classes or SYNTHETIC_CLASSES)
        names = [f"class_{i}" for i in range(classes)]
        num_train = SYNTHETIC_TRAIN_IMAGES
    else:
        names, num_train, classes = list(source.class_names), int(source.num_train), int(source.num_classes)
    config = hparams.resolve(config, num_classes=classes, num_train=num_train)
    config.runtime.mixed_precision = training.precision_policy(config.runtime.mixed_precision, info.device_type)
    config.runtime.jit_compile = str(training.use_xla(config.runtime.jit_compile, info.device_type)).lower()
    training.check_batch_size(int(config.train.batch_size), info)
    return config, source, names


def prepare_model_dir(config: Any, model_dir: str, class_names: list[str], is_chief: bool) -> None:
    """Check model_dir, refuse to mix runs of different models, write config.yaml and labels.txt."""
    import tensorflow as tf

    import hparams
    from efficientnet_tf import training
    from efficientnet_tf.errors import UserError

    check_writable_dir(model_dir)
    existing = os.path.join(model_dir, hparams.RESOLVED_CONFIG_NAME)
    if tf.io.gfile.exists(existing):
        previous = hparams.load_config(existing)
        changed = {k: v for k, v in hparams.differences(previous, config).items() if k.startswith("model.")}
        if changed and tf.train.latest_checkpoint(training.checkpoint_dir(model_dir)):
            key, (old, new) = next(iter(changed.items()))
            raise UserError(
                f"{model_dir} holds a run with {key}={old}, this command has {new}; "
                "use another --model_dir or the same settings to resume"
            )
        other = hparams.differences(previous, config)
        if other:
            logging.info("Config changed since the last run in %s: %s", model_dir,
                         ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in list(other.items())[:8]))
    if is_chief:
        hparams.save_config(config, model_dir)
        training.write_labels(model_dir, class_names)


def run_train(mode: str) -> int:
    """--mode=train / train_and_eval."""
    _import_tensorflow()
    from efficientnet_tf import training

    layered = layered_config()
    configure_randomness(layered)
    info = make_strategy(layered)
    config, source, class_names = resolve_training_config(layered, info)
    model_dir = FLAGS.model_dir or default_model_dir(config)
    prepare_model_dir(config, model_dir, class_names, info.is_chief)
    train_fn, eval_fn = dataset_functions(config, source)
    evaluating = mode == "train_and_eval"
    start_logging()
    logging.info("Training %s on %s (%d classes, %d px) for %d steps of %d images, %s, %s, into %s",
                 config.model.name, config.data.dataset, config.model.num_classes, config.model.image_size,
                 config.train.train_steps, config.train.batch_size, info.describe(),
                 config.runtime.mixed_precision, model_dir)
    trainer = training.Trainer(config, info, model_dir, train_dataset_fn=train_fn,
                               eval_dataset_fn=eval_fn if evaluating else None, init_weights=FLAGS.init_weights)
    result = trainer.train(eval_every_epochs=int(config.train.eval_every_epochs) if evaluating else None)
    if source is not None and source.bad_files:
        logging.warning("%d unreadable item(s) were skipped, e.g. %s", len(source.bad_files), source.bad_files[0])
    if info.is_chief:
        print(training_report(config, model_dir, result))
    return 0


def training_report(config: Any, model_dir: str, result: Any) -> str:
    """What the user sees at the end of training: accuracy, where things are, what to run next."""
    from efficientnet_tf import training

    lines = [f"Trained {config.model.name} on {config.data.dataset} to step {result.step}."]
    if result.train_metrics:
        lines.append(f"  last training window: loss {result.train_metrics['loss']:.4f}, "
                     f"top-1 {100 * result.train_metrics['top1']:.1f}%")
    if result.eval_metrics:
        m = result.eval_metrics
        weights = "EMA weights" if float(config.train.ema_decay) > 0 else "final weights"
        lines.append(f"  eval ({int(m['examples'])} held-out images, {weights}): top-1 {100 * m['top1']:.2f}%, "
                     f"top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}")
    lines += [
        f"  checkpoints:      {result.checkpoint}" + (f" (best: {result.best_checkpoint})" if result.best_checkpoint else ""),
        f"  TensorBoard logs: {training.logs_dir(model_dir)}",
        f"  config:           {os.path.join(model_dir, training.CONFIG_FILE)}",
        "Next:",
        f"  tensorboard --logdir {training.logs_dir(model_dir)}",
        f"  python main.py --mode=eval --model_dir={model_dir}",
        f"  python main.py --mode=export --model_dir={model_dir}",
        f"  python main.py --mode=predict --model_dir={model_dir} --image=<photo.jpg>",
    ]
    return "\n".join(lines)


def _eval_config(model_dir: str) -> Any:
    """The run's config.yaml with this command's --hparams and data/batch flags on top."""
    import hparams
    from efficientnet_tf.errors import UserError

    config = hparams.load_config(model_dir)
    for flag in ("model", "dataset"):
        key = FLAG_TO_KEY[flag]
        section, name = key.split(".")
        if FLAGS[flag].present and FLAGS[flag].value != config[section][name]:
            raise UserError(f"--{flag}={FLAGS[flag].value} but {model_dir} was trained with {config[section][name]}; "
                            f"drop --{flag}")
    hparams.apply_overrides(config, FLAGS.hparams)
    if FLAGS.data_dir:
        config.data.data_dir = FLAGS.data_dir
    if FLAGS.batch_size:
        config.eval.batch_size = FLAGS.batch_size
    return config


def _require_model_dir() -> str:
    from efficientnet_tf.errors import UserError

    if FLAGS.model_dir:
        return FLAGS.model_dir
    import hparams

    guess = default_model_dir(layered_config())
    if os.path.exists(guess):
        return guess
    raise UserError(f"--mode={FLAGS.mode} needs --model_dir (the directory a training run wrote)")


def run_eval() -> int:
    """--mode=eval: evaluate the latest, best or given checkpoint (or keep evaluating new ones)."""
    _import_tensorflow()
    from efficientnet_tf import training
    from efficientnet_tf.errors import UserError

    model_dir = _require_model_dir()
    config = _eval_config(model_dir)
    info = make_strategy(config)
    source = load_source(config)
    if source is not None and int(source.num_classes) != int(config.model.num_classes):
        raise UserError(f"dataset {config.data.dataset} has {source.num_classes} classes but the model in "
                        f"{model_dir} has {config.model.num_classes}")
    _, eval_fn = dataset_functions(config, source)
    start_logging()
    metrics = training.evaluate_checkpoints(
        config, info, model_dir, eval_fn, checkpoint=FLAGS.checkpoint, continuous=bool(config.eval.continuous),
        timeout_seconds=float(config.eval.timeout_seconds), poll_seconds=float(config.eval.poll_seconds),
    )
    if info.is_chief:
        print(f"Eval of {config.model.name} at step {int(metrics['step'])} on {int(metrics['examples'])} images: "
              f"top-1 {100 * metrics['top1']:.2f}%, top-5 {100 * metrics['top5']:.2f}%, loss {metrics['loss']:.4f}")
        print(f"  results: {os.path.join(model_dir, 'eval_results.json')}; "
              f"TensorBoard: {training.logs_dir(model_dir)}")
    return 0


def _import_export() -> Any:
    from efficientnet_tf.errors import UserError

    try:
        import export
    except ImportError as error:
        raise UserError(f"the exporter is not available in this installation ({error})") from None
    return export


def run_export_mode() -> int:
    """--mode=export: SavedModel and TFLite artifacts from a checkpoint's EMA weights, verified."""
    _import_tensorflow()
    import numpy as np

    from efficientnet_tf import training

    export = _import_export()
    model_dir = _require_model_dir()
    model, config, class_names = training.restore_for_inference(model_dir, FLAGS.checkpoint)
    if FLAGS.data_dir:
        config.data.data_dir = FLAGS.data_dir
    source = load_source(config)
    size, method = int(config.model.image_size), str(config.data.resize_method)
    calibration = eval_images = eval_labels = None
    if source is not None:
        import data

        calibration = data.sample_images(source, int(FLAGS.export_calibration_images), size, method).numpy()
        images, labels = [], []
        wanted = int(FLAGS.export_eval_images)
        evaluation = data.build_eval_dataset(source, image_size=size, batch_size=50, resize_method=method)
        for batch_images, batch_labels in evaluation.take(-(-wanted // 50)):
            images.append(batch_images.numpy())
            labels.append(batch_labels.numpy())
        eval_images, eval_labels = np.concatenate(images)[:wanted], np.concatenate(labels)[:wanted]
    kwargs: dict[str, Any] = {}
    if FLAGS.export_formats:
        kwargs["formats"] = FLAGS.export_formats
    start_logging()
    export_dir = FLAGS.export_dir or os.path.join(model_dir, "export")
    report = export.run_export(model, class_names=class_names or [], image_size=size, resize_method=method,
                               export_dir=export_dir, representative_images=calibration,
                               eval_images=eval_images, eval_labels=eval_labels, **kwargs)
    print(export.format_report(report))
    print(f"Artifacts in {export_dir}")
    return 0


def run_predict_mode() -> int:
    """--mode=predict: top-5 classes of each --image with a model_dir, SavedModel, .tflite or .keras."""
    _import_tensorflow()
    export = _import_export()
    path = FLAGS.checkpoint if FLAGS.checkpoint and not FLAGS.checkpoint.startswith(("latest", "best")) else None
    path = path or _require_model_dir()
    start_logging()
    results = export.run_predict(path, list(FLAGS.image), top_k=5)
    print(export.format_predictions(list(FLAGS.image), results))
    return 0


def run_summary() -> int:
    """--mode=summary: every variant's (or --model's) resolution, width, depth, parameters and MAdds."""
    _import_tensorflow()
    from efficientnet_tf import scaling
    from efficientnet_tf.counting import summary_table

    names = None
    if FLAGS.model:
        scaling.get_variant(FLAGS.model)  # an unknown name is a one-line error before any building
        names = (FLAGS.model,)
    print(summary_table(names))
    return 0


def run_mode(mode: str) -> int:
    """Dispatch --mode."""
    return {
        "train": lambda: run_train("train"),
        "train_and_eval": lambda: run_train("train_and_eval"),
        "eval": run_eval,
        "export": run_export_mode,
        "predict": run_predict_mode,
        "summary": run_summary,
    }[mode]()


def main(argv: list[str]) -> int:
    """absl entry point: run the mode, turning expected failures into one line and an exit status."""
    if len(argv) > 1:
        raise CommandError(f"unexpected argument(s) {' '.join(argv[1:])!r}; options are --flags (see --help)",
                           EXIT_FLAGS_ERROR)
    if not FLAGS["verbosity"].present:
        # Quiet until the inputs are checked, so that a mistake is reported in exactly one line.
        logging.set_verbosity(logging.WARNING)
        logging.get_absl_handler().addFilter(_drop_tensorflow_info)
    try:
        return run_mode(FLAGS.mode)
    except KeyboardInterrupt:
        raise CommandError("interrupted; run the same command again to resume from the last checkpoint",
                           EXIT_INTERRUPTED) from None
    except Exception as error:  # noqa: BLE001 - sorted into user-facing lines below
        raise _as_command_error(error) from None


def _drop_tensorflow_info(record: Any) -> bool:
    """Keep TensorFlow's own INFO chatter (e.g. checkpoint sharding timings) out of the run's log."""
    return record.levelno > 20 or f"{os.sep}tensorflow{os.sep}" not in record.pathname


def _as_command_error(error: Exception) -> Exception:
    """Map expected failures to a one-line CommandError; leave real bugs alone (with traceback)."""
    import tensorflow as tf

    from efficientnet_tf.errors import UserError
    from efficientnet_tf.training import NonFiniteLossError

    if isinstance(error, CommandError):
        return error
    if isinstance(error, NonFiniteLossError):
        return CommandError(f"training stopped: {_one_line(str(error))}", EXIT_DIVERGED)
    if isinstance(error, UserError):
        return CommandError(_one_line(str(error)))
    if isinstance(error, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
        name = f" {error.filename}" if getattr(error, "filename", None) else ""
        return CommandError(f"{error.strerror or type(error).__name__}:{name}")
    if isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)):
        return CommandError(_one_line(error.message))
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return CommandError("out of memory: " + _one_line(error.message)[:200] + "; use a smaller --batch_size")
    return error


def parse_flags(argv: list[str]) -> list[str]:
    """Parse flags, reporting a bad flag or value in one line (absl would print two)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"{os.path.basename(argv[0])}: {_one_line(str(error))}\n")
        sys.exit(EXIT_FLAGS_ERROR)


def _main_or_exit(argv: list[str]) -> None:
    try:
        status = main(argv)
    except CommandError as error:
        sys.stderr.write(f"error: {error}\n")
        sys.stderr.flush()
        sys.exit(error.status)
    sys.exit(status)


def run() -> None:
    """Console-script entry point."""
    app.run(_main_or_exit, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
