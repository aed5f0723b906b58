"""RMSpropTF, the reference recipe's optimizer, against TF1's RMSProp update written out in numpy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import hparams, training
from efficientnet_tf.errors import UserError
from efficientnet_tf.training.optimizers import RMSpropTF

RHO, MOMENTUM, EPSILON = 0.9, 0.9, 1e-3
LEARNING_RATES = [0.1, 0.05, 0.2, 0.01, 0.3]  # varies per step, as a schedule does
GRADIENTS = [
    np.array([[0.5, -1.0], [2.0, 0.0]], np.float32),
    np.array([[-0.3, 0.7], [1.5, -4.0]], np.float32),
    np.array([[0.0, 0.2], [-0.8, 3.0]], np.float32),
    np.array([[1.1, -0.1], [0.4, 0.9]], np.float32),
    np.array([[-2.0, 0.6], [0.0, -0.5]], np.float32),
]
START = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)


def _numpy_rmsprop(steps: int, initial_mean_square: float) -> np.ndarray:
    """TF1 RMSPropOptimizer with momentum, step by step (float64)."""
    weights = START.astype(np.float64)
    mean_square = np.full_like(weights, initial_mean_square)
    momentum = np.zeros_like(weights)
    for step in range(steps):
        grad = GRADIENTS[step].astype(np.float64)
        mean_square = RHO * mean_square + (1 - RHO) * grad**2
        momentum = MOMENTUM * momentum + LEARNING_RATES[step] * grad / np.sqrt(mean_square + EPSILON)
        weights = weights - momentum
    return weights


class _StepRate(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return tf.gather(tf.constant(LEARNING_RATES), tf.cast(step, tf.int32))


def _run(optimizer: keras.optimizers.Optimizer, steps: int, *, scale: float = 1.0,
         variable: keras.Variable | None = None) -> keras.Variable:
    variable = variable if variable is not None else keras.Variable(START)
    optimizer.build([variable])
    start = int(optimizer.iterations.numpy())
    for step in range(start, start + steps):
        optimizer.apply([tf.constant(GRADIENTS[step] * scale)], [variable])
    return variable


def test_rmsprop_tf_follows_the_tf1_update_from_a_mean_square_of_one() -> None:
    optimizer = RMSpropTF(learning_rate=_StepRate(), rho=RHO, momentum=MOMENTUM, epsilon=EPSILON)
    variable = _run(optimizer, len(GRADIENTS))
    np.testing.assert_allclose(variable.numpy(), _numpy_rmsprop(len(GRADIENTS), 1.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(optimizer._velocities[0].numpy() > 0.5, True)  # started at 1, not 0


def test_keras_rmsprop_starts_from_zero_and_differs() -> None:
    keras_optimizer = keras.optimizers.RMSprop(learning_rate=_StepRate(), rho=RHO, momentum=MOMENTUM,
                                               epsilon=EPSILON)
    keras_result = _run(keras_optimizer, len(GRADIENTS)).numpy()
    np.testing.assert_allclose(keras_result, _numpy_rmsprop(len(GRADIENTS), 0.0), rtol=1e-5, atol=1e-6)
    tf1_result = _numpy_rmsprop(len(GRADIENTS), 1.0)
    assert np.abs(keras_result - tf1_result).max() > 0.1
    # From zero, the first step is about lr·sign(g)/sqrt(1 − rho) whatever the gradient's size; from
    # one it is about lr·g: for the gradient 0.5, six times smaller.
    first_keras = np.abs(_numpy_rmsprop(1, 0.0) - START)[0, 0]
    first_tf1 = np.abs(_numpy_rmsprop(1, 1.0) - START)[0, 0]
    assert first_keras == pytest.approx(0.1 * 0.5 / np.sqrt(0.1 * 0.25 + EPSILON))
    assert first_keras > 5 * first_tf1


def test_rmsprop_tf_under_dynamic_loss_scaling() -> None:
    optimizer = keras.optimizers.LossScaleOptimizer(
        RMSpropTF(learning_rate=_StepRate(), rho=RHO, momentum=MOMENTUM, epsilon=EPSILON), initial_scale=1024.0
    )
    # LossScaleOptimizer takes gradients of the scaled loss and unscales them before the update.
    variable = _run(optimizer, 3, scale=1024.0)
    np.testing.assert_allclose(variable.numpy(), _numpy_rmsprop(3, 1.0), rtol=1e-5, atol=1e-6)


def test_rmsprop_tf_slots_checkpoint_and_restore(tmp_path) -> None:
    """Two steps, save, a fresh optimizer restores its slots, three more: as five uninterrupted steps."""
    def fresh():
        return RMSpropTF(learning_rate=_StepRate(), rho=RHO, momentum=MOMENTUM, epsilon=EPSILON)

    first, variable = fresh(), keras.Variable(START)
    _run(first, 2, variable=variable)
    path = tf.train.Checkpoint(optimizer=first, weights=variable).save(str(tmp_path / "ckpt"))
    second, restored = fresh(), keras.Variable(np.zeros_like(START))
    second.build([restored])  # built (mean square = 1) before the restore, as the Trainer does
    tf.train.Checkpoint(optimizer=second, weights=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(second._velocities[0].numpy(), first._velocities[0].numpy())
    np.testing.assert_array_equal(second._momentums[0].numpy(), first._momentums[0].numpy())
    assert int(second.iterations.numpy()) == 2
    _run(second, 3, variable=restored)
    np.testing.assert_allclose(restored.numpy(), _numpy_rmsprop(5, 1.0), rtol=1e-5, atol=1e-6)


def test_rmsprop_tf_serialises_and_is_the_recipe_optimizer() -> None:
    optimizer = RMSpropTF(learning_rate=0.01, rho=RHO, momentum=MOMENTUM, epsilon=EPSILON)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(again) is RMSpropTF and (again.rho, again.momentum, again.epsilon) == (RHO, MOMENTUM, EPSILON)
    config = hparams.build_config([], {"data.dataset": "imagenet"})
    assert config.train.optimizer == "rmsprop"
    built = training.build_optimizer(config.train, 0.1)
    assert type(built) is RMSpropTF and (built.rho, built.momentum, built.epsilon) == (RHO, MOMENTUM, EPSILON)
    scaled = training.build_optimizer(config.train, 0.1, loss_scaling=True)
    assert type(scaled.inner_optimizer) is RMSpropTF
    config.train.optimizer = "rmsprop_keras"  # a layered config: its keys are set while it is built
    assert type(training.build_optimizer(config.train, 0.1)) is keras.optimizers.RMSprop
    config.train.optimizer = "rmsprop_tf1"
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop_tf1'; use one of rmsprop, rmsprop_keras"):
        training.build_optimizer(config.train, 0.1)


def test_rmsprop_tf_inside_a_strategy_scope_and_tf_function() -> None:
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        variable = keras.Variable(START)
        optimizer = RMSpropTF(learning_rate=_StepRate(), rho=RHO, momentum=MOMENTUM, epsilon=EPSILON)
        optimizer.build([variable])

    @tf.function
    def step(grad):
        strategy.run(lambda g: optimizer.apply([g], [variable]), args=(grad,))

    for grad in GRADIENTS[:3]:
        step(tf.constant(grad))
    np.testing.assert_allclose(variable.numpy(), _numpy_rmsprop(3, 1.0), rtol=1e-5, atol=1e-6)
