"""Layer freezing for transfer learning: a frozen-backbone warm-up, then whole blocks unfrozen from the top.

The standard recipe for fine-tuning ImageNet weights on a small dataset:

1. *Warm-up*: only the new classifier head trains; every backbone layer is frozen and its batch
   norm runs in inference mode (Keras: a `BatchNormalization` with `trainable=False` uses its moving
   statistics and does not update them), so a head that starts random cannot wreck the features.
2. *Unfreezing*: whole units are made trainable from the top: the head convolution (`top`), then
   the MBConv blocks from the last one down, and the stem last. All at once after the warm-up, or
   one more unit every `unfreeze_every_epochs`. Batch norm stays frozen unless
   `finetune.train_batch_norm` is true: its statistics were estimated on ImageNet with large batches,
   and re-estimating them from a small dataset's small batches hurts.

The phase is a function of the global step only, so a resumed run picks up the same phase.
Config (`finetune.*`, see hparams/defaults.yaml and hparams/finetune.yaml):
  freeze_epochs          warm-up length in epochs (0: no warm-up)
  unfreeze_blocks        units trainable after the warm-up, counted from the top; -1 every unit
  unfreeze_every_epochs  0: all `unfreeze_blocks` at once; else one more unit per this many epochs
  train_batch_norm       whether unfrozen batch-norm layers train (batch statistics) or stay frozen
  new_head               re-initialise the classifier even when the imported one fits
With the defaults (0, -1, 0, true, false) nothing is frozen: ordinary training. `hparams.resolve` checks
the values and turns the epochs into steps; `efficientnet_tf.training.phases.UnfreezingPhase` applies
the schedule while the loop runs.
"""

from __future__ import annotations

import dataclasses
import math
import re

import keras

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import RunConfig

HEAD_LAYERS = ("avg_pool", "top_dropout", "predictions")


@dataclasses.dataclass(frozen=True)
class Unit:
    """A group of layers frozen and unfrozen together: the head convolution, one block, or the stem."""

    name: str
    layers: tuple[keras.layers.Layer, ...]


def units_top_down(model: keras.Model) -> list[Unit]:
    """The model's freezable units from the top: `top`, the blocks from the last, then `stem`.

    Blocks are found by keras.applications naming (`block3b_...`); the layers before the first
    block (rescaling, normalization, stem) form `stem`, the head convolution and its batch norm `top`.
    """
    order: list[str] = []
    groups: dict[str, list[keras.layers.Layer]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in HEAD_LAYERS:
            continue
        match = re.match(r"^(block\d+[a-z]+)_", layer.name)
        if match:
            unit = match.group(1)
        elif layer.name.startswith("top_"):
            unit = "top"
        else:
            unit = "stem"
        if unit not in groups:
            order.append(unit)
            groups[unit] = []
        groups[unit].append(layer)
    if "top" not in groups or not any(u.startswith("block") for u in order):
        raise UserError(f"model {model.name} has no EfficientNet blocks and head convolution to freeze by unit")
    return [Unit(name, tuple(groups[name])) for name in reversed(order)]


def _is_batch_norm(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


@dataclasses.dataclass(frozen=True)
class FineTuneSchedule:
    """Which units train at which step."""

    freeze_steps: int
    unfreeze_units: int  # after the warm-up; -1 = all
    every_steps: int  # 0 = all at once
    train_batch_norm: bool

    @classmethod
    def of(cls, config: RunConfig) -> FineTuneSchedule:
        """The schedule of a resolved config (finetune.* with its epochs in steps)."""
        f, derived = config.finetune, config.derived
        return cls(derived.freeze_steps, f.unfreeze_blocks, derived.unfreeze_every_steps, f.train_batch_norm)

    @property
    def active(self) -> bool:
        """Whether anything is ever frozen."""
        return self.freeze_steps > 0 or self.unfreeze_units != -1 or not self.train_batch_norm

    def unfrozen_at(self, step: int, num_units: int) -> int:
        """Units trainable (from the top) at a global step."""
        target = num_units if self.unfreeze_units == -1 else min(self.unfreeze_units, num_units)
        if step < self.freeze_steps:
            return 0
        if self.every_steps == 0:
            return target
        return min(target, 1 + (step - self.freeze_steps) // self.every_steps)

    def next_change(self, step: int, num_units: int, total_steps: int) -> int | None:
        """The first step after `step` at which the trainable set changes (None: never again)."""
        now = self.unfrozen_at(step, num_units)
        if step < self.freeze_steps:
            return self.freeze_steps if self.unfrozen_at(self.freeze_steps, num_units) != now else None
        if self.every_steps == 0:
            return None
        k = (step - self.freeze_steps) // self.every_steps + 1
        candidate = self.freeze_steps + k * self.every_steps
        if candidate >= total_steps or self.unfrozen_at(candidate, num_units) == now:
            return None
        return candidate


@dataclasses.dataclass(frozen=True)
class Phase:
    """What trains now."""

    unfrozen: int
    units: tuple[str, ...]  # names of the trainable units, top first
    trainable_weights: int
    total_weights: int
    batch_norm_trains: bool

    def describe(self, total_units: int) -> str:
        if self.unfrozen == 0:
            what = "backbone frozen, batch norm in inference mode: only the classifier head trains"
        else:
            shown = ", ".join(self.units[:3]) + (f", ... {self.units[-1]}" if len(self.units) > 3 else "")
            bn = "batch norm training" if self.batch_norm_trains else "batch norm frozen (inference mode)"
            what = f"head + {self.unfrozen} of {total_units} units from the top ({shown}); {bn}"
        return (f"{what}; {self.trainable_weights:,} of {self.total_weights:,} weights trainable "
                f"({100 * self.trainable_weights / max(self.total_weights, 1):.1f}%)")


def _count(variables: list) -> int:
    return int(sum(math.prod(v.shape) for v in variables))


def count_weights(variables: list) -> int:
    """Scalars in a list of variables."""
    return _count(variables)


def apply_phase(model: keras.Model, schedule: FineTuneSchedule, unfrozen: int, parameters: int) -> Phase:
    """Set `trainable` on every layer for `unfrozen` units from the top; the head always trains.

    `parameters` is the model's trainable weight count before any freezing (Keras clears a frozen
    layer's variables' own `trainable` flags, so it cannot be counted afterwards).
    """
    units = units_top_down(model)
    for index, unit in enumerate(units):
        on = index < unfrozen
        for layer in unit.layers:
            layer.trainable = on and (schedule.train_batch_norm or not _is_batch_norm(layer))
    for name in HEAD_LAYERS:
        try:
            model.get_layer(name).trainable = True
        except ValueError:
            pass
    return Phase(unfrozen, tuple(u.name for u in units[:unfrozen]), _count(model.trainable_variables),
                 parameters, bool(schedule.train_batch_norm and unfrozen > 0))
