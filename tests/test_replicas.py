"""Two mirrored replicas (two logical CPUs) against one replica and against a hand computation, on a small
convolutional model with the project's fused batch norm, so that it fits the fast tier:

- batch norm frozen: one step of two replicas equals one step of one replica on the same global batch
  (the loss is divided by the global batch, the L2 term counted once);
- batch norm training: each replica normalises its own half, the moving statistics afterwards are, on
  both replicas, the momentum average towards the mean of the two halves' batch statistics (computed
  here with numpy), and the weights took the TF1-RMSProp step of the summed per-replica loss.

- quantisation-aware training: the learned activation ranges, set by each replica's first batch, are on
  both replicas the mean of the two halves' ranges, as the batch-norm statistics are.

The replicas run in a fresh process (this file is also the worker script): logical devices must be set
up before TensorFlow starts.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
SIZE = 16
CLASSES = 3
BATCH = 8
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-3  # large enough that counting the L2 term twice moves the update well past rounding


def _run_worker(tmp_path: pathlib.Path, *mode: str) -> dict:
    out = tmp_path / "replicas.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, __file__, str(out), str(tmp_path), *mode], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_two_replicas_take_the_one_replica_step_and_average_batch_norm_statistics(tmp_path: pathlib.Path) -> None:
    report = _run_worker(tmp_path)
    assert report["replicas"] == [1, 2, 2]

    frozen = report["frozen"]
    assert frozen["moved"] > 1e-2, frozen  # the step changed the weights far beyond the tolerance below
    assert frozen["max_difference"] <= 1e-6 * frozen["moved"] + 1e-7, frozen

    training = report["training"]
    assert training["bn_variables"] == 8  # two layers: moving mean and variance on each of two replicas
    assert training["statistics_moved"] > 1e-2, training  # the batch statistics are far from the initial 0 / 1
    assert training["halves_differ"] > 1e-2, training  # replica 0's statistics alone would not pass
    assert training["max_statistics_error"] <= 1e-5, training
    assert training["update_scale"] > 1e-2, training
    assert training["max_update_error"] <= 1e-3 * training["update_scale"], training


def test_two_replicas_average_the_learned_activation_ranges(tmp_path: pathlib.Path) -> None:
    report = _run_worker(tmp_path, "qat")
    assert report["replicas"] == 2 and report["ranges"] >= 6, report
    assert report["halves_differ"] > 1e-2, report  # replica 0's ranges alone would not pass
    assert report["max_range_error"] <= 1e-5 * report["range_scale"], report


# ---------------------------------------------------------------------------------------------
# Worker side (runs in a subprocess).


def _worker(out: str, model_dir: str, mode: str = "") -> None:
    import keras
    import tensorflow as tf

    from efficientnet_tf import hparams, training
    from efficientnet_tf.models import quantize
    from efficientnet_tf.models.layers import FusedBatchNormalization

    mirrored = training.create_strategy("mirrored", cpu_devices=2)
    single = training.create_strategy("default")
    rng = np.random.default_rng(11)
    images = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, BATCH)]
    config = hparams.resolve(hparams.build_config([
        f"train.batch_size={BATCH},train.train_steps=1,train.steps_per_epoch=1,train.image_summary=false",
        f"train.weight_decay={WEIGHT_DECAY},train.warmup_epochs=0,train.lr_schedule=constant",
        "train.base_learning_rate=8.0,train.ema_decay=0,train.optimizer=rmsprop,train.label_smoothing=0.1",
    ]), num_classes=CLASSES, num_train=BATCH)

    def small_model() -> keras.Model:
        keras.utils.set_random_seed(1)  # the same initial weights in every trainer
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Rescaling(1 / 64.0)(inputs)
        x = keras.layers.Conv2D(6, 3, strides=2, use_bias=False, name="stem_conv")(x)
        x = FusedBatchNormalization(momentum=MOMENTUM, name="stem_bn")(x)
        x = keras.layers.Activation("swish")(x)
        x = keras.layers.Conv2D(8, 3, use_bias=False, name="top_conv")(x)
        x = FusedBatchNormalization(momentum=MOMENTUM, name="top_bn")(x)
        x = keras.layers.Activation("swish")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(CLASSES, name="predictions")(x))

    def dataset_fn(context: tf.distribute.InputContext, stage=None) -> tf.data.Dataset:
        """The same global batch every step, handed out in order: replica 0 the first half, replica 1 the second."""
        batch = context.get_per_replica_batch_size(BATCH) if context else BATCH
        return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).repeat()

    def trainer(name: str, info, freeze: bool):
        made = training.Trainer(config, info, os.path.join(model_dir, name), train_dataset_fn=dataset_fn,
                                build_model_fn=small_model)
        for layer in made.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = not freeze  # frozen: inference-mode batch norm, examples independent
        return made

    def replica_values(made, variable) -> list[np.ndarray]:
        return [np.array(v) for v in made.strategy.experimental_local_results(variable.value)]

    if mode == "qat":
        # Each replica's first batch sets its ranges (its half's min / max, widened to hold 0); the step then
        # averages them across replicas. The hand computation runs one fresh QAT model per half.
        expected = []
        for half in (images[:BATCH // 2], images[BATCH // 2:]):
            reference = quantize.quantize_model(small_model())
            reference(half, training=True)
            expected.append([float(np.asarray(v)) for v in quantize.range_variables(reference)])
        made = training.Trainer(config, mirrored, os.path.join(model_dir, "qat"), train_dataset_fn=dataset_fn,
                                build_model_fn=lambda: quantize.quantize_model(small_model()))
        made.train()
        mean = (np.array(expected[0]) + np.array(expected[1])) / 2
        errors = [float(np.abs(value - want).max()) for variable, want in zip(quantize.range_variables(made.model), mean)
                  for value in replica_values(made, variable)]
        with open(out, "w") as handle:
            json.dump({"replicas": made.info.num_replicas, "ranges": len(mean), "max_range_error": max(errors),
                       "range_scale": float(np.abs(mean).max()),
                       "halves_differ": float(np.abs(np.subtract(*expected)).max())}, handle)
        return

    # Batch norm frozen: two replicas against one replica on the same global batch.
    one, two = trainer("single", single, True), trainer("mirrored-frozen", mirrored, True)
    initial = [np.array(v) for v in one.model.get_weights()]
    one.train()
    two.train()
    moved, worst = 0.0, 0.0
    for start, a, b in zip(initial, one.model.weights, two.model.weights):
        moved = max(moved, float(np.abs(np.array(a.value) - start).max()))
        for value in replica_values(two, b):
            worst = max(worst, float(np.abs(value - np.array(a.value)).max()))
    frozen = {"moved": moved, "max_difference": worst}

    # Batch norm training: the hand computation, replica by replica, on a model of its own.
    reference = small_model()
    bn_layers = [layer for layer in reference.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bn_inputs = keras.Model(reference.inputs, [layer.input for layer in bn_layers])
    halves = [(images[:BATCH // 2], labels[:BATCH // 2]), (images[BATCH // 2:], labels[BATCH // 2:])]
    statistics = []  # per half: [(mean, biased variance) per batch-norm layer], with numpy
    for half_images, _ in halves:
        inputs = bn_inputs(half_images, training=True)
        statistics.append([(np.array(x).mean(axis=(0, 1, 2)), np.array(x).var(axis=(0, 1, 2))) for x in inputs])
    bn_ids = {id(v) for layer in bn_layers for v in layer.trainable_variables}
    variables = reference.trainable_variables
    before = [np.array(v.value) for v in variables]
    with tf.GradientTape() as tape:
        cross_entropy = 0.0
        for half_images, half_labels in halves:
            logits = reference(half_images, training=True)
            smoothed = half_labels * 0.9 + 0.1 / CLASSES
            cross_entropy += -tf.reduce_sum(smoothed * tf.nn.log_softmax(logits)) / BATCH
        l2 = tf.add_n([tf.reduce_sum(tf.square(v.value)) / 2 for v in variables if id(v) not in bn_ids])
        total = cross_entropy + WEIGHT_DECAY * l2
    grads = [np.array(g) for g in tape.gradient(total, variables)]
    rate, rho, eps = 8.0 * BATCH / 256, float(config.train.rmsprop_rho), float(config.train.epsilon)
    expected_weights = [w - rate * g / np.sqrt(rho + (1 - rho) * g ** 2 + eps) for w, g in zip(before, grads)]

    made = trainer("mirrored-training", mirrored, False)
    made.train()
    errors, halves_differ, moved_statistics, checked = [], 0.0, 0.0, 0
    made_bn_layers = [layer for layer in made.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for index, layer in enumerate(made_bn_layers):
        for which, (variable, initial_value) in enumerate(((layer.moving_mean, 0.0), (layer.moving_variance, 1.0))):
            per_half = [s[index][which] for s in statistics]
            expected = MOMENTUM * initial_value + (1 - MOMENTUM) * (per_half[0] + per_half[1]) / 2
            halves_differ = max(halves_differ, float(np.abs(per_half[0] - per_half[1]).max()) * (1 - MOMENTUM))
            moved_statistics = max(moved_statistics, float(np.abs(expected - initial_value).max()))
            for value in replica_values(made, variable):
                errors.append(float(np.abs(value - expected).max()))
                checked += 1
    update_errors = []
    by_path = {v.path: v for v in made.model.trainable_variables}
    for variable, expected, start in zip(variables, expected_weights, before):
        for value in replica_values(made, by_path[variable.path]):
            update_errors.append(float(np.abs((value - start) - (expected - start)).max()))
    update_scale = max(float(np.abs(e - s).max()) for e, s in zip(expected_weights, before))
    trained = {"bn_variables": checked, "max_statistics_error": max(errors), "halves_differ": halves_differ,
               "statistics_moved": moved_statistics, "max_update_error": max(update_errors),
               "update_scale": update_scale}
    with open(out, "w") as handle:
        json.dump({"replicas": [one.info.num_replicas, two.info.num_replicas, made.info.num_replicas],
                   "frozen": frozen, "training": trained}, handle)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
