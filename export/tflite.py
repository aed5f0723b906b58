"""TFLite export (float32, float16, dynamic-range, full-integer int8) and a LiteRT runner."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import common, metadata

# Name of the TFLite metadata entry holding our JSON (class names, image size, resize method).
METADATA_NAME = "efficientnet_tf"
LITERT_THREADS = 2


def convert(
    source_dir: str,
    fmt: str,
    *,
    representative_images: np.ndarray | None = None,
    int8_io: str = "uint8",
) -> bytes:
    """Convert the conversion-source SavedModel to a TFLite flatbuffer in format `fmt`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(source_dir, signature_keys=[common.SOURCE_SIGNATURE])
    if fmt == "tflite_float32":
        pass
    elif fmt == "tflite_float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "tflite_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "tflite_int8":
        if representative_images is None or len(representative_images) == 0:
            raise UserError(
                "tflite_int8 needs representative images for calibration; pass a few hundred training images "
                "through eval preprocessing (data.sample_images) or drop tflite_int8 from the formats"
            )
        images = np.asarray(representative_images, np.float32)

        def representative_dataset():
            for image in images:
                yield [image[None]]

        io_type = {"int8": tf.int8, "uint8": tf.uint8}[int8_io]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    else:
        raise UserError(f"unknown TFLite format {fmt!r}; choose from {', '.join(common.TFLITE_FORMATS)}")
    started = time.time()
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises ConverterError, RuntimeError, ...
        raise UserError(f"TFLite conversion to {fmt} failed: {first_line(error)}") from None
    logging.info("Converted to %s in %.1fs (%d bytes)", fmt, time.time() - started, len(flatbuffer))
    return flatbuffer


def embed_metadata(flatbuffer: bytes, info: dict) -> bytes:
    """Return the flatbuffer with `info` (JSON) stored as a named model metadata entry."""
    return metadata.add_buffer_entry(flatbuffer, METADATA_NAME, json.dumps(info, ensure_ascii=False).encode("utf-8"))


def read_metadata(flatbuffer: bytes) -> dict | None:
    """The JSON stored by `embed_metadata`, or None if the model has none."""
    try:
        data = metadata.read_buffer_entry(flatbuffer, METADATA_NAME)
        return None if data is None else json.loads(data.decode("utf-8"))
    except (ValueError, IndexError, UnicodeDecodeError, AttributeError) as error:
        logging.warning("Could not read TFLite metadata: %s", error)
    return None


def write_tflite(path: str, flatbuffer: bytes, info: dict, standard: metadata.ClassifierMetadata) -> str:
    """Write a .tflite file with our JSON entry, the standard metadata and the packed labels file."""
    data = metadata.attach(embed_metadata(flatbuffer, info), standard)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(data)
    return path


class TFLiteModel:
    """A .tflite classifier run with the LiteRT interpreter, quantising int8/uint8 inputs and outputs."""

    def __init__(self, path: str | None = None, *, content: bytes | None = None, num_threads: int = LITERT_THREADS):
        from ai_edge_litert.interpreter import Interpreter  # LiteRT: only running a .tflite file needs it

        if content is None:
            if path is None or not tf.io.gfile.exists(path):
                raise UserError(f"TFLite file {path} does not exist")
            with tf.io.gfile.GFile(path, "rb") as handle:
                content = handle.read()
        self.path = path
        self.metadata = read_metadata(content) or {}
        try:
            self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise UserError(f"cannot load TFLite model {path}: {first_line(error)}") from None
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"TFLite model {path} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1"
            )
        self._input, self._output = inputs[0], outputs[0]
        shape = self._input["shape"]
        if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
            raise UserError(f"TFLite model {path} takes inputs of shape {list(shape)}; expected [1, size, size, 3]")
        self.image_size = int(shape[1])
        self.num_classes = int(self._output["shape"][-1])
        self.input_dtype = np.dtype(self._input["dtype"])
        self.output_dtype = np.dtype(self._output["dtype"])
        self.input_quantization = tuple(self._input["quantization"])  # (scale, zero point); (0, 0) for float
        self.output_quantization = tuple(self._output["quantization"])

    @property
    def class_names(self) -> list[str] | None:
        """Class names embedded in the model, if any."""
        names = self.metadata.get("class_names")
        return list(names) if names else None

    def _quantize(self, image: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.float32:
            return image[None].astype(np.float32)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(self.input_dtype)
        q = np.round(image / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)[None]

    def _dequantize(self, value: np.ndarray) -> np.ndarray:
        if self.output_dtype == np.float32:
            return value.astype(np.float32)
        scale, zero_point = self._output["quantization"]
        return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Probabilities for float 0..255 images [N, H, W, 3], and each image's invoke time in seconds."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise UserError(
                f"TFLite model {self.path} takes {self.image_size}x{self.image_size} RGB images, got {images.shape[1:]}"
            )
        probs, seconds = [], []
        for image in images:
            self._interpreter.set_tensor(self._input["index"], self._quantize(image))
            started = time.perf_counter()
            self._interpreter.invoke()
            seconds.append(time.perf_counter() - started)
            probs.append(self._dequantize(self._interpreter.get_tensor(self._output["index"]))[0])
        return np.stack(probs) if probs else np.zeros((0, self.num_classes), np.float32), seconds

    def tensor_types(self) -> list[str]:
        """dtype names of every tensor in the graph (to check that int8 models are fully quantised)."""
        return [np.dtype(t["dtype"]).name for t in self._interpreter.get_tensor_details()]


def exact_pixel_input(flatbuffer: bytes) -> bytes:
    """Give an integer input the scale 1 (zero point 0 for uint8, -128 for int8): a pixel is its own value.

    Our models take 0..255 pixels, so 8 bits hold the float input exactly; the calibrated
    parameters are only close to (1, 0) (a photo set rarely spans 0..255 in every batch), and
    MediaPipe and Android camera code feed raw pixels. The first op (QUANTIZE to int8) reads the
    input's parameters at run time, so this changes nothing but the rounding of the input.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    tensor = subgraph.tensors[subgraph.inputs[0]]
    zero_points = {tflite_schema.TensorType.UINT8: 0, tflite_schema.TensorType.INT8: -128}
    if tensor.type not in zero_points or tensor.quantization is None:
        return flatbuffer
    tensor.quantization.scale = np.array([1.0], np.float32)
    tensor.quantization.zeroPoint = np.array([zero_points[tensor.type]], np.int64)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def classifier_metadata(info: dict, model_info: dict | None) -> metadata.ClassifierMetadata:
    """The standard metadata of one .tflite file from the export's info and the run's description."""
    model_info = model_info or {}
    names = list(info["class_names"])
    return metadata.ClassifierMetadata(
        name=model_info.get("name") or info["model"],
        description=model_info.get("description") or f"{info['model']} image classifier of {len(names)} classes",
        version=model_info.get("version") or "1",
        author=model_info.get("author") or "",
        license=model_info.get("license") or "",
        image_size=int(info["image_size"]),
        labels=names,
        labels_file=common.LABELS_FILE,
    )


def export_tflite(
    model: keras.Model,
    export_dir: str,
    formats: Sequence[str],
    *,
    info: dict,
    image_size: int,
    probabilities: bool,
    representative_images: np.ndarray | None = None,
    int8_io: str = "uint8",
    model_info: dict | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """Convert and write each TFLite format into `export_dir`.

    Returns ({format: path} of the files written, {format: error} of the conversions that failed):
    one format failing does not stop the others.
    """
    paths: dict[str, str] = {}
    failures: dict[str, str] = {}
    if not formats:
        return paths, failures
    with tempfile.TemporaryDirectory(prefix="tflite_source_") as tmp:
        source = common.write_conversion_source(
            model, os.path.join(tmp, "source"), image_size=image_size, probabilities=probabilities
        )
        for fmt in formats:
            try:
                flatbuffer = convert(source, fmt, representative_images=representative_images, int8_io=int8_io)
            except UserError as error:
                failures[fmt] = str(error)
                logging.error("%s", error)
                continue
            extra = {"format": fmt}
            if fmt == "tflite_int8":
                flatbuffer = exact_pixel_input(flatbuffer)
                extra["io_type"] = int8_io
                extra["calibration_images"] = int(len(representative_images))
            path = os.path.join(export_dir, common.TFLITE_FILES[fmt])
            paths[fmt] = write_tflite(path, flatbuffer, {**info, **extra}, classifier_metadata(info, model_info))
            logging.info("Wrote %s", path)
    return paths, failures
