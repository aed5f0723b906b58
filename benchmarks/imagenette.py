"""EfficientNet-B0 from scratch on Imagenette at 128 px: our recipe vs keras.applications + Adam.

    python benchmarks/imagenette.py [--data ../shared/data] [--epochs 5] [--image_size 128]
                                    [--hparams hparams/imagenette.yaml] [--model efficientnet-b0]
                                    [--skip_keras] [--tag T]
    python benchmarks/imagenette.py --plot out/imagenette/results-A.json out/imagenette/results-B.json

Extracts `imagenette2-224sq-train.tar` (the Imagenette TRAIN split) from the shared data folder
(default `../shared/data` beside the repository) into `--work_dir`, holds out a seeded 10% of
each class (the config's data.holdout_fraction and data.split_seed) and trains, on the same input pipeline and
the same budget (epochs, batch size, resolution):

1. ours: `efficientnet_tf.app.train` (the same call as `python main.py`) with the short-schedule
   recipe of `--hparams` (everything else is the reference recipe's defaults) on `--model`
   (EfficientNet-B0 unless told otherwise);
2. keras.applications.EfficientNetB0 (weights=None) compiled with Adam(1e-3) and trained by
   `Model.fit`, the usual Keras baseline.

Prints hold-out top-1 after every epoch for both and writes `<work_dir>/results-<tag>.json`
(`--tag`, default `<epochs>ep`).
Exits 0 with a message when the archive is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

ARCHIVE_NAME = "imagenette2-224sq-train.tar"
TRAIN_SUBDIR = os.path.join("imagenette2-224sq", "train")
LEADERBOARD_5_EPOCHS_128PX = 85.8  # best 5-epoch, 128 px entry of the fast.ai Imagenette leaderboard (top-1 %)


def extract(archive: str, work_dir: str) -> str:
    """Extract the archive once (a marker file records completion); returns the train folder."""
    root = os.path.join(work_dir, TRAIN_SUBDIR)
    marker = os.path.join(work_dir, ".extracted")
    if not os.path.exists(marker):
        os.makedirs(work_dir, exist_ok=True)
        print(f"Extracting {archive} into {work_dir} ...", flush=True)
        with tarfile.open(archive) as tar:
            tar.extractall(work_dir, filter="data")
        with open(marker, "w") as handle:
            handle.write(archive + "\n")
    return root


def build_config(args: argparse.Namespace, dataset: str):
    """Our config: defaults, then the short-schedule recipe file, then this benchmark's budget."""
    from efficientnet_tf import app

    flags = {"model.name": args.model, "data.dataset": dataset, "train.epochs": float(args.epochs),
             "model.image_size": args.image_size, "train.seed": args.seed}
    if args.batch_size:
        flags["train.batch_size"] = args.batch_size
    if args.train_steps:
        flags["train.train_steps"] = args.train_steps
    return app.layered_config([args.hparams, *args.override], flags)


def run_ours(config, model_dir: str) -> dict:
    """Train through the application layer; returns per-epoch hold-out top-1 and timing."""
    from efficientnet_tf import app

    began, began_cpu = time.time(), time.process_time()
    outcome = app.train(config, model_dir=model_dir, evaluate=True)
    seconds, cpu_seconds = time.time() - began, time.process_time() - began_cpu
    result, resolved = outcome.result, outcome.config
    spe = int(resolved.train.steps_per_epoch)
    history = outcome.run.read_eval_history()
    return {
        "top1": result.eval_metrics["top1"],
        "top5": result.eval_metrics["top5"],
        "per_epoch_top1": {f"{h['step'] / spe:g}": h["top1"] for h in history},
        # Time to accuracy: hold-out top-1 after each epoch and the wall time (training + evals) it took.
        "curve": [{"epoch": h["step"] / spe, "top1": h["top1"], "wall_seconds": h.get("wall_seconds"),
                   "cpu_seconds": h.get("cpu_seconds")} for h in history],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "train_images_per_second": result.train_metrics.get("images_per_second"),
        "model_dir": model_dir,
    }


def run_keras(config, source) -> dict:
    """keras.applications.EfficientNetB0 + Adam(1e-3) + Model.fit on the same pipeline and budget."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import training

    keras.utils.set_random_seed(int(config.train.seed or 0))
    size, classes = int(config.model.image_size), int(config.model.num_classes)
    train_fn = training.inputs.train_dataset_fn(config, source)
    eval_fn = training.inputs.eval_dataset_fn(config, source)
    train_data = train_fn(tf.distribute.InputContext(), config.derived.stages[0])
    eval_data = eval_fn(tf.distribute.InputContext()).map(lambda x, y: (x, tf.one_hot(y, classes)))
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3), classes=classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                  metrics=["categorical_accuracy", keras.metrics.TopKCategoricalAccuracy(5, name="top5")],
                  jit_compile=bool(tf.config.list_physical_devices("GPU")))
    spe = min(int(config.train.steps_per_epoch), int(config.train.train_steps))
    epochs = max(1, round(int(config.train.train_steps) / spe))
    began = time.time()
    history = model.fit(train_data, epochs=epochs, steps_per_epoch=spe, validation_data=eval_data, verbose=0,
                        shuffle=False, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: print(
                            f"  keras epoch {e + 1}: hold-out top-1 {100 * logs['val_categorical_accuracy']:.2f}%",
                            flush=True))]).history
    per_epoch = {str(i + 1): float(v) for i, v in enumerate(history["val_categorical_accuracy"])}
    top1, top5 = history["val_categorical_accuracy"][-1], history["val_top5"][-1]
    return {"top1": float(top1), "top5": float(top5), "per_epoch_top1": per_epoch, "seconds": time.time() - began}


def plot_curves(paths: list[str], out: str) -> str:
    """Hold-out top-1 against wall time (and process CPU time, where recorded) of several results files, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            results = json.load(handle)
        curve = results.get("ours", {}).get("curve") or []
        if curve:
            runs.append((f"{results.get('label') or os.path.basename(path)}: {100 * curve[-1]['top1']:.1f}%", curve))
    # A second panel against CPU time when every run recorded it: on a shared machine wall time depends on the others.
    axes_keys = [("wall_seconds", "wall time (minutes, training + evaluations)")]
    if runs and all(c.get("cpu_seconds") is not None for _, curve in runs for c in curve):
        axes_keys.append(("cpu_seconds", "process CPU time (minutes, all threads)"))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6.5 * len(axes_keys), 4), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], axes_keys):
        for label, curve in runs:
            ax.plot([0] + [c[key] / 60 for c in curve], [10] + [100 * c["top1"] for c in curve], "o-", label=label)
        ax.axhline(LEADERBOARD_5_EPOCHS_128PX, color="gray", linestyle="--", linewidth=1,
                   label=f"fast.ai leaderboard, 5 epochs at 128 px: {LEADERBOARD_5_EPOCHS_128PX}%")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("hold-out top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("EfficientNet from scratch on Imagenette (947 hold-out photos)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both trainings and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data"),
                        help="folder holding imagenette2-224sq-train.tar")
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "out", "imagenette"),
                        help="extraction and run directory")
    parser.add_argument("--model", default="efficientnet-b0", help="ours: any model name of the library "
                        "(the keras.applications baseline is always EfficientNetB0)")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--train_steps", type=int, default=None, help="stop early (smoke tests)")
    parser.add_argument("--hparams", default=os.path.join(REPO_ROOT, "hparams", "imagenette.yaml"))
    parser.add_argument("--override", action="append", default=[], help="extra dotted hparams overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_keras", action="store_true")
    parser.add_argument("--skip_ours", action="store_true")
    parser.add_argument("--tag", default=None, help="names the run directory and results file "
                        "(default: <epochs>ep)")
    parser.add_argument("--label", default=None, help="the run's name in plots (default: the tag)")
    parser.add_argument("--plot", nargs="+", metavar="RESULTS_JSON", default=None,
                        help="only plot time-to-accuracy curves of earlier results files into --plot_out")
    parser.add_argument("--plot_out", default=None, help="the plot's file (default: <work_dir>/time_to_accuracy.png)")
    args = parser.parse_args(argv)
    if args.plot:
        print(plot_curves(args.plot, args.plot_out or os.path.join(args.work_dir, "time_to_accuracy.png")))
        return 0

    archive = os.path.join(args.data, ARCHIVE_NAME)
    if not os.path.exists(archive):
        print(f"{archive} not found; skipping the Imagenette benchmark (pass --data)")
        return 0
    from absl import logging

    logging.set_verbosity(logging.INFO)
    import keras
    import tensorflow as tf

    from efficientnet_tf import app, hparams

    root = extract(archive, args.work_dir)
    layered = build_config(args, f"folder:{root}")
    source = app.load_source(layered)  # the config's seeded hold-out (data.holdout_fraction, data.split_seed)
    config = hparams.resolve(layered, num_classes=source.num_classes, num_train=source.num_train)
    print(f"Imagenette: {source.num_train} training / {source.num_eval} held-out images, {source.num_classes} "
          f"classes; {config.train.train_steps} steps of {config.train.batch_size} at {config.model.image_size} px; "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores", flush=True)
    machine = hardware.describe()
    print(hardware.describe_line(machine), flush=True)
    results: dict = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": int(config.train.batch_size),
                     "train_images": source.num_train, "holdout_images": source.num_eval,
                     "recipe": os.path.relpath(args.hparams, REPO_ROOT), "overrides": args.override,
                     "hardware": machine}
    tag = args.tag or f"{args.epochs:g}ep"
    results["label"] = args.label or tag
    if not args.skip_ours:
        model_dir = os.path.join(args.work_dir, f"ours-{tag}")
        if tf.io.gfile.exists(model_dir):
            tf.io.gfile.rmtree(model_dir)
        results["ours"] = run_ours(layered, model_dir)
        print(f"ours:  hold-out top-1 {100 * results['ours']['top1']:.2f}% "
              f"({results['ours']['seconds'] / 60:.1f} min)", flush=True)
        keras.backend.clear_session()
    if not args.skip_keras:
        results["keras"] = run_keras(config, source)
        print(f"keras: hold-out top-1 {100 * results['keras']['top1']:.2f}% "
              f"({results['keras']['seconds'] / 60:.1f} min)", flush=True)
    path = os.path.join(args.work_dir, f"results-{tag}.json")
    if os.path.exists(path):  # --skip_ours / --skip_keras runs complete an earlier run's file
        with open(path) as handle:
            earlier = json.load(handle)
        results = {**earlier, **results} if earlier.get("recipe") == results["recipe"] else results
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n{'':8}" + "".join(f"{k:>10}" for k in ("top-1", "top-5", "minutes")))
    for name in ("ours", "keras"):
        if name in results:
            r = results[name]
            print(f"{name:8}{100 * r['top1']:>9.2f}%{100 * r['top5']:>9.2f}%{r['seconds'] / 60:>10.1f}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
