"""Per-layer weights from Keras files: legacy .h5 (keras.applications downloads), Keras 3 .weights.h5, .keras."""

from __future__ import annotations

import h5py
import keras
import numpy as np

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.weights.assign import weights_of_model


def weights_of_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Per-layer weights from a Keras .h5 file: legacy weights/model files or Keras 3 .weights.h5."""
    out: dict[str, list[np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:  # legacy format (keras.applications downloads, model.save(.h5))
            for raw in root.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
                if names:
                    out[name] = [np.array(group[n]) for n in names]
        elif "layers" in root:  # Keras 3 .weights.h5: layers/<name>/vars/<i>
            # Groups are keyed by object path (conv2d_3, ...); the layer's own name is an attribute.
            for key, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    name = group["vars"].attrs.get("name", key)
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    out[name] = [np.array(group["vars"][str(i)]) for i in range(len(group["vars"]))]
        else:
            raise UserError(f"{path} is not a Keras weights file (no layer_names or layers group)")
    return out




def weights_of_keras_file(path: str) -> dict[str, list[np.ndarray]]:
    """Per-layer weights of a saved .keras model (loaded in safe mode)."""
    return weights_of_model(keras.saving.load_model(path, compile=False, safe_mode=True))
