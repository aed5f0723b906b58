"""Phases of training: objects that change what the step trains at given steps, called by the loop.

A phase answers two questions: at which step does it next change (`next_change`, so that the loop
ends a compiled call there), and what changes when the run reaches a step (`update`: it brings the
model to that step's phase and returns a `Change`, or None when nothing changed). Phases depend on the
global step only, so a resumed run enters the phase it stopped in.

- `UnfreezingPhase`: fine-tuning's frozen-backbone warm-up and the unfreezing of whole units from the
  top (efficientnet_tf/training/finetune.py).
- `ProgressivePhase`: EfficientNetV2's progressive learning (Tan & Le, 2021): stages of growing image
  size and regularisation (RandAugment magnitude, mixup, CutMix, dropout), as resolved into
  `config.derived.stages`. Small images early make the early epochs cheap; weak regularisation while
  the images are small and stronger once they are large keeps accuracy. Evaluation always runs at
  model.image_size; the last stage may train below it (Touvron et al., 2019, "Fixing the train-test
  resolution discrepancy": random crops make objects look larger in training than in the centre crop).
- `QATPhase`: quantisation-aware training's freezing of batch-norm statistics and of the activation ranges
  (efficientnet_tf/models/quantize.py).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import keras

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import RunConfig, Stage
from efficientnet_tf.models import quantize
from efficientnet_tf.training import finetune


@dataclasses.dataclass(frozen=True)
class Change:
    """What a phase changed at a step: the step must be traced again; maybe a new input pipeline (a stage)."""

    message: str
    scalars: dict[str, float]
    scalars_step: int
    text: tuple[str, str] | None = None  # (TensorBoard tag, text)
    stage: Stage | None = None  # the input pipeline, device augmentation and dropout of this stage


class Phase(Protocol):
    """A change of what trains, at steps that depend on the global step only."""

    def next_change(self, step: int) -> int | None:
        """The first step after `step` at which this phase changes, or None."""

    def update(self, step: int) -> Change | None:
        """Bring the model to the phase of `step`; what changed, or None."""


class UnfreezingPhase:
    """Fine-tuning's layer freezing (finetune.*): which units train at which step."""

    def __init__(self, model: keras.Model, schedule: finetune.FineTuneSchedule, total_steps: int):
        self.model, self.schedule, self.total_steps = model, schedule, total_steps
        self.units = finetune.units_top_down(model)
        self.parameters = finetune.count_weights(model.trainable_variables)  # before any freezing
        self.current: finetune.Phase | None = None

    def next_change(self, step: int) -> int | None:
        return self.schedule.next_change(step, len(self.units), self.total_steps)

    def update(self, step: int) -> Change | None:
        unfrozen = self.schedule.unfrozen_at(step, len(self.units))
        if self.current is not None and self.current.unfrozen == unfrozen:
            return None
        self.current = finetune.apply_phase(self.model, self.schedule, unfrozen, self.parameters)
        message = f"Fine-tuning from step {step}: {self.current.describe(len(self.units))}"
        return Change(message, {"finetune/unfrozen_units": float(unfrozen),
                                "finetune/trainable_weights": float(self.current.trainable_weights)}, step,
                      text=("finetune", message))


def stage_at(stages: tuple[Stage, ...], step: int) -> Stage:
    """The stage that trains step `step` (the last one from its start on)."""
    return next((stage for stage in stages if step < stage.end_step), stages[-1])


def next_stage_change(stages: tuple[Stage, ...], step: int) -> int | None:
    """The first step of the stage after `step`'s, or None in the last stage."""
    stage = stage_at(stages, step)
    return None if stage.index == len(stages) - 1 else stage.end_step


class ProgressivePhase:
    """Progressive learning's stages: each sets the input pipeline, the device augmentation and dropout."""

    def __init__(self, model: keras.Model, stages: tuple[Stage, ...]):
        self.model, self.stages = model, stages
        self.current: Stage | None = None
        self.dropout = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
        if any(stage.dropout_rate > 0 for stage in stages) and not self.dropout:
            raise UserError("train.progressive sets a dropout rate but the model has no dropout layer; "
                            "set model.dropout_rate > 0")

    def next_change(self, step: int) -> int | None:
        return next_stage_change(self.stages, step)

    def update(self, step: int) -> Change | None:
        stage = stage_at(self.stages, step)
        if stage == self.current:
            return None
        self.current = stage
        for layer in self.dropout:
            layer.rate = float(stage.dropout_rate)
        return Change(f"Progressive learning: {stage.describe(len(self.stages))}",
                      {"progressive/image_size": float(stage.image_size),
                       "progressive/randaug_magnitude": stage.randaug_magnitude,
                       "progressive/mixup_alpha": stage.mixup_alpha, "progressive/cutmix_alpha": stage.cutmix_alpha,
                       "progressive/dropout_rate": stage.dropout_rate}, stage.start_step, stage=stage)


class QATPhase:
    """Quantisation-aware training's standard recipe (Krishnamoorthi 2018, section 3.2; Jacob et al. 2018): from
    one step on, batch norm folds with its moving statistics, which stop updating; from another, the activation
    ranges stop moving. Both are variables of the model that the traced step reads, so checkpoints hold them."""

    def __init__(self, model: keras.Model, freeze_batch_norm_step: int | None, freeze_ranges_step: int | None):
        self.model = model
        self.steps = {"batch_norm": freeze_batch_norm_step, "ranges": freeze_ranges_step}

    def next_change(self, step: int) -> int | None:
        due = [s for s in self.steps.values() if s is not None and s > step]
        return min(due) if due else None

    def update(self, step: int) -> Change | None:
        state = quantize.quantization_state(self.model)
        lines = []
        due = {name: at is not None and step >= at for name, at in self.steps.items()}
        if due["batch_norm"] and state["batch_norms_frozen"] < state["batch_norms"]:
            count = quantize.freeze_batch_norm(self.model)
            lines.append(f"batch norm of {count} convolutions now folds its moving statistics, which stop updating")
        if due["ranges"] and state["ranges_frozen"] < state["ranges"]:
            lines.append(f"{quantize.freeze_ranges(self.model)} activation ranges frozen")
        if not lines:
            return None
        message = f"QAT from step {step}: " + "; ".join(lines)
        return Change(message, {"qat/batch_norm_frozen": float(due["batch_norm"]),
                                "qat/ranges_frozen": float(due["ranges"])}, step, text=("qat", message))


def phases_of(config: RunConfig, model: keras.Model) -> list[Phase]:
    """The phases a run goes through, in the order they apply at a shared step (unfreezing first)."""
    phases: list[Phase] = []
    schedule = finetune.FineTuneSchedule.of(config)
    if schedule.active:
        phases.append(UnfreezingPhase(model, schedule, config.train.train_steps))
    if config.derived.progressive:
        phases.append(ProgressivePhase(model, config.derived.stages))
    if config.qat.enabled:
        phases.append(QATPhase(model, config.derived.qat_freeze_batch_norm_step, config.derived.qat_freeze_ranges_step))
    return phases
