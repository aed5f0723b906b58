"""The training loop: one `strategy.run` step for every strategy, several steps per tf.function call.

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

from efficientnet_tf import model_io, results
from efficientnet_tf.models.ema import ExponentialMovingAverage, averaged_variables, batch_norm_layers
from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.hparams import flatten
from efficientnet_tf.models.weights import import_weights
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training import checkpoints, finetune, preemption, progressive, schedules, throughput
from efficientnet_tf.training.evaluation import (DatasetFn, dataset_options, evaluate_model, make_eval_batch_fn,
                                                 write_eval_report)
from efficientnet_tf.training.strategy import StrategyInfo, check_batch_size, compile_replica_step, use_xla
from efficientnet_tf.training.summaries import Progress, Summaries, announce, parse_profile_steps

DEFAULT_STEPS_PER_LOOP = {"CPU": 1, "GPU": 100, "TPU": 1000}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, permissions); the last good one is kept."""


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


def _batch_norm_statistics(model: keras.Model) -> list[keras.Variable]:
    return [v for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


def _decayed_variables(model: keras.Model) -> list[keras.Variable]:
    """Trainable weights that get L2 weight decay: all but batch-norm gamma and beta."""
    excluded = {id(v) for layer in batch_norm_layers(model) for v in layer.trainable_variables}
    return [v for v in model.trainable_variables if id(v) not in excluded]


class Trainer:
    """Builds model, optimizer, EMA and checkpoints under a strategy, and runs training and eval.

    `config` is a resolved config (see `hparams.resolve`). Dataset functions take a
    `tf.distribute.InputContext` and return per-replica batches: training batches
    (images float32 0..255, one-hot float32 labels), forever; eval batches (images, int labels), once.
    """

    def __init__(
        self,
        config: Any,
        strategy_info: StrategyInfo,
        model_dir: str,
        *,
        train_dataset_fn: DatasetFn | None = None,
        eval_dataset_fn: DatasetFn | None = None,
        init_weights: str | None = None,
        build_model_fn: Callable[[], keras.Model] | None = None,
    ):
        self.config = config
        self.info = strategy_info
        self.strategy = strategy_info.strategy
        self.model_dir = model_dir
        self.train_dataset_fn = train_dataset_fn
        self.eval_dataset_fn = eval_dataset_fn
        train = config.train
        self.global_batch = int(train.batch_size)
        self.per_replica_batch = check_batch_size(self.global_batch, strategy_info)
        self.eval_global_batch = int(config.eval.batch_size or self.global_batch)
        check_batch_size(self.eval_global_batch, strategy_info, "eval.batch_size")
        self.steps_per_epoch = int(train.steps_per_epoch)
        self.total_steps = int(train.train_steps)
        self.steps_per_loop = int(train.steps_per_loop or DEFAULT_STEPS_PER_LOOP[strategy_info.device_type])
        self.jit_compile = use_xla(config.runtime.jit_compile, strategy_info.device_type)
        self.profile = parse_profile_steps(train.profile_steps)
        policy = keras.mixed_precision.global_policy().name
        self.num_classes = int(config.model.num_classes)

        self.run = RunDir(model_dir)
        # The newest checkpoint that reads back whole; the chief moves unreadable newer ones aside.
        resume_from = self.run.readable_checkpoint(quarantine=strategy_info.is_chief)
        self.progressive = progressive.ProgressiveSchedule.from_config(config, self.total_steps)
        self._stage: progressive.Stage | None = None
        with self.strategy.scope():
            self.model = build_model_fn() if build_model_fn else model_io.build_model_from_config(
                progressive.with_dropout_layer(config, self.progressive), any_size=self.progressive is not None)
            self.finetune = finetune.FineTuneSchedule.from_config(config, self.steps_per_epoch)
            if init_weights and resume_from is None:
                # keep_normalization: the run's config sets it (app.train does from a weights name).
                report = import_weights(self.model, init_weights, new_head=self.finetune.new_head,
                                        keep_normalization=config.model.get("normalization") is not None)
                logging.info("Initial weights from %s:\n%s", init_weights, report.format())
                if strategy_info.is_chief:
                    self.run.write_import_report(init_weights, report.to_dict())
            self.schedule = schedules.build_schedule(train, self.steps_per_epoch, self.total_steps)
            self.optimizer = schedules.build_optimizer(train, self.schedule, loss_scaling=policy == "mixed_float16")
            # Built for every parameter, before any freezing: unfrozen layers then have their slots.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.NONE)
            self.best_top1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_top1",
                                         aggregation=tf.VariableAggregation.NONE)
            # Per-replica running sums since the last read: [loss, correct top-1, examples].
            self._sums = tf.Variable(tf.zeros([3]), trainable=False, name="train_sums",
                                     aggregation=tf.VariableAggregation.NONE)
            decay = float(train.ema_decay)
            self.ema = ExponentialMovingAverage(averaged_variables(self.model), decay) if decay > 0 else None
        self._resume_from = resume_from
        # Dropout / drop-connect random streams: Keras does not expose them to tf.train.Checkpoint,
        # and an exact resume needs them.
        self._random_states = tf.Module(name="random_states")
        self._random_states.states = [
            v.value for v in self.model.non_trainable_variables if v.path.endswith("seed_generator_state")
        ]
        self._decayed = _decayed_variables(self.model)
        self._bn_stats = _batch_norm_statistics(self.model)
        self._sync_bn = strategy_info.num_replicas > 1
        self._train_iterator = None
        self._iterator_saved = False
        self._keeper: checkpoints.CheckpointKeeper | None = None
        self._units = finetune.units_top_down(self.model) if self.finetune.active else []
        self._parameters = finetune.count_weights(self.model.trainable_variables)  # before any freezing
        self._phase: finetune.Phase | None = None
        self._device_augment = progressive.device_augmentation(config)
        self._input_wait = throughput.InputWaitMeter(enabled=not train.deterministic)
        self._input_alarm_threshold = throughput.alarm_threshold(
            train.get("input_wait_alarm", throughput.DEFAULT_THRESHOLD))
        self._build_functions()

    def _set_phase(self, step: int, summaries: Summaries | None = None, progress: Progress | None = None) -> bool:
        """Freeze / unfreeze for the phase of `step`; True (and functions rebuilt) when it changed."""
        if not self.finetune.active:
            return False
        unfrozen = self.finetune.unfrozen_at(step, len(self._units))
        if self._phase is not None and self._phase.unfrozen == unfrozen:
            return False
        self._phase = finetune.apply_phase(self.model, self.finetune, unfrozen, self._parameters)
        self._decayed = _decayed_variables(self.model)
        self._build_functions()
        message = f"Fine-tuning from step {step}: {self._phase.describe(len(self._units))}"
        announce(message, progress)
        if summaries is not None:
            summaries.scalars(step, {"finetune/unfrozen_units": float(unfrozen),
                                     "finetune/trainable_weights": float(self._phase.trainable_weights)})
            summaries.text(step, "finetune", message)
        return True

    # ------------------------------------------------------------------------------------------
    # Compiled functions

    def _build_functions(self) -> None:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        train = self.config.train
        label_smoothing = float(train.label_smoothing)
        weight_decay = float(train.weight_decay)
        global_batch = float(self.global_batch)
        replicas = float(self.info.num_replicas)
        decayed = self._decayed
        bn_stats = self._bn_stats
        ema = self.ema
        num_classes = self.num_classes
        device_augment = self._device_augment

        def gradients(images: tf.Tensor, labels: tf.Tensor, step: tf.Tensor, replica_id: tf.Tensor) -> Any:
            """Augmentation, forward and backward pass of one replica: its gradients and [loss, correct, count]."""
            if device_augment is not None:
                # Seeded by step and replica: every replica augments its own share, reproducibly.
                images, labels = device_augment(images, labels, step, replica_id)
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = keras.losses.categorical_crossentropy(
                    labels, logits, from_logits=True, label_smoothing=label_smoothing
                )
                # Gradients are summed over replicas, so each replica's share is sum / global batch.
                loss = tf.reduce_sum(per_example) / global_batch
                count = tf.cast(tf.shape(labels)[0], tf.float32)
                # The logged loss is the total one, weight decay included, as the reference logs it.
                reported = tf.reduce_sum(per_example)
                if weight_decay > 0:
                    l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v.value, tf.float32)) for v in decayed])
                    loss += weight_decay * l2 / replicas
                    reported += weight_decay * l2 * count
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), tf.argmax(labels, -1)), tf.float32))
            return grads, tf.stack([reported, correct, count])

        # XLA: the whole step on one device, `gradients` only on mirrored replicas (strategy.compile_replica_step);
        # a TPU compiles everything anyway.
        whole_step = self.jit_compile and self.info.kind in ("default", "one_device")
        mirrored = self.jit_compile and self.info.kind in ("mirrored", "multi_worker")
        gradients_fn = compile_replica_step(gradients, self.info) if mirrored else gradients

        def train_step(images: tf.Tensor, labels: tf.Tensor) -> None:
            step = self.step.read_value()
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads, sums = gradients_fn(images, labels, step, replica_id)
            optimizer.apply(grads, model.trainable_variables)
            if self._sync_bn:
                # Keras batch norm updates its moving statistics per replica; average them so that
                # every replica (and the EMA and checkpoints) hold the same values.
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [v.value.read_value() for v in bn_stats])
                for variable, mean in zip(bn_stats, means):
                    variable.value.assign(mean)
            if ema is not None:
                ema.update(step)
            self.step.assign_add(1)
            self._sums.assign_add(sums)

        replica_step = tf.function(train_step, jit_compile=True) if whole_step else train_step
        input_wait = self._input_wait

        @tf.function
        def train_loop(iterator: Any, num_steps: tf.Tensor) -> None:
            for _ in tf.range(num_steps):
                (images, labels), timed = input_wait.next_batch(iterator)
                with tf.control_dependencies([timed]):
                    strategy.run(replica_step, args=(images, labels))

        def read_sums(stop: tf.Tensor) -> tf.Tensor:
            value = self._sums.read_value()
            with tf.control_dependencies([value]):
                reset = self._sums.assign(tf.zeros([3]))
            with tf.control_dependencies([reset]):
                return tf.concat([value, tf.reshape(stop, [1])], axis=0)

        @tf.function
        def take_sums(stop: tf.Tensor) -> tf.Tensor:
            """[loss sum, correct, examples, stop requests] summed over replicas and workers: the all-reduce
            that the metrics need anyway also tells every worker whether any of them was asked to stop."""
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(read_sums, args=(stop,)), axis=None)

        @tf.function
        def swap_ema() -> None:
            strategy.run(lambda: ema.swap())

        self._train_loop = train_loop
        self._take_sums = take_sums
        self._eval_batch = make_eval_batch_fn(strategy, model, num_classes, details=results.TOP_LOSS_IMAGES)
        self._swap_ema = swap_ema if ema is not None else None

    # ------------------------------------------------------------------------------------------
    # Input

    def _make_train_iterator(self) -> tuple[Any, bool]:
        """The training input iterator, and whether it can go into checkpoints.

        With one replica per worker a plain tf.data iterator is used and saved with the
        checkpoint (exact resume); with several local replicas or a TPU, tf.distribute's
        iterator is needed and cannot be saved, so a resumed run restarts the input order.
        """
        if self.train_dataset_fn is None:
            raise ValueError("Trainer.train needs train_dataset_fn")
        if self.info.kind == "tpu" or self.info.num_local_replicas > 1:
            dataset = self.strategy.distribute_datasets_from_function(
                lambda context: dataset_options(self._train_dataset(context))
            )
            return iter(dataset), False
        context = tf.distribute.InputContext(
            num_input_pipelines=self.info.num_workers,
            input_pipeline_id=self.info.worker_index,
            num_replicas_in_sync=self.info.num_replicas,
        )
        return iter(dataset_options(self._train_dataset(context))), True

    def _train_dataset(self, context: tf.distribute.InputContext) -> tf.data.Dataset:
        """The training dataset function's batches (of the current progressive stage)."""
        if self._stage is None:
            return self.train_dataset_fn(context)
        return self.train_dataset_fn(context, stage=self._stage)

    def _enter_stage(self, stage: progressive.Stage, summaries: Summaries | None = None,
                     progress: Progress | None = None, *, new_input: bool = True) -> None:
        """Switch to a progressive stage: its image size and augmentation (a new input pipeline), its dropout
        (the step function is traced again), and checkpoints that hold the new pipeline's position."""
        self._stage = stage
        dropout = [layer for layer in self.model.layers if isinstance(layer, keras.layers.Dropout)]
        if stage.dropout_rate > 0 and not dropout:
            raise UserError("train.progressive sets a dropout rate but the model has no dropout layer; "
                            "set model.dropout_rate > 0")
        for layer in dropout:
            layer.rate = float(stage.dropout_rate)
        self._device_augment = progressive.device_augmentation(self.config, stage)
        self._build_functions()
        if new_input:
            self._train_iterator, _ = self._make_train_iterator()
            self._keeper = self._make_keeper(self._iterator_saved)
        announce(f"Progressive learning: {stage.describe(len(self.progressive.stages))}", progress)
        if summaries is not None:
            summaries.scalars(stage.start_step, {"progressive/image_size": float(stage.image_size),
                                                 "progressive/randaug_magnitude": stage.randaug_magnitude,
                                                 "progressive/mixup_alpha": stage.mixup_alpha,
                                                 "progressive/cutmix_alpha": stage.cutmix_alpha,
                                                 "progressive/dropout_rate": stage.dropout_rate})

    def _sample_images(self) -> np.ndarray | None:
        """One batch of augmented training images from a separate pipeline (for TensorBoard)."""
        try:
            dataset = self._train_dataset(tf.distribute.InputContext())
            images, labels = next(iter(dataset.take(1)))
            if self._device_augment is not None:
                images, _ = self._device_augment(images, labels, 0, 0)
            return images.numpy()
        except (tf.errors.OpError, StopIteration, ValueError) as error:
            logging.warning("Could not draw sample training images for TensorBoard: %s", error)
            return None

    # ------------------------------------------------------------------------------------------
    # Checkpoints

    def _make_keeper(self, with_iterator: bool) -> checkpoints.CheckpointKeeper:
        objects = {"model": self.model, "optimizer": self.optimizer, "step": self.step, "best_top1": self.best_top1,
                   "ema": self.ema, "random_states": self._random_states if self._random_states.states else None,
                   "iterator": self._train_iterator if with_iterator else None}
        checkpoint = tf.train.Checkpoint(**{name: value for name, value in objects.items() if value is not None})
        return checkpoints.CheckpointKeeper(checkpoint, self.model_dir, keep=int(self.config.train.keep_checkpoints),
                                            step=self.step, best_top1=self.best_top1, is_chief=self.info.is_chief,
                                            worker_index=self.info.worker_index)

    def _save(self, last_good: str | None) -> str | None:
        """Save a rolling checkpoint; drops the iterator from it if TensorFlow cannot save it.

        A write that fails (full disk, read-only directory) is a CheckpointWriteError naming the last
        good checkpoint, which stays as it was.
        """
        try:
            try:
                return self._keeper.save()
            except (tf.errors.OpError, ValueError, TypeError) as error:
                if not self._iterator_saved or checkpoints.is_write_error(error):
                    raise
                logging.warning("Cannot save the input pipeline position (%s); checkpoints will hold the "
                                "model only and a resumed run restarts the input order", first_line(error))
                self._iterator_saved = False
                self._keeper = self._make_keeper(False)
                return self._keeper.save()
        except (tf.errors.OpError, OSError) as error:
            raise self._write_error(error, last_good) from None

    def _write_error(self, error: BaseException, last_good: str | None, what: str | None = None) -> CheckpointWriteError:
        reason = getattr(error, "strerror", None) or first_line(error)
        what = what or f"a checkpoint at step {int(self.step.numpy())} into {self.run.checkpoints_dir}"
        return CheckpointWriteError(
            f"cannot write {what}: {reason}; "
            f"the last good checkpoint is {last_good or 'none'} (free disk space or fix permissions, then run the "
            "same command again to resume from it)")

    def _restore(self, path: str) -> None:
        status = self._keeper.checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            if self._iterator_saved and "iterator" in str(error).lower():
                logging.warning("Checkpoint %s has no input position; the input order restarts", path)
            else:
                logging.warning("Partial restore from %s: %s", path, first_line(error))
        status.expect_partial()

    # ------------------------------------------------------------------------------------------
    # Evaluation

    def evaluate(self) -> dict[str, float]:
        """Loss, top-1 and top-5 on the eval data with the moving-average weights (when enabled)."""
        if self.eval_dataset_fn is None:
            raise ValueError("Trainer.evaluate needs eval_dataset_fn")
        if self._swap_ema is not None:
            self._swap_ema()
        # Per-example results of the last evaluation, for its report (confusion matrix, calibration, ...).
        self.last_eval_records = results.EvalRecords(self.num_classes)
        try:
            return evaluate_model(self.strategy, self._eval_batch, self.eval_dataset_fn, self.last_eval_records)
        finally:
            if self._swap_ema is not None:
                self._swap_ema()

    # ------------------------------------------------------------------------------------------
    # Training

    def _next_stop(self, step: int) -> int:
        """The step where the next tf.function call must end (log, checkpoint, epoch, profile, end)."""
        train = self.config.train
        stops = [
            self.total_steps,
            step + self.steps_per_loop,
            (step // self.steps_per_epoch + 1) * self.steps_per_epoch,
            (step // int(train.checkpoint_every_steps) + 1) * int(train.checkpoint_every_steps),
            (step // int(train.log_every_steps) + 1) * int(train.log_every_steps),
        ]
        if self.profile:
            stops.extend(s for s in self.profile if s > step)
        if self.finetune.active:
            change = self.finetune.next_change(step, len(self._units), self.total_steps)
            if change is not None:
                stops.append(change)
        if self.progressive is not None:
            change = self.progressive.next_change(step)
            if change is not None:
                stops.append(change)
        return min(stops)

    def train(self, *, eval_every_epochs: int | None = None) -> TrainResult:
        """Train to `train.train_steps`, resuming from the latest checkpoint in model_dir.

        With `eval_every_epochs`, evaluates every that many epochs and at the end, keeping the best
        checkpoint by top-1. Raises NonFiniteLossError (leaving the last checkpoint) on a NaN loss.
        """
        train = self.config.train
        if self.progressive is not None:
            # The stage of the step to resume from decides the input pipeline, whose position is restored.
            resume_step = 0
            if self._resume_from:
                reader = tf.train.load_checkpoint(self._resume_from)
                resume_step = int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
            self._enter_stage(self.progressive.stage_at(resume_step), new_input=False)
        self._train_iterator, can_save_iterator = self._make_train_iterator()
        self._iterator_saved = bool(train.checkpoint_input and can_save_iterator)
        self._keeper = self._make_keeper(self._iterator_saved)
        if self._resume_from:
            self._restore(self._resume_from)
            if not self._iterator_saved:
                logging.info("Resuming without a saved input position: the input order restarts")
        start = int(self.step.numpy())
        summaries = Summaries(self.model_dir, enabled=self.info.is_chief)
        progress = Progress(self.total_steps, start, log_every=int(train.log_every_steps),
                            enabled=self.info.is_chief)
        if self._resume_from:
            progress.message(f"Resumed from {self._resume_from} at step {start} of {self.total_steps}")
        self._set_phase(start, summaries, progress)
        if start == 0 and self.info.is_chief:
            summaries.hparams(flatten(self.config))
            if train.image_summary:
                images = self._sample_images()
                if images is not None:
                    summaries.images(0, "augmented_images", images)

        with preemption.handle_signals() as stop:
            preemption.watch_maintenance(stop, train.get("preemption_watch", "auto"), self.info.kind)
            try:
                return self._train_steps(start, summaries, progress, stop, eval_every_epochs=eval_every_epochs)
            finally:
                summaries.close()

    def _train_steps(self, start: int, summaries: Summaries, progress: Progress, stop: preemption.StopRequest, *,
                     eval_every_epochs: int | None) -> TrainResult:
        """The training loop proper: steps, logs, evals and checkpoints until the end, a time budget or a stop
        request (which saves a checkpoint of the step reached and raises preemption.Preempted)."""
        train = self.config.train
        step = start
        max_seconds = float(train.max_seconds) if train.get("max_seconds") is not None else None
        began_training = time.monotonic()
        out_of_time = False
        last_checkpoint = self._resume_from
        saved_step = start if self._resume_from else -1
        timed_steps, timed_seconds = 0, 0.0
        eval_metrics: dict[str, float] | None = None
        window = throughput.LogWindow()
        alarm = throughput.InputBoundAlarm(self._input_alarm_threshold)
        train_metrics: dict[str, float] = {}
        first_call = True
        stopping = stop.requested and self.info.num_workers == 1  # a signal during set-up
        while step < self.total_steps and not out_of_time and not stopping:
            stop_at = self._next_stop(step)
            if self.profile and step == self.profile[0]:
                summaries.start_profiler()
            began = time.monotonic()
            self._train_loop(self._train_iterator, tf.constant(stop_at - step, tf.int32))
            sums = self._take_sums(tf.constant(1.0 if stop.requested else 0.0)).numpy()
            loss_sum, correct, count, stop_votes = (float(x) for x in sums)
            seconds = time.monotonic() - began
            waited = self._input_wait.take()
            if stop_votes > 0:
                stop.request("a stop request on another worker")
                stopping = True
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"the training loss became {loss_sum} between steps {step} and {stop_at}; "
                    f"stopped without saving, the last good checkpoint is {last_checkpoint or 'none'} "
                    "(lower train.base_learning_rate or add train.gradient_clip_norm)"
                )
            steps_done = stop_at - step
            step = stop_at
            if self.profile and step == self.profile[1]:
                summaries.stop_profiler()
            # The first call includes tracing and compilation: not timed.
            window.add(loss_sum, correct, count, steps=steps_done, seconds=seconds, waited=waited, timed=not first_call)
            if not first_call:
                timed_steps += steps_done
                timed_seconds += seconds
            # A new fine-tuning phase traces a new step function: its first call is not timed either.
            first_call = step < self.total_steps and not stopping and self._set_phase(step, summaries, progress)
            if (self.progressive is not None and step < self.total_steps
                    and self.progressive.stage_at(step) != self._stage):
                # Before any checkpoint of this step, a stop's too: it must hold the new stage's input position.
                self._enter_stage(self.progressive.stage_at(step), summaries, progress)
                first_call = True
            train_metrics = window.metrics(self.global_batch, float(self.schedule(step - 1)))
            epoch = step / self.steps_per_epoch
            progress.update(step, epoch, train_metrics)
            if step % int(train.log_every_steps) == 0 or step == self.total_steps:
                summaries.scalars(step, train_metrics)
                warning = alarm.observe(window.input_wait_fraction)
                if warning:
                    progress.warning(warning)
                window = throughput.LogWindow()
            epoch_end = step % self.steps_per_epoch == 0
            out_of_time = max_seconds is not None and time.monotonic() - began_training >= max_seconds
            if out_of_time and step < self.total_steps:
                progress.message(f"train.max_seconds={max_seconds:g} reached at step {step} of "
                                 f"{self.total_steps}: stopping here (rerun with a larger budget to go on)")
            finished = step == self.total_steps or out_of_time
            if not stopping and eval_every_epochs and self.eval_dataset_fn is not None and (
                finished or (epoch_end and round(epoch) % int(eval_every_epochs) == 0)
            ):
                eval_metrics = self.evaluate()
                # Wall time of this invocation so far (training + evals): time-to-accuracy curves.
                eval_metrics["wall_seconds"] = time.monotonic() - began_training
                try:
                    self._report_eval(summaries, step, eval_metrics, progress, finished)
                except (tf.errors.OpError, OSError) as error:
                    raise self._write_error(error, last_checkpoint, f"the eval results into {self.run.path}") from None
                try:
                    if self._keeper.maybe_save_best(eval_metrics):
                        progress.message(f"New best top-1 {100 * eval_metrics['top1']:.2f}% at step {step}")
                except (tf.errors.OpError, OSError) as error:
                    raise self._write_error(error, last_checkpoint) from None
            if finished or epoch_end or stopping or step % int(train.checkpoint_every_steps) == 0:
                saved = self._save(last_checkpoint)
                last_checkpoint = saved or last_checkpoint
                saved_step = step
        # Several workers act only on the agreed vote (a save needs all of them); one acts on its own flag.
        if (stopping or (stop.requested and self.info.num_workers == 1)) and step < self.total_steps:
            if saved_step != step and step > 0:  # asked to stop before any step ran in this invocation
                last_checkpoint = self._save(last_checkpoint)
            raise preemption.Preempted(step, last_checkpoint if step > 0 else None, stop.reason or "a stop request")
        if start >= self.total_steps:
            logging.info("Already trained to step %d (train_steps=%d); nothing to do", start, self.total_steps)
        best = tf.train.latest_checkpoint(self.run.best_dir)
        return TrainResult(step, train_metrics, eval_metrics, self._keeper.latest, best, self._resume_from,
                           timed_steps, timed_seconds)

    def time_steps(self, num_steps: int, *, warmup_steps: int = 2) -> float:
        """Seconds for `num_steps` training steps in one call, after a warmup call (benchmarks).

        Runs the same compiled loop as `train`, without checkpoints or summaries; `warmup_steps=0`
        skips the warmup call (the loop must have been traced already for a steady-state time).
        """
        if self._train_iterator is None:
            self._train_iterator, _ = self._make_train_iterator()
        if warmup_steps > 0:
            self._train_loop(self._train_iterator, tf.constant(warmup_steps, tf.int32))
            self._take_sums(tf.constant(0.0)).numpy()
        self._input_wait.take()
        began = time.perf_counter()
        self._train_loop(self._train_iterator, tf.constant(num_steps, tf.int32))
        self._take_sums(tf.constant(0.0)).numpy()  # waits for the steps to finish
        self.last_input_wait_seconds = self._input_wait.take()  # of the timed call: input-bound or not
        return time.perf_counter() - began

    def _report_eval(self, summaries: Summaries, step: int, metrics: dict[str, float], progress: Progress,
                     final: bool) -> None:
        summaries.scalars(step, {k: v for k, v in metrics.items() if k != "examples"}, eval=True)
        if self.info.is_chief:
            self.run.write_eval_results(step, metrics)
            write_eval_report(self.model, self.last_eval_records, self.run.path, step, summaries=summaries, table=final)
        top1, top5 = 100 * metrics["top1"], 100 * metrics["top5"]
        progress.message(f"Eval at step {step}: top-1 {top1:.2f}%, top-5 {top5:.2f}%, loss {metrics['loss']:.4f} "
                         f"({int(metrics['examples'])} images)")
