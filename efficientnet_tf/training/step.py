"""The training step: augmentation on the device (when asked), forward, loss, backward, update, batch-norm
statistics across replicas, the moving average and the step counter, compiled into a loop of several steps
per tf.function call. The loop around it (training/loop.py) decides when to call it and for how many steps.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from efficientnet_tf.data.augment_device import DeviceAugmentation
from efficientnet_tf.hparams import RunConfig
from efficientnet_tf.models import quantize
from efficientnet_tf.models.ema import ExponentialMovingAverage, batch_norm_layers
from efficientnet_tf.training.strategy import StrategyInfo, compile_replica_step
from efficientnet_tf.training.throughput import InputWaitMeter


def decayed_variables(model: keras.Model) -> list[keras.Variable]:
    """Trainable weights that get L2 weight decay: all but batch-norm gamma and beta."""
    excluded = {id(v) for layer in batch_norm_layers(model) for v in layer.trainable_variables}
    return [v for v in model.trainable_variables if id(v) not in excluded]


def batch_norm_statistics(model: keras.Model) -> list[keras.Variable]:
    """Every batch-norm layer's moving mean and variance."""
    return [v for layer in batch_norm_layers(model) for v in (layer.moving_mean, layer.moving_variance)]


class TrainStep:
    """The compiled step of one model, optimizer and moving average under one strategy.

    `run(iterator, n)` trains n steps in one call; `take_sums(stop)` returns [loss sum, correct top-1,
    examples, stop votes] since the last call, summed over replicas and workers; `swap_ema()` swaps the
    model's weights with their averages. `rebuild()` traces again after the trainable set, a dropout
    rate or the device augmentation changed (a new phase of training).
    """

    def __init__(self, config: RunConfig, info: StrategyInfo, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 ema: ExponentialMovingAverage | None, device_augment: DeviceAugmentation | None = None,
                 teacher: keras.Model | None = None):
        self.model, self.optimizer, self.ema, self.info = model, optimizer, ema, info
        # With a teacher (qat.distill: the float model a quantisation-aware run started from) the loss is the
        # cross-entropy towards its probabilities on the same images, at qat.distill_temperature T (both logits
        # divided by T, the term scaled by T^2 as in Hinton et al. 2015), plus the (smoothed) labels' cross-
        # entropy for the rest of the share; at T = 1 that is one cross-entropy towards the mixed target.
        # Top-1 is still counted against the labels.
        self.teacher = teacher
        self.distill = float(config.qat.distill)
        self.temperature = float(config.qat.distill_temperature)
        self.strategy = info.strategy
        self.label_smoothing = float(config.train.label_smoothing)
        self.weight_decay = float(config.train.weight_decay)
        self.global_batch = float(config.train.batch_size)
        self.jit_compile = bool(config.runtime.jit_compile)
        # A quantisation-aware model's learned activation ranges are per-replica statistics too.
        self._bn_stats = batch_norm_statistics(model) + quantize.range_variables(model)
        # Seconds each call waited for its batches (not measured under op determinism: training/throughput.py).
        self.input_wait = InputWaitMeter(enabled=not config.train.deterministic)
        self.device_augment = device_augment
        with self.strategy.scope():
            self.counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                       aggregation=tf.VariableAggregation.NONE)
            # Per-replica running sums since the last read: [loss, correct top-1, examples].
            self._sums = tf.Variable(tf.zeros([3]), trainable=False, name="train_sums",
                                     aggregation=tf.VariableAggregation.NONE)
        self.rebuild()

    def rebuild(self) -> None:
        """Trace the step functions again (new trainable set, dropout rates or `device_augment`)."""
        model, optimizer, strategy, ema = self.model, self.optimizer, self.strategy, self.ema
        label_smoothing, weight_decay, global_batch = self.label_smoothing, self.weight_decay, self.global_batch
        replicas = float(self.info.num_replicas)
        decayed = decayed_variables(model)
        bn_stats = self._bn_stats
        sync_bn = self.info.num_replicas > 1
        device_augment, teacher, distill, temperature = self.device_augment, self.teacher, self.distill, self.temperature

        def gradients(images: tf.Tensor, labels: tf.Tensor, step: tf.Tensor, replica_id: tf.Tensor) -> Any:
            """Augmentation, forward and backward pass of one replica: its gradients and [loss, correct, count]."""
            if device_augment is not None:
                # Seeded by step and replica: every replica augments its own share, reproducibly.
                images, labels = device_augment(images, labels, step, replica_id)
            taught = None
            if teacher is not None:
                taught = tf.nn.softmax(tf.cast(teacher(images, training=False), tf.float32) / temperature, axis=-1)
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                if taught is None:
                    per_example = keras.losses.categorical_crossentropy(
                        labels, logits, from_logits=True, label_smoothing=label_smoothing
                    )
                else:
                    per_example = (distill * temperature**2) * keras.losses.categorical_crossentropy(
                        taught, logits / temperature, from_logits=True
                    )
                    if distill < 1.0:  # the labels' share smoothed as the labels alone would be
                        per_example += (1.0 - distill) * keras.losses.categorical_crossentropy(
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
        counter, sums = self.counter, self._sums

        def train_step(images: tf.Tensor, labels: tf.Tensor) -> None:
            step = counter.read_value()
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads, batch_sums = gradients_fn(images, labels, step, replica_id)
            optimizer.apply(grads, model.trainable_variables)
            if sync_bn:
                # Keras batch norm updates its moving statistics per replica; average them so that
                # every replica (and the EMA and checkpoints) hold the same values.
                context = tf.distribute.get_replica_context()
                means = context.all_reduce(tf.distribute.ReduceOp.MEAN, [v.value.read_value() for v in bn_stats])
                for variable, mean in zip(bn_stats, means):
                    variable.value.assign(mean)
            if ema is not None:
                ema.update(step)
            counter.assign_add(1)
            sums.assign_add(batch_sums)

        replica_step = tf.function(train_step, jit_compile=True) if whole_step else train_step
        input_wait = self.input_wait

        @tf.function
        def train_loop(iterator: Any, num_steps: tf.Tensor) -> None:
            for _ in tf.range(num_steps):
                (images, labels), timed = input_wait.next_batch(iterator)
                with tf.control_dependencies([timed]):
                    strategy.run(replica_step, args=(images, labels))

        def read_sums(stop: tf.Tensor) -> tf.Tensor:
            value = sums.read_value()
            with tf.control_dependencies([value]):
                reset = sums.assign(tf.zeros([3]))
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

        self._train_loop, self._take_sums = train_loop, take_sums
        self._swap_ema = swap_ema if ema is not None else None

    def run(self, iterator: Any, num_steps: int) -> None:
        """Train `num_steps` steps in one compiled call."""
        self._train_loop(iterator, tf.constant(num_steps, tf.int32))

    def take_sums(self, stop: bool = False) -> list[float]:
        """[loss sum, correct, examples, stop votes] since the last call, over all replicas and workers."""
        return [float(x) for x in self._take_sums(tf.constant(1.0 if stop else 0.0)).numpy()]

    def swap_ema(self) -> None:
        """Swap the model's weights with their moving averages (a second call swaps them back)."""
        if self._swap_ema is not None:
            self._swap_ema()

    @property
    def step(self) -> int:
        """The global step reached."""
        return int(self.counter.numpy())
