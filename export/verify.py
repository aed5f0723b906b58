"""Fidelity of exported artifacts against the Keras model: one row per artifact and runtime (agreement,
accuracy, probabilities, latency), each judged by its format's acceptance rule, and the report as a table.

Float files are judged by their probabilities (float32, SavedModel, ONNX, ...) or top-1 agreement
(float16); files with 8-bit weights (dynamic-range and int8) by accuracy on the labelled eval images. The
MediaPipe rows ("mediapipe:<format>") follow their format's rule on the uint8 frames an app feeds it,
against Keras on the same frames. The rules live with the formats (efficientnet_tf/export/formats).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from efficientnet_tf.export import registry
from efficientnet_tf.export.formats.base import VerifyInputs, compare, single_image_ms
from efficientnet_tf.export.formats.litert import MEDIAPIPE_PREFIX
from efficientnet_tf.export.formats.saved_model import BYTES_ROW
from efficientnet_tf.export.keras_model import keras_probabilities, probabilities_fn

FLOAT_START_ROW = "keras float start"  # a quantisation-aware model's float start: for comparison, no limit


def format_of_row(name: str) -> str | None:
    """The export format a report row belongs to ("mediapipe:tflite_int8" -> tflite_int8); None for keras."""
    name = name.removeprefix(MEDIAPIPE_PREFIX)
    if name == BYTES_ROW:
        return "saved_model"
    return name if name in registry.FORMAT_MODULES else None


def acceptance(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
    """Whether a row meets its format's acceptance limit, and the limit in words ("" for the Keras row)."""
    name = format_of_row(row["format"])
    if name is None:
        return True, ""
    return registry.get(name).acceptance(row, keras_accuracy)


def keras_row(model: keras.Model, inputs: VerifyInputs) -> dict:
    """The reference row: the Keras model itself, its size and latency."""
    fn = tf.function(probabilities_fn(model, inputs.probabilities), reduce_retracing=True)
    return {
        "format": "keras", "path": None,
        "size_bytes": int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights)),
        **compare(inputs.reference, inputs.reference, inputs.labels),
        "latency_ms": single_image_ms(lambda x: fn(tf.constant(x, tf.float32)), inputs.images),
        "runtime": "tensorflow",
    }


def verify_artifacts(
    model: keras.Model,
    artifacts: dict[str, str],
    *,
    probabilities: bool,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    jpeg_bytes: Sequence[bytes] | None = None,
    jpeg_labels: np.ndarray | None = None,
    image_size: int,
    resize_method: str,
    class_names: list[str] | None = None,
    start: np.ndarray | None = None,
) -> list[dict]:
    """The Keras row, then each artifact's rows, then the rows of other programs loading them (MediaPipe),
    each judged by its format's rule."""
    inputs = VerifyInputs(model, probabilities, images, keras_probabilities(model, images, probabilities), labels,
                          jpeg_bytes, jpeg_labels, image_size, resize_method, list(class_names or []), start)
    rows = [keras_row(model, inputs)]
    for name, path in artifacts.items():
        started = time.time()
        fmt = registry.get(name)
        rows += fmt.verify(path, inputs)
        logging.info("Verified %s in %.1fs", name, time.time() - started)
    for name, path in artifacts.items():
        fmt = registry.get(name)
        if fmt.clients is not None:
            rows += fmt.clients(path, inputs)
    judge(rows)
    if start is not None:  # for comparison only, after judging: it has no limit
        rows.insert(1, {"format": FLOAT_START_ROW, "path": None, **compare(inputs.reference, start, labels),
                        "runtime": "tensorflow (the float model it started from)", "check": "", "passed": True})
    return rows


def judge(rows: list[dict]) -> None:
    """Set each row's `check` (its limit in words) and `passed`; a warning for each row outside its limit."""
    keras_accuracy = next((row["accuracy"] for row in rows if row["format"] == "keras"), None)
    for row in rows:
        ok, limit = acceptance(row, keras_accuracy)
        row["check"] = limit
        row["passed"] = ok
        if not ok:
            logging.warning(
                "%s does not meet its limit (%s): agreement %s, accuracy %s vs Keras %s, max prob diff %s",
                row["format"], limit, row.get("top1_agreement"), row.get("accuracy"), keras_accuracy,
                row.get("max_prob_diff"),
            )  # fmt: skip


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value * 100:.2f}%"
    if kind == "size":
        return f"{value / 2**20:.2f} MB"
    if kind == "diff":
        return f"{value:.2e}"
    if kind == "margin":
        return f"{value:.3f}"
    if kind == "ms":
        return f"{value:.2f}"
    return str(value)


def format_report(report: dict) -> str:
    """The verification report as a fixed-width text table (one row per artifact), then each row's notes.

    "flip margin" is the largest top-1/top-2 probability gap of the Keras model among images whose
    top-1 class the artifact changed ("-" when none changed).
    """
    header = ("format", "size", "top-1 agree", "flip margin", "accuracy", "max |dp|", "ms/image", "runtime", "check")
    lines = []
    for row in report.get("artifacts", []):
        status = "" if not row.get("check") else ("ok" if row.get("passed") else "FAIL") + f" ({row['check']})"
        lines.append((
            row["format"], _fmt(row.get("size_bytes"), "size"), _fmt(row.get("top1_agreement"), "pct"),
            _fmt(row.get("max_flip_margin"), "margin"), _fmt(row.get("accuracy"), "pct"),
            _fmt(row.get("max_prob_diff"), "diff"), _fmt(row.get("latency_ms"), "ms"), row.get("runtime") or "-",
            status,
        ))
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    render = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    title = (
        f"{report.get('model', 'model')} @ {report.get('image_size')} px ({report.get('resize_method')} resize), "
        f"{report.get('num_eval_images')} eval images from {report.get('eval_set')}"
    )
    table = [title, render(header), render(["-" * w for w in widths]), *(render(r) for r in lines)]
    for row in report.get("artifacts", []):
        if row.get("error"):
            table.append(f"{row['format']}: {row['error']}")
        if row.get("start_agreement") is not None:
            table.append(f"{row['format']}: decides as the float model it was trained from (keras float start) on "
                         f"{_fmt(row['start_agreement'], 'pct')} of the eval images")
        name = format_of_row(row["format"])
        if name is not None and registry.get(name).notes is not None:
            table += registry.get(name).notes(row, report)
    if str(report.get("mediapipe", "")).startswith("not installed"):
        table.append(f"MediaPipe: {report['mediapipe']}")
    return "\n".join(table)
