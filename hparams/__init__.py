"""Configuration: defaults (docs/recipe.md §4), the per-variant training layer (variants.py), per-dataset YAML,
strict overrides, and the resolved, frozen configuration of a run.

    from efficientnet_tf import hparams
    layered = hparams.build_config(["train.batch_size=64", "my.yaml"], {"model.name": "efficientnet-b2"})
    config = hparams.resolve(layered, num_classes=10, num_train=9000)   # RunConfig: frozen, nothing to derive
    config.model.image_size, config.derived.per_replica_batch, config.derived.stages

A run's resolved config is written and read by `efficientnet_tf.rundir.RunDir` (`to_yaml` /
`load_config_file`); reading it back gives an equal `RunConfig`.
"""

from efficientnet_tf.hparams.config import (
    DEFAULTS_FILE,
    apply_overrides,
    build_config,
    dataset_file,
    default_config,
    differences,
    flatten,
    from_yaml_values,
    load_config_file,
    merge,
    read_layer,
    replace,
    set_value,
    split_overrides,
    suggest_key,
    to_yaml,
    variant_layer,
    with_overrides,
)
from efficientnet_tf.hparams.resolve import (
    DEFAULT_STEPS_PER_LOOP,
    PRECISIONS,
    input_wait_alarm,
    on_hardware,
    parse_profile_steps,
    peak_learning_rate,
    precision_policy,
    resolve,
    split_batch,
    use_xla,
)
from efficientnet_tf.hparams.settings import (
    DataSettings,
    Derived,
    EvalSettings,
    ExportSettings,
    Facts,
    FinetuneSettings,
    ModelSettings,
    ProgressiveSettings,
    RunConfig,
    RuntimeSettings,
    Stage,
    TrainSettings,
)
from ml_collections import ConfigDict as LayeredConfig  # the mutable config while layers are merged

__all__ = [
    "DEFAULTS_FILE",
    "DEFAULT_STEPS_PER_LOOP",
    "PRECISIONS",
    "DataSettings",
    "Derived",
    "EvalSettings",
    "ExportSettings",
    "Facts",
    "FinetuneSettings",
    "LayeredConfig",
    "ModelSettings",
    "ProgressiveSettings",
    "RunConfig",
    "RuntimeSettings",
    "Stage",
    "TrainSettings",
    "apply_overrides",
    "build_config",
    "dataset_file",
    "default_config",
    "differences",
    "flatten",
    "from_yaml_values",
    "input_wait_alarm",
    "load_config_file",
    "merge",
    "on_hardware",
    "parse_profile_steps",
    "peak_learning_rate",
    "precision_policy",
    "read_layer",
    "replace",
    "resolve",
    "set_value",
    "split_batch",
    "split_overrides",
    "suggest_key",
    "to_yaml",
    "use_xla",
    "variant_layer",
    "with_overrides",
]
