"""SavedModel with TF-Serving signatures: encoded image bytes in (`serving_default`, the eval preprocessing in
the graph), or float images (`serving_images`); probabilities and the top-k ids, names and probabilities out.
The class names and preprocessing travel inside the artifact."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from efficientnet_tf.data import preprocessing
from efficientnet_tf.export.checks import check_class_names
from efficientnet_tf.export.files import path_size
from efficientnet_tf.export.formats.base import (
    LATENCY_IMAGES,
    ExportFormat,
    ExportJob,
    VerifyInputs,
    compare,
    judged,
    max_prob_diff,
    median_ms,
    single_image_ms,
)
from efficientnet_tf.export.images import preprocess_batch
from efficientnet_tf.export.keras_model import keras_probabilities, probabilities_fn

from efficientnet_tf.errors import UserError, first_line

NAME = "saved_model"
DIRECTORY = "saved_model"
# Signature names and keys (TensorFlow Serving conventions: `serving_default` is what a client gets without
# naming one; an input ending in `_bytes` is base64 in REST).
BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
DEFAULT_TOP_K = 5
BYTES_ROW = "saved_model_bytes"


def _outputs(probs: tf.Tensor, names: tf.Tensor, top_k: int) -> dict[str, tf.Tensor]:
    top_probs, top_ids = tf.math.top_k(probs, k=top_k)
    return {
        "probabilities": probs,
        "top_k_ids": top_ids,
        "top_k_names": tf.gather(names, top_ids),
        "top_k_probabilities": top_probs,
    }


def export_saved_model(
    model: keras.Model,
    path: str,
    *,
    class_names: Sequence[str],
    image_size: int,
    resize_method: str,
    probabilities: bool,
    top_k: int = DEFAULT_TOP_K,
) -> str:
    """Write a SavedModel with a bytes signature (`serving_default`) and a float-image signature."""
    class_names = list(class_names)
    top_k = max(1, min(int(top_k), len(class_names)))
    predict = probabilities_fn(model, probabilities)
    image_spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    def from_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        names = tf.constant(class_names, tf.string)
        return _outputs(predict(images), names, top_k)

    def from_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        # The same eval preprocessing as training-time evaluation, inside the graph.
        images = tf.map_fn(
            lambda b: preprocessing.preprocess_for_eval(b, image_size, resize_method),
            image_bytes,
            fn_output_signature=image_spec,
        )
        return from_images(images)

    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        BYTES_SIGNATURE,
        from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
    )
    archive.add_endpoint(
        IMAGES_SIGNATURE,
        from_images,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=IMAGES_INPUT)],
    )
    # Restored as `loaded.class_names[0]` and `loaded.export_info[...]`, so the artifact alone names
    # its predictions and states its preprocessing.
    archive.add_variable_collection("class_names", [tf.Variable(class_names, trainable=False, name="class_names")])
    archive.add_variable_collection(
        "export_info",
        [
            tf.Variable(image_size, trainable=False, name="image_size"),
            tf.Variable(resize_method, trainable=False, name="resize_method"),
        ],
    )
    try:
        archive.write_out(path, verbose=False)
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"cannot write the SavedModel to {path}: {first_line(error)}") from None
    logging.info("SavedModel written to %s (signatures %s, %s)", path, BYTES_SIGNATURE, IMAGES_SIGNATURE)
    return path


def is_saved_model(path: str) -> bool:
    """Whether `path` is a SavedModel directory."""
    return tf.io.gfile.isdir(path) and (
        tf.io.gfile.exists(f"{path}/saved_model.pb") or tf.io.gfile.exists(f"{path}/saved_model.pbtxt")
    )


class SavedModelPredictor:
    """Runs an exported SavedModel through its signatures (its class names may be overridden)."""

    kind = "SavedModel"
    keras_model = None

    def __init__(self, path: str, class_names: Sequence[str] | None = None):
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"cannot load the SavedModel at {path}: {first_line(error)}") from None
        signatures = self._loaded.signatures
        missing = [s for s in (BYTES_SIGNATURE, IMAGES_SIGNATURE) if s not in signatures]
        if missing:
            raise UserError(
                f"SavedModel {path} lacks the signature(s) {', '.join(missing)}; was it written by this exporter?"
            )
        self._bytes_fn = signatures[BYTES_SIGNATURE]
        self._images_fn = signatures[IMAGES_SIGNATURE]
        spec = self._images_fn.structured_input_signature[1][IMAGES_INPUT]
        self.image_size = int(spec.shape[1])
        names = [n.decode("utf-8") for n in self._loaded.class_names[0].numpy().tolist()]
        self.class_names = check_class_names(class_names, len(names)) if class_names else names
        self.resize_method = self._loaded.export_info[1].numpy().decode("utf-8")

    def predict_images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for float 0..255 images [N, H, W, 3] via the image signature."""
        out = [
            self._images_fn(**{IMAGES_INPUT: tf.constant(images[i : i + batch_size], tf.float32)})[
                "probabilities"
            ].numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out, axis=0)

    def predict_bytes(self, image_bytes: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Probabilities for encoded images via `serving_default` (preprocessing in the graph)."""
        out = [
            self._bytes_fn(**{BYTES_INPUT: tf.constant(list(image_bytes[i : i + batch_size]), tf.string)})[
                "probabilities"
            ].numpy()
            for i in range(0, len(image_bytes), batch_size)
        ]
        return np.concatenate(out, axis=0)


def saved_model_dir(path: str) -> str | None:
    """The SavedModel at `path`, or in the export directory `path` (its saved_model/); None when neither."""
    for candidate in (path, os.path.join(path, DIRECTORY)):
        if is_saved_model(candidate):
            return candidate
    return None


def write(job: ExportJob) -> str:
    return export_saved_model(job.model, os.path.join(job.export_dir, DIRECTORY), class_names=job.class_names,
                              image_size=job.image_size, resize_method=job.resize_method,
                              probabilities=job.probabilities)


def load(path: str, class_names: Sequence[str] | None = None) -> SavedModelPredictor:
    return SavedModelPredictor(saved_model_dir(path) or path, class_names)


def verify(path: str, inputs: VerifyInputs) -> list[dict]:
    """The float-image signature against Keras; with encoded photos, the bytes signature end to end (decode and
    preprocessing in the graph) against Keras on the same photos preprocessed by the data package."""
    predictor = SavedModelPredictor(path)
    size = path_size(path)
    probs = predictor.predict_images(inputs.images)
    rows = [{"format": NAME, "path": path, "size_bytes": size, **compare(inputs.reference, probs, inputs.labels),
             "latency_ms": single_image_ms(predictor.predict_images, inputs.images), "runtime": "tensorflow"}]
    if inputs.jpeg_bytes:
        expected = keras_probabilities(inputs.model, preprocess_batch(inputs.jpeg_bytes, inputs.image_size,
                                                                      inputs.resize_method), inputs.probabilities)
        probs = predictor.predict_bytes(list(inputs.jpeg_bytes))
        seconds = []
        for item in list(inputs.jpeg_bytes)[: LATENCY_IMAGES + 1]:
            started = time.perf_counter()
            predictor.predict_bytes([item])
            seconds.append(time.perf_counter() - started)
        rows.append({"format": BYTES_ROW, "path": path, "size_bytes": size,
                     **compare(expected, probs, inputs.jpeg_labels), "latency_ms": median_ms(seconds),
                     "runtime": "tensorflow (decode + preprocess + model)"})
    return rows


FORMAT = ExportFormat(
    name=NAME, summary="SavedModel with TF-Serving signatures (encoded bytes or float images in)", file=DIRECTORY,
    write=write, load=load, verify=verify, acceptance=judged(max_prob_diff(1e-5)),
    reads=lambda path: os.path.isdir(path) and saved_model_dir(path) is not None, runtime="tensorflow",
)
