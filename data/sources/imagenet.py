"""ImageNet TFRecords in the reference converter's format (`train-*`, `validation-*`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError

from efficientnet_tf.data.sources.base import Source, absolute_path, glob_files, num_pipelines, size_of

IMAGENET_NUM_CLASSES = 1000
IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_VALIDATION_EXAMPLES = 50_000
# Record files this large are not counted record by record; their count is estimated.
_EXACT_COUNT_MAX_BYTES = 1 << 30


class TFRecordSource(Source):
    """TFRecord shards of `tf.train.Example`s with image/encoded and 1-based image/class/label."""

    FEATURES = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        splits: dict[str, tuple[list[str], str | None]],
        counts: dict[str, int],
        *,
        location: str,
        label_offset: int = 1,
        holdout_fraction: float = 0.0,
    ):
        super().__init__(name, class_names, counts["train"], counts["eval"], location=location)
        # split -> (files, record filter: None, "keep_holdout" or "drop_holdout")
        self._splits = splits
        self._label_offset = label_offset
        self._holdout_fraction = holdout_fraction

    def files(self, split: str) -> list[str]:
        """The shard files a split reads."""
        return self._splits[split][0]

    def _is_holdout(self, basename: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
        key = tf.strings.join([basename, tf.strings.as_string(index)], separator="#")
        return tf.strings.to_hash_bucket_fast(key, 10_000) < int(round(self._holdout_fraction * 10_000))

    def records(self, split, input_context=None, *, shuffle_files=False, seed=None):
        files, record_filter = self._splits[split]
        count, index = num_pipelines(input_context)
        files_ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string, shape=[len(files)]))
        shard_by_file = count > 1 and len(files) >= count
        if shard_by_file:
            files_ds = files_ds.shard(count, index)
        if shuffle_files:
            files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

        def read_file(filename):
            basename = tf.strings.regex_replace(filename, r"^.*[/\\]", "")
            records = tf.data.TFRecordDataset(filename, buffer_size=8 << 20).ignore_errors(log_warning=True)
            records = records.enumerate()
            if record_filter is not None:
                want_holdout = record_filter == "keep_holdout"
                records = records.filter(lambda i, r: tf.equal(self._is_holdout(basename, i), want_holdout))
            return records.map(
                lambda i, r: {
                    "payload": r,
                    "label": tf.constant(-1, tf.int32),
                    "id": tf.strings.join([filename, tf.strings.as_string(i)], separator="#"),
                }
            )

        dataset = files_ds.interleave(
            read_file, cycle_length=max(1, min(16, len(files))), num_parallel_calls=tf.data.AUTOTUNE
        )
        if count > 1 and not shard_by_file:
            dataset = dataset.shard(count, index)
        return dataset

    def parse(self, payload, label):
        features = tf.io.parse_single_example(payload, self.FEATURES)
        label = tf.cast(features["image/class/label"], tf.int32) - self._label_offset
        return features["image/encoded"], label


def _count_records(
    files: list[str], record_filter: str | None = None, source: TFRecordSource | None = None
) -> int:
    """Number of records in `files` (only those a hold-out `record_filter` keeps, when given)."""
    if record_filter is None:
        return int(tf.data.TFRecordDataset(files).ignore_errors().reduce(np.int64(0), lambda c, _: c + 1))
    want_holdout = record_filter == "keep_holdout"
    total = 0
    for filename in files:
        basename = os.path.basename(filename)
        records = tf.data.TFRecordDataset(filename).ignore_errors().enumerate()
        records = records.filter(lambda i, r, b=basename: tf.equal(source._is_holdout(b, i), want_holdout))
        total += int(records.reduce(np.int64(0), lambda c, _: c + 1))
    return total


def _estimate_records(files: list[str], standard_count: int, standard_shards: int) -> int:
    """Exact count for small shard sets; the known count or a size-based estimate for large ones."""
    if not files:
        return 0
    total = sum(size_of(f) for f in files)
    if total <= _EXACT_COUNT_MAX_BYTES:
        return _count_records(files)
    if all(re.search(rf"-of-{standard_shards:05d}$", f) for f in files):
        return int(round(standard_count * len(files) / standard_shards))
    first = _count_records(files[:1])
    estimate = int(round(first * total / max(size_of(files[0]), 1)))
    logging.info("Estimated %d records in %d shards from the first shard", estimate, len(files))
    return estimate


def imagenet_source(
    data_dir: str | None, *, holdout_fraction: float, minival: bool = False
) -> TFRecordSource:
    """ImageNet TFRecords (`train-*`, `validation-*`) from the reference converter under `data_dir`."""
    if not data_dir:
        raise UserError(
            "dataset 'imagenet' needs data_dir (--data_dir) set to the folder of its TFRecord shards "
            "(train-*, validation-*)"
        )
    data_dir = absolute_path(data_dir)
    train_files = glob_files(os.path.join(data_dir, "train-*"))
    val_files = glob_files(os.path.join(data_dir, "validation-*"))
    if not train_files:
        raise UserError(
            f"no ImageNet TFRecord shards train-* in {data_dir}; convert ImageNet with the reference "
            "converter (imagenet_to_gcs.py) or point data_dir at its output"
        )
    name = "imagenet:minival" if minival else "imagenet"
    use_holdout = minival or not val_files
    if use_holdout and holdout_fraction <= 0:
        why = (
            "evaluates on a hold-out of the training shards"
            if minival
            else f"finds no validation-* shards in {data_dir}"
        )
        raise UserError(f"{name} {why}; set holdout_fraction > 0 to hold out part of the training shards")
    class_names = _imagenet_class_names(data_dir)
    if not use_holdout:
        splits = {"train": (train_files, None), "eval": (val_files, None)}
        counts = {
            "train": _estimate_records(train_files, IMAGENET_TRAIN_EXAMPLES, 1024),
            "eval": _estimate_records(val_files, IMAGENET_VALIDATION_EXAMPLES, 128),
        }
        return TFRecordSource(name, class_names, splits, counts, location=data_dir)
    if len(train_files) >= 2:
        # Whole shards, the last ones, as the reference's `holdout_shards` does.
        n_held = min(len(train_files) - 1, max(1, int(round(holdout_fraction * len(train_files)))))
        held, kept = train_files[-n_held:], train_files[:-n_held]
        splits = {"train": (kept, None), "eval": (held, None)}
        if sum(size_of(f) for f in train_files) <= _EXACT_COUNT_MAX_BYTES:
            counts = {"train": _count_records(kept), "eval": _count_records(held)}
        else:
            total = _estimate_records(train_files, IMAGENET_TRAIN_EXAMPLES, 1024)
            counts = {
                "train": total * len(kept) // len(train_files),
                "eval": total * n_held // len(train_files),
            }
        logging.info(
            "%s: holding out %d of %d training shards for evaluation", name, n_held, len(train_files)
        )
        return TFRecordSource(name, class_names, splits, counts, location=data_dir)
    # One training shard: split it record by record with a fixed hash of (shard name, index).
    splits = {"train": (train_files, "drop_holdout"), "eval": (train_files, "keep_holdout")}
    source = TFRecordSource(
        name,
        class_names,
        splits,
        {"train": 0, "eval": 0},
        location=data_dir,
        holdout_fraction=holdout_fraction,
    )
    source.num_train = _count_records(train_files, "drop_holdout", source)
    source.num_eval = _count_records(train_files, "keep_holdout", source)
    return source


def _imagenet_class_names(data_dir: str) -> list[str]:
    """Class names from an optional labels.txt (1000 lines) beside the shards, else the indices."""
    path = os.path.join(data_dir, "labels.txt")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "r") as handle:
            names = [line.strip() for line in handle if line.strip()]
        if len(names) == IMAGENET_NUM_CLASSES:
            return names
        logging.warning("Ignoring %s: %d names, expected %d", path, len(names), IMAGENET_NUM_CLASSES)
    return [str(i) for i in range(IMAGENET_NUM_CLASSES)]
