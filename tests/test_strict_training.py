"""The train step against hand computations: the loss with its L2 term, the first update, and decay alone.
(Two mirrored replicas against one replica on the same global batch: tests/test_replicas.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import hparams, training

SIZE = 32
CLASSES = 3
BATCH = 8
WEIGHT_DECAY = 1e-3  # large enough that the L2 term moves the loss and the update well past rounding


def _config(*extra: str, batch: int = BATCH):
    return hparams.resolve(
        hparams.build_config([
            f"model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size={SIZE}",
            "model.dropout_rate=0,model.drop_connect_rate=0",
            f"train.batch_size={batch},train.train_steps=1,train.steps_per_epoch=1,train.image_summary=false",
            f"train.weight_decay={WEIGHT_DECAY},train.warmup_epochs=0,train.lr_schedule=constant",
            "train.ema_decay=0,train.optimizer=rmsprop,train.label_smoothing=0.1,train.gradient_clip_norm=0",
            *extra,
        ]),
        num_classes=CLASSES, num_train=batch,
    )


def _fixed_batch(seed: int, uniform_labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    if uniform_labels:
        labels = np.full((BATCH, CLASSES), 1.0 / CLASSES, np.float32)
    else:
        labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
    return images, labels


def _dataset_fn(images: np.ndarray, labels: np.ndarray):
    """The same global batch every step, split into per-replica batches in order."""

    def dataset_fn(context: tf.distribute.InputContext, stage=None) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(len(images)) if context else len(images)
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).repeat()

    return dataset_fn


def _bn_parameters(model: keras.Model) -> list[keras.Variable]:
    return [v for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.gamma, layer.beta)]


def test_first_step_loss_and_update_include_the_l2_term(tmp_path) -> None:
    """Reported loss = mean smoothed cross-entropy + wd·Σ‖w‖²/2 over non-batch-norm weights, and the
    first TF1-RMSProp update follows the gradient of exactly that total."""
    config = _config("train.base_learning_rate=8.0")  # 0.25 at batch 8: updates far above float rounding
    images, labels = _fixed_batch(5)
    trainer = training.Trainer(config, training.create_strategy("default"), str(tmp_path),
                               train_dataset_fn=_dataset_fn(images, labels))
    model = trainer.model
    variables = model.trainable_variables
    before = [np.array(v.value) for v in variables]
    bn_ids = {id(v) for v in _bn_parameters(model)}
    decayed = [v for v in variables if id(v) not in bn_ids]
    assert len(decayed) < len(variables)
    statistics = [np.array(v.value) for v in model.non_trainable_variables]

    with tf.GradientTape() as tape:
        logits = model(tf.constant(images), training=True)
        smoothed = labels * 0.9 + 0.1 / CLASSES
        cross_entropy = -tf.reduce_mean(tf.reduce_sum(smoothed * tf.nn.log_softmax(logits), -1))
        l2 = tf.add_n([tf.reduce_sum(tf.square(v.value)) / 2 for v in decayed])
        total = cross_entropy + WEIGHT_DECAY * l2
    grads = [np.array(g) for g in tape.gradient(total, variables)]
    for variable, value in zip(model.non_trainable_variables, statistics):
        variable.assign(value)  # undo the moving-statistics update of the hand computation's forward pass
    assert float(WEIGHT_DECAY * l2) > 0.01 * float(cross_entropy)  # the term matters at this decay

    learning_rate = float(trainer.schedule(0))
    result = trainer.train()
    assert result.step == 1 and result.checkpoint.endswith("ckpt-1") and int(trainer.step.numpy()) == 1
    assert result.train_metrics["loss"] == pytest.approx(float(total), rel=1e-5)
    top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == np.argmax(labels, -1)))
    assert 0 < top1 < 1 and result.train_metrics["top1"] == pytest.approx(top1)

    # TF1 RMSProp from ms = 1, mom = 0: ms = rho + (1 - rho)·g², w -= lr·g / sqrt(ms + eps).
    rho, eps = float(config.train.rmsprop_rho), float(config.train.epsilon)
    for variable, old, grad in zip(variables, before, grads):
        expected = -learning_rate * grad / np.sqrt(rho + (1 - rho) * grad ** 2 + eps)
        update = np.array(variable.value) - old
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(update, expected, rtol=1e-3, atol=max(1e-3 * scale, 2e-6), err_msg=variable.path)


def test_weight_decay_alone_shrinks_kernels_and_leaves_batch_norm_alone(tmp_path) -> None:
    """Uniform labels and a zero head make every cross-entropy gradient zero: what moves is decay only, by
    wd·w (the gradient of wd·Σw²/2), at a learning rate large enough for float32 to resolve the update."""
    config = _config("train.base_learning_rate=8.0")
    images, labels = _fixed_batch(6, uniform_labels=True)
    trainer = training.Trainer(config, training.create_strategy("default"), str(tmp_path),
                               train_dataset_fn=_dataset_fn(images, labels))
    model = trainer.model
    head = model.get_layer("predictions")
    head.kernel.assign(tf.zeros_like(head.kernel))
    head.bias.assign(tf.zeros_like(head.bias))
    kernel = model.get_layer("stem_conv").kernel
    before_kernel = np.array(kernel.value)
    before_bn = [np.array(v.value) for v in _bn_parameters(model)]
    learning_rate = float(trainer.schedule(0))
    trainer.train()

    rho, eps = float(config.train.rmsprop_rho), float(config.train.epsilon)
    grad = WEIGHT_DECAY * before_kernel
    expected = before_kernel - learning_rate * grad / np.sqrt(rho + (1 - rho) * grad ** 2 + eps)
    after = np.array(kernel.value)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(after - before_kernel, expected - before_kernel, rtol=1e-2,
                               atol=1e-3 * float(np.abs(expected - before_kernel).max()))
    assert np.all(np.abs(after) < np.abs(before_kernel)) and np.all(np.sign(after) == np.sign(before_kernel))
    for variable, old in zip(_bn_parameters(model), before_bn):
        np.testing.assert_array_equal(np.array(variable.value), old, err_msg=variable.path)
