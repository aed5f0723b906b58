"""Checkpoints: the last K by step and the best by eval top-1, safe under multi-worker training, and the
objects of a training run they hold."""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
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


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, permissions); the last good one is kept."""


class RunCheckpoints:
    """The training state a run saves and restores: model, optimizer, step, best top-1, moving averages,
    random streams and, where TensorFlow can save it, the input pipeline's position.

    `save` writes a rolling checkpoint (dropping the input position for good when TensorFlow cannot save
    it); a write that fails (full disk, read-only directory) is a CheckpointWriteError naming the last
    good checkpoint, which stays as it was. `set_iterator` follows a new input pipeline (a new stage).
    """

    def __init__(self, objects: dict[str, Any], model_dir: str, *, keep: int, step: tf.Variable,
                 best_top1: tf.Variable, is_chief: bool, worker_index: int, iterator: Any, save_iterator: bool):
        self._objects = {name: value for name, value in objects.items() if value is not None}
        self._keeper_args = {"keep": keep, "step": step, "best_top1": best_top1, "is_chief": is_chief,
                             "worker_index": worker_index}
        self.model_dir = model_dir
        self.run = RunDir(model_dir)
        self.step = step
        self.iterator_saved = save_iterator
        self.set_iterator(iterator)

    def set_iterator(self, iterator: Any) -> None:
        """Save this input pipeline's position from now on (when positions are saved at all)."""
        self._iterator = iterator
        objects = {**self._objects, **({"iterator": iterator} if self.iterator_saved else {})}
        self.keeper = CheckpointKeeper(tf.train.Checkpoint(**objects), self.model_dir, **self._keeper_args)

    @property
    def latest(self) -> str | None:
        """The newest rolling checkpoint of the run."""
        return self.keeper.latest

    def save(self, last_good: str | None) -> str | None:
        """Save a rolling checkpoint at the current step; its prefix."""
        try:
            try:
                return self.keeper.save()
            except (tf.errors.OpError, ValueError, TypeError) as error:
                if not self.iterator_saved or is_write_error(error):
                    raise
                logging.warning("Cannot save the input pipeline position (%s); checkpoints will hold the "
                                "model only and a resumed run restarts the input order", first_line(error))
                self.iterator_saved = False
                self.set_iterator(self._iterator)
                return self.keeper.save()
        except (tf.errors.OpError, OSError) as error:
            raise self.write_error(error, last_good) from None

    def save_best(self, metrics: dict[str, float], last_good: str | None) -> bool:
        """Save the best checkpoint when eval top-1 beats the record; True when it did."""
        try:
            return self.keeper.maybe_save_best(metrics)
        except (tf.errors.OpError, OSError) as error:
            raise self.write_error(error, last_good) from None

    def write_error(self, error: BaseException, last_good: str | None, what: str | None = None
                    ) -> CheckpointWriteError:
        """The one-line error of a failed write, naming the last good checkpoint."""
        reason = getattr(error, "strerror", None) or first_line(error)
        what = what or f"a checkpoint at step {int(self.step.numpy())} into {self.run.checkpoints_dir}"
        return CheckpointWriteError(
            f"cannot write {what}: {reason}; "
            f"the last good checkpoint is {last_good or 'none'} (free disk space or fix permissions, then run the "
            "same command again to resume from it)")

    def restore(self, path: str) -> None:
        """Restore every saved object from `path` (a checkpoint without an input position restarts the input)."""
        status = self.keeper.checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            if self.iterator_saved and "iterator" in str(error).lower():
                logging.warning("Checkpoint %s has no input position; the input order restarts", path)
            else:
                logging.warning("Partial restore from %s: %s", path, first_line(error))
        status.expect_partial()


def step_of_checkpoint(path: str) -> int:
    """The global step saved in a training checkpoint."""
    return int(tf.train.load_checkpoint(path).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
