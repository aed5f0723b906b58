"""run_export: check the request once, write every requested format through the registry, then verify each
artifact against the Keras model and write the report."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from efficientnet_tf.export import checks, mediapipe_check, registry
from efficientnet_tf.export.files import EXPORT_INFO_FILE, LABELS_FILE, REPORT_FILE, write_json, write_labels_file
from efficientnet_tf.export.formats.base import ExportJob
from efficientnet_tf.export.formats.litert import LITERT_THREADS
from efficientnet_tf.export.images import check_decodable, preprocess_batch
from efficientnet_tf.export.formats.tflite_int8 import QAT
from efficientnet_tf.export.keras_model import keras_probabilities, outputs_probabilities, write_conversion_source
from efficientnet_tf.export.verify import format_report, verify_artifacts

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.models import quantize

_RANDOM_EVAL_IMAGES = 8


def _check_images(name: str, images: np.ndarray | None, image_size: int) -> np.ndarray | None:
    if images is None:
        return None
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise UserError(
            f"{name} have shape {list(images.shape)}; expected [N, {image_size}, {image_size}, 3] float 0..255 images "
            "made by the eval preprocessing at the model's resolution"
        )
    return images


def _eval_set(
    images: np.ndarray | None,
    labels: np.ndarray | None,
    jpeg_bytes: Sequence[bytes] | None,
    representative: np.ndarray | None,
    image_size: int,
    resize_method: str,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The images the artifacts are compared on, their labels, and where they came from."""
    if images is not None:
        if labels is not None and len(labels) != len(images):
            raise UserError(
                f"eval_labels has {len(labels)} entries but eval_images has {len(images)}; they must pair up"
            )
        return images, labels, "the eval set"
    if jpeg_bytes:
        if labels is not None and len(labels) != len(jpeg_bytes):
            raise UserError(f"eval_labels has {len(labels)} entries but eval_jpeg_bytes has {len(jpeg_bytes)}")
        return preprocess_batch(jpeg_bytes, image_size, resize_method), labels, "the eval set (encoded)"
    if labels is not None:
        raise UserError("eval_labels were given without eval_images or eval_jpeg_bytes to go with them")
    if representative is not None:
        return representative, None, "the representative images (no labels)"
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (_RANDOM_EVAL_IMAGES, image_size, image_size, 3)).astype(np.float32)
    return noise, None, "random images (no eval set given)"


def run_export(
    model: keras.Model,
    *,
    class_names: list[str] | None,
    image_size: int,
    resize_method: str,
    export_dir: str,
    formats: Sequence[str] | None = None,
    representative_images: np.ndarray | None = None,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    eval_jpeg_bytes: list[bytes] | None = None,
    int8_io: str = "uint8",
    model_info: dict | None = None,
    float_reference: keras.Model | None = None,
) -> dict:
    """Export `model` to each format under `export_dir`, verify every artifact, return the report.

    Without `class_names` (a dataset that has none) the classes are named class_0, class_1, ...
    `eval_jpeg_bytes` are checked end to end through the SavedModel's bytes signature; when
    `eval_images` is None they (with `eval_labels`) also form the eval set. The report is written
    to `export_dir/export_report.json`; `format_report` renders it as a table.

    `formats` defaults to every format this installation can write (efficientnet_tf.export.registry).
    `model_info` (name, description, version, author, license) goes into each .tflite's standard metadata.
    A format whose conversion fails is reported (row with its error, `all_passed` false) while the others
    are still written and verified. `float_reference` (a quantisation-aware model's float start, ending in
    a softmax) adds a row with its accuracy and agreement on the same images, for comparison only, and each
    .tflite row's top-1 agreement with it (`start_agreement`).
    """
    started = time.time()
    formats = registry.choose(formats)  # names the application already chose pass through unchecked
    num_classes = checks.model_num_classes(model)
    if not class_names:
        logging.warning("No class names given; the artifacts will name classes class_0 ... class_%d", num_classes - 1)
        class_names = checks.default_class_names(num_classes)
    class_names = checks.check_class_names(class_names, num_classes)
    image_size = checks.check_image_size(model, image_size)
    resize_method = checks.check_resize_method(resize_method)
    if int8_io not in checks.INT8_IO_TYPES:
        raise UserError(f"int8_io must be one of {', '.join(checks.INT8_IO_TYPES)}, got {int8_io!r}")
    representative_images = _check_images("representative_images", representative_images, image_size)
    eval_images = _check_images("eval_images", eval_images, image_size)
    if "tflite_int8" in formats and (representative_images is None or len(representative_images) == 0):
        raise UserError(
            "tflite_int8 needs representative images for calibration; pass a few hundred training images "
            "through eval preprocessing (data.sample_images) or drop tflite_int8 from the formats"
        )
    if eval_jpeg_bytes is not None:
        for i, item in enumerate(eval_jpeg_bytes):
            check_decodable(item, f"eval_jpeg_bytes[{i}]")
    labels = None if eval_labels is None else np.asarray(eval_labels).astype(np.int64).reshape(-1)
    images, labels_for_images, eval_set = _eval_set(
        eval_images, labels, eval_jpeg_bytes, representative_images, image_size, resize_method
    )
    jpeg_labels = labels if eval_images is None else None

    try:
        tf.io.gfile.makedirs(export_dir)
        probe = os.path.join(export_dir, ".write_test")
        with tf.io.gfile.GFile(probe, "w") as handle:
            handle.write("")
        tf.io.gfile.remove(probe)
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"cannot write to export directory {export_dir}: {first_line(error)}") from None

    probabilities = outputs_probabilities(model)
    if not probabilities:
        logging.info("Model %s outputs logits; the exported artifacts apply softmax", model.name)
    info = {
        "model": model.name,
        "class_names": class_names,
        "image_size": image_size,
        "resize_method": resize_method,
        "input": "float32 RGB 0..255 after eval preprocessing: centre crop size/(size+32) of the shorter side, resize",
        "output": "class probabilities",
    }
    write_labels_file(os.path.join(export_dir, LABELS_FILE), class_names)

    artifacts: dict[str, str] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="conversion_source_") as scratch:
        sources: dict[int | None, str] = {}

        def conversion_source(batch: int | None) -> str:
            """The SavedModel converters read (one per batch shape: 1 for TFLite, dynamic for the others)."""
            if batch not in sources:
                sources[batch] = write_conversion_source(model, os.path.join(scratch, f"batch_{batch}"),
                                                         image_size=image_size, probabilities=probabilities,
                                                         batch=batch)
            return sources[batch]

        job = ExportJob(model, export_dir, class_names, image_size, resize_method, probabilities, info,
                        model_info or {}, representative_images, int8_io, conversion_source)
        for name in formats:
            try:
                artifacts[name] = registry.get(name).write(job)
            except UserError as error:
                failures[name] = str(error)
                logging.error("%s", error)
    write_json(
        os.path.join(export_dir, EXPORT_INFO_FILE),
        {**info, "artifacts": {fmt: os.path.relpath(p, export_dir) for fmt, p in artifacts.items()}},
    )
    export_seconds = time.time() - started

    start = None if float_reference is None else keras_probabilities(float_reference, images, True)
    rows = verify_artifacts(
        model,
        artifacts,
        probabilities=probabilities,
        images=images,
        labels=labels_for_images,
        jpeg_bytes=eval_jpeg_bytes,
        jpeg_labels=jpeg_labels,
        image_size=image_size,
        resize_method=resize_method,
        class_names=class_names,
        start=start,
    )
    rows += [{"format": fmt, "path": None, "error": error, "check": "converts", "passed": False}
             for fmt, error in failures.items()]  # fmt: skip
    for row in rows:
        if row["path"]:
            row["path"] = os.path.relpath(row["path"], export_dir)
    report = {
        "model": model.name,
        "image_size": image_size,
        "resize_method": resize_method,
        "num_classes": num_classes,
        "eval_set": eval_set,
        "num_eval_images": int(len(images)),
        "num_representative_images": 0 if representative_images is None else int(len(representative_images)),
        "int8_io": int8_io,
        "litert_threads": LITERT_THREADS,
        "mediapipe": mediapipe_check.version() or f"not installed: check skipped ({mediapipe_check.EXTRA_HINT})",
        "failed_formats": sorted(failures),
        "quantization": QAT if quantize.is_quantized(model) else "post-training",
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "export_seconds": round(export_seconds, 1),
        "verify_seconds": round(time.time() - started - export_seconds, 1),
        "all_passed": all(row["passed"] for row in rows),
        "artifacts": rows,
    }
    write_json(os.path.join(export_dir, REPORT_FILE), report)
    logging.info(
        "Verified %d artifacts (%s) in %s",
        len(artifacts), "all within limits" if report["all_passed"] else "SOME OUTSIDE THEIR LIMITS",
        os.path.join(export_dir, REPORT_FILE),
    )  # fmt: skip
    logging.debug("Export verification:\n%s", format_report(report))
    return report
