"""Full-integer .tflite files from quantisation-aware training (QAT) models, and how faithful they are.

The converter reads the QAT model's fake-quantisation ops and keeps their ranges: each learned
activation range becomes a tensor's int8 scale and zero point, each folded kernel's per-channel
range its weights' scales, and every bias an int32 with scale input x weight (no calibration
images). The file takes uint8 pixels (scale 1, zero point 0: a pixel is its own value) and gives
uint8 probabilities (scale 1/256), like the post-training int8 file, with the same standard
metadata, so LiteRT, MediaPipe and the project's predictor load it unchanged.

    flatbuffer = convert_qat(qat_model)                      # bytes
    path = export_qat_tflite(qat_model, export_dir, info=...)  # model_int8_qat.tflite with metadata
    row = simulation_row(qat_model, path, images, labels)      # fake-quant Keras model vs the file
"""

from __future__ import annotations

import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import checks
from efficientnet_tf.export.files import path_size
from efficientnet_tf.export.formats.base import compare
from efficientnet_tf.export.formats.litert import (
    INTEGER_TYPES,
    LITERT_THREADS,
    TFLiteModel,
    classifier_metadata,
    write_tflite,
)
from efficientnet_tf.export.formats.saved_model import IMAGES_INPUT
from efficientnet_tf.export.keras_model import SOURCE_SIGNATURE
from efficientnet_tf.models import quantize
from efficientnet_tf.models.fake_quant import PROBABILITY_RANGE, ActivationQuantizer, fake_quant

FORMAT = "tflite_int8_qat"
FILE_NAME = "model_int8_qat.tflite"
# The fake-quant Keras model and its int8 file round a few values differently (ties, fixed-point
# multipliers); on near-ties that can flip a top-1, so agreement is high but not always 100 %.
MIN_SIMULATION_AGREEMENT = 0.98
BATCH = 32


def check_ready(model: keras.Model) -> None:
    """A one-line error unless `model` is a QAT model whose every range was learned."""
    if not quantize.is_quantized(model):
        raise UserError(f"model {model.name} is not a quantisation-aware training model; export it as tflite_int8 "
                        "(post-training quantisation) or train it with QAT first")
    missing = quantize.unobserved_ranges(model)
    if missing:
        raise UserError(f"{len(missing)} quantisation ranges of {model.name} were never learned (first: {missing[0]}); "
                        "train the QAT model for at least one step before exporting it")


def ends_in_probabilities(model: keras.Model) -> bool:
    """Whether the QAT model already ends in a softmax (its fixed 1/256 quantisation included)."""
    last = model.layers[-1]
    return (isinstance(last, ActivationQuantizer) and last.fixed_range == PROBABILITY_RANGE
            and "softmax" in last.name)


def probabilities_fn(model: keras.Model, probabilities: bool = True):
    """images -> probabilities as the int8 file computes them: softmax quantised to 1/256 steps (with
    `probabilities` False: the model's output as it is, the quantised logits of a logits model)."""
    add_softmax = probabilities and not ends_in_probabilities(model)

    def fn(images: tf.Tensor) -> tf.Tensor:
        out = tf.cast(model(images, training=False), tf.float32)
        return fake_quant(tf.nn.softmax(out, axis=-1), *PROBABILITY_RANGE) if add_softmax else out

    return fn


def as_file_input(images: np.ndarray) -> np.ndarray:
    """Float 0..255 images as the uint8 pixels the file receives (rounded half to even, as numpy and the
    predictor round), back in float: the fake-quant model's own rounding of the pixels would round the
    halves of resized images up instead."""
    return np.clip(np.round(np.asarray(images, np.float32)), 0, 255)


def simulated_probabilities(model: keras.Model, images: np.ndarray, batch_size: int = BATCH,
                            probabilities: bool = True) -> np.ndarray:
    """The fake-quant Keras model's probabilities (what the int8 file should give) on float 0..255 images,
    rounded to the pixels the file receives."""
    images = as_file_input(images)
    fn = tf.function(probabilities_fn(model, probabilities), reduce_retracing=True)
    chunks = [fn(tf.constant(images[i: i + batch_size], tf.float32)).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, checks.model_num_classes(model)), np.float32)


def convert_qat(model: keras.Model, *, image_size: int | None = None, int8_io: str = "uint8",
                probabilities: bool = True) -> bytes:
    """The full-integer TFLite flatbuffer of a QAT model: `int8_io` ("uint8" or "int8") in and out; probabilities
    out (with `probabilities` False: what the model outputs, e.g. its quantised logits)."""
    check_ready(model)
    if int8_io not in checks.INT8_IO_TYPES:
        raise UserError(f"int8_io must be one of {', '.join(checks.INT8_IO_TYPES)}, got {int8_io!r}")
    size = image_size or checks.model_image_size(model)
    if size is None:
        raise UserError(f"model {model.name} takes images of any size; pass image_size")
    checks.check_image_size(model, size)
    predict = probabilities_fn(model, probabilities)
    with tempfile.TemporaryDirectory(prefix="qat_source_") as tmp:
        # Through a SavedModel: the converter freezes Keras 3 variables from one (not from a concrete
        # function), after which the fake-quant ranges are constants it can read.
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            SOURCE_SIGNATURE, lambda images: {"probabilities": predict(images)},
            input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name=IMAGES_INPUT)])
        source = os.path.join(tmp, "source")
        archive.write_out(source, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(source, signature_keys=[SOURCE_SIGNATURE])
        # Fake-quant ops make this a QAT conversion: no representative data, and not
        # supported_ops=TFLITE_BUILTINS_INT8, which demands representative data.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        io_type = {"int8": tf.int8, "uint8": tf.uint8}[int8_io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
        started = time.time()
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises ConverterError, RuntimeError, ...
            raise UserError(f"TFLite conversion of the QAT model failed: {first_line(error)}") from None
    logging.info("Converted the QAT model in %.1fs (%d bytes)", time.time() - started, len(flatbuffer))
    return flatbuffer


def tensor_types(flatbuffer: bytes) -> dict[str, int]:
    """How many tensors of each type the file holds (every one integer in a full-integer file)."""
    from ai_edge_litert.interpreter import Interpreter  # LiteRT: only reading a .tflite file needs it

    interpreter = Interpreter(model_content=flatbuffer)
    counts: dict[str, int] = {}
    for detail in interpreter.get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def float_tensor_count(flatbuffer: bytes) -> int:
    """Tensors of the file that are not integer."""
    return sum(n for name, n in tensor_types(flatbuffer).items() if name not in INTEGER_TYPES)


def export_qat_tflite(
    model: keras.Model,
    export_dir: str,
    *,
    info: dict,
    model_info: dict | None = None,
    int8_io: str = "uint8",
) -> str:
    """Write `model_int8_qat.tflite` (with the project's JSON and the standard metadata) into `export_dir`.

    `info` is the export's info (class_names, model, image_size, ...), as for the other TFLite files.
    """
    names = checks.check_class_names(info["class_names"], checks.model_num_classes(model))
    flatbuffer = convert_qat(model, image_size=int(info["image_size"]), int8_io=int8_io)
    floats = float_tensor_count(flatbuffer)
    if floats:
        raise UserError(f"the QAT model converted with {floats} float tensors: a layer the simulation does not "
                        "model kept float; the file would not be full-integer")
    extra = {"format": FORMAT, "io_type": int8_io, "quantization": "quantization-aware training"}
    tf.io.gfile.makedirs(export_dir)
    path = os.path.join(export_dir, FILE_NAME)
    full = {**info, "class_names": names, **extra}
    return write_tflite(path, flatbuffer, full, classifier_metadata(full, model_info))


def load(path: str) -> TFLiteModel:
    """The file as a predictor (LiteRT; uint8 pixels in, probabilities out)."""
    return TFLiteModel(path, num_threads=LITERT_THREADS)


def simulation_row(model: keras.Model, path: str, images: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """One verification row: the int8 file against the fake-quant Keras model it was converted from.

    Top-1 agreement near 100 % shows that training saw what the file computes; the accuracy is the file's.
    """
    runner = load(path)
    probs, seconds = runner.predict(np.asarray(images, np.float32))
    reference = simulated_probabilities(model, np.asarray(images, np.float32))
    types = runner.tensor_types()
    row = {"format": FORMAT + ":simulation", "path": path, "size_bytes": path_size(path),
           **compare(reference, probs, labels),
           "latency_ms": round(float(np.median(seconds[1:] or seconds)) * 1000.0, 3) if seconds else None,
           "runtime": f"litert ({LITERT_THREADS} threads) vs fake-quant keras",
           "input_type": runner.input_dtype.name, "output_type": runner.output_dtype.name,
           "integer_only": all(t in INTEGER_TYPES for t in types),
           "float_tensors": sum(t not in INTEGER_TYPES for t in types)}  # fmt: skip
    return row


def acceptance(row: dict) -> tuple[bool, str]:
    """Whether the file computes what the QAT model simulated: top-1 agreement and every tensor integer."""
    limit = MIN_SIMULATION_AGREEMENT
    ok = row.get("top1_agreement") is not None and row["top1_agreement"] >= limit and bool(row.get("integer_only"))
    return ok, f"top-1 agreement with the fake-quant model >= {limit:.0%}, every tensor integer"
