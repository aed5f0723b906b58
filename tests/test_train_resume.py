"""Interrupted training resumes exactly; a NaN loss stops training and keeps the last good checkpoint."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import app, hparams, training
from efficientnet_tf.models.layers import DropConnect, FusedBatchNormalization
from efficientnet_tf.training import inputs, preemption

REPO = pathlib.Path(__file__).resolve().parent.parent
TOTAL_STEPS = 40
CHECKPOINT_EVERY = 8
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"


def _command(model_dir: pathlib.Path) -> list[str]:
    """The same command for every run: tiny B0 on the embedded photos, deterministic and seeded."""
    return [
        sys.executable, str(REPO / "main.py"), "--mode=train", f"--model_dir={model_dir}",
        f"--train_steps={TOTAL_STEPS}", "--batch_size=16", "--seed=7", "--deterministic",
        f"--hparams={TINY}",
        f"--hparams=train.checkpoint_every_steps={CHECKPOINT_EVERY},train.log_every_steps={CHECKPOINT_EVERY}",
        "--hparams=train.keep_checkpoints=10,train.image_summary=false,data.augment=randaugment",
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    return env


def _run(model_dir: pathlib.Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(model_dir), env=_env(), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _weights(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "ema/", "optimizer/"))]
    return {n: reader.get_tensor(n) for n in names}


@pytest.mark.slow  # three training processes; the fast tier's resume is the in-process stop below
def test_sigkill_then_rerun_resumes_to_the_exact_step_and_matches_uninterrupted(tmp_path: pathlib.Path) -> None:
    interrupted = tmp_path / "interrupted"
    ckpt_dir = interrupted / "checkpoints"
    proc = subprocess.Popen(_command(interrupted), env=_env(), cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not (ckpt_dir / "checkpoint").exists():
            assert proc.poll() is None, f"training exited before its first checkpoint:\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = tf.train.latest_checkpoint(str(ckpt_dir))
    killed_step = int(killed_at.rsplit("-", 1)[1])
    assert CHECKPOINT_EVERY <= killed_step < TOTAL_STEPS, f"the kill came too late ({killed_at})"

    resumed = _run(interrupted)
    assert f"Resumed from {killed_at} at step {killed_step}" in resumed.stderr
    final = tf.train.latest_checkpoint(str(ckpt_dir))
    assert final.endswith(f"ckpt-{TOTAL_STEPS}")
    reader = tf.train.load_checkpoint(final)
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == TOTAL_STEPS
    # Every checkpoint in the directory is still readable, the one from before the kill included.
    for prefix in tf.train.get_checkpoint_state(str(ckpt_dir)).all_model_checkpoint_paths:
        assert tf.train.load_checkpoint(prefix).get_variable_to_shape_map()

    uninterrupted = tmp_path / "uninterrupted"
    _run(uninterrupted)
    expected = _weights(str(uninterrupted / "checkpoints" / f"ckpt-{TOTAL_STEPS}"))
    actual = _weights(final)
    assert expected.keys() == actual.keys() and len(expected) > 100
    # With --deterministic and --seed (and the input position and dropout streams in the
    # checkpoint), the resumed run reproduces the uninterrupted one bit for bit.
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def _small_model() -> keras.Model:
    """Dropout, drop-connect and the fused batch norm (random streams and statistics a resume must carry
    over), traced in a second or two: the fast tier's stand-in for a tiny EfficientNet."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 64.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = FusedBatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = keras.layers.Activation("swish")(x)
    branch = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv")(x)
    branch = FusedBatchNormalization(momentum=0.9, name="block_bn")(branch)
    branch = DropConnect(0.3, name="block_drop")(branch)
    x = keras.layers.Add(name="block_add")([x, branch])
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.3, name="top_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x))


def _all_variables(prefix: str) -> dict[str, np.ndarray]:
    """Every value a checkpoint holds but the input pipeline's serialised state and the count of saves."""
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if not n.startswith(("iterator", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def train_stopped_at(trainer: training.Trainer, target: int) -> training.Preempted:
    """Train until a stop request (what SIGTERM sets) made once the trainer reached step `target`; the
    Preempted it raised (the step and checkpoint it stopped at)."""
    stop = preemption.current()

    def request_stop_at_target() -> None:
        while int(trainer.step.numpy()) < target:
            time.sleep(0.002)
        stop.request("a stop request")

    watcher = threading.Thread(target=request_stop_at_target, daemon=True)
    watcher.start()
    try:
        with pytest.raises(training.Preempted) as stopped:
            trainer.train()
    finally:
        watcher.join(timeout=60)
        preemption.reset()  # a new training in this process, as a rerun of the command would be
    return stopped.value


def test_a_stop_at_a_random_step_resumes_to_the_uninterrupted_weights_bit_for_bit(tmp_path: pathlib.Path) -> None:
    """The fast tier's resume check: the embedded photos through the seeded RandAugment pipeline, dropout,
    drop-connect, batch norm, EMA and TF1-RMSProp; a stop request (what SIGTERM sets) at a random step saves a
    checkpoint of that step, a new trainer resumes from it, and every variable ends equal to an uninterrupted
    run's: weights, optimizer slots, moving averages, step and random streams."""
    total = 12
    config = hparams.resolve(app.layered_config([
        "model.image_size=32,data.augment=randaugment,data.randaug_magnitude=9",
        f"train.batch_size=8,train.train_steps={total},train.steps_per_epoch={total},train.ema_decay=0.9",
        "train.checkpoint_every_steps=1000,train.log_every_steps=1000,train.image_summary=false",
        "train.seed=5,train.deterministic=true,train.optimizer=rmsprop,train.warmup_epochs=0.5",
    ]), num_classes=10, num_train=800)
    train_fn = inputs.train_dataset_fn(config, app.load_source(config))

    def trainer(model_dir: pathlib.Path) -> training.Trainer:
        keras.utils.set_random_seed(5)
        return training.Trainer(config, training.create_strategy("default"), str(model_dir),
                                train_dataset_fn=train_fn, build_model_fn=_small_model)

    reference = trainer(tmp_path / "uninterrupted").train()
    assert reference.step == total

    target = random.Random().randint(2, total - 4)
    stopped = train_stopped_at(trainer(tmp_path / "interrupted"), target)
    stopped_at = stopped.step
    assert target <= stopped_at < total, (target, stopped_at)
    assert stopped.checkpoint.endswith(f"ckpt-{stopped_at}")

    resumed = trainer(tmp_path / "interrupted")
    result = resumed.train()
    assert result.step == total and result.resumed_from == stopped.checkpoint
    expected, actual = _all_variables(reference.checkpoint), _all_variables(result.checkpoint)
    assert expected.keys() == actual.keys()
    assert {"random_states", "ema", "optimizer", "model"} <= {name.split("/")[0] for name in actual}, sorted(actual)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name} (stopped at step {stopped_at})")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: pathlib.Path) -> None:
    from efficientnet_tf.data import synthetic_dataset_fn
    from efficientnet_tf import run_model

    bad_from_step = 5
    config = hparams.resolve(
        hparams.build_config([TINY, "train.batch_size=4,train.train_steps=10,train.steps_per_epoch=10",
                              "train.checkpoint_every_steps=2,train.log_every_steps=2,train.image_summary=false"]),
        num_classes=3, num_train=40,
    )
    good = synthetic_dataset_fn(32, 3, 4, seed=1)

    def poisoned(context: tf.distribute.InputContext, stage=None) -> tf.data.Dataset:
        nan_images = good(context).map(lambda x, y: (x * float("nan"), y))
        return good(context).take(bad_from_step - 1).concatenate(nan_images)

    info = training.create_strategy("default")
    trainer = training.Trainer(config, info, str(tmp_path), train_dataset_fn=poisoned)
    with pytest.raises(training.NonFiniteLossError) as caught:
        trainer.train()
    message = str(caught.value)
    assert "nan" in message.lower() and "ckpt-4" in message
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    restored = run_model.build_model_from_config(config)
    step = run_model.restore_weights(restored, str(tmp_path / "checkpoints" / "ckpt-4"))
    assert step == 4
    assert all(np.isfinite(np.asarray(v.value)).all() for v in restored.variables)
