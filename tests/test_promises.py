"""Promises of the documentation: a NaN loss ends the command with exit status 3 and the last good checkpoint
intact; a stopped run (SIGTERM through the command line, or a signal in-process) has TensorBoard's
scalars of every step on disk, the stopped step included.
"""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from efficientnet_tf.errors import EXIT_PREEMPTED
from efficientnet_tf.rundir import checkpoint_problem

from test_faults import REPO, TINY, Trainer, command, env, error_lines, preempted_step, step_of_checkpoint
from test_runtime_promises import scalar_steps

EXIT_DIVERGED = 3


def test_a_nan_loss_exits_with_status_3_and_keeps_the_last_good_checkpoint(tmp_path: pathlib.Path) -> None:
    """A learning rate of 1e30 blows the weights up within two steps: one line, status 3, the checkpoint of
    the last finite step kept and readable, nothing saved after it."""
    model_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--mode=train", "--dataset=synthetic", f"--model_dir={model_dir}",
         "--train_steps=6", "--batch_size=8", "--seed=1", f"--hparams={TINY}",
         "--hparams=train.optimizer=rmsprop,train.base_learning_rate=1e30,train.warmup_epochs=0",
         "--hparams=train.log_every_steps=1,train.checkpoint_every_steps=1,train.image_summary=false"],
        env=env(), cwd=str(REPO), capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_DIVERGED, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    match = re.fullmatch(r"error: training stopped: the training loss became (nan|inf|-inf) between steps (\d+) and "
                         r"(\d+); stopped without saving, the last good checkpoint is (\S+) \(lower "
                         r"train\.base_learning_rate or add train\.gradient_clip_norm\)", line)
    assert match, line
    before, after, last_good = int(match.group(2)), int(match.group(3)), match.group(4)
    assert after == before + 1 and before >= 1
    assert last_good == str(model_dir / "checkpoints" / f"ckpt-{before}")
    assert checkpoint_problem(last_good) is None and step_of_checkpoint(last_good) == before
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")) == last_good


@pytest.mark.slow  # the command line version of the in-process check in tests/test_runtime_promises.py
def test_sigterm_flushes_tensorboard_up_to_the_stopped_step(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "run"
    # A log line (and scalars) every step; bit-exact determinism is not needed here.
    trainer = Trainer([arg for arg in command(model_dir, 400) if arg != "--deterministic"])
    trainer.wait_for_step(4)
    trainer.proc.send_signal(signal.SIGTERM)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    step, _ = preempted_step(log)
    steps = scalar_steps(model_dir / "logs", "loss")
    # Every step's training scalars, the stopped step's included, are on disk when the process has exited.
    assert steps == list(range(1, step + 1)), (steps, step)
