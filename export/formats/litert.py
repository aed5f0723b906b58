"""What the four TFLite formats share: conversion from the conversion source, the files with their metadata,
the LiteRT runner and predictor, the verification rows (LiteRT, then MediaPipe Tasks' ImageClassifier as
an app runs the file) and the format declaration. Each flavour (tflite_float32, tflite_float16,
tflite_dynamic, tflite_int8) is a module of its own that says how its converter is set and how its rows are
judged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from efficientnet_tf.export import mediapipe_check, metadata
from efficientnet_tf.export.files import LABELS_FILE, path_size
from efficientnet_tf.export.formats.base import (
    ExportFormat,
    ExportJob,
    ImagePredictor,
    Rule,
    VerifyInputs,
    by_suffix,
    compare,
    error_row,
    judged,
    median_ms,
    names_for,
    resize_method_of,
    sidecar_info,
)
from efficientnet_tf.export.keras_model import SOURCE_SIGNATURE, keras_probabilities

from efficientnet_tf.errors import UserError, first_line

# Name of the TFLite metadata entry holding our JSON (class names, image size, resize method).
METADATA_NAME = "efficientnet_tf"
LITERT_THREADS = 2
MEDIAPIPE_PREFIX = "mediapipe:"
INTEGER_TYPES = ("int8", "uint8", "int16", "int32", "int64")

# How a flavour sets the converter, and what it does to the flatbuffer afterwards (with info for the file).
Configure = Callable[[tf.lite.TFLiteConverter, ExportJob], None]
Finish = Callable[[bytes, ExportJob], "tuple[bytes, dict]"]


def convert(source_dir: str, name: str, configure: Configure, job: ExportJob) -> bytes:
    """Convert the conversion-source SavedModel to a TFLite flatbuffer, the converter set by `configure`."""
    converter = tf.lite.TFLiteConverter.from_saved_model(source_dir, signature_keys=[SOURCE_SIGNATURE])
    configure(converter, job)
    started = time.time()
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # the converter raises ConverterError, RuntimeError, ...
        raise UserError(f"TFLite conversion to {name} failed: {first_line(error)}") from None
    logging.info("Converted to %s in %.1fs (%d bytes)", name, time.time() - started, len(flatbuffer))
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
        labels_file=LABELS_FILE,
    )


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


class TFLitePredictor(ImagePredictor):
    """A .tflite model; class names and preprocessing from its metadata or sidecar files."""

    kind = "TFLite model"

    def __init__(self, path: str, class_names: Sequence[str] | None = None):
        self.model = TFLiteModel(path)
        info = self.model.metadata or sidecar_info(path)
        self.class_names = names_for(path, class_names, info.get("class_names"), self.model.num_classes)
        self.image_size = self.model.image_size
        self.resize_method = resize_method_of(info, path)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(images)[0]


def litert_row(name: str, path: str, inputs: VerifyInputs) -> dict:
    """The LiteRT row of a .tflite file: agreement, accuracy, latency, and its tensor types."""
    runner = TFLiteModel(path, num_threads=LITERT_THREADS)
    probs, seconds = runner.predict(inputs.images)
    types = runner.tensor_types()
    return {"format": name, "path": path, "size_bytes": path_size(path),
            **compare(inputs.reference, probs, inputs.labels), "latency_ms": median_ms(seconds),
            "runtime": f"litert ({LITERT_THREADS} threads)", "input_type": runner.input_dtype.name,
            "output_type": runner.output_dtype.name, "integer_only": all(t in INTEGER_TYPES for t in types),
            "float_tensors": sum(t not in INTEGER_TYPES for t in types),
            **({} if inputs.start is None else {"start_agreement": compare(inputs.start, probs, None)["top1_agreement"]})}


def mediapipe_row(name: str, path: str, inputs: VerifyInputs) -> list[dict]:
    """The file run through MediaPipe's ImageClassifier on the eval images as uint8 frames, against Keras on
    the same frames; none when mediapipe is not installed (the report says so)."""
    if not mediapipe_check.available():
        return []
    pixels = mediapipe_check.as_pixels(inputs.images)
    reference = keras_probabilities(inputs.model, pixels.astype(np.float32), inputs.probabilities)
    class_names = TFLiteModel(path).class_names or []
    row = {"format": MEDIAPIPE_PREFIX + name, "path": path, "size_bytes": path_size(path),
           "runtime": f"mediapipe {mediapipe_check.version()} ImageClassifier"}
    started = time.time()
    try:
        scores, names, seconds = mediapipe_check.classify_isolated(path, pixels, reference.shape[-1])
    except Exception as error:  # noqa: BLE001 - MediaPipe's own error types; the row records the message
        row = error_row(row["format"], path, first_line(error)[:300], size_bytes=row["size_bytes"],
                        runtime=row["runtime"])
        logging.warning("MediaPipe cannot run %s: %s", path, row["error"])
    else:
        row.update(compare(reference, scores, inputs.labels), latency_ms=median_ms(seconds),
                   reference_accuracy=compare(reference, reference, inputs.labels)["accuracy"],
                   class_names_from_metadata=mediapipe_check.names_read_back(names, class_names))
    logging.info("Ran %s through MediaPipe in %.1fs", name, time.time() - started)
    return [row]


def mediapipe_rule(rule: Rule) -> Rule:
    """A MediaPipe row is judged by its flavour's rule once MediaPipe named the classes from the metadata."""

    def checked(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        if row["format"].startswith(MEDIAPIPE_PREFIX) and not row.get("error") and \
                not row.get("class_names_from_metadata"):
            return False, "class names read back from the metadata"
        return rule(row, keras_accuracy)

    return checked


def mediapipe_note(row: dict, report: dict) -> list[str]:
    """The line a MediaPipe row adds under the report's table."""
    if not row["format"].startswith(MEDIAPIPE_PREFIX) or row.get("error"):
        return []
    named = ("class names read from the metadata" if row.get("class_names_from_metadata")
             else "CLASS NAMES NOT READ FROM THE METADATA")
    return [f"{row['format']}: loads in MediaPipe, {named}"]


def tflite_format(name: str, summary: str, configure: Configure, rule: Rule, *, mediapipe: Rule | None = None,
                  finish: Finish | None = None, verify_extra: Callable[[dict, str], None] | None = None,
                  notes: Callable[[dict, dict], list[str]] | None = None) -> ExportFormat:
    """A TFLite flavour: its converter settings, its acceptance rule (LiteRT row; `mediapipe` for the
    MediaPipe row, the same by default), what it does to the converted file and the report's notes."""
    file = f"model_{name[len('tflite_'):]}.tflite"
    mediapipe_limit = mediapipe or rule

    def write(job: ExportJob) -> str:
        flatbuffer = convert(job.conversion_source(1), name, configure, job)
        extra: dict = {"format": name}
        if finish is not None:
            flatbuffer, more = finish(flatbuffer, job)
            extra.update(more)
        path = os.path.join(job.export_dir, file)
        write_tflite(path, flatbuffer, {**job.info, **extra}, classifier_metadata(job.info, job.model_info))
        logging.info("Wrote %s", path)
        return path

    def verify(path: str, inputs: VerifyInputs) -> list[dict]:
        row = litert_row(name, path, inputs)
        if verify_extra is not None:
            verify_extra(row, path)
        return [row]

    def acceptance(row: dict, keras_accuracy: float | None) -> tuple[bool, str]:
        limit = mediapipe_limit if row["format"].startswith(MEDIAPIPE_PREFIX) else rule
        return judged(mediapipe_rule(limit))(row, keras_accuracy)

    def all_notes(row: dict, report: dict) -> list[str]:
        return (notes(row, report) if notes else []) + mediapipe_note(row, report)

    return ExportFormat(
        name=name, summary=summary, file=file, write=write, load=TFLitePredictor, acceptance=acceptance,
        verify=verify, clients=lambda path, inputs: mediapipe_row(name, path, inputs), notes=all_notes,
        reads=by_suffix(".tflite"), runtime=f"litert ({LITERT_THREADS} threads)",
    )
