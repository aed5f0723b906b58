"""SavedModel export with TF-Serving signatures: encoded image bytes in, probabilities and top-k out."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.data import preprocessing
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import common


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
    top_k: int = common.DEFAULT_TOP_K,
) -> str:
    """Write a SavedModel with a bytes signature (`serving_default`) and a float-image signature."""
    class_names = list(class_names)
    top_k = max(1, min(int(top_k), len(class_names)))
    predict = common.probabilities_fn(model, probabilities)
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
        common.BYTES_SIGNATURE,
        from_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=common.BYTES_INPUT)],
    )
    archive.add_endpoint(
        common.IMAGES_SIGNATURE,
        from_images,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=common.IMAGES_INPUT)],
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
    logging.info("SavedModel written to %s (signatures %s, %s)", path, common.BYTES_SIGNATURE, common.IMAGES_SIGNATURE)
    return path


def is_saved_model(path: str) -> bool:
    """Whether `path` is a SavedModel directory."""
    return tf.io.gfile.isdir(path) and (
        tf.io.gfile.exists(f"{path}/saved_model.pb") or tf.io.gfile.exists(f"{path}/saved_model.pbtxt")
    )


class SavedModelPredictor:
    """Runs an exported SavedModel through its signatures."""

    def __init__(self, path: str):
        try:
            self._loaded = tf.saved_model.load(path)
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise UserError(f"cannot load the SavedModel at {path}: {first_line(error)}") from None
        signatures = self._loaded.signatures
        missing = [s for s in (common.BYTES_SIGNATURE, common.IMAGES_SIGNATURE) if s not in signatures]
        if missing:
            raise UserError(
                f"SavedModel {path} lacks the signature(s) {', '.join(missing)}; was it written by this exporter?"
            )
        self._bytes_fn = signatures[common.BYTES_SIGNATURE]
        self._images_fn = signatures[common.IMAGES_SIGNATURE]
        spec = self._images_fn.structured_input_signature[1][common.IMAGES_INPUT]
        self.image_size = int(spec.shape[1])
        self.class_names = [n.decode("utf-8") for n in self._loaded.class_names[0].numpy().tolist()]
        self.resize_method = self._loaded.export_info[1].numpy().decode("utf-8")

    def predict_images(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities for float 0..255 images [N, H, W, 3] via the image signature."""
        out = [
            self._images_fn(**{common.IMAGES_INPUT: tf.constant(images[i : i + batch_size], tf.float32)})[
                "probabilities"
            ].numpy()
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out, axis=0)

    def predict_bytes(self, image_bytes: Sequence[bytes], batch_size: int = 32) -> np.ndarray:
        """Probabilities for encoded images via `serving_default` (preprocessing in the graph)."""
        out = [
            self._bytes_fn(**{common.BYTES_INPUT: tf.constant(list(image_bytes[i : i + batch_size]), tf.string)})[
                "probabilities"
            ].numpy()
            for i in range(0, len(image_bytes), batch_size)
        ]
        return np.concatenate(out, axis=0)
