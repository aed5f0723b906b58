"""Augmentation on the host vs in the train step (data.augment_on_device): same recipe, same accuracy?

    python benchmarks/augment_on_device.py [--augment randaugment] [--seed 0] [--epochs E]
                                           [--work_dir out/augment_on_device]

Trains the embedded default (`python main.py`: EfficientNet-B0 from scratch on the 800 embedded
photos, the short-schedule recipe at 96 px) twice through `efficientnet_tf.app.train`, with
`data.augment` (default randaugment: the embedded recipe itself uses none) applied

1. on the host, in the tf.data pipeline (data.augment_on_device=false), and
2. in the replicated train step (data.augment_on_device=true; the host only decodes, crops,
   flips and resizes),

with the same seed, and prints both hold-out top-1 accuracies on the 200 embedded hold-out
images, their difference and its binomial standard error. The two use different random streams,
so they agree only within noise: about ±3.5 points per run at 200 images. Writes
`<work_dir>/results.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)

PLACES = ("host", "device")


def run(place: str, args: argparse.Namespace) -> dict:
    """Train the embedded default with the augmentation on the host or the device; hold-out metrics."""
    import keras

    from efficientnet_tf import app

    overrides = [f"data.augment={args.augment},data.augment_on_device={str(place == 'device').lower()}",
                 "train.image_summary=false", *args.override]
    flags = {"train.seed": args.seed, "train.deterministic": True}
    if args.epochs:
        flags["train.epochs"] = float(args.epochs)
    config = app.layered_config(overrides, flags)
    model_dir = os.path.join(args.work_dir, place)
    if os.path.exists(model_dir):
        import shutil

        shutil.rmtree(model_dir)
    began = time.time()
    outcome = app.train(config, model_dir=model_dir, evaluate=True)
    keras.backend.clear_session()
    metrics = outcome.result.eval_metrics
    return {"top1": metrics["top1"], "top5": metrics["top5"], "examples": int(metrics["examples"]),
            "seconds": time.time() - began, "steps": int(outcome.config.train.train_steps),
            "train_images_per_second": outcome.result.train_metrics.get("images_per_second"),
            "model_dir": model_dir}


def standard_error(top1: float, examples: int) -> float:
    """Binomial standard error of an accuracy measured on `examples` images."""
    return math.sqrt(max(top1 * (1.0 - top1), 1e-12) / max(examples, 1))


def main(argv: list[str] | None = None) -> int:
    """Run both trainings and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--augment", default="randaugment", choices=("autoaugment", "randaugment"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None, help="default: the embedded recipe's")
    parser.add_argument("--override", action="append", default=[], help="extra dotted hparams overrides")
    parser.add_argument("--work_dir", default=os.path.join(REPO_ROOT, "out", "augment_on_device"))
    args = parser.parse_args(argv)

    from absl import logging

    logging.set_verbosity(logging.WARNING)
    os.makedirs(args.work_dir, exist_ok=True)
    results: dict = {"augment": args.augment, "seed": args.seed, "epochs": args.epochs, "overrides": args.override,
                     "hardware": hardware.describe()}
    print(hardware.describe_line(results["hardware"]), flush=True)
    for place in PLACES:
        results[place] = run(place, args)
        r = results[place]
        print(f"{place:6}: hold-out top-1 {100 * r['top1']:.2f}% ({r['examples']} images, {r['steps']} steps, "
              f"{r['seconds'] / 60:.1f} min)", flush=True)
    host, device = results["host"], results["device"]
    difference = device["top1"] - host["top1"]
    error = math.hypot(standard_error(host["top1"], host["examples"]),
                       standard_error(device["top1"], device["examples"]))
    results["difference"], results["difference_standard_error"] = difference, error
    with open(os.path.join(args.work_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\n| {args.augment} | hold-out top-1 | top-5 | minutes |\n|---|---|---|---|")
    for place in PLACES:
        r = results[place]
        print(f"| on the {place} | {100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % | {r['seconds'] / 60:.1f} |")
    print(f"\ndevice − host: {100 * difference:+.1f} points (standard error {100 * error:.1f}; "
          f"{abs(difference) / error:.1f} standard errors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
