"""The resolved configuration of a run: typed, frozen, every derived value computed once.

`hparams.build_config` merges the layers into a mutable, strict `ml_collections.ConfigDict` in which
`null` means "derive"; `hparams.resolve` turns it into a `RunConfig`: one frozen dataclass per
section of hparams/defaults.yaml (same keys, nothing left null that can be derived), the `Facts` it
was resolved against (the dataset's class and image counts, the device type and replica count),
and the `Derived` values the rest of the program reads (batch per replica, the progressive stages,
learning-rate warm-up and decay in steps, fine-tuning steps). A run's config.yaml is a `RunConfig`
written out; reading it back gives an equal object.

This module holds the types; the defaults live in hparams/defaults.yaml and the derivations in
hparams/config.py (`resolve`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

# Sections of a config.yaml that are not settings: what the run was resolved against, and the values
# computed from the settings. They are written for the reader and ignored when a run's config.yaml is
# given to --hparams as a layer.
RUN_ONLY_SECTIONS = ("facts", "derived")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """model.*: the network (see hparams/defaults.yaml for each key's meaning)."""

    name: str
    image_size: int
    num_classes: int
    dropout_rate: float
    drop_connect_rate: float
    batch_norm_momentum: float
    zero_init_residual: bool
    width_coefficient: float
    depth_coefficient: float
    normalization: str | None  # None: a weights file's own (train.init_weights names a file)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """data.*: the dataset, its split, preprocessing and augmentation."""

    dataset: str
    data_dir: str | None
    holdout_fraction: float
    split_seed: int
    resize_method: str
    min_crop_area: float
    augment: str
    augment_backend: Literal["native", "keras_cv"]
    randaug_num_layers: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    augment_on_device: bool
    cache: bool


@dataclasses.dataclass(frozen=True)
class ProgressiveSettings:
    """train.progressive.*: progressive learning's stages (sizes resolved when stages > 0)."""

    stages: int
    image_size_start: int | None
    image_size_end: int | None
    image_size_step: int
    randaug_magnitude_start: float
    mixup_alpha_start: float
    cutmix_alpha_start: float
    dropout_rate_start: float | None


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """train.*: budget, optimizer, schedule, regularisation, checkpoints and logging."""

    batch_size: int
    epochs: float
    train_steps: int
    max_seconds: float | None
    steps_per_epoch: int
    init_weights: str | None
    optimizer: str
    base_learning_rate: float
    lr_schedule: str
    warmup_epochs: float
    lr_decay_rate: float
    lr_decay_epochs: float
    lr_staircase: bool
    min_learning_rate: float
    rmsprop_rho: float
    momentum: float
    epsilon: float
    adamw_weight_decay: float
    label_smoothing: float
    weight_decay: float
    gradient_clip_norm: float | None
    ema_decay: float
    steps_per_loop: int
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    eval_every_epochs: int
    checkpoint_input: bool
    preemption_watch: str
    image_summary: bool
    input_wait_alarm: float
    profile_steps: str | None
    seed: int | None
    deterministic: bool
    progressive: ProgressiveSettings


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """finetune.*: layer freezing for transfer learning."""

    freeze_epochs: float
    unfreeze_blocks: int
    unfreeze_every_epochs: float
    train_batch_norm: bool
    new_head: bool


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """runtime.*: precision policy and XLA, resolved for the device type."""

    mixed_precision: str
    jit_compile: bool


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """eval.*: evaluation batch and continuous evaluation."""

    batch_size: int
    continuous: bool
    timeout_seconds: float
    poll_seconds: float


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """export.*: which formats --mode=export writes and how it calibrates, verifies and labels them."""

    formats: tuple[str, ...] | None
    calibration_images: int
    eval_images: int
    int8_io: str
    license: str
    author: str


@dataclasses.dataclass(frozen=True)
class QatSettings:
    """qat.*: quantisation-aware training of a trained model (efficientnet_tf/models/quantize.py)."""

    enabled: bool
    freeze_batch_norm_epochs: float | None
    freeze_ranges_epochs: float | None
    range_momentum: float
    distill: float  # the float start's share of the training target: 0 the labels, 1 its probabilities
    distill_temperature: float  # divides both models' logits in the distilled share


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a configuration is resolved against: the dataset's counts and the hardware."""

    num_classes: int
    num_train: int
    device_type: str = "CPU"
    num_replicas: int = 1


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of training: its steps [start_step, end_step) and the input and regularisation it uses.

    A run without progressive learning has one stage covering every step with the run's own values.
    """

    index: int
    start_step: int
    end_step: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float

    def describe(self, count: int) -> str:
        """One line for the logs."""
        return (f"stage {self.index + 1} of {count} (steps {self.start_step}-{self.end_step}): {self.image_size} px, "
                f"RandAugment magnitude {self.randaug_magnitude:g}, mixup {self.mixup_alpha:g}, "
                f"cutmix {self.cutmix_alpha:g}, dropout {self.dropout_rate:g}")


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed from the settings and the facts, once, by `hparams.resolve`."""

    per_replica_batch: int
    eval_per_replica_batch: int
    stages: tuple[Stage, ...]
    model_dropout_rate: float  # the dropout layer's rate when the model is built (stages may vary it)
    peak_learning_rate: float
    warmup_steps: int
    decay_steps: float
    freeze_steps: int
    unfreeze_every_steps: int
    profile_steps: tuple[int, int] | None
    input_wait_alarm: float | None  # the input-bound alarm's threshold, None when off
    qat_freeze_batch_norm_step: int | None = None  # QAT: batch norm stops updating from this step (None: never)
    qat_freeze_ranges_step: int | None = None  # QAT: activation ranges stop moving from this step (None: never)

    @property
    def progressive(self) -> bool:
        """Whether training runs in several stages."""
        return len(self.stages) > 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved configuration: the settings of every section, the facts, and the derived values."""

    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    finetune: FinetuneSettings
    runtime: RuntimeSettings
    eval: EvalSettings
    export: ExportSettings
    qat: QatSettings
    facts: Facts
    derived: Derived

    def settings(self) -> dict[str, dict[str, Any]]:
        """The settings sections as nested plain values (what a layer file holds)."""
        return {f.name: as_plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in RUN_ONLY_SECTIONS}

    def to_dict(self) -> dict[str, Any]:
        """Every section, facts and derived values included, as nested plain values."""
        return {f.name: as_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


SECTIONS: dict[str, type] = {name: kind for name, kind in typing.get_type_hints(RunConfig).items()}


def as_plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, recursively (YAML- and JSON-ready)."""
    if dataclasses.is_dataclass(value):
        return {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [as_plain(v) for v in value]
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def value_type(key: str) -> Any:
    """The type of a dotted settings key without its None (int for `model.image_size`); None if unknown."""
    parts = key.split(".")
    cls: Any = RunConfig
    for part in parts:
        hints = _hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return None
        cls = _strip_none(hints[part])
    return cls


def choices(key: str) -> tuple[str, ...] | None:
    """The words a key takes when its type is a Literal (`data.augment_backend`), else None."""
    kind = value_type(key)
    if typing.get_origin(kind) is Literal:
        return tuple(typing.get_args(kind))
    return None


def _strip_none(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def _coerce(kind: Any, value: Any) -> Any:
    """`value` in the type a field declares (ints for int fields, floats for float fields, tuples)."""
    if value is None:
        return None
    kind = _strip_none(kind)
    if dataclasses.is_dataclass(kind):
        return build(kind, value)
    origin = typing.get_origin(kind)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        return tuple(_coerce(a, v) for a, v in zip(args, value))
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """A settings dataclass from a mapping with exactly its fields (values coerced to the declared types)."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    if missing:
        raise KeyError(f"{cls.__name__} misses {', '.join(missing)}")
    return cls(**{name: _coerce(hints[name], values[name]) for name in names})
