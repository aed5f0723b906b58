"""ONNX export (through tf2onnx) and an ONNX Runtime classifier, for ONNX Runtime, TensorRT and OpenVINO users.

The model is converted from the same kind of SavedModel the TFLite converter reads (float 0..255
images [N, H, W, 3] -> probabilities, batch dynamic) by tf2onnx's command line. Converting a live
Keras function instead leaves the normalisation layer's mean and variance as extra graph inputs
that ONNX Runtime then demands; the SavedModel route freezes them into constants. The class names,
image size and resize method are stored in the ONNX file's metadata (`metadata_props`) under the
same key as our TFLite JSON entry, so `--mode=predict` can name classes from the file alone.

tf2onnx and onnxruntime are the optional extra `[onnx]`; without it the format is refused in one
line before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.export import common

FORMAT = "onnx"
FILE = "model.onnx"
OPSET = 17
METADATA_KEY = "efficientnet_tf"
ORT_THREADS = 2
EXTRA_HINT = "pip install -e '.[onnx]' (tf2onnx and onnxruntime)"
CONVERT_TIMEOUT_S = 1800


def missing_packages() -> list[str]:
    """The packages of the [onnx] extra that are not installed."""
    return [name for name in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def check_available() -> None:
    """Raise UserError in one line when the [onnx] extra is not installed."""
    missing = missing_packages()
    if missing:
        raise UserError(f"the onnx export format needs {' and '.join(missing)}: {EXTRA_HINT}")


def _conversion_error(output: str) -> str:
    """The most telling line of tf2onnx's output for a failed conversion."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:400]
    return lines[-1][:400] if lines else "no output"


def convert(source_dir: str, path: str, *, opset: int = OPSET) -> None:
    """Run tf2onnx's converter on the conversion-source SavedModel, writing `path`.

    A separate process: tf2onnx resets TensorFlow's default graph and its freezing runs in graph
    mode, which must not touch the exporting process's models.
    """
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", source_dir,
               "--signature_def", common.SOURCE_SIGNATURE, "--opset", str(opset), "--output", path]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise UserError(f"ONNX conversion took over {CONVERT_TIMEOUT_S} s and was stopped") from None
    if proc.returncode != 0 or not os.path.exists(path):
        raise UserError(f"ONNX conversion failed: {_conversion_error(proc.stderr + proc.stdout)}")


def add_metadata(path: str, info: dict) -> None:
    """Store `info` (JSON) and a few plain fields in the ONNX file's metadata_props."""
    import onnx  # installed with tf2onnx (the [onnx] extra)

    proto = onnx.load(path)
    props = {METADATA_KEY: json.dumps(info, ensure_ascii=False), "class_names": json.dumps(info["class_names"],
             ensure_ascii=False), "image_size": str(info["image_size"]), "input": info.get("input", "")}  # fmt: skip
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = proto.producer_name or "tf2onnx"
    proto.doc_string = f"{info.get('model', 'model')}: {info.get('output', 'class probabilities')}"
    onnx.save(proto, path)


def export_onnx(
    model: keras.Model, export_dir: str, *, info: dict, image_size: int, probabilities: bool, opset: int = OPSET
) -> str:
    """Write `export_dir/model.onnx` (float 0..255 NHWC images, dynamic batch -> probabilities)."""
    check_available()
    path = os.path.join(export_dir, FILE)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="onnx_source_") as tmp:
        source = common.write_conversion_source(
            model, os.path.join(tmp, "source"), image_size=image_size, probabilities=probabilities, batch=None
        )
        partial = os.path.join(tmp, FILE)
        convert(source, partial, opset=opset)
        add_metadata(partial, {**info, "format": FORMAT, "opset": opset})
        tf.io.gfile.copy(partial, path, overwrite=True)
    logging.info("Converted to ONNX (opset %d) in %.1fs: %s", opset, time.time() - started, path)
    return path


class OnnxModel:
    """A .onnx classifier run with ONNX Runtime on the CPU: float 0..255 images in, probabilities out."""

    def __init__(self, path: str, *, num_threads: int = ORT_THREADS):
        try:
            import onnxruntime as ort  # optional extra [onnx]
        except ImportError:
            raise UserError(f"running a .onnx model needs onnxruntime: {EXTRA_HINT}") from None
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise UserError(f"ONNX file {path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail / InvalidGraph / ... types
            raise UserError(f"cannot load ONNX model {path}: {first_line(error)}") from None
        self.path = path
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            names = ", ".join(i.name for i in inputs)
            raise UserError(f"ONNX model {path} has inputs {names}; expected one image input")
        self._input, self._output = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise UserError(f"ONNX model {path} takes inputs of shape {shape}; expected [N, size, size, 3]")
        self.image_size = int(shape[1])
        self.num_classes = int(outputs[0].shape[-1])
        props = self._session.get_modelmeta().custom_metadata_map
        try:
            self.metadata = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}
        except ValueError:
            self.metadata = {}

    @property
    def class_names(self) -> list[str] | None:
        """Class names stored in the file, if any."""
        names = self.metadata.get("class_names")
        return list(names) if names else None

    def predict(self, images: np.ndarray, batch_size: int = 1) -> tuple[np.ndarray, list[float]]:
        """Probabilities for float 0..255 images [N, H, W, 3], and each call's time in seconds."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise UserError(
                f"ONNX model {self.path} takes {self.image_size}x{self.image_size} RGB images, got {images.shape[1:]}"
            )
        probs, seconds = [], []
        for start in range(0, len(images), max(1, int(batch_size))):
            batch = np.ascontiguousarray(images[start : start + max(1, int(batch_size))])
            began = time.perf_counter()
            out = self._session.run([self._output], {self._input: batch})[0]
            seconds.append(time.perf_counter() - began)
            probs.append(np.asarray(out, np.float32))
        return (np.concatenate(probs) if probs else np.zeros((0, self.num_classes), np.float32)), seconds
