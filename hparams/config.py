"""Layered, strict configuration: defaults -> variant -> dataset -> --hparams -> flags.

The configuration is an `ml_collections.ConfigDict`, locked after the defaults are read, so that
its type checks and its refusal of unknown keys do the validation; this module adds YAML layers,
dotted `key=value` overrides, nearest-key suggestions and the resolved-config file.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import yaml
from absl import logging

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams.variants import variant_layer
from efficientnet_tf.models.scaling import DEFAULT_DROP_CONNECT_RATE, canonical_name, get_variant

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULTS_FILE = os.path.join(CONFIG_DIR, "defaults.yaml")
DATASETS_DIR = os.path.join(CONFIG_DIR, "datasets")

# Types of the keys whose default is null ("derived"); the others take the type of their default.
_NULLABLE_TYPES: dict[str, type] = {
    "model.image_size": int,
    "model.num_classes": int,
    "model.dropout_rate": float,
    "model.drop_connect_rate": float,
    "model.batch_norm_momentum": float,
    "model.width_coefficient": float,
    "model.depth_coefficient": float,
    "model.normalization": str,
    "data.data_dir": str,
    "data.resize_method": str,
    "train.train_steps": int,
    "train.max_seconds": float,
    "train.steps_per_epoch": int,
    "train.gradient_clip_norm": float,
    "train.steps_per_loop": int,
    "train.profile_steps": str,
    "train.seed": int,
    "train.progressive.image_size_start": int,
    "train.progressive.image_size_end": int,
    "train.progressive.dropout_rate_start": float,
    "eval.batch_size": int,
}
# Keys that take one of a few words (checked when set, with the nearest word suggested).
_CHOICES: dict[str, tuple[str, ...]] = {
    "data.augment_backend": ("native", "keras_cv"),
}
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}

# A layer file may start from other files of this folder: `base: <file.yaml>` (or a list), read first.
BASE_KEY = "base"

# A comma starts a new override only when a `dotted.key=` follows it, so values may hold commas.
_OVERRIDE_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")


def _read_yaml(path: str) -> Any:
    """Parse a YAML file (local or any filesystem TensorFlow reads) into Python values."""
    import tensorflow as tf  # heavy: the command line checks flags and configs before TensorFlow starts

    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            return yaml.safe_load(handle.read())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"cannot read config file {path}: {getattr(error, 'message', error)}") from None


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Map a nested config to {"section.key": value}."""
    items = config.items() if not isinstance(config, ml_collections.ConfigDict) else config.items()
    flat: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def suggest_key(key: str, valid: Iterable[str]) -> str | None:
    """The valid key nearest to a misspelt one, or None when nothing is close."""
    valid = list(valid)
    section, _, leaf = key.rpartition(".")
    same_section = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    if same_section:
        # Right section, wrong name: compare names only, so "train.lr" is not matched to "train.seed".
        match = difflib.get_close_matches(leaf, list(same_section), n=1, cutoff=0.6)
        if match:
            return same_section[match[0]]
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.8)
    if match:
        return match[0]
    # Wrong or missing section: compare the last component with every key's ("batchsize").
    leaves = {k.rpartition(".")[2]: k for k in valid}
    match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
    return leaves[match[0]] if match else None


def _unknown_key_error(key: str, config: ml_collections.ConfigDict, origin: str) -> UserError:
    suggestion = suggest_key(key, flatten(config))
    hint = f"; did you mean {suggestion}?" if suggestion else "; see hparams/defaults.yaml for the keys"
    return UserError(f"unknown hparams key {key!r} in {origin}{hint}")


def _number_from_text(text: str) -> Any:
    """A number written as text that YAML 1.1 does not read as one (1e-5, 3E4); other text unchanged."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def set_value(config: ml_collections.ConfigDict, key: str, value: Any, origin: str) -> None:
    """Set one dotted key strictly: it must exist and the value must fit its type."""
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise _unknown_key_error(key, config, origin)
        node = node[part]
    leaf = parts[-1]
    if leaf not in node:
        raise _unknown_key_error(key, config, origin)
    if isinstance(node[leaf], ml_collections.ConfigDict):
        if not isinstance(value, Mapping):
            raise UserError(f"hparams key {key!r} in {origin} is a section; set one of its keys, e.g. {key}.<name>")
        merge(config, value, origin, prefix=key + ".")
        return
    current = node[leaf]
    expected = _NULLABLE_TYPES.get(key) if current is None else type(current)
    if expected in (int, float) and isinstance(value, str):
        value = _number_from_text(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    if current is None and value is not None:
        if expected is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise UserError(f"hparams key {key!r} in {origin} takes {_TYPE_WORDS[expected]}, got {value!r}")
    if isinstance(current, str) and isinstance(value, (bool, int, float)):
        value = str(value).lower() if isinstance(value, bool) else str(value)  # e.g. jit_compile=true
    if isinstance(current, bool) and not isinstance(value, bool) and value is not None:
        raise UserError(f"hparams key {key!r} in {origin} takes true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, bool):
        raise UserError(f"hparams key {key!r} in {origin} takes a number, got {value!r}")
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
        if not value.is_integer():
            raise UserError(f"hparams key {key!r} in {origin} takes an integer, got {value!r}")
        value = int(value)
    if key in _CHOICES and value not in _CHOICES[key]:
        close = difflib.get_close_matches(str(value), _CHOICES[key], n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"hparams key {key!r} in {origin} takes one of {', '.join(_CHOICES[key])}, "
                        f"got {value!r}{hint}")
    try:
        node[leaf] = value
    except TypeError:
        raise UserError(
            f"hparams key {key!r} in {origin} takes {_TYPE_WORDS.get(type(current), type(current).__name__)}, "
            f"got {value!r}"
        ) from None


def merge(config: ml_collections.ConfigDict, values: Mapping[str, Any] | None, origin: str, prefix: str = "") -> None:
    """Merge a nested mapping (a YAML layer) into the config, strictly."""
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise UserError(f"{origin} must hold a mapping of sections (model:, data:, train:, ...), got {type(values).__name__}")
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            parts = name.split(".")
            node = config
            for part in parts:
                node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if isinstance(node, ml_collections.ConfigDict):
                merge(config, value, origin, prefix=name + ".")
                continue
        set_value(config, name, value, origin)


def parse_override_value(text: str) -> Any:
    """Interpret the right-hand side of key=value as YAML (numbers, true/false, null, lists)."""
    text = text.strip()
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_overrides(items: Sequence[str]) -> list[str]:
    """Split --hparams items into YAML file paths and single `key=value` overrides, in order."""
    parts: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item.split(",")[0] and (item.endswith((".yaml", ".yml")) or os.path.exists(item)):
            parts.append(item)
            continue
        parts.extend(p.strip() for p in _OVERRIDE_SPLIT.split(item) if p.strip())
    return parts


def apply_overrides(config: ml_collections.ConfigDict, items: Sequence[str]) -> None:
    """Apply --hparams values: YAML files and `a.b=value` overrides, strictly, in order."""
    for part in split_overrides(items):
        if "=" in part:
            key, _, text = part.partition("=")
            key = key.strip()
            if not key:
                raise UserError(f"bad hparams override {part!r}; write section.key=value")
            set_value(config, key, parse_override_value(text), f"--hparams {part}")
        elif part.endswith((".yaml", ".yml")) or os.path.exists(part):
            import tensorflow as tf  # heavy: as in _read_yaml

            if not tf.io.gfile.exists(part):
                raise UserError(f"hparams file {part} does not exist")
            merge(config, read_layer(part), part)
        else:
            raise UserError(f"bad --hparams value {part!r}; give a .yaml file or section.key=value")


def default_config() -> ml_collections.ConfigDict:
    """The defaults from hparams/defaults.yaml, locked against new keys."""
    values = _read_yaml(DEFAULTS_FILE)
    config = ml_collections.ConfigDict(values)
    config.lock()
    return config


def dataset_file(dataset: str) -> str | None:
    """The per-dataset YAML for a dataset spec (exact name first, then its family), if any."""
    spec = dataset.strip()
    family = spec.split(":", 1)[0]
    candidates = [re.sub(r"[^A-Za-z0-9_.-]+", "_", spec), family]
    for name in candidates:
        path = os.path.join(DATASETS_DIR, f"{name}.yaml")
        if os.path.exists(path):
            return path
    return None


def read_layer(path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML layer with its `base:` files merged underneath (paths relative to the layer's folder)."""
    values = _read_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise UserError(f"{path} must hold a mapping of sections (model:, data:, train:, ...), got {type(values).__name__}")
    values = dict(values)
    bases = values.pop(BASE_KEY, None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = base if os.path.isabs(base) or "://" in base else os.path.join(os.path.dirname(path), base)
        if base_path in _seen:
            raise UserError(f"{path}: `base: {base}` includes itself")
        _deep_update(merged, read_layer(base_path, _seen + (path,)))
    _deep_update(merged, values)
    return merged


def _deep_update(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value


def build_config(
    overrides: Sequence[str] = (),
    flag_values: Mapping[str, Any] | None = None,
) -> ml_collections.ConfigDict:
    """Layer defaults, the model's variant YAML, the dataset YAML, --hparams and explicit flags.

    `flag_values` maps dotted keys to values of flags the user gave explicitly; they win over
    everything. Which variant and dataset layers apply is decided after all layers are known,
    so `--hparams=model.name=...` picks its variant layer too.
    """
    flag_values = dict(flag_values or {})
    probe = default_config()
    apply_overrides(probe, overrides)
    for key, value in flag_values.items():
        set_value(probe, key, value, f"flag for {key}")
    model_name, dataset = canonical_name(probe.model.name), probe.data.dataset

    config = default_config()
    variant = variant_layer(model_name)
    if variant:
        merge(config, variant, f"hparams/variants.py [{model_name}]")
    path = dataset_file(dataset)
    if path:
        merge(config, read_layer(path), os.path.relpath(path, os.path.dirname(CONFIG_DIR)))
    apply_overrides(config, overrides)
    for key, value in flag_values.items():
        set_value(config, key, value, f"flag for {key}")
    config.model.name = model_name
    logging.info("Config layers: defaults, variant %s%s, dataset %s%s, %d override(s), %d flag(s)",
                 model_name, "" if variant else " (none)", dataset, "" if path else " (none)",
                 len(split_overrides(overrides)), len(flag_values))
    return config


def _ordered_like(values: dict[str, Any], template: Any) -> dict[str, Any]:
    """`values` with keys in the order of `template` (defaults.yaml), unknown keys last."""
    if not isinstance(template, dict):
        return values
    ordered = {}
    for key in list(template) + [k for k in values if k not in template]:
        if key in values:
            value = values[key]
            ordered[key] = _ordered_like(value, template.get(key)) if isinstance(value, dict) else value
    return ordered


def to_yaml(config: ml_collections.ConfigDict) -> str:
    """The config as YAML text, keys in the order of defaults.yaml."""
    values = _ordered_like(config.to_dict(), _read_yaml(DEFAULTS_FILE))
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Parse a resolved config file (a run's config.yaml), strictly against today's defaults.

    `efficientnet_tf.rundir.RunDir.read_config` is how a run's config is read; this is its parser.
    """
    import tensorflow as tf  # heavy: as in _read_yaml

    if not tf.io.gfile.exists(path):
        raise UserError(f"config file {path} does not exist")
    values = _read_yaml(path)
    if not isinstance(values, Mapping) or "model" not in values:
        raise UserError(f"{path} is not a config written by training (no model: section)")
    config = default_config()
    merge(config, values, path)
    return config


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs: {key: (a value, b value)}."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def resolve(config: ml_collections.ConfigDict, *, num_classes: int, num_train: int) -> ml_collections.ConfigDict:
    """Fill the derived (null) values from the variant table and the dataset; returns a copy."""
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.lock()
    variant = get_variant(resolved.model.name)
    model, data, train = resolved.model, resolved.data, resolved.train
    if model.image_size is None:
        model.image_size = int(variant.resolution)
    if model.dropout_rate is None:
        model.dropout_rate = float(variant.dropout_rate)
    if model.drop_connect_rate is None:
        model.drop_connect_rate = DEFAULT_DROP_CONNECT_RATE
    if data.resize_method is None:
        data.resize_method = variant.resize_method
    if model.num_classes is None:
        model.num_classes = int(num_classes)
    elif int(model.num_classes) != int(num_classes):
        raise UserError(
            f"model.num_classes={model.num_classes} but dataset {data.dataset} has {num_classes} classes; "
            "drop the override"
        )
    _check_augment_backend(resolved)
    if int(train.batch_size) < 1:
        raise UserError(f"batch size must be at least 1, got {train.batch_size}")
    if train.steps_per_epoch is None:
        if num_train < int(train.batch_size):
            raise UserError(
                f"batch size {train.batch_size} is larger than the {num_train} training images of "
                f"{data.dataset}; use a smaller --batch_size"
            )
        train.steps_per_epoch = int(num_train) // int(train.batch_size)
    if train.train_steps is None:
        train.train_steps = max(1, int(round(float(train.epochs) * int(train.steps_per_epoch))))
    if resolved.eval.batch_size is None:
        resolved.eval.batch_size = int(train.batch_size)
    for key in ("train.train_steps", "train.steps_per_epoch", "model.image_size", "train.log_every_steps",
                "train.checkpoint_every_steps", "train.keep_checkpoints"):
        section, name = key.split(".")
        if int(resolved[section][name]) < 1:
            raise UserError(f"{key} must be at least 1, got {resolved[section][name]}")
    return resolved


def _check_augment_backend(config: ml_collections.ConfigDict) -> None:
    """data.augment_backend=keras_cv: refuse, in one line, what keras-cv's RandAugment cannot run
    (the reasons are in data/augment_keras_cv.py)."""
    data, train = config.data, config.train
    if data.augment_backend != "keras_cv" or data.augment == "none":
        return
    prefix = "data.augment_backend=keras_cv"
    if data.augment != "randaugment":
        raise UserError(f"{prefix} runs RandAugment only; keras-cv has no {data.augment!r} policy: "
                        "set data.augment=randaugment or data.augment_backend=native")
    if data.augment_on_device:
        raise UserError(f"{prefix} cannot run with data.augment_on_device=true: keras-cv's Equalization op "
                        "(HistogramFixedWidth) has no XLA kernel; augment on the host or use native")
    if train.deterministic:
        raise UserError(f"{prefix} cannot give train.deterministic=true: keras-cv's RandAugment draws from "
                        "stateful generators, not per-image seeds; use data.augment_backend=native")
    magnitudes = [float(data.randaug_magnitude)]
    if int(train.progressive.stages) > 0:
        magnitudes.append(float(train.progressive.randaug_magnitude_start))
    for magnitude in magnitudes:
        if not 0.0 <= magnitude <= 10.0:
            raise UserError(f"{prefix} takes RandAugment magnitudes from 0 to 10 (keras-cv's 0..1), "
                            f"got {magnitude:g}")
