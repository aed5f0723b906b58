"""Checkpoints: the last K by step and the best by eval top-1, safe under multi-worker training."""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
BEST_RECORD = "best.json"


def checkpoint_dir(model_dir: str) -> str:
    """Where the rolling checkpoints of a run live."""
    return os.path.join(model_dir, CHECKPOINT_SUBDIR)


def best_dir(model_dir: str) -> str:
    """Where the best-by-top-1 checkpoint of a run lives."""
    return os.path.join(model_dir, CHECKPOINT_SUBDIR, BEST_SUBDIR)


def step_of(path: str) -> int:
    """The step number in a checkpoint prefix such as .../ckpt-1200."""
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def resolve_checkpoint(model_dir: str, checkpoint: str | None = None) -> str:
    """A checkpoint prefix: the given one (a prefix, a directory, "best" or "latest") or the latest."""
    if checkpoint in (None, "", "latest"):
        path = tf.train.latest_checkpoint(checkpoint_dir(model_dir))
        if path is None:
            raise UserError(f"no checkpoint in {checkpoint_dir(model_dir)}; train into this --model_dir first")
        return path
    if checkpoint == "best":
        path = tf.train.latest_checkpoint(best_dir(model_dir))
        if path is None:
            raise UserError(f"no best checkpoint in {best_dir(model_dir)}; it is written by train_and_eval")
        return path
    if tf.io.gfile.isdir(checkpoint):
        path = tf.train.latest_checkpoint(checkpoint)
        if path is None:
            raise UserError(f"no checkpoint in directory {checkpoint}")
        return path
    if not tf.io.gfile.exists(checkpoint + ".index"):
        raise UserError(f"checkpoint {checkpoint} does not exist (no {os.path.basename(checkpoint)}.index)")
    return checkpoint


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
        self.model_dir = model_dir
        self.is_chief = is_chief
        self._step = step
        self._best_top1 = best_top1
        self._scratch = os.path.join(checkpoint_dir(model_dir), f".worker-{worker_index}-scratch")
        if is_chief:
            self.manager = tf.train.CheckpointManager(
                checkpoint, checkpoint_dir(model_dir), max_to_keep=keep, step_counter=step, checkpoint_name="ckpt"
            )
            self.best_manager = tf.train.CheckpointManager(
                checkpoint, best_dir(model_dir), max_to_keep=1, step_counter=step, checkpoint_name="ckpt"
            )

    @property
    def latest(self) -> str | None:
        """The newest rolling checkpoint of the run (read from the chief's directory)."""
        return tf.train.latest_checkpoint(checkpoint_dir(self.model_dir))

    def restore(self, path: str) -> None:
        """Restore every tracked object from a checkpoint prefix."""
        self.checkpoint.restore(path).assert_existing_objects_matched()
        logging.info("Restored %s (step %d)", path, int(self._step.numpy()))

    def _scratch_save(self) -> None:
        self.checkpoint.write(os.path.join(self._scratch, "ckpt"))
        tf.io.gfile.rmtree(self._scratch)

    def save(self) -> str | None:
        """Write a rolling checkpoint at the current step; returns its prefix on the chief."""
        if not self.is_chief:
            self._scratch_save()
            return None
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
        record = {"step": int(self._step.numpy()), "checkpoint": os.path.basename(path)}
        record.update({k: float(v) for k, v in metrics.items()})
        with tf.io.gfile.GFile(os.path.join(best_dir(self.model_dir), BEST_RECORD), "w") as handle:
            json.dump(record, handle, indent=2)
        return True
