"""The train step against hand computations: the loss with its L2 term, the first update, decay alone,
and two mirrored replicas against one replica on the same global batch.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import hparams, training

REPO = pathlib.Path(__file__).resolve().parent.parent
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
    assert result.step == 1
    assert result.train_metrics["loss"] == pytest.approx(float(total), rel=1e-5)

    # TF1 RMSProp from ms = 1, mom = 0: ms = rho + (1 - rho)·g², w -= lr·g / sqrt(ms + eps).
    rho, eps = float(config.train.rmsprop_rho), float(config.train.epsilon)
    for variable, old, grad in zip(variables, before, grads):
        expected = -learning_rate * grad / np.sqrt(rho + (1 - rho) * grad ** 2 + eps)
        update = np.array(variable.value) - old
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(update, expected, rtol=1e-3, atol=max(1e-3 * scale, 2e-6), err_msg=variable.path)


def test_weight_decay_alone_shrinks_kernels_and_leaves_batch_norm_alone(tmp_path) -> None:
    """Uniform labels and a zero head make every cross-entropy gradient zero: what moves is decay only."""
    config = _config()
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
    assert np.all(np.abs(after) < np.abs(before_kernel)) and np.all(np.sign(after) == np.sign(before_kernel))
    for variable, old in zip(_bn_parameters(model), before_bn):
        np.testing.assert_array_equal(np.array(variable.value), old, err_msg=variable.path)


@pytest.mark.slow  # a subprocess with two logical CPUs training two models (~1 min on 2 cores)
def test_two_mirrored_replicas_take_the_single_replica_step(tmp_path: pathlib.Path) -> None:
    """One step of two mirrored CPU replicas (batch norm frozen, so examples are independent) equals one
    replica's step on the same global batch: the loss is scaled by the global batch and L2 counted once."""
    out = tmp_path / "replicas.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, __file__, str(out), str(tmp_path)], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["replicas"] == [1, 2]
    assert report["moved"] > 1e-3, report  # the step did something the comparison can see
    assert report["max_difference"] <= 1e-6, report


def _replica_worker(out: str, model_dir: str) -> None:
    """Runs in a subprocess: two logical CPU devices must be set up before TensorFlow starts."""
    mirrored_info = training.create_strategy("mirrored", cpu_devices=2)
    single_info = training.create_strategy("default")
    images, labels = _fixed_batch(7)
    config = _config("train.base_learning_rate=8.0")
    trainers, initial = [], None
    for name, info in (("single", single_info), ("mirrored", mirrored_info)):
        keras.utils.set_random_seed(1)
        trainer = training.Trainer(config, info, os.path.join(model_dir, name),
                                   train_dataset_fn=_dataset_fn(images, labels))
        for layer in trainer.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # inference-mode batch norm: no per-replica batch statistics
        if initial is None:
            initial = trainer.model.get_weights()
        else:
            trainer.model.set_weights(initial)
        trainer.train()
        trainers.append(trainer)
    single, mirrored = ([np.array(v.value.read_value() if hasattr(v.value, "read_value") else v.value)
                         for v in t.model.trainable_variables] for t in trainers)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored))
    start = [w for w, v in zip(initial, trainers[0].model.weights) if v.trainable]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(single, start))
    with open(out, "w") as handle:
        json.dump({"replicas": [t.info.num_replicas for t in trainers], "max_difference": worst, "moved": moved}, handle)


if __name__ == "__main__":
    _replica_worker(sys.argv[1], sys.argv[2])
