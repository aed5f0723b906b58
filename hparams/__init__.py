"""Configuration: defaults (RECIPE.md §4), per-variant and per-dataset YAML, strict overrides.

    import hparams
    config = hparams.build_config(["train.batch_size=64", "my.yaml"], {"model.name": "efficientnet-b2"})
    config = hparams.resolve(config, num_classes=10, num_train=9000)   # fills derived nulls
    hparams.save_config(config, model_dir); hparams.load_config(model_dir)
"""

from hparams.config import (
    DEFAULTS_FILE,
    RESOLVED_CONFIG_NAME,
    apply_overrides,
    build_config,
    dataset_file,
    default_config,
    differences,
    flatten,
    load_config,
    merge,
    resolve,
    save_config,
    set_value,
    split_overrides,
    suggest_key,
    to_yaml,
)

__all__ = [
    "DEFAULTS_FILE",
    "RESOLVED_CONFIG_NAME",
    "apply_overrides",
    "build_config",
    "dataset_file",
    "default_config",
    "differences",
    "flatten",
    "load_config",
    "merge",
    "resolve",
    "save_config",
    "set_value",
    "split_overrides",
    "suggest_key",
    "to_yaml",
]
