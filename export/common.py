"""Shared pieces of the exporters: format names, argument checks, probabilities, images, labels."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.data import preprocessing
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.rundir import LABELS_FILE, read_labels_file, write_labels_file  # noqa: F401 - the one labels.txt reader/writer, used by the exporters as common.*

SAVED_MODEL = "saved_model"
TFLITE_FORMATS = ("tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8")
ONNX = "onnx"
FORMATS = (SAVED_MODEL, *TFLITE_FORMATS, ONNX)
# Names that stand for several formats in --export_formats.
FORMAT_GROUPS = {"tflite": TFLITE_FORMATS, "all": FORMATS}
INT8_IO_TYPES = ("uint8", "int8")  # the first is the default: what cameras and MediaPipe feed

EXPORT_INFO_FILE = "export_info.json"
REPORT_FILE = "export_report.json"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILES = {fmt: f"model_{fmt[len('tflite_'):]}.tflite" for fmt in TFLITE_FORMATS}

# Signature names and keys of the SavedModel (TensorFlow Serving conventions: `serving_default`
# is what a client gets without naming one; an input ending in `_bytes` is base64 in REST).
BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "serving_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
DEFAULT_TOP_K = 5
# Signature of the SavedModel that the TFLite and ONNX converters read.
SOURCE_SIGNATURE = "serving_default"


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Validate export format names (or the groups `tflite`, `all`) and return them de-duplicated in canonical order."""
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f.strip()]
    wanted: list[str] = []
    for name in (f.strip().lower() for f in formats):
        wanted += FORMAT_GROUPS.get(name, (name,))
    unknown = [f for f in wanted if f not in FORMATS]
    choices = ", ".join([*FORMATS, *FORMAT_GROUPS])
    if unknown:
        raise UserError(f"unknown export format(s) {', '.join(unknown)}; choose from {choices}")
    if not wanted:
        raise UserError(f"no export format given; choose from {choices}")
    return tuple(f for f in FORMATS if f in wanted)


def check_resize_method(resize_method: str) -> str:
    """Validate a resize method name against the data package's list."""
    try:
        return preprocessing.check_resize_method(resize_method)
    except ValueError as error:
        raise UserError(str(error)) from None


def check_class_names(class_names: Sequence[str], num_classes: int | None = None) -> list[str]:
    """Validate class names (one line each) and, when given, their count against the model's."""
    names = [str(n) for n in class_names]
    if not names:
        raise UserError("class_names is empty; pass the dataset's class names so predictions can be named")
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise UserError(f"class name {bad[0]!r} is empty or spans lines; class names must be single non-empty lines")
    if num_classes is not None and len(names) != num_classes:
        raise UserError(
            f"the model predicts {num_classes} classes but {len(names)} class names were given; "
            "export with the config and dataset the checkpoint was trained with"
        )
    return names


def model_image_size(model: keras.Model) -> int | None:
    """Square input resolution fixed by the model, or None when its spatial size is dynamic."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise UserError(f"model {model.name} has {len(shape)} inputs; an image classifier with one input is expected")
    if len(shape) != 4 or shape[-1] != 3:
        raise UserError(f"model {model.name} takes inputs of shape {shape}; expected [batch, height, width, 3] images")
    height, width = shape[1], shape[2]
    if height is None or width is None:
        return None
    if height != width:
        raise UserError(f"model {model.name} takes {height}x{width} images; only square inputs are supported")
    return int(height)


def model_num_classes(model: keras.Model) -> int:
    """Number of classes of a classifier's [batch, classes] output."""
    shape = model.output_shape
    if isinstance(shape, (list, dict)) or len(shape) != 2 or shape[-1] is None:
        raise UserError(
            f"model {model.name} outputs {shape}; a classifier with one [batch, classes] output is expected"
        )
    return int(shape[-1])


def check_image_size(model: keras.Model, image_size: int) -> int:
    """Validate `image_size` against the model's fixed input resolution."""
    size = int(image_size)
    if size < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    fixed = model_image_size(model)
    if fixed is not None and fixed != size:
        raise UserError(
            f"image_size={size} but the model takes {fixed}x{fixed} images; use the resolution it was built with"
        )
    return size


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model already ends in a softmax (True) or returns logits (False)."""
    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    name = getattr(activation, "__name__", "")
    if name == "softmax":
        return True
    if name == "linear":
        return False
    # Unknown head: look at what it produces on a few inputs.
    size = model_image_size(model) or 32
    probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    out = np.asarray(model(probe, training=False), dtype=np.float64)
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def probabilities_fn(model: keras.Model, probabilities: bool):
    """A function images -> float32 class probabilities (softmax added when the model gives logits)."""

    def fn(images: tf.Tensor) -> tf.Tensor:
        out = tf.cast(model(images, training=False), tf.float32)
        return out if probabilities else tf.nn.softmax(out, axis=-1)

    return fn


def keras_probabilities(
    model: keras.Model, images: np.ndarray, probabilities: bool, batch_size: int = 32
) -> np.ndarray:
    """Class probabilities of the Keras model on float 0..255 images, in batches."""
    fn = tf.function(probabilities_fn(model, probabilities), reduce_retracing=True)
    chunks = [
        fn(tf.constant(images[i : i + batch_size], tf.float32)).numpy() for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, model_num_classes(model)), np.float32)


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


def write_json(path: str, value: dict) -> None:
    """Write a JSON document (indented, UTF-8)."""
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str) -> dict | None:
    """Read a JSON document, or None if the file does not exist."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as handle:
        return json.loads(handle.read())


def path_size(path: str) -> int:
    """Size in bytes of a file, or of all files under a directory."""
    if not tf.io.gfile.isdir(path):
        return int(tf.io.gfile.stat(path).length)
    total = 0
    for root, _, files in tf.io.gfile.walk(path):
        total += sum(int(tf.io.gfile.stat(os.path.join(root, f)).length) for f in files)
    return total


def default_class_names(num_classes: int) -> list[str]:
    """Placeholder names when an artifact carries none."""
    return [f"class_{i}" for i in range(num_classes)]


def write_conversion_source(
    model: keras.Model, directory: str, *, image_size: int, probabilities: bool, batch: int | None = 1
) -> str:
    """Write the SavedModel a converter reads: float images [batch, H, W, 3] -> probabilities.

    TFLite takes one image per call (batch 1); ONNX keeps the batch dynamic (None).

    The converter does not capture Keras 3 variables from a concrete function (the weights come out
    missing), but it freezes them correctly when reading a SavedModel, so we go through one.
    """
    predict = probabilities_fn(model, probabilities)
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        SOURCE_SIGNATURE,
        lambda images: {"probabilities": predict(images)},
        input_signature=[tf.TensorSpec([batch, image_size, image_size, 3], tf.float32, name=IMAGES_INPUT)],
    )
    archive.write_out(directory, verbose=False)
    return directory
