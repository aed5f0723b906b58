"""What every export format declares, and what the formats share: the write job, the verification inputs,
rows that compare an artifact with the Keras model, and acceptance rules.

A format is one module of `efficientnet_tf.export.formats` that defines `FORMAT = ExportFormat(...)`:
its name, the pip extra and packages it needs, the file it writes, how to write it from a Keras model, how
to load a written file as a predictor, how to verify it (rows of the export report) and the acceptance
rule its rows are judged by. `efficientnet_tf.export.registry` lists the format modules.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import keras
import numpy as np
from absl import logging
from efficientnet_tf.errors import UserError
from efficientnet_tf.export.checks import check_class_names, default_class_names
from efficientnet_tf.export.files import EXPORT_INFO_FILE, LABELS_FILE, read_json, read_labels_file
from efficientnet_tf.export.images import preprocess_batch

LATENCY_IMAGES = 20  # single-image calls timed per runtime


class Predictor(Protocol):
    """Anything that turns preprocessed images (float 0..255 [N, H, W, 3]) into class probabilities."""

    class_names: list[str]
    image_size: int
    resize_method: str
    kind: str
    keras_model: keras.Model | None  # set when gradients (Grad-CAM) are available

    def predict_images(self, images: np.ndarray) -> np.ndarray: ...

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray: ...


@dataclasses.dataclass
class ExportJob:
    """Everything a format needs to write its artifact: the model, where, and what the files must say.

    `conversion_source(batch)` returns the path of a SavedModel of the model (float images [batch, H, W, 3]
    -> probabilities) that converters read; it is written once per batch shape and shared.
    """

    model: keras.Model
    export_dir: str
    class_names: list[str]
    image_size: int
    resize_method: str
    probabilities: bool  # whether the model already ends in a softmax
    info: dict[str, Any]  # model, class names, image size, resize method, input and output: stored in the files
    model_info: dict[str, Any]  # name, description, version, author, license: standard .tflite metadata
    representative_images: np.ndarray | None
    int8_io: str
    conversion_source: Callable[[int | None], str]


@dataclasses.dataclass
class VerifyInputs:
    """What artifacts are compared on: images, the Keras model's probabilities on them, labels, encoded photos."""

    model: keras.Model
    probabilities: bool
    images: np.ndarray
    reference: np.ndarray  # Keras probabilities on `images`
    labels: np.ndarray | None
    jpeg_bytes: Sequence[bytes] | None
    jpeg_labels: np.ndarray | None
    image_size: int
    resize_method: str
    class_names: list[str]
    # A quantisation-aware model's float start, its probabilities on `images`: .tflite rows then report how
    # often the file decides as the float model it was trained from ("start_agreement").
    start: np.ndarray | None = None


Rule = Callable[[dict, "float | None"], "tuple[bool, str]"]


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """One export format: its name and needs, and its writer, loader, verifier and acceptance rule."""

    name: str
    summary: str  # one line for the documentation and --help
    file: str  # the file or directory written in the export directory
    write: Callable[[ExportJob], str]  # returns the path written; raises UserError when conversion fails
    load: Callable[..., Predictor]  # load(path, class_names=None) -> a predictor of the written file
    acceptance: Rule  # (row, Keras accuracy) -> (passed, the limit in words), for every row it verifies
    verify: Callable[[str, VerifyInputs], list[dict]] | None = None  # None: rows from `load`'s predictor
    clients: Callable[[str, VerifyInputs], list[dict]] | None = None  # rows of other programs loading the file
    notes: Callable[[dict, dict], list[str]] | None = None  # extra report lines for a row of this format
    extra: str | None = None  # the pip extra that installs `packages`
    packages: tuple[str, ...] = ()  # importable modules the format needs
    reads: Callable[[str], bool] | None = None  # whether --mode=predict --checkpoint=<path> is this format's
    runtime: str = ""  # what runs the artifact in its verification row

    def missing_packages(self) -> list[str]:
        """The packages of this format's extra that are not installed."""
        return [name for name in self.packages if importlib.util.find_spec(name) is None]

    @property
    def install_hint(self) -> str:
        """How to install what this format needs."""
        return f"pip install -e '.[{self.extra}]' ({' and '.join(self.packages)})" if self.extra else ""


def by_suffix(*suffixes: str) -> Callable[[str], bool]:
    """A `reads` test: a file whose name ends in one of `suffixes` (any case)."""
    return lambda path: path.lower().endswith(suffixes)


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


def median_ms(seconds: Sequence[float]) -> float | None:
    """The median of timed calls in milliseconds, the first call (a warm-up) left out."""
    timed = list(seconds)[1:] if len(seconds) > 1 else list(seconds)
    return round(float(np.median(timed)) * 1000.0, 3) if timed else None


def single_image_ms(predict: Callable[[np.ndarray], Any], images: np.ndarray) -> float | None:
    """Median time of single-image calls of `predict` on float images, in milliseconds."""
    seconds = []
    for image in images[: LATENCY_IMAGES + 1]:
        started = time.perf_counter()
        np.asarray(predict(image[None]))
        seconds.append(time.perf_counter() - started)
    return median_ms(seconds)


def predictor_rows(fmt: ExportFormat, path: str, inputs: VerifyInputs, size_bytes: int) -> list[dict]:
    """The verification row of a format whose predictor classifies the eval images (the default `verify`)."""
    predictor = fmt.load(path)
    probs = predictor.predict_images(inputs.images)
    return [{"format": fmt.name, "path": path, "size_bytes": size_bytes,
             **compare(inputs.reference, probs, inputs.labels),
             "latency_ms": single_image_ms(predictor.predict_images, inputs.images), "runtime": fmt.runtime}]


def error_row(name: str, path: str | None, error: str, **fields: Any) -> dict:
    """A row for an artifact that did not load or run: every measurement empty, the message kept."""
    keys = ("top1_agreement", "top1_flips", "max_flip_margin", "max_prob_diff", "mean_prob_diff", "accuracy",
            "latency_ms")
    return {"format": name, "path": path, **dict.fromkeys(keys), "error": error, **fields}


def sidecar_info(path: str) -> dict:
    """export_info.json beside an artifact (class names, resize method), or {}."""
    return read_json(os.path.join(os.path.dirname(path), EXPORT_INFO_FILE)) or {}


def names_for(path: str, class_names: Sequence[str] | None, embedded: Sequence[str] | None,
              num_classes: int) -> list[str]:
    """Class names of an artifact: given, else embedded in it, else export_info.json / labels.txt beside it."""
    names = class_names or embedded or sidecar_info(path).get("class_names") or read_labels_file(
        os.path.join(os.path.dirname(path), LABELS_FILE))
    return check_class_names(names, num_classes) if names else default_class_names(num_classes)


def resize_method_of(info: dict, path: str) -> str:
    """The resize kernel an artifact's metadata names (bicubic, with a warning, when it names none)."""
    method = info.get("resize_method")
    if not method:
        logging.warning("%s carries no preprocessing metadata; assuming bicubic resize", path)
        return "bicubic"
    return str(method)


class ImagePredictor:
    """predict_bytes for predictors that classify preprocessed images."""

    image_size: int
    resize_method: str
    keras_model = None

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for encoded images (eval preprocessing done here)."""
        return self.predict_images(preprocess_batch(image_bytes, self.image_size, self.resize_method))


# --- acceptance rules ---------------------------------------------------------------------------


def max_prob_diff(limit: float) -> Rule:
    """Float artifacts that must compute what Keras computes: every probability within `limit`."""

    def rule(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        return row["max_prob_diff"] is not None and row["max_prob_diff"] <= limit, f"max prob diff <= {limit:g}"

    return rule


def min_agreement(limit: float) -> Rule:
    """Artifacts allowed small numeric changes (float16): the same top-1 class on at least `limit` of images."""

    def rule(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        return row["top1_agreement"] is not None and row["top1_agreement"] >= limit, f"top-1 agreement >= {limit:.0%}"

    return rule


def max_accuracy_drop(limit: float, agreement_without_labels: float) -> Rule:
    """Lossy artifacts (8-bit weights): at most `limit` of accuracy below Keras on labelled images; without
    labels, the top-1 class kept on `agreement_without_labels` of the images."""

    def rule(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        baseline = row.get("reference_accuracy", keras_accuracy)
        if row["accuracy"] is not None and baseline is not None:
            return baseline - row["accuracy"] <= limit + 1e-9, f"accuracy drop <= {limit * 100:g} points"
        return min_agreement(agreement_without_labels)(row, keras_accuracy)

    return rule


# Files with 8-bit weights (dynamic-range and int8) are lossy by design: judged by accuracy on the labelled eval
# images, as post-training quantisation is, because a model unsure of some images (a short fine-tuning) flips a
# few near-ties between its top two classes for half a point of accuracy at most (2% of 200 photos, all within
# 0.07 probability). Without labels, 95% top-1 agreement.
EIGHT_BIT_WEIGHTS = max_accuracy_drop(0.015, 0.95)


def judged(rule: Rule) -> Rule:
    """`rule`, with a row that failed to load or run failing first."""

    def checked(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        if row.get("error"):
            return False, "loads and runs"
        return rule(row, keras_accuracy)

    return checked


def predict_in_batches(run: Callable[[np.ndarray], Any], images: np.ndarray, *, what: str, image_size: int,
                       num_classes: int, batch_size: int = 1) -> tuple[np.ndarray, list[float]]:
    """Probabilities of `run` (one batch of float 0..255 images -> outputs) over `images` [N, H, W, 3] in
    batches, and each call's time in seconds; a one-line error names `what` for images of the wrong size."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise UserError(f"{what} takes {image_size}x{image_size} RGB images, got {images.shape[1:]}")
    step = max(1, int(batch_size))
    probs, seconds = [], []
    for start in range(0, len(images), step):
        batch = np.ascontiguousarray(images[start : start + step])
        began = time.perf_counter()
        out = run(batch)
        seconds.append(time.perf_counter() - began)
        probs.append(np.asarray(out, np.float32))
    return (np.concatenate(probs) if probs else np.zeros((0, num_classes), np.float32)), seconds
