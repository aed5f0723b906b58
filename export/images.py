"""Encoded images for export and prediction: read and check files, and the eval preprocessing in batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from efficientnet_tf.data import preprocessing

from efficientnet_tf.errors import UserError, first_line


def preprocess_batch(image_bytes: Sequence[bytes], image_size: int, resize_method: str) -> np.ndarray:
    """Eval preprocessing (decode, centre crop, resize) of encoded images: float32 [N, H, W, 3]."""
    spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def run(batch):
        return tf.map_fn(
            lambda b: preprocessing.preprocess_for_eval(b, image_size, resize_method), batch, fn_output_signature=spec
        )

    if not image_bytes:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return run(tf.constant(list(image_bytes), tf.string)).numpy()


def read_image_files(paths: Sequence[str]) -> list[bytes]:
    """Read encoded images, raising UserError naming any file that is missing or not a decodable image."""
    contents = []
    for path in paths:
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise UserError(f"image {path} does not exist; pass the path of a JPEG, PNG, BMP or GIF file")
        try:
            with tf.io.gfile.GFile(path, "rb") as handle:
                data = handle.read()
        except (OSError, tf.errors.OpError) as error:
            raise UserError(f"cannot read image {path}: {first_line(error)}") from None
        check_decodable(data, path)
        contents.append(data)
    return contents


def check_decodable(data: bytes, name: str) -> None:
    """Raise UserError if `data` is not an image TensorFlow can decode (JPEG, PNG, BMP, GIF)."""
    try:
        preprocessing.decode_image(tf.constant(data, tf.string))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, ValueError):
        raise UserError(
            f"cannot decode image {name}: it is not a valid JPEG, PNG, BMP or GIF file; re-encode it or drop it"
        ) from None
