"""Assignment of per-layer weight lists to a model by layer name (our names are keras.applications')."""

from __future__ import annotations

import re

import keras
import numpy as np
from absl import logging

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.weights.import_report import ImportReport

# keras.applications' ImageNet files store the std (not its square) as the Normalization variance
# and add a compensating Rescaling layer (tensorflow/tensorflow#49930). Our model has no such
# layer, so that variance is squared on import.
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
HEAD_LAYER = "predictions"


def _is_normalization(name: str) -> bool:
    return re.fullmatch(r"normalization(_\d+)?", name) is not None


def assign_layers(model: keras.Model, source: dict[str, list[np.ndarray]], origin: str,
                  kind: str = "") -> ImportReport:
    """Copy per-layer weight lists into `model` by layer name; the head is skipped on mismatch."""
    report = ImportReport(path=origin, kind=kind)
    norm_sources = [k for k in source if _is_normalization(k)]
    missing = []
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if _is_normalization(name):
            if not norm_sources:
                report.skipped[name] = "source has no normalization layer; keeping ours"
                continue
            values = [np.array(v) for v in source[norm_sources[0]]]
            if np.allclose(values[1].reshape(-1), _IMAGENET_STD, atol=1e-6):
                values[1] = values[1] ** 2
            layer.set_weights(values)
            layer.finalize_state()
            report.loaded.append(name)
            continue
        if name not in source:
            if name == HEAD_LAYER:
                report.skipped[name] = f"{origin} has no classifier head"
            else:
                missing.append(name)
            continue
        values = source[name]
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(np.shape(v)) for v in values]
        if ours != theirs:
            if name == HEAD_LAYER:
                report.skipped[name] = f"class count differs ({theirs} in {origin}, {ours} here)"
                continue
            raise UserError(
                f"weights in {origin} do not fit this model: layer {name} has shapes {theirs} there "
                f"and {ours} here; pick the matching --model"
            )
        layer.set_weights(values)
        report.loaded.append(name)
    if missing:
        raise UserError(
            f"{origin} lacks weights for {len(missing)} layers of this model (first: {missing[0]}); "
            "is it a checkpoint of the same variant?"
        )
    for name, why in report.skipped.items():
        logging.info("weights import: %s not loaded: %s", name, why)
    return report


def weights_of_model(source: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in source.layers if layer.weights}
