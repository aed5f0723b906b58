"""TensorBoard output (scalars, an image grid, the config as hparams, profiler) and progress."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.rundir import RunDir


def image_grid(images: np.ndarray | tf.Tensor, max_images: int = 16) -> np.ndarray:
    """Tile up to `max_images` 0..255 images [N, H, W, 3] into one uint8 image [1, rows*H, cols*W, 3]."""
    images = np.asarray(images)[:max_images]
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    count, height, width, channels = images.shape
    cols = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / cols))
    grid = np.zeros((rows * height, cols * width, channels), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return grid[None]


def _hparam_value(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return "None" if value is None else str(value)


class Summaries:
    """Train and eval event writers in model_dir/logs/{train,eval}; no-ops on non-chief workers."""

    def __init__(self, model_dir: str, *, enabled: bool = True, eval_only: bool = False):
        self.enabled = enabled
        root = RunDir(model_dir).logs_dir
        self.root = root
        noop = tf.summary.create_noop_writer()
        self.train_writer = self.eval_writer = noop
        self._profiling = False
        if enabled:
            with self._writing():  # a logs folder that cannot be created costs the logs, not the run
                self.eval_writer = tf.summary.create_file_writer(os.path.join(root, "eval"))
                if not eval_only:
                    self.train_writer = tf.summary.create_file_writer(os.path.join(root, "train"))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Event files that cannot be written (full disk, read-only directory) cost the logs, not the run:
        one warning, then no more summaries. Checkpoint writes report the same fault as an error."""
        try:
            yield
        except (tf.errors.OpError, OSError) as error:
            if self.enabled:
                logging.warning("TensorBoard logs in %s cannot be written (%s); training goes on without them",
                                self.root, str(getattr(error, "message", error)).strip().splitlines()[0][:200])
            self.enabled = False

    def scalars(self, step: int, values: Mapping[str, float], *, eval: bool = False) -> None:
        """Write scalars at a step to the train or eval writer."""
        if not self.enabled:
            return
        with self._writing():
            writer = self.eval_writer if eval else self.train_writer
            with writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, float(value))
            writer.flush()

    def text(self, step: int, name: str, text: str) -> None:
        """Write a text summary (TensorBoard's Text tab)."""
        if not self.enabled:
            return
        with self._writing():
            with self.train_writer.as_default(step=step):
                tf.summary.text(name, text)
            self.train_writer.flush()

    def images(self, step: int, name: str, images: np.ndarray | tf.Tensor) -> None:
        """Write a grid of 0..255 images."""
        if not self.enabled:
            return
        with self._writing():
            with self.train_writer.as_default(step=step):
                tf.summary.image(name, image_grid(images), max_outputs=1)
            self.train_writer.flush()

    def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
        """Record the resolved config (flattened) in TensorBoard's HParams dashboard."""
        if not self.enabled:
            return
        with self._writing():
            from tensorboard.plugins.hparams import api as hp  # heavy: loads TensorBoard's plugin protos

            flat = {key: _hparam_value(value) for key, value in config.items()}
            with self.train_writer.as_default(step=0):
                hp.hparams(flat)
                tf.summary.text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()), step=0)
            self.train_writer.flush()

    def start_profiler(self) -> None:
        """Start a profiler trace into the logs directory."""
        if self.enabled and not self._profiling:
            tf.profiler.experimental.start(os.path.join(self.root, "train"))
            self._profiling = True

    def stop_profiler(self) -> None:
        """Stop a running profiler trace."""
        if self._profiling:
            tf.profiler.experimental.stop()
            self._profiling = False

    def close(self) -> None:
        """Flush and close the writers."""
        self.stop_profiler()
        with self._writing():
            self.train_writer.close()
        with self._writing():
            self.eval_writer.close()


def format_duration(seconds: float) -> str:
    """A short human duration: 45s, 3m05s, 2h10m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """A progress bar with ETA on a terminal; periodic log lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, *, log_every: int, stream: TextIO | None = None,
                 enabled: bool = True):
        self.total = max(1, int(total_steps))
        self.start_step = int(start_step)
        self.log_every = max(1, int(log_every))
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.is_tty = bool(enabled and hasattr(self.stream, "isatty") and self.stream.isatty())
        self._t0 = time.monotonic()
        self._timed_from: tuple[int, float] | None = None  # (step, time) after the first (tracing) call
        self._last_logged = start_step

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the rate measured since the first call (tracing excluded)."""
        if self._timed_from is None or step <= self._timed_from[0]:
            return None
        done_steps = step - self._timed_from[0]
        rate = (time.monotonic() - self._timed_from[1]) / done_steps
        return rate * (self.total - step)

    def update(self, step: int, epoch: float, metrics: Mapping[str, float]) -> None:
        """Report progress after a training call ending at `step`."""
        if not self.enabled:
            return
        if self._timed_from is None:
            self._timed_from = (step, time.monotonic())
        eta = self.eta_seconds(step)
        eta_text = format_duration(eta) if eta is not None else "?"
        parts = [f"loss {metrics['loss']:.4f}", f"top-1 {100 * metrics['top1']:.1f}%"]
        if "learning_rate" in metrics:
            parts.append(f"lr {metrics['learning_rate']:.3g}")
        if metrics.get("images_per_second"):
            parts.append(f"{metrics['images_per_second']:.1f} img/s")
        if metrics.get("input_wait_fraction") is not None:
            parts.append(f"input wait {100 * metrics['input_wait_fraction']:.0f}% of step time")
        if self.is_tty:
            width = 24
            filled = int(width * step / self.total)
            bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
            line = f"\r[{bar}] {step}/{self.total} epoch {epoch:.2f} ETA {eta_text} | " + " ".join(parts)
            self.stream.write(line[:200].ljust(120))
            self.stream.flush()
            if step >= self.total:
                self.stream.write("\n")
                self.stream.flush()
        elif step - self._last_logged >= self.log_every or step >= self.total:
            self._last_logged = step
            logging.info("step %d/%d (epoch %.2f, ETA %s): %s", step, self.total, epoch, eta_text, ", ".join(parts))

    def message(self, text: str) -> None:
        """Log a line without breaking the bar."""
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()
        logging.info("%s", text)

    def warning(self, text: str) -> None:
        """Log a warning without breaking the bar."""
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()
        logging.warning("%s", text)


def announce(message: str, progress: Progress | None) -> None:
    """A line in the progress output while training runs, else in the log."""
    if progress is not None:
        progress.message(message)
    else:
        logging.info("%s", message)
