"""run_export: write every requested artifact, then verify each against the Keras model."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import common, mediapipe_check, onnx
from efficientnet_tf.export.saved_model import export_saved_model
from efficientnet_tf.export.tflite import LITERT_THREADS, export_tflite
from efficientnet_tf.export.verify import format_report, verify_artifacts

_RANDOM_EVAL_IMAGES = 8


def default_formats() -> tuple[str, ...]:
    """Every format this installation can write: ONNX only with the [onnx] extra (else one log line)."""
    if onnx.missing_packages():
        logging.warning("ONNX export skipped: %s is not installed (%s)", " and ".join(onnx.missing_packages()),
                        onnx.EXTRA_HINT)  # fmt: skip
        return tuple(f for f in common.FORMATS if f != common.ONNX)
    return common.FORMATS


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
        return common.preprocess_batch(jpeg_bytes, image_size, resize_method), labels, "the eval set (encoded)"
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
) -> dict:
    """Export `model` to each format under `export_dir`, verify every artifact, return the report.

    Without `class_names` (a dataset that has none) the classes are named class_0, class_1, ...
    `eval_jpeg_bytes` are checked end to end through the SavedModel's bytes signature; when
    `eval_images` is None they (with `eval_labels`) also form the eval set. The report is written
    to `export_dir/export_report.json`; `format_report` renders it as a table.

    `formats` defaults to every format this installation can write. `model_info` (name,
    description, version, author, license) goes into each .tflite's standard metadata. A format
    whose conversion fails is reported (row with its error, `all_passed` false) while the others
    are still written and verified.
    """
    started = time.time()
    formats = default_formats() if formats is None else common.check_formats(formats)
    if common.ONNX in formats:
        onnx.check_available()
    num_classes = common.model_num_classes(model)
    if not class_names:
        logging.warning("No class names given; the artifacts will name classes class_0 ... class_%d", num_classes - 1)
        class_names = common.default_class_names(num_classes)
    class_names = common.check_class_names(class_names, num_classes)
    image_size = common.check_image_size(model, image_size)
    resize_method = common.check_resize_method(resize_method)
    if int8_io not in common.INT8_IO_TYPES:
        raise UserError(f"int8_io must be one of {', '.join(common.INT8_IO_TYPES)}, got {int8_io!r}")
    representative_images = _check_images("representative_images", representative_images, image_size)
    eval_images = _check_images("eval_images", eval_images, image_size)
    if "tflite_int8" in formats and (representative_images is None or len(representative_images) == 0):
        raise UserError(
            "tflite_int8 needs representative images for calibration; pass a few hundred training images "
            "through eval preprocessing (data.sample_images) or drop tflite_int8 from the formats"
        )
    if eval_jpeg_bytes is not None:
        for i, item in enumerate(eval_jpeg_bytes):
            common.check_decodable(item, f"eval_jpeg_bytes[{i}]")
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

    probabilities = common.outputs_probabilities(model)
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
    common.write_labels_file(os.path.join(export_dir, common.LABELS_FILE), class_names)

    artifacts: dict[str, str] = {}
    if common.SAVED_MODEL in formats:
        artifacts[common.SAVED_MODEL] = export_saved_model(
            model,
            os.path.join(export_dir, common.SAVED_MODEL_DIR),
            class_names=class_names,
            image_size=image_size,
            resize_method=resize_method,
            probabilities=probabilities,
        )
    tflite_formats = [f for f in formats if f in common.TFLITE_FORMATS]
    written, failures = export_tflite(
        model,
        export_dir,
        tflite_formats,
        info=info,
        image_size=image_size,
        probabilities=probabilities,
        representative_images=representative_images,
        int8_io=int8_io,
        model_info=model_info,
    )
    artifacts.update(written)
    if common.ONNX in formats:
        try:
            artifacts[common.ONNX] = onnx.export_onnx(model, export_dir, info=info, image_size=image_size,
                                                      probabilities=probabilities)  # fmt: skip
        except UserError as error:
            failures[common.ONNX] = str(error)
            logging.error("%s", error)
    common.write_json(
        os.path.join(export_dir, common.EXPORT_INFO_FILE),
        {**info, "artifacts": {fmt: os.path.relpath(p, export_dir) for fmt, p in artifacts.items()}},
    )
    export_seconds = time.time() - started

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
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "export_seconds": round(export_seconds, 1),
        "verify_seconds": round(time.time() - started - export_seconds, 1),
        "all_passed": all(row["passed"] for row in rows),
        "artifacts": rows,
    }
    common.write_json(os.path.join(export_dir, common.REPORT_FILE), report)
    logging.info(
        "Verified %d artifacts (%s) in %s",
        len(artifacts), "all within limits" if report["all_passed"] else "SOME OUTSIDE THEIR LIMITS",
        os.path.join(export_dir, common.REPORT_FILE),
    )  # fmt: skip
    logging.debug("Export verification:\n%s", format_report(report))
    return report
