"""What the training loop does between compiled calls, each a small object: the logging window (progress
line, TensorBoard scalars, the input-bound alarm), the profiler window, and the stops that evaluations
and checkpoints need. Each names the next step at which the loop must end a call for it.
"""

from __future__ import annotations

from collections.abc import Callable

from efficientnet_tf.hparams import RunConfig
from efficientnet_tf.training.summaries import Progress, Summaries
from efficientnet_tf.training.throughput import InputBoundAlarm, LogWindow


def next_multiple(step: int, every: int) -> int:
    """The first multiple of `every` after `step`."""
    return (step // every + 1) * every


class TrainingLog:
    """Loss, top-1, speed and input wait over each logging window of train.log_every_steps steps."""

    def __init__(self, config: RunConfig, learning_rate: Callable[[int], float], summaries: Summaries,
                 progress: Progress):
        self.every = config.train.log_every_steps
        self.total_steps = config.train.train_steps
        self.steps_per_epoch = config.train.steps_per_epoch
        self.global_batch = config.train.batch_size
        self.learning_rate, self.summaries, self.progress = learning_rate, summaries, progress
        self.alarm = InputBoundAlarm(config.derived.input_wait_alarm)
        self.window = LogWindow()
        self.metrics: dict[str, float] = {}

    def next_stop(self, step: int) -> int:
        return next_multiple(step, self.every)

    def add(self, sums: list[float], *, steps: int, seconds: float, waited: float | None, timed: bool) -> None:
        """One compiled call's [loss sum, correct, examples] and timing."""
        loss_sum, correct, count = sums[:3]
        self.window.add(loss_sum, correct, count, steps=steps, seconds=seconds, waited=waited, timed=timed)

    def report(self, step: int) -> dict[str, float]:
        """Update the progress line; at the end of a window, write its scalars and watch the input wait."""
        self.metrics = self.window.metrics(self.global_batch, self.learning_rate(step - 1))
        self.progress.update(step, step / self.steps_per_epoch, self.metrics)
        if step % self.every == 0 or step == self.total_steps:
            self.summaries.scalars(step, self.metrics)
            warning = self.alarm.observe(self.window.input_wait_fraction)
            if warning:
                self.progress.warning(warning)
            self.window = LogWindow()
        return self.metrics


class ProfilerWindow:
    """train.profile_steps: a profiler trace of steps [start, stop) into the TensorBoard logs."""

    def __init__(self, window: tuple[int, int] | None, summaries: Summaries):
        self.window, self.summaries = window, summaries

    def next_stop(self, step: int) -> int | None:
        return next((s for s in self.window if s > step), None) if self.window else None

    def before(self, step: int) -> None:
        if self.window and step == self.window[0]:
            self.summaries.start_profiler()

    def after(self, step: int) -> None:
        if self.window and step == self.window[1]:
            self.summaries.stop_profiler()


class SavePoints:
    """When checkpoints are written (every train.checkpoint_every_steps, at each epoch's end, at the end and
    on a stop) and evaluations run (every `eval_every_epochs` epochs and at the end)."""

    def __init__(self, config: RunConfig, eval_every_epochs: int | None):
        self.steps_per_epoch = config.train.steps_per_epoch
        self.checkpoint_every = config.train.checkpoint_every_steps
        self.eval_every_epochs = eval_every_epochs

    def next_stop(self, step: int) -> int:
        return min(next_multiple(step, self.steps_per_epoch), next_multiple(step, self.checkpoint_every))

    def epoch_end(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0

    def evaluation_due(self, step: int, finished: bool) -> bool:
        if not self.eval_every_epochs:
            return False
        return finished or (self.epoch_end(step) and round(step / self.steps_per_epoch) % self.eval_every_epochs == 0)

    def checkpoint_due(self, step: int, finished: bool) -> bool:
        return finished or self.epoch_end(step) or step % self.checkpoint_every == 0
