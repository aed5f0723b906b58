"""The evaluation report of one checkpoint: per-class CSV and log table, most-confused pairs,
confusion matrix, reliability diagram and highest-loss grid (PNGs), summary JSON, and the same
pictures in TensorBoard's images tab.

Files, in `<run>/evaluation/step-<N>/`:
    per_class.csv            class, support, predicted, recall, precision, F1
    confused_pairs.csv       true class, predicted class, count, fraction of the true class
    confusion_matrix.png     row-normalised, counts shown (the most confused classes above 100)
    reliability.png          per confidence bin its accuracy (bar) and mean confidence (mark), with the ECE
    top_losses.png           the highest-loss images: true class, predicted class, probability
    top_losses_gradcam.png   the same with Grad-CAM overlays (when asked for)
    summary.json             top-1, ECE, examples and the most-confused pairs
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.evaluation_report import figures
from efficientnet_tf.evaluation_report.records import EvalRecords, most_confused_pairs, per_class_metrics

REPORT_DIR = "evaluation"
CONFUSED_PAIRS = 10


def report_dir(model_dir: str, step: int) -> str:
    """Where the report of the checkpoint at `step` goes."""
    return os.path.join(model_dir, REPORT_DIR, f"step-{int(step)}")


@dataclasses.dataclass
class EvalReport:
    """What was written: the directory, the pictures and the headline figures."""

    directory: str
    pictures: dict[str, figures.Picture]
    ece: float
    pairs: list[tuple[int, int, int, float]]


def class_names_for(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The run's class names, or class_<i> when they are missing or do not match the model."""
    if class_names and len(class_names) == num_classes:
        return list(class_names)
    return [f"class_{i}" for i in range(num_classes)]


# Printed under the per-class table, so that nobody reads a column as something it is not.
COLUMNS_NOTE = ("recall: share of the class's images classified as it (per-class accuracy); precision: share of "
                "the images classified as the class that are it; F1: their harmonic mean")


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def per_class_table(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The per-class figures as an aligned text table (percentages), with what each column means."""
    figures = per_class_metrics(matrix)
    width = max([len("class")] + [len(n) for n in class_names])
    lines = [f"{'class'.ljust(width)}  {'images':>6}  {'recall':>6}  {'precision':>9}  {'F1':>6}"]
    for i, name in enumerate(class_names):
        lines.append(f"{name.ljust(width)}  {figures['support'][i]:>6d}  {_percent(figures['recall'][i]):>6}  "
                     f"{_percent(figures['precision'][i]):>9}  {_percent(figures['f1'][i]):>6}")
    return "\n".join(lines + [COLUMNS_NOTE])


def lowest_recall(matrix: np.ndarray, class_names: Sequence[str], k: int = 3) -> str:
    """The `k` classes with the lowest recall, e.g. "church 20.0%, gas pump 20.0%" (classes without images skipped)."""
    recall = per_class_metrics(matrix)["recall"]
    order = [i for i in np.argsort(recall, kind="stable") if not math.isnan(recall[i])][: int(k)]
    return ", ".join(f"{class_names[i]} {_percent(recall[i])}" for i in order) or "none"


def per_class_csv(matrix: np.ndarray, class_names: Sequence[str]) -> str:
    """The per-class figures as CSV text (fractions; empty where undefined)."""
    figures = per_class_metrics(matrix)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["class_id", "class", "support", "predicted", "recall", "precision", "f1"])
    for i, name in enumerate(class_names):
        writer.writerow([i, name, int(figures["support"][i]), int(figures["predicted"][i])] +
                        ["" if math.isnan(figures[k][i]) else f"{figures[k][i]:.6f}"
                         for k in ("recall", "precision", "f1")])
    return out.getvalue()


def _write_text(path: str, text: str) -> None:
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(text)


def write_report(records: EvalRecords, class_names: Sequence[str] | None, directory: str, *, step: int,
                 heatmaps: Sequence[np.ndarray] | None = None, writer=None, log_table: bool = True) -> EvalReport:
    """Write every file of the report into `directory`, log the per-class table (`log_table`; otherwise
    one summary line), and (with a tf.summary `writer`) put the pictures into TensorBoard at `step`."""
    names = class_names_for(class_names, records.num_classes)
    os.makedirs(directory, exist_ok=True)
    matrix = records.confusion()
    calib = records.calibration()
    pairs = most_confused_pairs(matrix, CONFUSED_PAIRS)
    _write_text(os.path.join(directory, "per_class.csv"), per_class_csv(matrix, names))
    rows = ["true_id,true_class,predicted_id,predicted_class,count,fraction_of_true_class"]
    rows += [f"{t},{json.dumps(names[t])},{p},{json.dumps(names[p])},{n},{f:.6f}" for t, p, n, f in pairs]
    _write_text(os.path.join(directory, "confused_pairs.csv"), "\n".join(rows) + "\n")
    top1 = float(np.trace(matrix) / max(1, matrix.sum()))
    pictures = {
        "confusion_matrix": figures.confusion_matrix_png(matrix, names, os.path.join(directory, "confusion_matrix.png"),
                                                       title=f"Confusion matrix at step {step}"),
        "reliability": figures.reliability_png(calib, os.path.join(directory, "reliability.png"),
                                             title=f"Reliability at step {step}"),
    }
    examples = records.top_losses()
    if examples:
        pictures["top_losses"] = figures.top_losses_png(examples, names, os.path.join(directory, "top_losses.png"))
        if heatmaps is not None:
            pictures["top_losses_gradcam"] = figures.top_losses_png(
                examples, names, os.path.join(directory, "top_losses_gradcam.png"), heatmaps=heatmaps)
    summary = {
        "step": int(step), "examples": int(matrix.sum()), "top1": top1, "ece": calib.ece,
        "calibration_bins": len(calib.counts),
        "most_confused": [{"true": names[t], "predicted": names[p], "count": n, "fraction": f} for t, p, n, f in pairs],
        "files": sorted([os.path.basename(p.path) for p in pictures.values()] +
                        ["per_class.csv", "confused_pairs.csv", "summary.json"]),
    }
    _write_text(os.path.join(directory, "summary.json"), json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    pair_text = "; ".join(f"{names[t]} -> {names[p]} {n}x" for t, p, n, _ in pairs[:5]) or "none"
    if log_table:
        logging.info("Per-class results at step %d (%d images, ECE %.2f%%):\n%s\nMost confused: %s\nReport: %s",
                     step, int(matrix.sum()), 100 * calib.ece, per_class_table(matrix, names), pair_text, directory)
    else:
        logging.info("Evaluation report at step %d: ECE %.2f%%; lowest recall: %s; most confused: %s; in %s", step,
                     100 * calib.ece, lowest_recall(matrix, names), pair_text.split("; ")[0], directory)
    if writer is not None:
        write_summaries(writer, step, pictures)
    return EvalReport(directory, pictures, calib.ece, pairs)


def write_summaries(writer, step: int, pictures: dict[str, figures.Picture]) -> None:
    """The pictures as TensorBoard images (eval/<name>) at `step`; a failure costs the images only."""
    try:
        with writer.as_default(step=int(step)):
            for name, picture in pictures.items():
                tf.summary.image(f"eval/{name}", picture.pixels[None], max_outputs=1)
        writer.flush()
    except (tf.errors.OpError, OSError) as error:
        logging.warning("Could not write the evaluation pictures to TensorBoard: %s", str(error).splitlines()[0])
