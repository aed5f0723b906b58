"""Checkpoints: the last K by step and the best by eval top-1, safe under multi-worker training."""

from __future__ import annotations

import os

import tensorflow as tf

from efficientnet_tf.rundir import RunDir

WRITE_FAILURES = ("No space left", "File too large", "Read-only file system", "Permission denied", "Disk quota")


def is_write_error(error: BaseException) -> bool:
    """Whether a failed save is the storage's fault (full, read-only), not the input pipeline's state."""
    if isinstance(error, (tf.errors.PermissionDeniedError, tf.errors.ResourceExhaustedError, OSError)):
        return True
    return any(text in str(error) for text in WRITE_FAILURES)


class CheckpointKeeper:
    """Rolling checkpoints (last `keep`) plus the best by eval top-1.

    Under multi-worker training every worker must take part in a save; only the chief writes into
    the model directory, the others into a scratch directory that is removed after each save.
    The best top-1 so far is a variable inside the checkpoint, so every worker takes the same
    decision and a resumed run remembers it.
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        model_dir: str,
        *,
        keep: int,
        step: tf.Variable,
        best_top1: tf.Variable,
        is_chief: bool = True,
        worker_index: int = 0,
    ):
        self.checkpoint = checkpoint
        self.run = RunDir(model_dir)
        self.is_chief = is_chief
        self._step = step
        self._best_top1 = best_top1
        self._scratch = os.path.join(self.run.checkpoints_dir, f".worker-{worker_index}-scratch")
        if is_chief:
            self.manager = tf.train.CheckpointManager(
                checkpoint, self.run.checkpoints_dir, max_to_keep=keep, step_counter=step, checkpoint_name="ckpt"
            )
            self.best_manager = tf.train.CheckpointManager(
                checkpoint, self.run.best_dir, max_to_keep=1, step_counter=step, checkpoint_name="ckpt"
            )

    @property
    def latest(self) -> str | None:
        """The newest rolling checkpoint of the run (read from the chief's directory)."""
        return self.run.latest_checkpoint()

    def _scratch_save(self) -> None:
        self.checkpoint.write(os.path.join(self._scratch, "ckpt"))
        tf.io.gfile.rmtree(self._scratch)

    def save(self) -> str | None:
        """Write a rolling checkpoint at the current step; returns its prefix (on other workers: the prefix
        the chief writes it under)."""
        if not self.is_chief:
            self._scratch_save()
            return os.path.join(self.run.checkpoints_dir, f"ckpt-{int(self._step.numpy())}")
        return self.manager.save(checkpoint_number=self._step)

    @property
    def best_top1(self) -> float:
        """The best eval top-1 recorded so far (-1 when none)."""
        return float(self._best_top1.numpy())

    def maybe_save_best(self, metrics: dict[str, float]) -> bool:
        """Save a best checkpoint when eval top-1 beats the record; True when it did."""
        top1 = float(metrics.get("top1", -1.0))
        if top1 <= self.best_top1:
            return False
        self._best_top1.assign(top1)
        if not self.is_chief:
            self._scratch_save()
            return True
        path = self.best_manager.save(checkpoint_number=self._step)
        self.run.write_best_record(int(self._step.numpy()), path, metrics)
        return True
