"""Training speed per logging window, the share of it spent waiting for input, and the input-bound alarm.

The loop takes each batch inside its compiled function. `InputWaitMeter.next_batch` brackets that
`next(iterator)` with two host timestamps and adds the gap to a host variable: the time the loop was
blocked because the input pipeline had no batch ready. Divided by the wall time of the same training
calls, it is the input-wait share of step time ("input wait 37% of step time" in the progress line,
`input_wait_fraction` in TensorBoard). A pipeline that keeps up (its prefetch buffer full) costs
close to 0%; an input-bound run (NVIDIA's EfficientNet-B0 with AutoAugment on the host CPU is the
known case) shows the share of the accelerator's time that goes idle.

`InputBoundAlarm` warns once, with what to do, when the share stays above a threshold
(`train.input_wait_alarm`, checked by hparams.resolve) for `ALARM_WINDOWS` logging windows in a row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # is_op_determinism_enabled has no public form

ALARM_WINDOWS = 2


class InputWaitMeter:
    """Seconds the training loop spent blocked on `next(iterator)`, summed on the host until `take`.

    `enabled=False` (train.deterministic) measures nothing: TensorFlow refuses `tf.timestamp` under op
    determinism ("Timestamp cannot be called when determinism is enabled"). Op determinism is process
    state (a caller may have turned it on before), so the meter also stays off whenever it is on.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and not tf_config.is_op_determinism_enabled()
        # A plain host variable outside any strategy: the compiled loop adds to it between replica steps.
        with tf.device("/cpu:0"):
            self._seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="input_wait_seconds")

    def next_batch(self, iterator: Any) -> tuple[Any, tf.Operation]:
        """`next(iterator)` inside a tf.function, timed: the batch, and an op that the step should run after
        (so that none of the step's own work runs inside the timed gap)."""
        if not self.enabled:
            return next(iterator), tf.no_op()
        began = tf.timestamp()
        with tf.control_dependencies([began]):
            batch = next(iterator)
        # Per-replica batches (a distributed iterator) are composite: wait for every component.
        with tf.control_dependencies(tf.nest.flatten(batch, expand_composites=True)):
            waited = tf.timestamp() - began
        return batch, self._seconds.assign_add(waited)

    def take(self) -> float | None:
        """Seconds waited since the last call, and reset (None when not measured)."""
        if not self.enabled:
            return None
        value = float(self._seconds.numpy())
        self._seconds.assign(0.0)
        return value


@dataclasses.dataclass
class LogWindow:
    """Sums over the training calls of one logging window. Calls that traced or compiled the step
    (`timed=False`) count for loss and top-1 but not for speed or input wait."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    waited: float | None = 0.0  # None: not measured

    def add(self, loss_sum: float, correct: float, count: float, *, steps: int, seconds: float,
            waited: float | None, timed: bool) -> None:
        self.loss += loss_sum
        self.correct += correct
        self.count += count
        if timed:
            self.steps += steps
            self.seconds += seconds
            self.waited = None if waited is None or self.waited is None else self.waited + waited

    @property
    def input_wait_fraction(self) -> float | None:
        """Share of the timed wall time spent waiting for input (None before any timed call, or unmeasured)."""
        if not self.steps or self.seconds <= 0 or self.waited is None:
            return None
        return min(1.0, max(0.0, self.waited / self.seconds))

    def metrics(self, global_batch: int, learning_rate: float) -> dict[str, float]:
        """Loss, top-1, learning rate and (after a timed call) images/s, step time and input-wait share."""
        metrics = {
            "loss": self.loss / max(self.count, 1.0),
            "top1": self.correct / max(self.count, 1.0),
            "learning_rate": learning_rate,
        }
        if self.steps and self.seconds > 0:
            metrics["images_per_second"] = self.steps * global_batch / self.seconds
            metrics["step_time_seconds"] = self.seconds / self.steps
        fraction = self.input_wait_fraction
        if fraction is not None:
            metrics["input_wait_fraction"] = fraction
        return metrics


class InputBoundAlarm:
    """One warning when the input-wait share stays above `threshold` for `windows` logging windows in a row."""

    def __init__(self, threshold: float | None, windows: int = ALARM_WINDOWS):
        self.threshold = threshold
        self.windows = max(1, int(windows))
        self.fired = False
        self._above: list[float] = []

    def observe(self, fraction: float | None) -> str | None:
        """Feed one window's share (None: an untimed window, skipped); the warning text the first time it fires."""
        if self.threshold is None or self.fired or fraction is None:
            return None
        self._above = self._above + [fraction] if fraction > self.threshold else []
        if len(self._above) < self.windows:
            return None
        self.fired = True
        shares = ", ".join(f"{100 * f:.0f}%" for f in self._above)
        return (f"Input-bound: the training step waited for its next batch {shares} of step time in the last "
                f"{len(self._above)} log windows (alarm above {100 * self.threshold:.0f}%), so the accelerator idles "
                "while the host prepares images. Try data.augment_on_device=true (augmentation inside the train "
                "step), more parallel reads and host cores for decoding, data.cache=true or a copy of the data "
                "decoded and resized once (caching decoded images), or a lighter data.augment; "
                "train.input_wait_alarm=0 silences this.")
