"""ONNX (through tf2onnx) and an ONNX Runtime classifier, for ONNX Runtime, TensorRT and other ONNX users.

The model is converted from the same kind of SavedModel the TFLite converter reads (float 0..255
images [N, H, W, 3] -> probabilities, batch dynamic) by tf2onnx's command line. Converting a live
Keras function instead leaves the normalisation layer's mean and variance as extra graph inputs
that ONNX Runtime then demands; the SavedModel route freezes them into constants. The class names,
image size and resize method are stored in the ONNX file's metadata (`metadata_props`) under the
same key as our TFLite JSON entry, so `--mode=predict` can name classes from the file alone.

tf2onnx and onnxruntime are the optional extra `[onnx]`; without it the format is refused in one
line before anything is written (efficientnet_tf.export.registry.check_installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from efficientnet_tf.export.files import path_size
from efficientnet_tf.export.formats.base import (
    LATENCY_IMAGES,
    ExportFormat,
    ExportJob,
    ImagePredictor,
    VerifyInputs,
    by_suffix,
    compare,
    judged,
    max_prob_diff,
    median_ms,
    names_for,
    predict_in_batches,
    resize_method_of,
    sidecar_info,
)
from efficientnet_tf.export.keras_model import SOURCE_SIGNATURE

from efficientnet_tf.errors import UserError, first_line

NAME = "onnx"
FILE = "model.onnx"
OPSET = 17
METADATA_KEY = "efficientnet_tf"
ORT_THREADS = 2
PACKAGES = ("tf2onnx", "onnxruntime")
EXTRA_HINT = "pip install -e '.[onnx]' (tf2onnx and onnxruntime)"
CONVERT_TIMEOUT_S = 1800


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
               "--signature_def", SOURCE_SIGNATURE, "--opset", str(opset), "--output", path]  # fmt: skip
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


def write(job: ExportJob) -> str:
    """Write `export_dir/model.onnx` (float 0..255 NHWC images, dynamic batch -> probabilities)."""
    path = os.path.join(job.export_dir, FILE)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="onnx_") as tmp:
        partial = os.path.join(tmp, FILE)
        convert(job.conversion_source(None), partial, opset=OPSET)
        add_metadata(partial, {**job.info, "format": NAME, "opset": OPSET})
        tf.io.gfile.copy(partial, path, overwrite=True)
    logging.info("Converted to ONNX (opset %d) in %.1fs: %s", OPSET, time.time() - started, path)
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
        return predict_in_batches(lambda batch: self._session.run([self._output], {self._input: batch})[0], images, what=f"ONNX model {self.path}",
                                  image_size=self.image_size, num_classes=self.num_classes, batch_size=batch_size)


class OnnxPredictor(ImagePredictor):
    """An .onnx model run with ONNX Runtime (the optional `onnx` extra)."""

    kind = "ONNX model"

    def __init__(self, path: str, class_names: Sequence[str] | None = None):
        self.model = OnnxModel(path)  # ONNX Runtime is optional: without it, one line naming the extra
        info = self.model.metadata or sidecar_info(path)
        self.class_names = names_for(path, class_names, self.model.class_names or info.get("class_names"),
                                     self.model.num_classes)
        self.image_size = self.model.image_size
        self.resize_method = resize_method_of(info, path)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(images, np.float32), batch_size=max(1, len(images)))[0])


def verify(path: str, inputs: VerifyInputs) -> list[dict]:
    runner = OnnxModel(path, num_threads=ORT_THREADS)
    probs, _ = runner.predict(inputs.images, batch_size=32)
    _, seconds = runner.predict(inputs.images[: LATENCY_IMAGES + 1], batch_size=1)
    return [{"format": NAME, "path": path, "size_bytes": path_size(path),
             **compare(inputs.reference, probs, inputs.labels), "latency_ms": median_ms(seconds),
             "runtime": f"onnxruntime ({ORT_THREADS} threads)"}]


FORMAT = ExportFormat(
    name=NAME, summary=f"ONNX (opset {OPSET}) for ONNX Runtime, TensorRT and other ONNX runtimes", file=FILE,
    write=write, load=OnnxPredictor, verify=verify, acceptance=judged(max_prob_diff(1e-4)), extra="onnx",
    packages=PACKAGES, reads=by_suffix(".onnx"), runtime=f"onnxruntime ({ORT_THREADS} threads)",
)
