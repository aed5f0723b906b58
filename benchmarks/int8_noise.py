"""How often can an int8 file decide as its float model does? The rounding noise on the file's logits, and
the top-1 agreement that this noise allows on the hold-out photos.

    python benchmarks/int8_noise.py --float_run RUN --tflite FILE [--tflite FILE ...] [--name NAME ...]
        [--target 0.98] [--out runs/int8_noise]
    python benchmarks/int8_noise.py --plot SUMMARY.json [--plot_out PNG]

A photo on which the float model's best two classes are `g` apart in logits is decided otherwise by the
int8 file when the file's rounding moves that gap by more than `g`. With the move of the gap taken as
Gaussian with standard deviation `s`, the photos the file is expected to flip number

    sum over photos of Phi(-g / s)          (Phi: the standard normal distribution function)

`s` is measured per file from the move of each photo's gap (the file's gap between the float model's two
best classes minus the float model's gap; the file's logits are the int8 input of its SOFTMAX,
dequantised), as a robust deviation: 1.4826 times the median absolute deviation, which is the standard
deviation for Gaussian moves. The moves have heavy tails: on confident photos, where logits are large,
rounding moves the gap far without changing the decision, and a root mean square would count those as
the noise near-ties feel. For each file the benchmark prints its top-1 agreement with the float model,
its flips, `s`, the flips the formula expects at that `s` with their spread by chance, and the `s` at
which the expected agreement reaches `--target`: how much quieter a file of this float model would have
to be. The float model's
near-ties set the bar, so the same `s` allows a different agreement on another model. Writes
`summary.json`, `summary.md` and `int8_noise.png` (expected agreement against `s`, each file a dot at its
measured agreement) under `--out`.

The float model is the run's best checkpoint, else its latest (the one a QAT run of it starts from), on
the run's own hold-out photos and preprocessing; give the int8 files of that run and of QAT runs started
from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def top2(float_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The float model's best and second classes per photo and the gap between their logits."""
    order = np.argsort(-np.asarray(float_logits, np.float64), axis=-1, kind="stable")
    first, second = order[:, 0], order[:, 1]
    rows = np.arange(len(order))
    return first, second, float_logits[rows, first] - float_logits[rows, second]


def gap_noise(float_logits: np.ndarray, file_logits: np.ndarray) -> float:
    """The robust deviation (1.4826 x the median absolute deviation) of the move of each photo's gap between
    the float model's two best classes: the file's gap minus the float gap."""
    first, second, gap = top2(float_logits)
    rows = np.arange(len(gap))
    moved = (file_logits[rows, first] - file_logits[rows, second]) - gap
    return float(1.4826 * np.median(np.abs(moved - np.median(moved))))


def flip_chances(gaps: np.ndarray, noise: float) -> np.ndarray:
    """Each photo's chance to change its top-1 when its gap moves by Gaussian noise of this deviation."""
    gaps = np.asarray(gaps, np.float64)
    if noise <= 0:
        return (gaps <= 0) * 0.5
    return np.array([0.5 * math.erfc(g / (noise * math.sqrt(2.0))) for g in gaps])


def expected_flips(gaps: np.ndarray, noise: float) -> float:
    """Photos expected to change their top-1 at this noise."""
    return float(np.sum(flip_chances(gaps, noise)))


def flip_spread(gaps: np.ndarray, noise: float) -> float:
    """The standard deviation of the number of flips at this noise (a sum of independent coin tosses): how far
    one file's count may fall from the expected one by chance."""
    chances = flip_chances(gaps, noise)
    return float(np.sqrt(np.sum(chances * (1.0 - chances))))


def noise_for(gaps: np.ndarray, agreement: float) -> float:
    """The largest noise at which the expected agreement is still `agreement` (bisection)."""
    allowed = (1.0 - agreement) * len(gaps)
    low, high = 0.0, 1.0
    while expected_flips(gaps, high) < allowed and high < 1e3:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if expected_flips(gaps, middle) <= allowed else (low, middle)
    return low


def file_outputs(path: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of a .tflite on float 0..255 images: the logits are the SOFTMAX's input,
    dequantised (the output itself when the file has no SOFTMAX)."""
    from ai_edge_litert.interpreter import Interpreter

    from efficientnet_tf.export import qat_tflite

    interpreter = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    softmax = [op for op in interpreter._get_ops_details() if op["op_name"] == "SOFTMAX"]
    logits_index = softmax[-1]["inputs"][0] if softmax else target["index"]
    logits_detail = next(d for d in interpreter.get_tensor_details() if d["index"] == logits_index)

    def value(detail, raw):
        scale, zero_point = detail["quantization"]
        raw = raw.astype(np.float32)
        return (raw - zero_point) * scale if scale > 0 else raw

    logits, probabilities = [], []
    pixels = qat_tflite.as_file_input(images)
    for image in pixels:
        interpreter.set_tensor(source["index"], image.astype(source["dtype"])[None])  # uint8 pixels, or float
        interpreter.invoke()
        logits.append(value(logits_detail, interpreter.get_tensor(logits_index)))
        probabilities.append(value(target, interpreter.get_tensor(target["index"])))
    return np.concatenate(logits), np.concatenate(probabilities)


def measure(name: str, float_logits: np.ndarray, logits: np.ndarray, probabilities: np.ndarray,
            target: float) -> dict:
    """One file's row: agreement and flips (its output's top-1, as every export report counts them), noise,
    the flips the formula expects at that noise, and the noise the target agreement needs."""
    _, _, gaps = top2(float_logits)
    flips = int(np.sum(np.argmax(probabilities, -1) != np.argmax(float_logits, -1)))
    noise = gap_noise(float_logits, logits)
    return {"name": name, "photos": int(len(gaps)), "flips": flips, "agreement": 1.0 - flips / len(gaps),
            "gap_noise": noise, "expected_flips": expected_flips(gaps, noise), "flip_spread": flip_spread(gaps, noise),
            "noise_for_target": noise_for(gaps, target), "target": target}


def table(summary: dict) -> str:
    """The rows as markdown."""
    target = summary["target"]
    lines = [f"{summary['model']} at {summary['image_size']} px, {summary['photos']} hold-out photos; the float "
             f"model's best two classes are within 0.05 logits on {summary['near_ties']} of them",
             "", "| int8 file | top-1 agreement (flips) | gap noise s | flips expected at s (± one s.d.) "
                 f"| s for {target:.0%} |",
             "|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['name']} | {row['agreement'] * 100:.2f} % ({row['flips']}) | {row['gap_noise']:.3f} | "
                     f"{row['expected_flips']:.1f} ± {row['flip_spread']:.1f} | {row['noise_for_target']:.3f} |")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> str:
    """Expected agreement against the gap noise for this float model, each file a dot at its measurement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = np.asarray(summary["gaps"])
    top = max([0.3] + [1.3 * r["gap_noise"] for r in summary["rows"]])
    grid = np.linspace(0.0, top, 61)
    curve = [100 * (1 - expected_flips(gaps, s) / len(gaps)) for s in grid]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    spread = np.array([100 * flip_spread(gaps, s) / len(gaps) for s in grid])
    ax.plot(grid, curve, color="black", label="expected, from the float model's top-2 gaps")
    ax.fill_between(grid, np.array(curve) - spread, np.array(curve) + spread, color="gray", alpha=0.25,
                    label="± one standard deviation of a single file's count, by chance")
    ax.axhline(100 * summary["target"], color="tab:red", linestyle="--", linewidth=1,
               label=f"{summary['target']:.0%} agreement")
    for i, row in enumerate(summary["rows"]):
        ax.scatter([row["gap_noise"]], [100 * row["agreement"]], s=50, zorder=3, color=f"C{i % 10}",
                   label=f"{row['name']}: {row['agreement'] * 100:.2f} % at s = {row['gap_noise']:.3f}")
    ax.set_xlabel("gap noise s: robust deviation of the move of the float model's top-2 logit gap in the int8 file")
    ax.set_ylabel("top-1 agreement with the float model (%)")
    ax.set_xlim(0, top)
    low = min(curve[-1], min(100 * r["agreement"] for r in summary["rows"])) - 0.5
    ax.set_ylim(max(0.0, low), 100.2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    where = summary.get("hardware") or {}
    ax.set_title(f"{summary['model']} at {summary['image_size']} px, {summary['photos']} hold-out photos"
                 + (f"; {where.get('cpu_model')}, {summary.get('date')}" if where else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Measure the files (or only redraw the plot) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float_run", help="the trained float run the files come from")
    parser.add_argument("--tflite", action="append", default=[], help="an int8 .tflite (repeat for several)")
    parser.add_argument("--name", action="append", default=[], help="a name per --tflite, in order (default: its path)")
    parser.add_argument("--target", type=float, default=0.98, help="the top-1 agreement to find the noise for")
    parser.add_argument("--max_eval_images", type=int, default=None, help="cap the hold-out photos (smoke runs)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "int8_noise"))
    parser.add_argument("--plot", default=None, metavar="SUMMARY_JSON", help="only redraw the plot of this summary")
    parser.add_argument("--plot_out", default=None, help="--plot: the PNG to write (default: beside the summary)")
    args = parser.parse_args(argv)

    if args.plot:
        with open(args.plot, encoding="utf-8") as handle:
            summary = json.load(handle)
        print(plot(summary, args.plot_out or os.path.join(os.path.dirname(args.plot), "int8_noise.png")))
        return 0
    if not args.float_run or not args.tflite:
        parser.error("pass --float_run RUN and at least one --tflite FILE")
    if args.name and len(args.name) != len(args.tflite):
        parser.error(f"--name given {len(args.name)} times for {len(args.tflite)} --tflite files")
    if not 0 < args.target < 1:
        parser.error(f"--target is an agreement between 0 and 1, not {args.target}")
    missing = [path for path in args.tflite if not os.path.isfile(path)]
    if missing:
        parser.error(f"no such file: {missing[0]}")

    import hardware  # benchmarks/hardware.py: where the figures were measured (imports TensorFlow)
    from absl import logging

    from efficientnet_tf import app
    from efficientnet_tf.errors import UserError
    from efficientnet_tf.run_model import restore_for_inference, start_checkpoint
    from efficientnet_tf.rundir import RunDir

    logging.set_verbosity(logging.WARNING)
    try:
        model, config, _ = restore_for_inference(args.float_run, start_checkpoint(RunDir(args.float_run)),
                                                 classifier_activation=None)
        source = app.load_source(config)
        images, _ = app.evaluation_arrays(config, source, args.max_eval_images or source.num_eval)
    except UserError as error:
        raise SystemExit(f"int8_noise.py: --float_run {args.float_run}: {error}") from None
    float_logits = np.concatenate([np.asarray(model(images[i: i + 32], training=False), np.float32)
                                   for i in range(0, len(images), 32)])
    _, _, gaps = top2(float_logits)
    machine = hardware.describe()
    summary = {"command": "python benchmarks/int8_noise.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "hardware": machine, "date": time.strftime("%Y-%m-%d"), "model": str(config.model.name),
               "image_size": int(config.model.image_size), "photos": int(len(images)), "target": args.target,
               "near_ties": int(np.sum(gaps < 0.05)), "gaps": [round(float(g), 5) for g in gaps], "rows": []}
    for index, path in enumerate(args.tflite):
        logits, probabilities = file_outputs(path, images)
        name = args.name[index] if args.name else path
        summary["rows"].append(measure(name, float_logits, logits, probabilities, args.target))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(f"`{summary['command']}`\n\n{hardware.describe_line(machine)}, {summary['date']}\n\n"
                     + table(summary) + "\n")
    print(table(summary))
    print(plot(summary, os.path.join(args.out, "int8_noise.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
