"""Top-k prediction from a SavedModel, a .tflite file, a .keras file or a training checkpoint."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import common
from efficientnet_tf.model_io import restore_for_inference
from efficientnet_tf.export.saved_model import SavedModelPredictor, is_saved_model
from efficientnet_tf.export.tflite import TFLiteModel


class Predictor(Protocol):
    """Anything that turns encoded images into class probabilities."""

    class_names: list[str]

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray: ...


def resize_method_for(model: keras.Model) -> str:
    """Resize kernel of a model's variant, from its name (bicubic, bilinear for lite); bicubic if unknown."""
    from efficientnet_tf import get_variant

    try:
        return get_variant(model.name).resize_method
    except UserError:
        logging.warning("Model name %r is not a known variant; assuming bicubic resize", model.name)
        return "bicubic"


class KerasPredictor:
    """A Keras model with eval preprocessing done eagerly by the data package."""

    def __init__(self, model: keras.Model, class_names: Sequence[str] | None, resize_method: str | None = None):
        self.model = model
        self.image_size = common.model_image_size(model)
        if self.image_size is None:
            raise UserError(f"model {model.name} has no fixed input size; export it with a resolution first")
        num_classes = common.model_num_classes(model)
        if class_names:
            self.class_names = common.check_class_names(class_names, num_classes)
        else:
            self.class_names = common.default_class_names(num_classes)
        self.resize_method = resize_method or resize_method_for(model)
        self._probabilities = common.outputs_probabilities(model)

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for encoded images."""
        images = common.preprocess_batch(image_bytes, self.image_size, self.resize_method)
        return common.keras_probabilities(self.model, images, self._probabilities)


class TFLitePredictor:
    """A .tflite model; class names and preprocessing from its metadata or sidecar files."""

    def __init__(self, path: str, class_names: Sequence[str] | None = None):
        self.model = TFLiteModel(path)
        sidecar_info = common.read_json(os.path.join(os.path.dirname(path), common.EXPORT_INFO_FILE)) or {}
        info = self.model.metadata or sidecar_info
        names = class_names or info.get("class_names") or common.read_labels_file(
            os.path.join(os.path.dirname(path), common.LABELS_FILE)
        )
        self.class_names = (
            common.check_class_names(names, self.model.num_classes)
            if names
            else common.default_class_names(self.model.num_classes)
        )
        self.image_size = self.model.image_size
        self.resize_method = info.get("resize_method")
        if not self.resize_method:
            logging.warning("%s carries no preprocessing metadata; assuming bicubic resize", path)
            self.resize_method = "bicubic"

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for encoded images."""
        images = common.preprocess_batch(image_bytes, self.image_size, self.resize_method)
        return self.model.predict(images)[0]


class _SavedModelNamed:
    """A SavedModelPredictor whose class names may be overridden."""

    def __init__(self, path: str, class_names: Sequence[str] | None):
        self.predictor = SavedModelPredictor(path)
        self.class_names = (
            common.check_class_names(class_names, len(self.predictor.class_names))
            if class_names
            else self.predictor.class_names
        )

    def predict_bytes(self, image_bytes: Sequence[bytes]) -> np.ndarray:
        """Class probabilities for encoded images (preprocessing inside the SavedModel)."""
        return self.predictor.predict_bytes(image_bytes)


def load_keras_file(path: str) -> keras.Model:
    """Load a .keras file in safe mode: no Python code (Lambda layers, pickles) is deserialised."""
    import efficientnet_tf  # noqa: F401  registers our serialisable layers and initialisers

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
    """A predictor for a SavedModel dir, a .tflite file, a .keras file, or a training model_dir
    (its `checkpoint`: latest by default, best, or a prefix)."""
    if not path or not tf.io.gfile.exists(path):
        raise UserError(
            f"model {path} does not exist; give a SavedModel directory, a .tflite or .keras file, "
            "or a training model_dir"
        )
    if tf.io.gfile.isdir(path):
        if is_saved_model(path):
            return _SavedModelNamed(path, class_names)
        nested = os.path.join(path, common.SAVED_MODEL_DIR)
        if is_saved_model(nested):  # an export directory written by run_export
            return _SavedModelNamed(nested, class_names)
        model, config, restored_names = restore_for_inference(path, checkpoint)
        return KerasPredictor(model, class_names or restored_names, resize_method=str(config.data.resize_method))
    lower = path.lower()
    if lower.endswith(".tflite"):
        return TFLitePredictor(path, class_names)
    if lower.endswith(".keras"):
        names = class_names or common.read_labels_file(os.path.join(os.path.dirname(path), common.LABELS_FILE))
        return KerasPredictor(load_keras_file(path), names)
    raise UserError(
        f"cannot predict with {path}: expected a SavedModel directory, a .tflite file, a .keras file or a model_dir"
    )


def top_k_predictions(probs: np.ndarray, class_names: Sequence[str], top_k: int) -> list[list[tuple[str, float]]]:
    """The `top_k` (class name, probability) pairs of each row, most likely first."""
    k = max(1, min(int(top_k), probs.shape[-1]))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(class_names[i], float(row[i])) for i in idx] for row, idx in zip(probs, order)]


def run_predict(
    path: str, images: list[str], *, top_k: int = 5, class_names: list[str] | None = None,
    checkpoint: str | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image file, using the model or artifact at `path`."""
    if not images:
        raise UserError("no images to classify; pass one or more --image=path/to/file.jpg")
    if int(top_k) < 1:
        raise UserError(f"top_k must be at least 1, got {top_k}")
    contents = common.read_image_files(images)
    predictor = load_predictor(path, class_names, checkpoint)
    probs = predictor.predict_bytes(contents)
    results = top_k_predictions(probs, predictor.class_names, top_k)
    for image, result in zip(images, results):
        logging.info("%s: %s", image, ", ".join(f"{name} {p:.4f}" for name, p in result))
    return results


def format_predictions(images: Sequence[str], results: Sequence[Sequence[tuple[str, float]]]) -> str:
    """Human-readable top-k lists, one block per image."""
    blocks = []
    for image, result in zip(images, results):
        width = max((len(name) for name, _ in result), default=0)
        lines = [f"{image}"] + [f"  {rank}. {name.ljust(width)}  {p:.4f}" for rank, (name, p) in enumerate(result, 1)]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)
