"""int8 for phones: post-training quantisation (PTQ) variants against quantisation-aware training (QAT).

    python benchmarks/quantization.py --model_dir RUN [--model_dir RUN2 ...] [--qat_epochs 1,2,5]
        [--calibration 100,200,800] [--qat_learning_rate 1e-4] [--out runs/quantization_benchmark]
    python benchmarks/quantization.py --plot SUMMARY.json [--plot SUMMARY2.json ...] [--plot_out PNG]

For each trained run (its best checkpoint, else its latest; EMA weights when it has them), on the run's own data
and hold-out images:

- float: the Keras model and its float32 .tflite;
- PTQ int8 (uint8 in/out, as the exporter writes it): per-channel weights calibrated on each
  `--calibration` count of training images (eval preprocessing), per-tensor weights
  (`_experimental_disable_per_channel`) and the legacy (pre-MLIR) quantizer
  (`experimental_new_quantizer=False`) at the largest count, and 16x8 (int16 activations, int8
  weights) for reference: not an int8 file;
- QAT int8: the float model rebuilt with fake quantisation (`efficientnet_tf.models.quantize`)
  and fine-tuned on the run's training data with Adam (`--qat_learning_rate`, cosine decay over
  the longest run, the run's augmentation), batch norm frozen after `--freeze_bn_epochs` and the
  ranges after `--freeze_ranges_epochs`; one file after each of `--qat_epochs`. Once towards the
  labels (with the run's label smoothing) and once towards the float model's probabilities on the
  same batch (distillation: the int8 model learns to decide as the float model does),
  `--qat_targets`.

Each row: hold-out top-1 accuracy of the file (LiteRT, 2 threads), its top-1 agreement with the
float Keras model, for QAT also with its fake-quant Keras model (the simulation's fidelity), the
size, whether every tensor is integer, and the median LiteRT time per image. Writes
`summary.json`, `summary.md` and `quantization.png` under `--out`; `--plot` draws one figure from
the summaries of several benchmarks (each panel names the machine and day it was measured on). The
QAT training loop here is a few lines of GradientTape; the application's training loop runs QAT as a
phase of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import hardware  # noqa: E402  (benchmarks/hardware.py: where the figures were measured)


def _ptq_file(source_dir: str, images, *, per_channel: bool = True, new_quantizer: bool = True,
              int16: bool = False) -> bytes:
    """A post-training quantised flatbuffer of the conversion source, with these converter options."""
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf.export.formats.tflite_int8 import exact_pixel_input
    from efficientnet_tf.export.keras_model import SOURCE_SIGNATURE

    converter = tf.lite.TFLiteConverter.from_saved_model(source_dir, signature_keys=[SOURCE_SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.asarray(image, np.float32)[None]] for image in images)
    if int16:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return converter.convert()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    converter._experimental_disable_per_channel = not per_channel  # noqa: SLF001 - the converter's own switch
    converter.experimental_new_quantizer = new_quantizer
    return exact_pixel_input(converter.convert())


def _measure(name: str, content: bytes, images, labels, float_probs, simulated=None) -> dict:
    """One row: accuracy, agreement with float (and with the simulation), size, integer tensors, latency."""
    import numpy as np

    from efficientnet_tf.export.formats.base import compare
    from efficientnet_tf.export.formats.litert import INTEGER_TYPES, TFLiteModel

    runner = TFLiteModel(content=content)
    probs, seconds = runner.predict(images)
    types = runner.tensor_types()
    row = {"variant": name, "size_bytes": len(content), **compare(float_probs, probs, labels),
           "integer_only": all(t in INTEGER_TYPES for t in types),
           "latency_ms": round(float(np.median(seconds[1:])) * 1000.0, 3) if len(seconds) > 1 else None}
    if simulated is not None:
        row["simulation_agreement"] = compare(simulated, probs, None)["top1_agreement"]
    print(f"  {name}: accuracy {row['accuracy'] * 100:.2f}%, agreement with float {row['top1_agreement'] * 100:.2f}%"
          + (f", with its fake-quant model {row['simulation_agreement'] * 100:.2f}%" if simulated is not None else "")
          + f", {len(content) / 2**20:.2f} MB", flush=True)
    return row


def _qat(model, config, source, args, images, labels, float_probs, targets: str, rows: list[dict], keep) -> None:
    """Fine-tune the QAT model of `model` and measure its int8 file after each of args.qat_epochs, appending
    each row to `rows` and calling `keep()` after it (the summary so far is written as soon as a row exists).

    `targets`: "labels" (the run's labels with its label smoothing) or "float" (the float model's
    probabilities on the same batch: distillation, which keeps the int8 model's decisions the float
    model's)."""
    import keras
    import tensorflow as tf

    from efficientnet_tf.export import qat_tflite
    from efficientnet_tf.models import quantize
    from efficientnet_tf.training import inputs
    from efficientnet_tf.training.phases import QATPhase

    epochs = sorted({float(e) for e in args.qat_epochs.split(",") if e.strip()})
    steps_per_epoch = int(config.train.steps_per_epoch)
    total = int(round(max(epochs) * steps_per_epoch)) if args.max_steps is None else args.max_steps
    marks = {min(total, int(round(e * steps_per_epoch))): e for e in epochs}
    qat = quantize.quantize_model(model, range_momentum=args.range_momentum)
    freeze = [None if e is None else int(round(e * steps_per_epoch)) for e in (args.freeze_bn_epochs,
                                                                             args.freeze_ranges_epochs)]
    phase = QATPhase(qat, *freeze)
    learning_rate = keras.optimizers.schedules.CosineDecay(args.qat_learning_rate, max(total, 1))
    optimizer = keras.optimizers.Adam(learning_rate)
    smoothing = float(config.train.label_smoothing)
    train_fn = inputs.train_dataset_fn(config, source)
    batches = iter(train_fn(tf.distribute.InputContext(), config.derived.stages[0]))

    @tf.function
    def step(images_batch, labels_batch):
        if targets == "float":
            labels_batch = tf.nn.softmax(tf.cast(model(images_batch, training=False), tf.float32), axis=-1)
        with tf.GradientTape() as tape:
            logits = qat(images_batch, training=True)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(
                labels_batch, logits, from_logits=True, label_smoothing=smoothing if targets == "labels" else 0.0))
        optimizer.apply(tape.gradient(loss, qat.trainable_variables), qat.trainable_variables)
        return loss

    started, losses = time.time(), []
    for index in range(total + 1):
        change = phase.update(index)  # variables the traced step reads: no retracing needed
        if change is not None:
            print("  " + change.message, flush=True)
        if index in marks:
            label = (f"QAT int8, {marks[index]:g} epoch{'s' if marks[index] != 1 else ''}"
                     + (", distilled from float" if targets == "float" else ""))
            content = qat_tflite.convert_qat(qat)
            simulated = qat_tflite.simulated_probabilities(qat, images)
            rows.append({**_measure(label, content, images, labels, float_probs, simulated),
                         "qat_steps": index, "qat_seconds": round(time.time() - started, 1)})
            keep()
        if index == total:
            break
        images_batch, labels_batch = next(batches)
        losses.append(float(step(images_batch, labels_batch)))
        if (index + 1) % max(1, steps_per_epoch // 4) == 0:
            print(f"  QAT step {index + 1}/{total}: loss {sum(losses) / len(losses):.4f}", flush=True)
            losses = []


def run_one(model_dir: str, args, keep=lambda result: None) -> dict:
    """Every variant of one trained run; `keep(result so far)` after the post-training rows and each QAT row."""
    import keras
    import numpy as np

    from efficientnet_tf import app, data
    from efficientnet_tf.export.formats import litert, tflite_float32
    from efficientnet_tf.export.keras_model import keras_probabilities, write_conversion_source
    from efficientnet_tf.run_model import restore_for_inference, start_checkpoint
    from efficientnet_tf.rundir import RunDir

    # The checkpoint a QAT run of this run would start from: the best, else the latest.
    model, config, class_names = restore_for_inference(model_dir, start_checkpoint(RunDir(model_dir)),
                                                       classifier_activation=None)
    size, resize = int(config.model.image_size), str(config.data.resize_method)
    source = app.load_source(config)
    images, labels = app.evaluation_arrays(config, source, args.max_eval_images or source.num_eval)
    float_probs = keras_probabilities(model, images, probabilities=False)
    float_accuracy = float(np.mean(np.argmax(float_probs, -1) == labels))
    print(f"{model_dir}: {config.model.name} at {size} px, {len(images)} hold-out images, "
          f"float top-1 {float_accuracy * 100:.2f}%", flush=True)
    rows = [{"variant": "float (Keras)", "accuracy": float_accuracy, "top1_agreement": 1.0,
             "size_bytes": int(sum(np.prod(v.shape) * 4 for v in model.weights))}]
    counts = [] if args.skip_ptq else sorted({int(c) for c in args.calibration.split(",") if c.strip()})
    keras.utils.set_random_seed(args.seed)
    calibration = data.sample_images(source, max(counts), size, resize).numpy() if counts else None
    with tempfile.TemporaryDirectory(prefix="quantization_benchmark_") as tmp:
        src = write_conversion_source(model, os.path.join(tmp, "source"), image_size=size, probabilities=False)
        rows.append(_measure("float32 .tflite", litert.convert(src, "tflite_float32", tflite_float32.configure, None), images, labels, float_probs))
        for count in counts:
            rows.append(_measure(f"PTQ int8, per-channel, {count} calibration images",
                                 _ptq_file(src, calibration[:count]), images, labels, float_probs))
        if counts:
            top = max(counts)
            rows.append(_measure(f"PTQ int8, per-tensor, {top} calibration images",
                                 _ptq_file(src, calibration, per_channel=False), images, labels, float_probs))
            rows.append(_measure(f"PTQ int8, legacy quantizer, {top} calibration images",
                                 _ptq_file(src, calibration, new_quantizer=False), images, labels, float_probs))
            rows.append({**_measure(f"PTQ 16x8 (int16 activations), {top} calibration images",
                                    _ptq_file(src, calibration, int16=True), images, labels, float_probs),
                         "note": "not an int8 file"})
    result = {"model_dir": model_dir, "model": str(config.model.name), "image_size": size,
              "eval_images": int(len(images)), "dataset": str(config.data.dataset), "rows": rows}
    keep(result)
    for targets in [t.strip() for t in args.qat_targets.split(",") if t.strip()]:
        if targets not in ("labels", "float"):
            raise SystemExit(f"--qat_targets takes labels and / or float, not {targets!r}")
        _qat(model, config, source, args, images, labels, float_probs, targets, rows, lambda: keep(result))
    return result


def table(result: dict) -> str:
    """One markdown table of a run's variants."""
    lines = [f"{result['model']} at {result['image_size']} px, {result['eval_images']} hold-out images "
             f"({result['dataset']})", "",
             "| variant | top-1 | vs float | agreement with float | agreement with its fake-quant model | size | "
             "all integer | ms / image |", "|---|---|---|---|---|---|---|---|"]
    base = result["rows"][0]["accuracy"]
    for row in result["rows"]:
        pct = lambda v: "-" if v is None else f"{v * 100:.2f}%"  # noqa: E731
        delta = row["accuracy"] - base
        size = "-" if row.get("size_bytes") is None else f"{row['size_bytes'] / 2**20:.2f} MB"
        lines.append(f"| {row['variant']} | {pct(row['accuracy'])} | {delta * 100:+.2f} | {pct(row.get('top1_agreement'))}"
                     f" | {pct(row.get('simulation_agreement'))} | {size} | "
                     f"{'-' if 'integer_only' not in row else ('yes' if row['integer_only'] else 'no')} | "
                     f"{row.get('latency_ms') or '-'} |")
    return "\n".join(lines)


def plot(summary: dict, path: str) -> str:
    """Accuracy of every variant, one panel per run, float as a dashed line; agreements written beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = summary["results"]
    heights = [0.42 * len(r["rows"]) + 1.4 for r in results]
    fig, axes = plt.subplots(len(results), 1, figsize=(15, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, result in zip(axes[:, 0], results):
        rows = result["rows"][1:]
        accuracy = [r["accuracy"] * 100 for r in rows]
        colors = ["tab:green" if r["variant"].startswith("QAT") else "tab:orange" if r["variant"].startswith("PTQ int8")
                  else "tab:gray" for r in rows]
        base = result["rows"][0]["accuracy"] * 100
        # Dots on a line from float: the differences are tenths of a point, which bars from 0 would hide.
        ax.hlines(range(len(rows)), base, accuracy, color=colors, linewidth=2)
        ax.scatter(accuracy, range(len(rows)), color=colors, s=60, zorder=3)
        ax.axvline(base, color="black", linestyle="--", linewidth=1, label=f"float Keras ({base:.1f}%)")
        for i, r in enumerate(rows):
            text = f"{accuracy[i]:.1f}%   agrees with float on {r['top1_agreement'] * 100:.1f}%"
            if r.get("simulation_agreement") is not None:
                text += f", with its fake-quant model on {r['simulation_agreement'] * 100:.1f}%"
            ax.text(1.01, i, text, va="center", fontsize=8, transform=ax.get_yaxis_transform())
        ax.set_yticks(range(len(rows)), [r["variant"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(max(0.0, min(accuracy + [base]) - 1.5), min(100.0, max(accuracy + [base]) + 1.0))
        ax.set_xlabel("hold-out top-1 accuracy (%), each file's dot on a line from the float model's")
        where = ""
        if result.get("hardware"):
            where = f"; {result['hardware']['cpu_model']} ({result['hardware']['cpu_cores']} cores), {result.get('date')}"
        ax.set_title(f"{result['model']} at {result['image_size']} px, {result['eval_images']} hold-out images{where}",
                     fontsize=10)
        ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("int8 for phones: post-training quantisation (orange) and quantisation-aware training (green)",
                 fontsize=11)
    # Room for the variant names on the left and the agreements on the right of the bars.
    fig.subplots_adjust(left=0.25, right=0.58, top=1 - 0.9 / sum(heights), bottom=0.7 / sum(heights),
                        hspace=1.2 / max(heights))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def merged(paths: list[str]) -> dict:
    """The summaries of several benchmark runs as one, each result carrying its own machine and day."""
    results = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
        for result in summary["results"]:
            results.append({"hardware": summary.get("hardware"), "date": summary.get("date"), **result})
    return {"results": results}


def _write_summary(summary: dict, out: str) -> None:
    """summary.json and summary.md (the command, the machine, one table per run) under `out`."""
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, default=str)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as handle:
        handle.write(f"`{summary['command']}`\n\n{hardware.describe_line(summary['hardware'])}, {summary['date']}\n\n")
        handle.write("\n\n".join(table(r) for r in summary["results"]) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or only redraw its plot) and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", action="append", default=[], help="a trained run (repeat for several)")
    parser.add_argument("--calibration", default="100,200,800", help="PTQ calibration image counts")
    parser.add_argument("--qat_epochs", default="1,2,5", help="QAT files after these many epochs")
    parser.add_argument("--qat_learning_rate", type=float, default=1e-4)
    parser.add_argument("--qat_targets", default="labels,float",
                        help="QAT runs to make: labels (the run's labels) and / or float (distilled from the float "
                             "model's probabilities)")
    parser.add_argument("--skip_ptq", action="store_true", help="only float and QAT")
    parser.add_argument("--freeze_bn_epochs", type=float, default=0.5)
    parser.add_argument("--freeze_ranges_epochs", type=float, default=1.0)
    parser.add_argument("--range_momentum", type=float, default=0.99)
    parser.add_argument("--max_eval_images", type=int, default=None, help="cap the hold-out images (smoke runs)")
    parser.add_argument("--max_steps", type=int, default=None, help="cap the QAT steps (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "runs", "quantization_benchmark"))
    parser.add_argument("--plot", action="append", default=[], metavar="SUMMARY_JSON",
                        help="only draw the plot of these summaries (repeat to put several benchmarks in one figure)")
    parser.add_argument("--plot_out", default=None,
                        help="--plot: the PNG to write (default: quantization.png beside the first summary)")
    args = parser.parse_args(argv)

    if args.plot:
        out = args.plot_out or os.path.join(os.path.dirname(args.plot[0]), "quantization.png")
        print(plot(merged(args.plot), out))
        return 0
    if not args.model_dir:
        parser.error("pass --model_dir RUN (a trained run) at least once")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    machine = hardware.describe()
    print(hardware.describe_line(machine), flush=True)
    started = time.time()
    summary = {"command": "python benchmarks/quantization.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
               "hardware": machine, "date": time.strftime("%Y-%m-%d"), "results": []}
    done: list[dict] = []

    def keep(result: dict) -> None:
        """Write the summary with what is measured so far: an interrupted benchmark keeps every row it made."""
        summary["results"] = done + [result]
        summary["total_seconds"] = round(time.time() - started, 1)
        _write_summary(summary, args.out)

    for model_dir in args.model_dir:
        result = run_one(model_dir, args, keep)
        keep(result)
        done.append(result)
        print(table(result), flush=True)
    print(plot(merged([os.path.join(args.out, "summary.json")]), os.path.join(args.out, "quantization.png")))
    print(f"total {summary['total_seconds'] / 60:.1f} min; summary in {os.path.join(args.out, 'summary.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
