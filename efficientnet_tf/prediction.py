"""Prediction over files, folders and globs with any artifact the project writes: a training run
(its checkpoint), a .keras file, an export directory, or a file of any export format
(efficientnet_tf.export.registry: a SavedModel, a .tflite, an .onnx, ...).

Images stream through tf.data (parallel read and decode, the artifact's eval preprocessing,
batches, prefetch) while the runtime classifies the previous batch; results go to a CSV or JSON
Lines file as they come (a Ctrl-C leaves every row written so far), and files that cannot be read
as images are skipped, counted and listed in one warning. `--explain` adds Grad-CAM overlays for
models with gradients (Keras: a training run or a .keras file).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import efficientnet_tf.models.layers  # noqa: F401 - registers our serialisable layers and initialisers with Keras
from efficientnet_tf.data import preprocessing
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.evaluation_report.figures import overlay
from efficientnet_tf.export import registry
from efficientnet_tf.export.checks import (
    check_class_names,
    check_resize_method,
    default_class_names,
    model_image_size,
    model_num_classes,
)
from efficientnet_tf.export.files import LABELS_FILE, read_labels_file
from efficientnet_tf.export.formats.base import ImagePredictor, Predictor
from efficientnet_tf.export.keras_model import outputs_probabilities, probabilities_fn
from efficientnet_tf.gradcam import GradCam
from efficientnet_tf.models.scaling import get_variant
from efficientnet_tf.run_model import restore_for_inference

DEFAULT_BATCH_SIZE = 32
DEFAULT_TOP_K = 5
OUTPUT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}
# How often (seconds) progress is logged when stderr is not a terminal.
PROGRESS_LOG_SECONDS = 10.0


def resize_method_for(model: keras.Model) -> str:
    """Resize kernel of a model's variant, from its name (bicubic, bilinear for lite); bicubic if unknown."""
    try:
        return get_variant(model.name).resize_method
    except UserError:
        logging.warning("Model name %r is not a known variant; assuming bicubic resize", model.name)
        return "bicubic"


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    return check_class_names(class_names, num_classes) if class_names else default_class_names(num_classes)


class KerasPredictor(ImagePredictor):
    """A Keras model (a .keras file or a training run's checkpoint); has gradients for Grad-CAM."""

    kind = "Keras model"

    def __init__(self, model: keras.Model, class_names: Sequence[str] | None, resize_method: str | None = None):
        self.model = self.keras_model = model
        self.image_size = model_image_size(model)
        if self.image_size is None:
            raise UserError(f"model {model.name} has no fixed input size; export it with a resolution first")
        self.class_names = _names(class_names, model_num_classes(model))
        self.resize_method = resize_method or resize_method_for(model)
        self._fn = tf.function(probabilities_fn(model, outputs_probabilities(model)), reduce_retracing=True)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of float 0..255 images [N, H, W, 3]."""
        return self._fn(tf.convert_to_tensor(images, tf.float32)).numpy()


def load_keras_file(path: str) -> keras.Model:
    """Load a .keras file in safe mode: no Python code (Lambda layers, pickles) is deserialised."""
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as error:
        message = first_line(error)
        # Keras wraps the refusal of a Lambda inside a functional model, so search the whole text.
        if "safe_mode" in str(error) or "arbitrary code execution" in str(error):
            raise UserError(
                f"refusing to load {path}: it contains Python code (e.g. a Lambda layer) that safe mode does not "
                "deserialise; rebuild the model without Lambda layers or export it from a checkpoint"
            ) from None
        raise UserError(f"cannot load Keras model {path}: {message}") from None
    except TypeError as error:
        logging.info("Loading %s failed: %s", path, error)
        raise UserError(
            f"cannot load Keras model {path}: it uses layers or functions that are not registered in this program; "
            "only models built by efficientnet_tf (or registered with keras.saving) can be loaded"
        ) from None
    except (OSError, KeyError) as error:
        raise UserError(f"cannot load Keras model {path}: {first_line(error)}") from None


def load_predictor(path: str, class_names: Sequence[str] | None = None, checkpoint: str | None = None) -> Predictor:
    """A predictor for a training model_dir (its `checkpoint`: latest by default, best, or a prefix), a .keras
    file, or a file (or directory) of any export format."""
    if not path or not tf.io.gfile.exists(path):
        raise UserError(f"model {path} does not exist; give a training run directory, an export directory, "
                        "a SavedModel directory, a .keras file or an exported file "
                        f"({', '.join(registry.NAMES)})")
    fmt = registry.for_path(path)
    if fmt is not None:
        registry.check_installed([fmt.name])
        return fmt.load(path, class_names)
    if tf.io.gfile.isdir(path):
        model, config, restored_names = restore_for_inference(path, checkpoint)
        return KerasPredictor(model, class_names or restored_names, resize_method=config.data.resize_method)
    if path.lower().endswith(".keras"):
        names = class_names or read_labels_file(os.path.join(os.path.dirname(path), LABELS_FILE))
        return KerasPredictor(load_keras_file(path), names)
    raise UserError(f"cannot predict with {path}: expected a training run or export directory, a SavedModel "
                    f"directory, a .keras file or a file of an export format ({', '.join(registry.NAMES)})")


# ------------------------------------------------------------------------------------------------
# Inputs


def _walk(folder: str) -> list[str]:
    """Every non-hidden file under `folder`, recursively, in sorted order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if not f.startswith(".")]
    return found


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files, folders (recursively; hidden entries skipped) and glob patterns (`**` too) -> file paths,
    in the order given, each once. A missing path, an empty folder or a pattern matching nothing is a
    UserError."""
    if not inputs:
        raise UserError("no images to classify; pass --image=<file, folder or glob> (repeatable)")
    files: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = _walk(item)
            if not found:
                raise UserError(f"folder {item} holds no files to classify")
        elif os.path.isfile(item):
            found = [item]
        elif glob.has_magic(item):
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                found += _walk(match) if os.path.isdir(match) else [match]
            if not found:
                raise UserError(f"no file matches {item}")
        else:
            raise UserError(f"image {item} does not exist; pass image files, folders or glob patterns")
        files += found
    return list(dict.fromkeys(files))


def image_batches(paths: Sequence[str], image_size: int, resize_method: str, batch_size: int) -> tf.data.Dataset:
    """Batches of (input index [B], float 0..255 images [B, H, W, 3]) in input order; files that cannot be
    read or decoded are dropped (their indices are missing from the stream)."""
    method = check_resize_method(resize_method)
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths))))

    def load(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, preprocessing.preprocess_for_eval(tf.io.read_file(path), image_size, method)

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors().batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


# ------------------------------------------------------------------------------------------------
# Output


@dataclasses.dataclass
class Row:
    """The top-k prediction of one image."""

    path: str
    ids: list[int]
    names: list[str]
    probabilities: list[float]


def top_k_rows(paths: Sequence[str], probs: np.ndarray, class_names: Sequence[str], top_k: int) -> list[Row]:
    """One Row per image: its `top_k` classes, most likely first."""
    k = max(1, min(int(top_k), probs.shape[-1]))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [Row(path, [int(i) for i in idx], [class_names[i] for i in idx], [float(row[i]) for i in idx])
            for path, row, idx in zip(paths, probs, order)]


def top_k_predictions(probs: np.ndarray, class_names: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The `top_k` (class name, probability) pairs of each row, most likely first."""
    return [list(zip(r.names, r.probabilities)) for r in top_k_rows([""] * len(probs), probs, class_names, top_k)]


def output_format(path: str) -> str:
    """csv or jsonl, from the file name."""
    fmt = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise UserError(f"--output={path}: name a .csv or a .jsonl (JSON Lines) file")
    return fmt


class RowWriter:
    """Writes rows as CSV or JSON Lines; every batch goes out in one write and is flushed, so an
    interrupted run leaves complete rows only."""

    def __init__(self, path: str, top_k: int):
        self.format = output_format(path)
        self.top_k = int(top_k)
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        try:
            self._file: TextIO = open(path, "w", encoding="utf-8", newline="")
        except OSError as error:
            raise UserError(f"cannot write --output={path}: {error.strerror or error}") from None
        if self.format == "csv":
            header = ["path"] + [f"top{r}_{field}" for r in range(1, self.top_k + 1)
                                 for field in ("id", "class", "probability")]
            self._write_csv([header])

    def _write_csv(self, rows: list[list]) -> None:
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        self._file.write(text.getvalue())
        self._file.flush()

    def write(self, rows: Sequence[Row]) -> None:
        if self.format == "csv":
            table = []
            for row in rows:
                cells: list = [row.path]
                for i, name, p in zip(row.ids, row.names, row.probabilities):
                    cells += [i, name, f"{p:.6f}"]
                table.append(cells)
            self._write_csv(table)
        else:
            self._file.write("".join(json.dumps({"path": r.path, "top_k_ids": r.ids, "top_k_classes": r.names,
                                                 "top_k_probabilities": [round(p, 6) for p in r.probabilities]},
                                                ensure_ascii=False) + "\n" for r in rows))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


# ------------------------------------------------------------------------------------------------
# The run


class ProgressBar:
    """Images done, images/s and ETA: a bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool = True):
        self.total = max(1, int(total))
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.is_tty = bool(enabled and hasattr(self.stream, "isatty") and self.stream.isatty())
        self._started = time.monotonic()
        self._timed_from: tuple[int, float] | None = None  # after the first batch (tracing, warm-up)
        self._last_log = self._started

    def rate(self, done: int) -> float | None:
        """Images per second since the first batch."""
        if self._timed_from is None or done <= self._timed_from[0]:
            return None
        return (done - self._timed_from[0]) / max(1e-9, time.monotonic() - self._timed_from[1])

    def update(self, done: int) -> None:
        if self._timed_from is None:
            self._timed_from = (done, time.monotonic())
        if not self.enabled:
            return
        rate = self.rate(done)
        eta = "?" if not rate else _duration((self.total - done) / rate)
        speed = f"{rate:.1f} img/s" if rate else "- img/s"
        if self.is_tty:
            filled = int(24 * done / self.total)
            bar = "=" * filled + (">" if filled < 24 else "") + "." * max(0, 23 - filled)
            self.stream.write(f"\r[{bar}] {done}/{self.total} {speed} ETA {eta}   ")
            self.stream.flush()
        elif time.monotonic() - self._last_log >= PROGRESS_LOG_SECONDS:
            self._last_log = time.monotonic()
            logging.info("predict: %d/%d images, %s, ETA %s", done, self.total, speed, eta)

    def close(self) -> None:
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"


@dataclasses.dataclass
class PredictionRun:
    """What a prediction run did: its rows (input order), the unreadable files, timings, where it wrote."""

    files: list[str]
    rows: list[Row]
    bad_files: list[str]
    seconds: float
    output: str | None = None
    explain_dir: str | None = None
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return len(self.rows) / self.seconds if self.seconds > 0 else 0.0

    def top_k(self) -> list[list[tuple[str, float]]]:
        """(class name, probability) pairs per classified image."""
        return [list(zip(r.names, r.probabilities)) for r in self.rows]


class Explainer:
    """Writes Grad-CAM overlays (PNG) for each classified image of a Keras predictor."""

    def __init__(self, model: keras.Model, directory: str):
        self.gradcam = GradCam(model)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def write(self, indices: np.ndarray, paths: Sequence[str], images: np.ndarray, classes: np.ndarray) -> None:
        heatmaps = self.gradcam.heatmaps(images, classes)
        for index, path, image, heatmap in zip(indices, paths, images, heatmaps):
            pixels = np.clip(np.round(overlay(image, heatmap) * 255), 0, 255).astype(np.uint8)
            stem = os.path.splitext(os.path.basename(path))[0]
            name = os.path.join(self.directory, f"{int(index):06d}_{stem}.png")
            tf.io.write_file(name, tf.io.encode_png(pixels))


def predict_files(
    path: str, inputs: Sequence[str], *, top_k: int = DEFAULT_TOP_K, class_names: Sequence[str] | None = None,
    checkpoint: str | None = None, output: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
    explain_dir: str | None = None, progress: bool = True, predictor: Predictor | None = None,
) -> PredictionRun:
    """Classify every image among `inputs` (files, folders, globs) with the model or artifact at `path`.

    Rows stream into `output` (.csv / .jsonl) batch by batch; unreadable files are skipped and listed
    in one warning; Ctrl-C stops after the rows written so far (UserError saying so). `explain_dir`
    receives Grad-CAM overlays when the model has gradients.
    """
    if int(top_k) < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    if int(batch_size) < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    files = expand_inputs(inputs)
    if output:
        output_format(output)
    predictor = predictor or load_predictor(path, class_names, checkpoint)
    explainer = None
    if explain_dir:
        if predictor.keras_model is None:
            logging.warning("--explain: Grad-CAM needs gradients, which a %s does not give; use a training run or a "
                            ".keras file (no heat maps written)", predictor.kind)
        else:
            explainer = Explainer(predictor.keras_model, explain_dir)
    top_k = min(int(top_k), len(predictor.class_names))
    writer = RowWriter(output, top_k) if output else None
    bar = ProgressBar(len(files), enabled=progress)
    rows: list[Row] = []
    seen = np.zeros(len(files), bool)
    interrupted = False
    started = time.monotonic()
    try:
        for indices, images in image_batches(files, predictor.image_size, predictor.resize_method, batch_size):
            indices, images = indices.numpy(), images.numpy()
            probs = predictor.predict_images(images)
            batch = top_k_rows([files[i] for i in indices], probs, predictor.class_names, top_k)
            if writer is not None:
                writer.write(batch)
            rows += batch
            seen[indices] = True
            if explainer is not None:
                explainer.write(indices, [r.path for r in batch], images, np.array([r.ids[0] for r in batch]))
            bar.update(len(rows))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    seconds = time.monotonic() - started
    last = int(np.flatnonzero(seen).max()) + 1 if seen.any() else 0
    bad = [files[i] for i in np.flatnonzero(~seen[: last if interrupted else len(files)])]
    if bad:
        logging.warning("%d file(s) could not be read as images and were skipped: %s", len(bad), ", ".join(bad))
    if interrupted:
        where = f"; {output} holds their rows" if output else ""
        raise UserError(f"interrupted after {len(rows)} of {len(files)} images{where}")
    if not rows:
        raise UserError(f"none of the {len(files)} file(s) could be read as an image (JPEG, PNG, BMP or GIF), "
                        f"e.g. {files[0]}")
    return PredictionRun(files, rows, bad, seconds, output, explain_dir if explainer else None)


def run_predict(
    path: str, images: list[str], *, top_k: int = 5, class_names: list[str] | None = None,
    checkpoint: str | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each readable image among `images`, in order."""
    result = predict_files(path, images, top_k=top_k, class_names=class_names, checkpoint=checkpoint,
                           progress=False)
    for row in result.rows:
        logging.info("%s: %s", row.path, ", ".join(f"{n} {p:.4f}" for n, p in zip(row.names, row.probabilities)))
    return result.top_k()


def format_predictions(images: Sequence[str], results: Sequence[Sequence[tuple[str, float]]]) -> str:
    """Human-readable top-k lists, one block per image."""
    blocks = []
    for image, result in zip(images, results):
        width = max((len(name) for name, _ in result), default=0)
        lines = [f"{image}"] + [f"  {rank}. {name.ljust(width)}  {p:.4f}" for rank, (name, p) in enumerate(result, 1)]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
