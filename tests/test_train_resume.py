"""Interrupted training resumes exactly; a NaN loss stops training and keeps the last good checkpoint."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

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


@pytest.mark.slow  # three training processes; the fast tier resumes through test_main_cli
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: pathlib.Path) -> None:
    from efficientnet_tf import hparams
    from efficientnet_tf import training
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
