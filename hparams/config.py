"""Layered, strict configuration: defaults -> variant -> dataset -> --hparams -> flags.

While layers are merged the configuration is an `ml_collections.ConfigDict`, locked after the
defaults are read, so that its type checks and its refusal of unknown keys do the validation (keys
whose default is null take the type `hparams.settings` declares); this module adds YAML layers,
dotted `key=value` overrides, nearest-key suggestions and the run's config file. `hparams.resolve`
turns the merged layers into the frozen `RunConfig` the program reads.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
import yaml
from absl import logging
from efficientnet_tf.hparams import settings
from efficientnet_tf.hparams.resolve import resolve
from efficientnet_tf.hparams.settings import RUN_ONLY_SECTIONS, Facts, RunConfig
from efficientnet_tf.hparams.variants import variant_layer

from efficientnet_tf.errors import UserError
from efficientnet_tf.models.scaling import canonical_name

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULTS_FILE = os.path.join(CONFIG_DIR, "defaults.yaml")
DATASETS_DIR = os.path.join(CONFIG_DIR, "datasets")

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               tuple: "a list"}

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


def flatten(config: Mapping[str, Any] | ml_collections.ConfigDict | RunConfig, prefix: str = "") -> dict[str, Any]:
    """Map a nested config to {"section.key": value} (a RunConfig's settings, without facts and derived)."""
    if isinstance(config, RunConfig):
        config = config.settings()
    items = config.items()
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
    expected = settings.value_type(key) if current is None else type(current)
    if typing.get_origin(expected) is tuple:
        value = _name_list(value, key, origin)
        expected = list
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
    words = settings.choices(key)
    if words and value not in words:
        close = difflib.get_close_matches(str(value), words, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"hparams key {key!r} in {origin} takes one of {', '.join(words)}, got {value!r}{hint}")
    try:
        node[leaf] = value
    except TypeError:
        raise UserError(
            f"hparams key {key!r} in {origin} takes {_TYPE_WORDS.get(type(current), type(current).__name__)}, "
            f"got {value!r}"
        ) from None


def _name_list(value: Any, key: str, origin: str) -> list[str] | None:
    """A list of names from a list or a comma-separated string (`export.formats=tflite,onnx`)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise UserError(f"hparams key {key!r} in {origin} takes a list of names, got {value!r}")
    return [v.strip() for v in value]


def merge(config: ml_collections.ConfigDict, values: Mapping[str, Any] | None, origin: str, prefix: str = "") -> None:
    """Merge a nested mapping (a YAML layer) into the config, strictly."""
    if values is None:
        return
    if not isinstance(values, Mapping):
        raise UserError(f"{origin} must hold a mapping of sections (model:, data:, train:, ...), got {type(values).__name__}")
    for key, value in values.items():
        name = f"{prefix}{key}"
        if not prefix and key in RUN_ONLY_SECTIONS:
            continue  # a run's config.yaml as a layer: its facts and derived values are not settings
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


RUN_CONFIG_FILE = "config.yaml"  # a training run's resolved config, in its --model_dir


def start_run(init_weights: str | None) -> dict[str, Any] | None:
    """The model and data sections of the training run `train.init_weights` names, when it names a run
    directory (one holding a config.yaml); None for a weights file or a pretrained-weights name."""
    if not init_weights or not os.path.isfile(os.path.join(init_weights, RUN_CONFIG_FILE)):
        return None
    path = os.path.join(init_weights, RUN_CONFIG_FILE)
    values = _read_yaml(path)
    if not isinstance(values, Mapping) or not isinstance(values.get("model"), Mapping):
        raise UserError(f"{path} is not a config written by training (no model: section)")
    return {"model": dict(values["model"]), "data": dict(values.get("data") or {})}


def _start_run_layer(probe: ml_collections.ConfigDict, flag_values: Mapping[str, Any],
                     overrides: Sequence[str]) -> dict[str, Any] | None:
    """The layer a run directory as train.init_weights brings: its model settings, and its data settings unless
    this command names a dataset; a one-line error when this command names another model."""
    source = probe.train.init_weights
    start = start_run(source)
    if start is None:
        return None
    trained = start["model"]["name"]
    named = "model.name" in flag_values or any(re.search(r"(^|,)\s*model\.name\s*=", item) for item in overrides)
    if (named or probe.model.name != default_config().model.name) and canonical_name(probe.model.name) != trained:
        raise UserError(f"--init_weights={source} is a run of {trained}, but this command sets "
                        f"{canonical_name(probe.model.name)}; leave --model out to take the run's model, or start "
                        f"from a run of {canonical_name(probe.model.name)}")
    layer: dict[str, Any] = {"model": start["model"]}
    if "data.dataset" in flag_values or probe.data.dataset != default_config().data.dataset:
        layer["model"] = {**start["model"], "num_classes": None}  # another dataset: its own classes
    else:
        layer["data"] = start["data"]
    return layer


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
    run_layer = _start_run_layer(probe, flag_values, overrides)
    if run_layer is not None:
        model_name = run_layer["model"]["name"]
        dataset = run_layer.get("data", {}).get("dataset", dataset)

    config = default_config()
    variant = variant_layer(model_name)
    if variant:
        merge(config, variant, f"hparams/variants.py [{model_name}]")
    path = dataset_file(dataset)
    if path:
        merge(config, read_layer(path), os.path.relpath(path, os.path.dirname(CONFIG_DIR)))
    if run_layer is not None:
        merge(config, run_layer, f"{probe.train.init_weights}/{RUN_CONFIG_FILE} (model and data of the start run)")
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


def to_yaml(config: ml_collections.ConfigDict | RunConfig) -> str:
    """The config as YAML text, keys in the order of defaults.yaml (a RunConfig's facts and derived last)."""
    values = config.to_dict()
    values = _ordered_like(values, _read_yaml(DEFAULTS_FILE))
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _facts_of(values: Mapping[str, Any], path: str) -> Facts:
    """The `facts:` of a config file; a file written before they were recorded gives what it implies."""
    facts = values.get("facts")
    if isinstance(facts, Mapping):
        try:
            return settings.build(Facts, facts)
        except (KeyError, TypeError) as error:
            raise UserError(f"{path}: its facts: section is incomplete ({error})") from None
    model, train = values.get("model") or {}, values.get("train") or {}
    if model.get("num_classes") is None or train.get("steps_per_epoch") is None:
        raise UserError(f"{path} is not a resolved config (it has no facts: and no model.num_classes / "
                        "train.steps_per_epoch)")
    return Facts(int(model["num_classes"]), int(train["steps_per_epoch"]) * int(train.get("batch_size") or 1))


def from_yaml_values(values: Any, origin: str) -> RunConfig:
    """A RunConfig from the parsed text of a config file, strictly against today's defaults."""
    if not isinstance(values, Mapping) or "model" not in values:
        raise UserError(f"{origin} is not a config written by training (no model: section)")
    layered = default_config()
    merge(layered, values, origin)
    facts = _facts_of(values, origin)
    return resolve(layered, num_classes=facts.num_classes, num_train=facts.num_train, device_type=facts.device_type,
                   num_replicas=facts.num_replicas)


def load_config_file(path: str) -> RunConfig:
    """Parse a resolved config file (a run's config.yaml), strictly against today's defaults.

    `efficientnet_tf.rundir.RunDir.read_config` is how a run's config is read; this is its parser.
    """
    import tensorflow as tf  # heavy: as in _read_yaml

    if not tf.io.gfile.exists(path):
        raise UserError(f"config file {path} does not exist")
    return from_yaml_values(_read_yaml(path), path)


def with_overrides(config: RunConfig, overrides: Sequence[str] = (), flag_values: Mapping[str, Any] | None = None,
                   origin: str = "the run's config") -> RunConfig:
    """`config` with --hparams overrides and explicit flag values on top, re-resolved against its own facts.

    A null means "derive", as in a layer file: the value is derived again, as the run derived it.
    """
    layered = default_config()
    merge(layered, config.settings(), origin)
    apply_overrides(layered, overrides)
    for key, value in (flag_values or {}).items():
        set_value(layered, key, value, f"flag for {key}")
    facts = config.facts
    return resolve(layered, num_classes=facts.num_classes, num_train=facts.num_train, device_type=facts.device_type,
                   num_replicas=facts.num_replicas)


def replace(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """`config` with some settings changed ({dotted key: value}), re-resolved against its own facts.

    Values the config derived stay as they were unless they are set too: None derives one again (a new
    train.batch_size with train.steps_per_epoch=None gives the steps of the new batch).
    """
    return with_overrides(config, (), values)


def differences(a: ml_collections.ConfigDict | RunConfig, b: ml_collections.ConfigDict | RunConfig
                ) -> dict[str, tuple[Any, Any]]:
    """Settings whose values differ between two configs: {key: (a value, b value)}."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
