"""The `Source` interface every dataset implements, and small path helpers shared by the sources.

A `Source` knows a dataset's classes and split sizes and yields, per split, a `tf.data.Dataset` of
dict records `{"payload": tf.string, "label": tf.int32, "id": tf.string}`; `Source.read` and
`Source.parse` turn a payload into encoded image bytes and a 0-based label (reading a file,
parsing a TFRecord example). The pipelines in `efficientnet_tf.data.pipeline` do the rest.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

# Shuffle buffer for record-based sources (a full ImageNet record is ~110 kB).
RECORD_SHUFFLE_BUFFER = 2048

class Source:
    """A dataset: class names, split sizes, and readers of (encoded image, label) records."""

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        num_train: int,
        num_eval: int,
        *,
        location: str,
        shuffle_buffer_size: int = RECORD_SHUFFLE_BUFFER,
    ):
        self.name = name
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.num_train = int(num_train)
        self.num_eval = int(num_eval)
        self.location = location
        self.shuffle_buffer_size = int(shuffle_buffer_size)
        self.bad_files: list[str] = []
        self.bad_reasons: dict[str, str] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"Source({self.name!r}, classes={self.num_classes}, train={self.num_train}, "
            f"eval={self.num_eval}, bad={len(self.bad_files)}, at={self.location!r})"
        )

    def report_bad(self, item: str, reason: str) -> None:
        """Record a skipped file or record (once per item) and log it."""
        with self._lock:
            if item in self.bad_reasons:
                return
            self.bad_reasons[item] = reason
            self.bad_files.append(item)
            count = len(self.bad_files)
        logging.warning("Skipping %s: %s (%d bad item(s) in %s so far)", item, reason, count, self.name)

    def records(
        self,
        split: str,
        input_context: tf.distribute.InputContext | None = None,
        *,
        shuffle_files: bool = False,
        seed: int | None = None,
    ) -> tf.data.Dataset:
        """One pass over `split` ("train" or "eval") as dict records, sharded per input pipeline."""
        raise NotImplementedError

    def read(self, payload: tf.Tensor) -> tf.Tensor:
        """Turn a record payload into the bytes `parse` takes (e.g. read a file); identity here."""
        return payload

    def parse(self, payload: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Return (encoded image bytes, 0-based int32 label) for a read payload; identity here."""
        return payload, label


def is_remote(path: str) -> bool:
    return "://" in path


def absolute_path(path: str) -> str:
    """Expand ~ and make a local path absolute; leave URLs (gs://...) alone."""
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def glob_files(pattern: str) -> list[str]:
    return sorted(tf.io.gfile.glob(pattern))


def size_of(path: str) -> int:
    return int(tf.io.gfile.stat(path).length)


def num_pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id
