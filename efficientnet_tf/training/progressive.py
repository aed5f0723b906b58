"""Progressive learning (EfficientNetV2, Tan & Le 2021): train in stages of growing image size and regularisation.

    schedule = ProgressiveSchedule.from_config(config, steps_per_epoch, total_steps)   # None when off
    stage = schedule.stage_at(step)        # image size, RandAugment magnitude, mixup / cutmix, dropout

Training is split into `train.progressive.stages` stages of equal length. The first stage uses the
`*_start` values, the last one the run's own (model.image_size, data.randaug_magnitude, data.mixup_alpha,
data.cutmix_alpha, model.dropout_rate), the stages between are spaced linearly; image sizes are rounded
to `image_size_step` pixels. Evaluation always runs at model.image_size, the size the model is for. The
last stage may train below it (`image_size_end`): random crops make objects look larger in training than
in the centre-cropped evaluation, so testing at a higher resolution than the last training size helps
(Touvron et al., 2019, "Fixing the train-test resolution discrepancy"; EfficientNetV2 evaluates above its
last training size too).
Small images early make the early epochs cheap; weak regularisation while the images are small, and
stronger regularisation once they are large, keeps accuracy (the paper's observation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from efficientnet_tf.data.augment_device import DeviceAugmentation
from efficientnet_tf.errors import UserError


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: its step range [start_step, end_step) and the input and regularisation it trains with."""

    index: int
    start_step: int
    end_step: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float

    def describe(self, count: int) -> str:
        return (f"stage {self.index + 1} of {count} (steps {self.start_step}-{self.end_step}): {self.image_size} px, "
                f"RandAugment magnitude {self.randaug_magnitude:g}, mixup {self.mixup_alpha:g}, "
                f"cutmix {self.cutmix_alpha:g}, dropout {self.dropout_rate:g}")


def _round_size(pixels: float, step: int) -> int:
    return max(step, int(round(pixels / step)) * step)


@dataclasses.dataclass(frozen=True)
class ProgressiveSchedule:
    """The stages of a progressive run."""

    stages: tuple[Stage, ...]

    @classmethod
    def from_config(cls, config: Any, total_steps: int) -> ProgressiveSchedule | None:
        """The schedule of a resolved config, or None when train.progressive.stages is 0."""
        spec = config.train.get("progressive")
        if spec is None or int(spec.stages) == 0:
            return None
        count = int(spec.stages)
        if count < 2:
            raise UserError(f"train.progressive.stages must be 0 (off) or at least 2, got {count}")
        if count > total_steps:
            raise UserError(f"train.progressive.stages={count} is more than the {total_steps} training steps")
        step = int(spec.image_size_step)
        if step < 1:
            raise UserError(f"train.progressive.image_size_step must be at least 1, got {step}")
        eval_size = int(config.model.image_size)
        final_size = int(spec.image_size_end) if spec.get("image_size_end") is not None else eval_size
        if not 0 < final_size <= eval_size:
            raise UserError(f"train.progressive.image_size_end must be between 1 and model.image_size "
                            f"({eval_size}), got {final_size}")
        start_size = int(spec.image_size_start) if spec.image_size_start is not None else _round_size(final_size / 2, step)
        if not 0 < start_size <= final_size:
            raise UserError(f"train.progressive.image_size_start must be between 1 and the last stage's size "
                            f"({final_size}), got {start_size}")
        d = config.data
        ends = {
            "randaug_magnitude": (float(spec.randaug_magnitude_start), float(d.randaug_magnitude)),
            "mixup_alpha": (float(spec.mixup_alpha_start), float(d.mixup_alpha)),
            "cutmix_alpha": (float(spec.cutmix_alpha_start), float(d.cutmix_alpha)),
            "dropout_rate": (float(config.model.dropout_rate if spec.dropout_rate_start is None else
                                   spec.dropout_rate_start), float(config.model.dropout_rate)),
        }
        for key, (first, _) in ends.items():
            if first < 0 or (key == "dropout_rate" and first >= 1):
                raise UserError(f"train.progressive.{key}_start must be >= 0" + (" and < 1" if key == "dropout_rate"
                                                                                   else "") + f", got {first}")
        stages = []
        for i in range(count):
            t = i / (count - 1)
            size = final_size if i == count - 1 else _round_size(start_size + t * (final_size - start_size), step)
            values = {k: a + t * (b - a) for k, (a, b) in ends.items()}
            stages.append(Stage(i, total_steps * i // count, total_steps * (i + 1) // count, min(size, final_size),
                                **values))
        return cls(tuple(stages))

    @property
    def max_dropout_rate(self) -> float:
        """The largest dropout rate of any stage (the model needs a dropout layer when it is above 0)."""
        return max(stage.dropout_rate for stage in self.stages)

    def stage_at(self, step: int) -> Stage:
        """The stage that trains step `step` (the last one from its start on)."""
        for stage in self.stages:
            if step < stage.end_step:
                return stage
        return self.stages[-1]

    def next_change(self, step: int) -> int | None:
        """The first step of the next stage after `step`, or None in the last stage."""
        stage = self.stage_at(step)
        return None if stage.index == len(self.stages) - 1 else stage.end_step


def device_augmentation(config: Any, stage: Stage | None = None) -> DeviceAugmentation | None:
    """data.augment_on_device: the augmentation the train step applies (None when off or nothing to do);
    a progressive stage sets its strength."""
    data_config = config.data
    if not data_config.get("augment_on_device"):
        return None
    return DeviceAugmentation.create(
        augment=data_config.augment, randaug_num_layers=int(data_config.randaug_num_layers),
        randaug_magnitude=stage.randaug_magnitude if stage else float(data_config.randaug_magnitude),
        mixup_alpha=stage.mixup_alpha if stage else float(data_config.mixup_alpha),
        cutmix_alpha=stage.cutmix_alpha if stage else float(data_config.cutmix_alpha), seed=config.train.seed,
        deterministic=bool(config.train.deterministic),
    )


def with_dropout_layer(config: Any, schedule: ProgressiveSchedule | None) -> Any:
    """The config to build the model from: a progressive run whose stages use dropout needs the dropout
    layer even when model.dropout_rate is 0 (each stage sets its rate)."""
    if schedule is None or float(config.model.dropout_rate) > 0 or schedule.max_dropout_rate <= 0:
        return config
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.model.dropout_rate = schedule.max_dropout_rate
    return copy
