"""Fidelity of exported artifacts against the Keras model: agreement, accuracy, probabilities, latency."""

from __future__ import annotations

import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import first_line
from efficientnet_tf.export import common, mediapipe_check, onnx
from efficientnet_tf.export.saved_model import SavedModelPredictor
from efficientnet_tf.export.tflite import LITERT_THREADS, TFLiteModel

# Acceptance limits per format. Float files are judged by their probabilities (float32) or top-1
# agreement (float16). Files with 8-bit weights (dynamic-range and int8) are lossy by design: they
# are judged by accuracy on the labelled eval images, as post-training quantisation is, because a
# model that is unsure of some images (a short fine-tuning) flips a few near-ties between its top
# two classes for half a point of accuracy at most (2% of 200 photos, all within 0.07 probability). MediaPipe
# rows ("mediapipe:<format>") follow the same rules on the uint8 frames an app feeds it, against
# Keras on the same frames.
MAX_PROB_DIFF = {common.SAVED_MODEL: 1e-5, "saved_model_bytes": 1e-5, "tflite_float32": 1e-4, onnx.FORMAT: 1e-4}
MEDIAPIPE_PREFIX = "mediapipe:"
MIN_AGREEMENT = {"tflite_float16": 0.99, MEDIAPIPE_PREFIX + "tflite_float32": 0.99,
                 MEDIAPIPE_PREFIX + "tflite_float16": 0.99}  # fmt: skip
QUANTIZED_WEIGHTS = ("tflite_dynamic", "tflite_int8")
INTEGER_TYPES = ("int8", "uint8", "int16", "int32", "int64")
MAX_QUANTIZED_ACCURACY_DROP = 0.015  # 1.5 points of top-1 accuracy
MIN_QUANTIZED_AGREEMENT_WITHOUT_LABELS = 0.95
LATENCY_IMAGES = 20  # single-image calls timed for TensorFlow runtimes


def _median_ms(seconds: Sequence[float]) -> float | None:
    timed = list(seconds)[1:] if len(seconds) > 1 else list(seconds)  # the first call warms up
    return round(float(np.median(timed)) * 1000.0, 3) if timed else None


def _tf_latency_ms(fn, images: np.ndarray) -> float | None:
    """Median time of single-image calls of a TensorFlow function, in milliseconds."""
    seconds = []
    for image in images[: LATENCY_IMAGES + 1]:
        batch = tf.constant(image[None], tf.float32)
        started = time.perf_counter()
        np.asarray(fn(batch))
        seconds.append(time.perf_counter() - started)
    return _median_ms(seconds)


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray | None) -> dict:
    """Top-1 agreement, probability differences and accuracy of `probs` against `reference`.

    `max_flip_margin` is the largest gap between the reference's top two probabilities among the
    images whose top-1 changed: small values mean the flips are near-ties of an unsure model.
    """
    flipped = np.argmax(probs, -1) != np.argmax(reference, -1)
    ranked = np.sort(reference, axis=-1)
    margins = ranked[:, -1] - ranked[:, -2] if reference.shape[-1] > 1 else np.ones(len(reference))
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    result = {
        "top1_agreement": float(1.0 - np.mean(flipped)) if len(probs) else None,
        "top1_flips": int(flipped.sum()),
        "max_flip_margin": float(margins[flipped].max()) if flipped.any() else None,
        "max_prob_diff": float(diff.max()) if diff.size else None,
        "mean_prob_diff": float(diff.mean()) if diff.size else None,
        "accuracy": None,
    }
    if labels is not None and len(labels) == len(probs):
        result["accuracy"] = float(np.mean(np.argmax(probs, -1) == np.asarray(labels)))
    return result


def acceptance(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
    """Whether a row meets its format's acceptance limit, and the limit in words."""
    fmt = row["format"]
    if row.get("error"):
        return False, "loads and runs"
    if fmt.startswith(MEDIAPIPE_PREFIX) and not row.get("class_names_from_metadata"):
        return False, "class names read back from the metadata"
    if fmt in MAX_PROB_DIFF:
        limit = MAX_PROB_DIFF[fmt]
        return row["max_prob_diff"] is not None and row["max_prob_diff"] <= limit, f"max prob diff <= {limit:g}"
    if fmt in MIN_AGREEMENT:
        limit = MIN_AGREEMENT[fmt]
        return row["top1_agreement"] is not None and row["top1_agreement"] >= limit, f"top-1 agreement >= {limit:.0%}"
    if fmt.removeprefix(MEDIAPIPE_PREFIX) in QUANTIZED_WEIGHTS:
        baseline = row.get("reference_accuracy", keras_accuracy)
        if row["accuracy"] is not None and baseline is not None:
            drop, limit = baseline - row["accuracy"], MAX_QUANTIZED_ACCURACY_DROP
            return drop <= limit + 1e-9, f"accuracy drop <= {limit * 100:g} points"
        limit = MIN_QUANTIZED_AGREEMENT_WITHOUT_LABELS
        return row["top1_agreement"] is not None and row["top1_agreement"] >= limit, f"top-1 agreement >= {limit:.0%}"
    return True, ""


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
) -> list[dict]:
    """One row per artifact (and one for the Keras model) comparing it with the Keras model on `images`."""
    reference = common.keras_probabilities(model, images, probabilities)
    keras_fn = tf.function(common.probabilities_fn(model, probabilities), reduce_retracing=True)
    keras_row = {
        "format": "keras",
        "path": None,
        "size_bytes": int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.weights)),
        **compare(reference, reference, labels),
        "latency_ms": _tf_latency_ms(keras_fn, images),
        "runtime": "tensorflow",
    }
    rows = [keras_row]
    keras_accuracy = keras_row["accuracy"]

    for fmt, path in artifacts.items():
        started = time.time()
        if fmt == common.SAVED_MODEL:
            predictor = SavedModelPredictor(path)
            probs = predictor.predict_images(images)
            latency = _tf_latency_ms(lambda x: predictor.predict_images(x.numpy()), images)
            rows.append(
                {"format": fmt, "path": path, "size_bytes": common.path_size(path), **compare(reference, probs, labels),
                 "latency_ms": latency, "runtime": "tensorflow"}
            )  # fmt: skip
            if jpeg_bytes:
                # End to end: encoded bytes through the in-graph preprocessing, against Keras on the
                # same bytes preprocessed eagerly by the data package.
                expected = common.keras_probabilities(
                    model, common.preprocess_batch(jpeg_bytes, image_size, resize_method), probabilities
                )
                probs = predictor.predict_bytes(list(jpeg_bytes))
                seconds = []
                for item in list(jpeg_bytes)[: LATENCY_IMAGES + 1]:
                    t0 = time.perf_counter()
                    predictor.predict_bytes([item])
                    seconds.append(time.perf_counter() - t0)
                rows.append(
                    {"format": "saved_model_bytes", "path": path, "size_bytes": common.path_size(path),
                     **compare(expected, probs, jpeg_labels), "latency_ms": _median_ms(seconds),
                     "runtime": "tensorflow (decode + preprocess + model)"}
                )  # fmt: skip
        elif fmt == onnx.FORMAT:
            runner = onnx.OnnxModel(path, num_threads=onnx.ORT_THREADS)
            probs, _ = runner.predict(images, batch_size=32)
            _, seconds = runner.predict(images[: LATENCY_IMAGES + 1], batch_size=1)
            rows.append(
                {"format": fmt, "path": path, "size_bytes": common.path_size(path), **compare(reference, probs, labels),
                 "latency_ms": _median_ms(seconds), "runtime": f"onnxruntime ({onnx.ORT_THREADS} threads)"}
            )  # fmt: skip
        else:
            runner = TFLiteModel(path, num_threads=LITERT_THREADS)
            probs, seconds = runner.predict(images)
            types = runner.tensor_types()
            rows.append(
                {"format": fmt, "path": path, "size_bytes": common.path_size(path), **compare(reference, probs, labels),
                 "latency_ms": _median_ms(seconds), "runtime": f"litert ({LITERT_THREADS} threads)",
                 "input_type": runner.input_dtype.name, "output_type": runner.output_dtype.name,
                 "integer_only": all(t in INTEGER_TYPES for t in types),
                 "float_tensors": sum(t not in INTEGER_TYPES for t in types)}
            )  # fmt: skip
            if fmt == "tflite_int8":
                rows[-1]["input_quantization"] = [float(v) for v in runner.input_quantization]
                rows[-1]["output_quantization"] = [float(v) for v in runner.output_quantization]
        logging.info("Verified %s in %.1fs", fmt, time.time() - started)

    if mediapipe_check.available():
        rows += mediapipe_rows(model, artifacts, probabilities=probabilities, images=images, labels=labels)
    elif any(fmt in common.TFLITE_FORMATS for fmt in artifacts):
        logging.warning("MediaPipe check skipped: mediapipe is not installed (%s)", mediapipe_check.EXTRA_HINT)

    for row in rows:
        ok, limit = acceptance(row, keras_accuracy)
        row["check"] = limit
        row["passed"] = ok
        if not ok:
            logging.warning(
                "%s does not meet its limit (%s): agreement %s, accuracy %s vs Keras %s, max prob diff %s",
                row["format"], limit, row["top1_agreement"], row["accuracy"], keras_accuracy, row["max_prob_diff"],
            )  # fmt: skip
    return rows


def mediapipe_rows(
    model: keras.Model, artifacts: dict[str, str], *, probabilities: bool, images: np.ndarray, labels: np.ndarray | None
) -> list[dict]:
    """One row per .tflite run through MediaPipe's ImageClassifier on the eval images as uint8 frames."""
    pixels = mediapipe_check.as_pixels(images)
    reference = common.keras_probabilities(model, pixels.astype(np.float32), probabilities)
    class_names = None
    rows = []
    for fmt, path in artifacts.items():
        if fmt not in common.TFLITE_FORMATS:
            continue
        if class_names is None:
            class_names = TFLiteModel(path).class_names or []
        row = {"format": MEDIAPIPE_PREFIX + fmt, "path": path, "size_bytes": common.path_size(path),
               "runtime": f"mediapipe {mediapipe_check.version()} ImageClassifier"}  # fmt: skip
        started = time.time()
        try:
            scores, names, seconds = mediapipe_check.classify_isolated(path, pixels, reference.shape[-1])
        except Exception as error:  # noqa: BLE001 - MediaPipe's own error types; the row records the message
            row.update(dict.fromkeys(("top1_agreement", "top1_flips", "max_flip_margin", "max_prob_diff",
                                      "mean_prob_diff", "accuracy", "latency_ms")), error=first_line(error)[:300])
            logging.warning("MediaPipe cannot run %s: %s", path, row["error"])
        else:
            row.update(compare(reference, scores, labels), latency_ms=_median_ms(seconds),
                       reference_accuracy=compare(reference, reference, labels)["accuracy"],
                       class_names_from_metadata=mediapipe_check.names_read_back(names, class_names))  # fmt: skip
        rows.append(row)
        logging.info("Ran %s through MediaPipe in %.1fs", fmt, time.time() - started)
    return rows


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


def _int8_advice(row: dict, report: dict) -> str:
    """What to do about an int8 file that lost too much: the causes we measured, and the alternatives."""
    keras_row = next((r for r in report.get("artifacts", []) if r["format"] == "keras"), {})
    lost = ""
    if row.get("accuracy") is not None and keras_row.get("accuracy") is not None:
        lost = f" ({(keras_row['accuracy'] - row['accuracy']) * 100:.1f} points below Keras)"
    lite = "lite" in str(report.get("model", ""))
    cause = ("a briefly trained model quantises worse" if lite else
             "swish and squeeze-excite (B0-B7) quantise worse than the Lite variants' ReLU6 without "
             "squeeze-excite, and a briefly trained model worse still")  # fmt: skip
    return (
        f"tflite_int8 misses its limit{lost}: {cause}. Use model_dynamic.tflite (8-bit weights, float "
        f"activations){',' if not lite else ' or'} calibrate on more training images (--export_calibration_images)"
        + ("." if lite else ", or export a Lite variant.")
    )


def format_report(report: dict) -> str:
    """The verification report as a fixed-width text table (one row per artifact).

    "flip margin" is the largest top-1/top-2 probability gap of the Keras model among images whose
    top-1 class the artifact changed ("-" when none changed).
    """
    header = ("format", "size", "top-1 agree", "flip margin", "accuracy", "max |dp|", "ms/image", "runtime", "check")
    lines = []
    for row in report.get("artifacts", []):
        status = "" if not row.get("check") else ("ok" if row.get("passed") else "FAIL") + f" ({row['check']})"
        lines.append(
            (
                row["format"],
                _fmt(row.get("size_bytes"), "size"),
                _fmt(row.get("top1_agreement"), "pct"),
                _fmt(row.get("max_flip_margin"), "margin"),
                _fmt(row.get("accuracy"), "pct"),
                _fmt(row.get("max_prob_diff"), "diff"),
                _fmt(row.get("latency_ms"), "ms"),
                row.get("runtime") or "-",
                status,
            )
        )
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
        if "integer_only" in row and row["format"] == "tflite_int8":
            verdict = ("every tensor integer (what the Edge TPU compiler needs)" if row["integer_only"]
                       else f"{row['float_tensors']} float tensors: not fully integer")  # fmt: skip
            table.append(f"tflite_int8: {row['input_type']} in, {row['output_type']} out, {verdict}")
        if row["format"] == "tflite_int8" and row.get("passed") is False and not row.get("error"):
            table.append(_int8_advice(row, report))
        if row["format"].startswith(MEDIAPIPE_PREFIX) and not row.get("error"):
            named = "class names read from the metadata" if row.get("class_names_from_metadata") else (
                "CLASS NAMES NOT READ FROM THE METADATA")
            table.append(f"{row['format']}: loads in MediaPipe, {named}")
    if str(report.get("mediapipe", "")).startswith("not installed"):
        table.append(f"MediaPipe: {report['mediapipe']}")
    return "\n".join(table)
