"""TFLite full-integer int8: every tensor integer, uint8 pixels in and probabilities out by default (what
MediaPipe, Android camera code and integer-only accelerators such as the Edge TPU take), calibrated on
training images through the eval preprocessing (post-training quantisation), or, for a quantisation-aware
model, with the ranges and weight scales its training learned (efficientnet_tf/models/quantize.py)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from efficientnet_tf.export.formats.base import EIGHT_BIT_WEIGHTS, ExportJob
from efficientnet_tf.export.formats.litert import TFLiteModel, tflite_format
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import quantize

NAME = "tflite_int8"
QAT = "quantization-aware training"


def configure(converter: tf.lite.TFLiteConverter, job: ExportJob) -> None:
    """Integer kernels only, activations calibrated on the representative images, integer input and output."""
    io_type = {"int8": tf.int8, "uint8": tf.uint8}[job.int8_io]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = io_type
    converter.inference_output_type = io_type
    if quantize.is_quantized(job.model):
        # Fake-quant ops make this a quantisation-aware conversion: the ranges are the model's, no calibration.
        # supported_ops=TFLITE_BUILTINS_INT8 would demand calibration images; the file is all-integer anyway.
        return
    if job.representative_images is None or len(job.representative_images) == 0:
        raise UserError(
            "tflite_int8 needs representative images for calibration; pass a few hundred training images "
            "through eval preprocessing (data.sample_images) or drop tflite_int8 from the formats"
        )
    images = np.asarray(job.representative_images, np.float32)

    def representative_dataset():
        for image in images:
            yield [image[None]]

    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


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


def finish(flatbuffer: bytes, job: ExportJob) -> tuple[bytes, dict]:
    """Exact pixel input; the file records its input type and how it was quantised."""
    if quantize.is_quantized(job.model):
        return exact_pixel_input(flatbuffer), {"io_type": job.int8_io, "quantization": QAT}
    return exact_pixel_input(flatbuffer), {"io_type": job.int8_io, "quantization": "post-training",
                                           "calibration_images": int(len(job.representative_images))}


def quantization(row: dict, path: str) -> None:
    """The input's and output's (scale, zero point), in the verification row."""
    runner = TFLiteModel(path)
    row["input_quantization"] = [float(v) for v in runner.input_quantization]
    row["output_quantization"] = [float(v) for v in runner.output_quantization]


def advice(row: dict, report: dict) -> str:
    """What to do about an int8 file that lost too much: the causes we measured, and the alternatives."""
    keras_row = next((r for r in report.get("artifacts", []) if r["format"] == "keras"), {})
    lost = ""
    if row.get("accuracy") is not None and keras_row.get("accuracy") is not None:
        lost = f" ({(keras_row['accuracy'] - row['accuracy']) * 100:.1f} points below Keras)"
    lite = "lite" in str(report.get("model", ""))
    cause = ("a briefly trained model quantises worse" if lite else
             "swish and squeeze-excite (B0-B7, V2) quantise worse than the Lite variants' ReLU6 without "
             "squeeze-excite, and a briefly trained model worse still")  # fmt: skip
    if report.get("quantization") == QAT:
        return (f"tflite_int8 misses its limit{lost} although the model trained quantisation-aware: train it "
                "longer (train.epochs), or check that the ranges froze after they settled (qat.*).")
    return (
        f"tflite_int8 misses its limit{lost}: {cause}. Fine-tune it quantisation-aware (python main.py "
        "--model_dir=RUN-qat --init_weights=RUN --hparams=hparams/qat.yaml --export), use model_dynamic.tflite "
        "(8-bit weights, float activations) or calibrate on more training images (--export_calibration_images)."
    )


def notes(row: dict, report: dict) -> list[str]:
    """Under the table: the file's input and output types and whether every tensor is integer; advice on a miss."""
    if row["format"] != NAME or row.get("error"):
        return []
    verdict = ("every tensor integer (what the Edge TPU compiler needs)" if row["integer_only"]
               else f"{row['float_tensors']} float tensors: not fully integer")
    lines = [f"tflite_int8: {row['input_type']} in, {row['output_type']} out, {verdict}"]
    if report.get("quantization") == QAT and not row["format"].startswith("mediapipe"):
        agreement = row.get("top1_agreement")
        lines.append("tflite_int8 from quantisation-aware training: the Keras row is the fake-quant model, and "
                     f"the file agrees with its top-1 on {agreement:.1%} of the images" if agreement is not None
                     else "tflite_int8 from quantisation-aware training")
    if row.get("passed") is False:
        lines.append(advice(row, report))
    return lines


FORMAT = tflite_format(NAME, "TFLite full-integer int8 (uint8 pixels in; calibrated on training images)",
                       configure, EIGHT_BIT_WEIGHTS, finish=finish, verify_extra=quantization, notes=notes)
