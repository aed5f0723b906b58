"""Reference (tensorflow/tpu) checkpoints at the real depth of Lite4, B8 and L2: the variable names come
from the reference's block table (tests/reference_names.py), not from the loader's mapping, and every
layer must load with its moving-average value and give the source model's outputs.
"""

from __future__ import annotations

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as et
from efficientnet_tf.models.weights import load_pretrained

import reference_names

SMALL = dict(width_coefficient=0.25, resolution=32, classes=7)  # narrow and small; depth as published


def _write_reference_checkpoint(model: keras.Model, variant: str, prefix: pathlib.Path) -> int:
    """A TF1 checkpoint as the reference saves it: raw values and their ExponentialMovingAverage shadows."""
    variables = {}
    rows = reference_names.reference_layers(variant)
    for layer_name, path, names in rows:
        values = model.get_layer(layer_name).weights
        assert len(values) == len(names), layer_name
        for var, value in zip(names, values):
            variables[f"{variant}/{path}/{var}"] = np.asarray(value) - 1.0
            variables[f"{variant}/{path}/{var}/ExponentialMovingAverage"] = np.asarray(value)
    keys = sorted(variables)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=keys, shape_and_slices=[""] * len(keys),
                      tensors=[tf.constant(variables[k]) for k in keys])
    return len(rows)


@pytest.mark.parametrize("variant, blocks", [
    ("efficientnet-lite4", 30),  # 1 + 4 + 4 + 6 + 6 + 8 + 1: the first and last stage stay at one block
    pytest.param("efficientnet-b8", 61, marks=pytest.mark.slow),  # 4 + 8 + 8 + 11 + 11 + 15 + 4
    pytest.param("efficientnet-l2", 88, marks=pytest.mark.slow),  # 6 + 11 + 11 + 16 + 16 + 22 + 6
])
def test_reference_checkpoint_at_full_depth_loads_every_layer(variant: str, blocks: int, tmp_path) -> None:
    assert sum(reference_names.block_repeats(reference_names.DEPTH[variant], "lite" in variant)) == blocks
    source = et.build_model(variant, **SMALL)
    assert sum(layer.name.endswith("_dwconv") for layer in source.layers) == blocks
    rng = np.random.default_rng(4)
    for layer in source.layers:
        if layer.weights and not isinstance(layer, keras.layers.Normalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.ndim == 1
                               else rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in layer.get_weights()])
    prefix = tmp_path / "model.ckpt"
    layers = _write_reference_checkpoint(source, variant, prefix)
    model = et.build_model(variant, **SMALL)
    report = load_pretrained(model, str(prefix))
    assert set(report.skipped) <= {"normalization"} and len(report.loaded) == layers  # no normalisation in TF1 files
    images = tf.constant(rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(model(images)), np.asarray(source(images)), atol=1e-6)
