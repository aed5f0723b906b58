"""The training loop: compiled calls of the train step (training/step.py) for every strategy, and between
them the objects that log, evaluate, checkpoint and change phase (training/cadence.py, training/phases.py).

Keras 3 `Model.fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so training
uses this custom loop everywhere: default strategy on a CPU, MirroredStrategy, multi-worker and TPU.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf import evaluation_report, run_model
from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import RunConfig, Stage, flatten
from efficientnet_tf.models.ema import ExponentialMovingAverage, averaged_variables
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training import inputs, phases, preemption, schedules
from efficientnet_tf.training.cadence import ProfilerWindow, SavePoints, TrainingLog
from efficientnet_tf.training.checkpoints import RunCheckpoints, step_of_checkpoint
from efficientnet_tf.training.evaluation import dataset_options, evaluate_model, make_eval_batch_fn, write_eval_report
from efficientnet_tf.training.inputs import EvalDatasetFn, TrainDatasetFn
from efficientnet_tf.training.step import TrainStep
from efficientnet_tf.training.strategy import StrategyInfo
from efficientnet_tf.training.summaries import Progress, Summaries, announce


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    """What a training run ended with."""

    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float] | None
    checkpoint: str | None
    best_checkpoint: str | None
    resumed_from: str | None
    # Steps and seconds of this invocation's training calls, tracing calls excluded (steady-state speed).
    timed_steps: int = 0
    timed_seconds: float = 0.0

    @property
    def step_time_seconds(self) -> float | None:
        """Mean seconds per step over the whole invocation (None when no call was timed)."""
        return self.timed_seconds / self.timed_steps if self.timed_steps else None


class Trainer:
    """Builds model, optimizer, EMA and checkpoints under a strategy, and runs training and eval.

    `config` is a resolved config (`hparams.resolve`). `train_dataset_fn(context, stage)` returns a stage's
    per-replica training batches (images float32 0..255, one-hot float32 labels), forever;
    `eval_dataset_fn(context)` per-replica eval batches (images, int labels), once.
    """

    def __init__(
        self,
        config: RunConfig,
        strategy_info: StrategyInfo,
        model_dir: str,
        *,
        train_dataset_fn: TrainDatasetFn | None = None,
        eval_dataset_fn: EvalDatasetFn | None = None,
        build_model_fn: Callable[[], keras.Model] | None = None,
    ):
        self.config, self.info, self.strategy, self.model_dir = config, strategy_info, strategy_info.strategy, model_dir
        self.train_dataset_fn, self.eval_dataset_fn = train_dataset_fn, eval_dataset_fn
        self.total_steps = config.train.train_steps
        self.run = RunDir(model_dir)
        # The newest checkpoint that reads back whole; the chief moves unreadable newer ones aside.
        self._resume_from = self.run.readable_checkpoint(quarantine=strategy_info.is_chief)
        with self.strategy.scope():
            self.model = build_model_fn() if build_model_fn else run_model.build_model_from_config(
                config, any_size=config.derived.progressive)
            if config.train.init_weights and self._resume_from is None:
                run_model.import_initial_weights(self.model, config, config.train.init_weights,
                                                 record=self.run if strategy_info.is_chief else None)
            self.schedule = schedules.build_schedule(config)
            policy = keras.mixed_precision.global_policy().name
            self.optimizer = schedules.build_optimizer(config.train, self.schedule, loss_scaling=policy == "mixed_float16")
            # Built for every parameter, before any freezing: unfrozen layers then have their slots.
            self.optimizer.build(self.model.trainable_variables)
            self.best_top1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_top1",
                                         aggregation=tf.VariableAggregation.NONE)
            decay = config.train.ema_decay
            self.ema = ExponentialMovingAverage(averaged_variables(self.model), decay) if decay > 0 else None
            # qat.distill: the float model the run started from sets the targets (training/step.py).
            teacher = run_model.float_start_model(config) if config.qat.distill > 0 else None
            if config.qat.distill > 0 and teacher is None:
                raise UserError(f"qat.distill learns from the run this one started from, and "
                                f"{config.train.init_weights} is no longer a training run directory")
        # Dropout / drop-connect random streams: Keras does not expose them to tf.train.Checkpoint,
        # and an exact resume needs them.
        self._random_states = tf.Module(name="random_states")
        self._random_states.states = [
            v.value for v in self.model.non_trainable_variables if v.path.endswith("seed_generator_state")
        ]
        self._stage: Stage = config.derived.stages[0]
        self.step_fn = TrainStep(config, strategy_info, self.model, self.optimizer, self.ema,
                                 inputs.device_augmentation(config, self._stage), teacher=teacher)
        self._input_wait = self.step_fn.input_wait
        self.step = self.step_fn.counter
        self.phases = phases.phases_of(config, self.model)
        self._eval_batch = make_eval_batch_fn(self.strategy, self.model, config.model.num_classes,
                                              details=evaluation_report.TOP_LOSS_IMAGES)
        self._train_iterator: Any = None
        self._checkpoints: RunCheckpoints | None = None

    # ------------------------------------------------------------------------------------------
    # Phases and input

    def _advance_phases(self, step: int, summaries: Summaries | None, progress: Progress | None, *,
                        new_input: bool = True) -> bool:
        """Bring every phase to `step`; True (the step traced again) when any changed."""
        changes = [change for change in (phase.update(step) for phase in self.phases) if change is not None]
        if not changes:
            return False
        stage = next((change.stage for change in changes if change.stage is not None), None)
        if stage is not None:
            self._stage = stage
            self.step_fn.device_augment = inputs.device_augmentation(self.config, stage)
        self.step_fn.rebuild()
        if stage is not None and new_input:
            # Before any checkpoint of this step (a stop's too): it must hold the new stage's input position.
            self._train_iterator, _ = self._make_train_iterator()
            self._checkpoints.set_iterator(self._train_iterator)
        for change in changes:
            announce(change.message, progress)
            if summaries is not None:
                summaries.scalars(change.scalars_step, change.scalars)
                if change.text:
                    summaries.text(step, *change.text)
        return True

    def _make_train_iterator(self) -> tuple[Any, bool]:
        """The training input iterator of the current stage, and whether it can go into checkpoints.

        With one replica per worker a plain tf.data iterator is used and saved with the
        checkpoint (exact resume); with several local replicas or a TPU, tf.distribute's
        iterator is needed and cannot be saved, so a resumed run restarts the input order.
        """
        if self.train_dataset_fn is None:
            raise ValueError("Trainer.train needs train_dataset_fn")
        if self.info.kind == "tpu" or self.info.num_local_replicas > 1:
            dataset = self.strategy.distribute_datasets_from_function(
                lambda context: dataset_options(self.train_dataset_fn(context, self._stage))
            )
            return iter(dataset), False
        context = tf.distribute.InputContext(
            num_input_pipelines=self.info.num_workers,
            input_pipeline_id=self.info.worker_index,
            num_replicas_in_sync=self.info.num_replicas,
        )
        return iter(dataset_options(self.train_dataset_fn(context, self._stage))), True

    def _sample_images(self) -> np.ndarray | None:
        """One batch of augmented training images from a separate pipeline (for TensorBoard)."""
        try:
            dataset = self.train_dataset_fn(tf.distribute.InputContext(), self._stage)
            images, labels = next(iter(dataset.take(1)))
            if self.step_fn.device_augment is not None:
                images, _ = self.step_fn.device_augment(images, labels, 0, 0)
            return images.numpy()
        except (tf.errors.OpError, StopIteration, ValueError) as error:
            logging.warning("Could not draw sample training images for TensorBoard: %s", error)
            return None

    # ------------------------------------------------------------------------------------------
    # Evaluation

    def evaluate(self) -> dict[str, float]:
        """Loss, top-1 and top-5 on the eval data with the moving-average weights (when enabled)."""
        if self.eval_dataset_fn is None:
            raise ValueError("Trainer.evaluate needs eval_dataset_fn")
        self.step_fn.swap_ema()
        # Per-example results of the last evaluation, for its report (confusion matrix, calibration, ...).
        self.last_eval_records = evaluation_report.EvalRecords(self.config.model.num_classes)
        try:
            return evaluate_model(self.strategy, self._eval_batch, self.eval_dataset_fn, self.last_eval_records)
        finally:
            self.step_fn.swap_ema()

    def _report_eval(self, summaries: Summaries, step: int, metrics: dict[str, float], progress: Progress,
                     final: bool) -> None:
        """Eval scalars, eval_results.json and the report (its per-class table in the log at the last one)."""
        summaries.scalars(step, {k: v for k, v in metrics.items() if k != "examples"}, eval=True)
        if self.info.is_chief:
            self.run.write_eval_results(step, metrics)
            write_eval_report(self.model, self.last_eval_records, self.run.path, step, summaries=summaries, table=final)
        top1, top5 = 100 * metrics["top1"], 100 * metrics["top5"]
        progress.message(f"Eval at step {step}: top-1 {top1:.2f}%, top-5 {top5:.2f}%, loss {metrics['loss']:.4f} "
                         f"({int(metrics['examples'])} images)")

    # ------------------------------------------------------------------------------------------
    # Training

    def _start(self) -> tuple[int, Summaries, Progress]:
        """Enter the phase of the step to resume from, open the input and restore the checkpoint."""
        start = step_of_checkpoint(self._resume_from) if self._resume_from else 0
        summaries = Summaries(self.model_dir, enabled=self.info.is_chief)
        progress = Progress(self.total_steps, start, log_every=self.config.train.log_every_steps,
                            enabled=self.info.is_chief)
        if self._resume_from:
            progress.message(f"Resumed from {self._resume_from} at step {start} of {self.total_steps}")
        # The phase of the step to resume from decides the input pipeline, whose position is restored.
        self._advance_phases(start, summaries, progress, new_input=False)
        self._train_iterator, can_save_iterator = self._make_train_iterator()
        train = self.config.train
        objects = {"model": self.model, "optimizer": self.optimizer, "step": self.step, "best_top1": self.best_top1,
                   "ema": self.ema, "random_states": self._random_states if self._random_states.states else None}
        self._checkpoints = RunCheckpoints(objects, self.model_dir, keep=train.keep_checkpoints, step=self.step,
                                           best_top1=self.best_top1, is_chief=self.info.is_chief,
                                           worker_index=self.info.worker_index, iterator=self._train_iterator,
                                           save_iterator=train.checkpoint_input and can_save_iterator)
        if self._resume_from:
            self._checkpoints.restore(self._resume_from)
            if not self._checkpoints.iterator_saved:
                logging.info("Resuming without a saved input position: the input order restarts")
        return start, summaries, progress

    def train(self, *, eval_every_epochs: int | None = None) -> TrainResult:
        """Train to `train.train_steps`, resuming from the latest checkpoint in model_dir.

        With `eval_every_epochs`, evaluates every that many epochs and at the end, keeping the best
        checkpoint by top-1. Raises NonFiniteLossError (leaving the last checkpoint) on a NaN loss.
        """
        start, summaries, progress = self._start()
        if start == 0 and self.info.is_chief:
            summaries.hparams(flatten(self.config))
            if self.config.train.image_summary:
                images = self._sample_images()
                if images is not None:
                    summaries.images(0, "augmented_images", images)
        with preemption.handle_signals() as stop:
            preemption.watch_maintenance(stop, self.config.train.preemption_watch, self.info.kind)
            try:
                return self._train_steps(start, summaries, progress, stop,
                                         eval_every_epochs=eval_every_epochs if self.eval_dataset_fn else None)
            finally:
                summaries.close()

    def _train_steps(self, start: int, summaries: Summaries, progress: Progress, stop: preemption.StopRequest, *,
                     eval_every_epochs: int | None) -> TrainResult:
        """The training loop proper: steps, logs, evals and checkpoints until the end, a time budget or a stop
        request (which saves a checkpoint of the step reached and raises preemption.Preempted)."""
        train, checkpoints = self.config.train, self._checkpoints
        log = TrainingLog(self.config, lambda s: float(self.schedule(s)), summaries, progress)
        profiler = ProfilerWindow(self.config.derived.profile_steps, summaries)
        points = SavePoints(self.config, eval_every_epochs)
        step = start
        began_training = time.monotonic()
        began_cpu = time.process_time()
        out_of_time = False
        last_checkpoint = self._resume_from
        saved_step = start if self._resume_from else -1
        timed_steps, timed_seconds = 0, 0.0
        eval_metrics: dict[str, float] | None = None
        first_call = True
        stopping = stop.requested and self.info.num_workers == 1  # a signal during set-up
        while step < self.total_steps and not out_of_time and not stopping:
            stops = [self.total_steps, step + train.steps_per_loop, log.next_stop(step), points.next_stop(step),
                     profiler.next_stop(step), *(phase.next_change(step) for phase in self.phases)]
            stop_at = min(s for s in stops if s is not None)
            profiler.before(step)
            began = time.monotonic()
            self.step_fn.run(self._train_iterator, stop_at - step)
            sums = self.step_fn.take_sums(stop.requested)
            seconds = time.monotonic() - began
            waited = self._input_wait.take()
            if sums[3] > 0:
                stop.request("a stop request on another worker")
                stopping = True
            if not math.isfinite(sums[0]):
                raise NonFiniteLossError(
                    f"the training loss became {sums[0]} between steps {step} and {stop_at}; "
                    f"stopped without saving, the last good checkpoint is {last_checkpoint or 'none'} "
                    "(lower train.base_learning_rate or add train.gradient_clip_norm)"
                )
            steps_done, step = stop_at - step, stop_at
            profiler.after(step)
            # The first call includes tracing and compilation: not timed.
            log.add(sums, steps=steps_done, seconds=seconds, waited=waited, timed=not first_call)
            if not first_call:
                timed_steps += steps_done
                timed_seconds += seconds
            # A new phase traces a new step function: its first call is not timed either.
            first_call = step < self.total_steps and self._advance_phases(step, summaries, progress)
            log.report(step)
            out_of_time = train.max_seconds is not None and time.monotonic() - began_training >= train.max_seconds
            if out_of_time and step < self.total_steps:
                progress.message(f"train.max_seconds={train.max_seconds:g} reached at step {step} of "
                                 f"{self.total_steps}: stopping here (rerun with a larger budget to go on)")
            finished = step == self.total_steps or out_of_time
            if not stopping and points.evaluation_due(step, finished):
                eval_metrics = self.evaluate()
                # Wall time of this invocation so far (training + evals): time-to-accuracy curves.
                eval_metrics["wall_seconds"] = time.monotonic() - began_training
                # CPU time of the process (all threads) alongside: wall time alone misleads on a shared machine.
                eval_metrics["cpu_seconds"] = time.process_time() - began_cpu
                try:
                    self._report_eval(summaries, step, eval_metrics, progress, finished)
                except (tf.errors.OpError, OSError) as error:
                    raise checkpoints.write_error(error, last_checkpoint,
                                                  f"the eval results into {self.run.path}") from None
                if checkpoints.save_best(eval_metrics, last_checkpoint):
                    progress.message(f"New best top-1 {100 * eval_metrics['top1']:.2f}% at step {step}")
            if stopping or points.checkpoint_due(step, finished):
                last_checkpoint = checkpoints.save(last_checkpoint) or last_checkpoint
                saved_step = step
        # Several workers act only on the agreed vote (a save needs all of them); one acts on its own flag.
        if (stopping or (stop.requested and self.info.num_workers == 1)) and step < self.total_steps:
            if saved_step != step and step > 0:  # asked to stop before any step ran in this invocation
                last_checkpoint = checkpoints.save(last_checkpoint)
            raise preemption.Preempted(step, last_checkpoint if step > 0 else None, stop.reason or "a stop request")
        if start >= self.total_steps:
            logging.info("Already trained to step %d (train_steps=%d); nothing to do", start, self.total_steps)
        best = tf.train.latest_checkpoint(self.run.best_dir)
        return TrainResult(step, log.metrics, eval_metrics, checkpoints.latest, best, self._resume_from,
                           timed_steps, timed_seconds)

    def time_steps(self, num_steps: int, *, warmup_steps: int = 2) -> float:
        """Seconds for `num_steps` training steps in one call, after a warmup call (benchmarks).

        Runs the same compiled loop as `train`, without checkpoints or summaries; `warmup_steps=0`
        skips the warmup call (the loop must have been traced already for a steady-state time).
        """
        if self._train_iterator is None:
            self._train_iterator, _ = self._make_train_iterator()
        if warmup_steps > 0:
            self.step_fn.run(self._train_iterator, warmup_steps)
            self.step_fn.take_sums()
        self._input_wait.take()
        began = time.perf_counter()
        self.step_fn.run(self._train_iterator, num_steps)
        self.step_fn.take_sums()  # waits for the steps to finish
        self.last_input_wait_seconds = self._input_wait.take()  # of the timed call: input-bound or not
        return time.perf_counter() - began

