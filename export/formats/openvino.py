"""OpenVINO IR (openvino/model.xml + model.bin, float32) for Intel CPUs, GPUs and NPUs, converted by OpenVINO from
the same SavedModel the other converters read (float 0..255 images [N, H, W, 3] -> probabilities, batch
dynamic). The class names, image size and resize method are stored in the IR's runtime information, so
`--mode=predict --checkpoint=.../openvino/model.xml` (or the directory) names classes from the file alone.
The optional extra `[openvino]`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from importlib.metadata import version as package_version

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
    compare,
    judged,
    max_prob_diff,
    median_ms,
    names_for,
    predict_in_batches,
    resize_method_of,
    sidecar_info,
)

from efficientnet_tf.errors import UserError, first_line

NAME = "openvino"
DIRECTORY = "openvino"
FILE = "model.xml"  # and model.bin beside it
METADATA_KEY = "efficientnet_tf"
THREADS = 2
PACKAGES = ("openvino",)


def write(job: ExportJob) -> str:
    """Convert the conversion source to an IR in float32 (not OpenVINO's default float16 weights)."""
    import openvino as ov  # optional extra [openvino]

    directory = os.path.join(job.export_dir, DIRECTORY)
    started = time.time()
    try:
        model = ov.convert_model(job.conversion_source(None))
        model.set_rt_info(json.dumps({**job.info, "format": NAME}, ensure_ascii=False), [METADATA_KEY])
        tf.io.gfile.makedirs(directory)
        ov.save_model(model, os.path.join(directory, FILE), compress_to_fp16=False)
    except Exception as error:  # OpenVINO raises its own conversion errors and RuntimeError
        raise UserError(f"OpenVINO conversion failed: {first_line(error)}") from None
    logging.info("Converted to OpenVINO IR in %.1fs: %s", time.time() - started, directory)
    return directory


def model_file(path: str) -> str:
    """The .xml of an IR given as the file or as the directory holding model.xml."""
    return os.path.join(path, FILE) if os.path.isdir(path) else path


def reads(path: str) -> bool:
    """An IR's .xml, or a directory holding model.xml."""
    return path.lower().endswith(".xml") or os.path.isfile(os.path.join(path, FILE))


class OpenVinoModel:
    """An OpenVINO IR classifier compiled for the CPU: float 0..255 images in, probabilities out."""

    def __init__(self, path: str, *, num_threads: int = THREADS):
        try:
            import openvino as ov  # optional extra [openvino]
        except ImportError:
            raise UserError(f"running an OpenVINO model needs openvino: {FORMAT.install_hint}") from None
        path = model_file(path)
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise UserError(f"OpenVINO file {path} does not exist")
        self.path = path
        try:
            core = ov.Core()
            model = core.read_model(path)
            # float32 arithmetic: on CPUs with bfloat16 units (AMX, AVX512_BF16) OpenVINO otherwise computes in
            # bfloat16, which moves probabilities by ~1e-3, far past the float limit this file is judged by.
            self._compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(num_threads),
                                                               "INFERENCE_PRECISION_HINT": "f32"})
        except Exception as error:  # OpenVINO raises RuntimeError and its own types
            raise UserError(f"cannot load OpenVINO model {path}: {first_line(error)}") from None
        shape = model.input(0).get_partial_shape()
        if len(shape) != 4 or not shape[1].is_static or shape[1] != shape[2] or shape[3] != 3:
            raise UserError(f"OpenVINO model {path} takes inputs of shape {shape}; expected [N, size, size, 3]")
        self.image_size = int(shape[1].get_length())
        self.num_classes = int(model.output(0).get_partial_shape()[-1].get_length())
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # f32: float32 arithmetic
        self.metadata = json.loads(model.get_rt_info([METADATA_KEY]).astype(str)) if model.has_rt_info(
            [METADATA_KEY]) else {}

    @property
    def class_names(self) -> list[str] | None:
        """Class names stored in the file, if any."""
        names = self.metadata.get("class_names")
        return list(names) if names else None

    def predict(self, images: np.ndarray, batch_size: int = 1) -> tuple[np.ndarray, list[float]]:
        """Probabilities for float 0..255 images [N, H, W, 3], and each call's time in seconds."""
        return predict_in_batches(lambda batch: self._compiled(batch)[0], images, what=f"OpenVINO model {self.path}",
                                  image_size=self.image_size, num_classes=self.num_classes, batch_size=batch_size)


class OpenVinoPredictor(ImagePredictor):
    """An OpenVINO IR (.xml with its .bin) run by the OpenVINO runtime on the CPU."""

    kind = "OpenVINO model"

    def __init__(self, path: str, class_names: Sequence[str] | None = None):
        self.model = OpenVinoModel(path)
        info = self.model.metadata or sidecar_info(self.model.path)
        self.class_names = names_for(self.model.path, class_names, self.model.class_names, self.model.num_classes)
        self.image_size = self.model.image_size
        self.resize_method = resize_method_of(info, self.model.path)

    def predict_images(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict(images, batch_size=max(1, len(images)))[0]


def verify(path: str, inputs: VerifyInputs) -> list[dict]:
    runner = OpenVinoModel(path)
    probs, _ = runner.predict(inputs.images, batch_size=32)
    _, seconds = runner.predict(inputs.images[: LATENCY_IMAGES + 1], batch_size=1)
    return [{"format": NAME, "path": path, "size_bytes": path_size(path),
             **compare(inputs.reference, probs, inputs.labels),
             "latency_ms": median_ms(seconds),
             "runtime": f"openvino {package_version('openvino')} CPU ({THREADS} threads, {runner.precision})"}]


FORMAT = ExportFormat(
    name=NAME, summary="OpenVINO IR, float32 (Intel CPUs, GPUs, NPUs)", file=DIRECTORY, write=write,
    load=OpenVinoPredictor, verify=verify, acceptance=judged(max_prob_diff(1e-4)), extra="openvino",
    packages=PACKAGES, reads=reads, runtime=f"openvino CPU ({THREADS} threads)",
)
