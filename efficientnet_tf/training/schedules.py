"""Learning-rate schedules (linear warmup, then exponential or cosine decay) and optimizers."""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import RunConfig, TrainSettings
from efficientnet_tf.training.optimizers import RMSpropTF

LR_SCHEDULES = ("exponential", "cosine", "constant")


@keras.saving.register_keras_serializable(package="efficientnet_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then exponential, cosine or constant.

    Exponential decay counts from step 0, as the reference does: lr = peak x rate^(step / decay_steps)
    (floored when `staircase`), and the warmup line replaces it for step < warmup_steps.
    Cosine decays from `peak` at the end of warmup to `min_lr` at `total_steps`.
    """

    def __init__(
        self,
        peak: float,
        *,
        kind: str = "exponential",
        warmup_steps: int = 0,
        decay_steps: float = 1.0,
        decay_rate: float = 0.97,
        staircase: bool = True,
        total_steps: int = 1,
        min_lr: float = 0.0,
    ):
        super().__init__()
        if kind not in LR_SCHEDULES:
            raise UserError(f"unknown lr_schedule {kind!r}; use one of {', '.join(LR_SCHEDULES)}")
        self.peak = float(peak)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = max(float(decay_steps), 1e-9)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        self.total_steps = max(int(total_steps), 1)
        self.min_lr = float(min_lr)

    def __call__(self, step: Any) -> tf.Tensor:
        """The learning rate at `step` (0-based)."""
        step = tf.cast(step, tf.float32)
        if self.kind == "exponential":
            progress = step / self.decay_steps
            if self.staircase:
                progress = tf.floor(progress)
            lr = self.peak * tf.pow(self.decay_rate, progress)
        elif self.kind == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            fraction = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = self.min_lr + 0.5 * (self.peak - self.min_lr) * (1.0 + tf.cos(math.pi * fraction))
        else:
            lr = tf.constant(self.peak, tf.float32)
        lr = tf.maximum(lr, self.min_lr)
        if self.warmup_steps > 0:
            warm = self.peak * step / float(self.warmup_steps)
            lr = tf.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments, for serialisation."""
        return {
            "peak": self.peak,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
        }


def build_schedule(config: RunConfig) -> WarmupDecay:
    """The learning-rate schedule of a resolved config (train.* with the steps derived from its epochs)."""
    train, derived = config.train, config.derived
    return WarmupDecay(
        derived.peak_learning_rate,
        kind=train.lr_schedule,
        warmup_steps=derived.warmup_steps,
        decay_steps=derived.decay_steps,
        decay_rate=train.lr_decay_rate,
        staircase=train.lr_staircase,
        total_steps=train.train_steps,
        min_lr=train.min_learning_rate,
    )


OPTIMIZERS = ("rmsprop", "rmsprop_keras", "momentum", "adam", "adamw")


def build_optimizer(
    train_config: TrainSettings,
    learning_rate: keras.optimizers.schedules.LearningRateSchedule | float,
    *,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """The optimizer of a config's `train` section; wrapped for dynamic loss scaling when asked.

    rmsprop is the reference's: TF1's RMSPropOptimizer (rho 0.9, momentum 0.9, epsilon 1e-3 inside
    the square root, mean square starting at 1; optimizers.RMSpropTF); rmsprop_keras is Keras 3's
    RMSprop, the same but with the mean square starting at 0. The others exist for short-schedule
    experiments.
    """
    name = str(train_config.optimizer).lower()
    clip = train_config.gradient_clip_norm
    common: dict[str, Any] = {"learning_rate": learning_rate}
    if clip:
        common["global_clipnorm"] = float(clip)
    if name in ("rmsprop", "rmsprop_keras"):
        rmsprop = RMSpropTF if name == "rmsprop" else keras.optimizers.RMSprop
        optimizer = rmsprop(
            rho=train_config.rmsprop_rho, momentum=train_config.momentum, epsilon=train_config.epsilon, **common
        )
    elif name == "momentum":
        optimizer = keras.optimizers.SGD(momentum=train_config.momentum, nesterov=True, **common)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(epsilon=train_config.epsilon, **common)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(
            weight_decay=train_config.adamw_weight_decay, epsilon=train_config.epsilon, **common
        )
        optimizer.exclude_from_weight_decay(var_names=["bn"])  # batch-norm layers are named *bn
    else:
        raise UserError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
