"""Configuration: defaults (docs/recipe.md §4), the per-variant training layer (variants.py), per-dataset YAML, strict overrides.

    from efficientnet_tf import hparams
    config = hparams.build_config(["train.batch_size=64", "my.yaml"], {"model.name": "efficientnet-b2"})
    config = hparams.resolve(config, num_classes=10, num_train=9000)   # fills derived nulls

A run's resolved config is written and read by `efficientnet_tf.rundir.RunDir`.
"""

from .config import (
    DEFAULTS_FILE,
    apply_overrides,
    build_config,
    dataset_file,
    default_config,
    differences,
    flatten,
    load_config_file,
    merge,
    read_layer,
    resolve,
    set_value,
    split_overrides,
    suggest_key,
    to_yaml,
    variant_layer,
)

__all__ = [
    "DEFAULTS_FILE",
    "apply_overrides",
    "build_config",
    "dataset_file",
    "default_config",
    "differences",
    "flatten",
    "load_config_file",
    "merge",
    "read_layer",
    "resolve",
    "set_value",
    "split_overrides",
    "suggest_key",
    "to_yaml",
    "variant_layer",
]
