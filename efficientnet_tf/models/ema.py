"""Exponential moving average of a model's weights and batch-norm statistics."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def _tf_variable(variable: keras.Variable | tf.Variable) -> tf.Variable:
    """The TensorFlow variable behind a Keras 3 variable (itself for a tf.Variable)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The batch-norm layers of a flat functional model (EfficientNet has no nested models)."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def averaged_variables(model: keras.Model) -> list[keras.Variable]:
    """What the reference averages: every trainable weight plus batch-norm moving statistics.

    Seed-generator states and fixed normalisation constants are left out.
    """
    variables = list(model.trainable_variables)
    seen = {id(v) for v in variables}
    for layer in batch_norm_layers(model):
            for v in (layer.moving_mean, layer.moving_variance):
                if id(v) not in seen:
                    seen.add(id(v))
                    variables.append(v)
    return variables


class _Untracked:
    """Holds references that checkpoints must not follow (the model owns those variables)."""

    def __init__(self, items: list):
        self.items = items


class ExponentialMovingAverage(tf.Module):
    """Shadow copies of variables, updated as shadow -= (1 - d) * (shadow - value).

    d = min(decay, (1 + step) / (10 + step)), the reference's ramp, so that the average follows the
    weights closely early on and short runs still get a useful average. Create it under the
    strategy's scope; `update`, `swap` and `copy_to_model` run per replica (inside strategy.run),
    where every replica holds identical values after the all-reduced update.
    """

    def __init__(self, variables: Sequence[keras.Variable], decay: float, name: str = "ema"):
        super().__init__(name=name)
        self.decay = float(decay)
        self._source_refs = _Untracked(list(variables))
        self.shadows = [
            tf.Variable(
                _tf_variable(v).read_value(),
                trainable=False,
                name=f"shadow_{i}",
                aggregation=tf.VariableAggregation.NONE,
            )
            for i, v in enumerate(self._sources)
        ]

    @property
    def _sources(self) -> list:
        return self._source_refs.items

    def decay_at(self, step: tf.Tensor) -> tf.Tensor:
        """The effective decay at a (0-based) step."""
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + step) / (10.0 + step))

    def update(self, step: tf.Tensor) -> tf.Operation:
        """Move each shadow towards its variable's current value."""
        rate = 1.0 - self.decay_at(step)
        updates = []
        for shadow, source in zip(self.shadows, self._sources):
            value = tf.cast(_tf_variable(source).read_value(), shadow.dtype)
            updates.append(shadow.assign_sub((shadow - value) * tf.cast(rate, shadow.dtype)))
        return tf.group(updates)

    def reset(self) -> None:
        """Set every shadow to its variable's current value (after loading other weights)."""
        for shadow, source in zip(self.shadows, self._sources):
            shadow.assign(_tf_variable(source).read_value())

    def swap(self) -> tf.Operation:
        """Exchange the model's values and the averages (call twice to undo)."""
        ops = []
        for shadow, source in zip(self.shadows, self._sources):
            variable = _tf_variable(source)
            current = tf.identity(variable.read_value())
            with tf.control_dependencies([current]):
                assign = variable.assign(tf.cast(shadow.read_value(), variable.dtype))
            with tf.control_dependencies([assign]):
                ops.append(shadow.assign(tf.cast(current, shadow.dtype)))
        return tf.group(ops)

    def copy_to_model(self) -> None:
        """Overwrite the model's variables with the averages (for inference and export)."""
        for shadow, source in zip(self.shadows, self._sources):
            _tf_variable(source).assign(tf.cast(shadow.read_value(), source.dtype))
