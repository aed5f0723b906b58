"""Dataset sources: the embedded Imagenette subset, image folders, ImageNet TFRecords and TFDS.

A `Source` knows a dataset's classes and split sizes and yields, per split, a `tf.data.Dataset` of
dict records `{"payload": tf.string, "label": tf.int32, "id": tf.string}`; `Source.read` and
`Source.parse` turn a payload into encoded image bytes and a 0-based label (reading a file,
parsing a TFRecord example). The pipelines in `data.pipeline` do the rest.

Dataset specs accepted by `get_source`:
- `imagenette_mini` (default): a small Imagenette subset embedded in this package.
- `imagenet`: TFRecord shards `train-*` / `validation-*` in the reference converter's format under
  `data_dir`; `imagenet:minival` evaluates on a hold-out of the training shards instead.
- `tfds:<name>[:<config>]`: a TFDS dataset already prepared under `data_dir` (never downloaded).
- `folder:<path>`: one sub-folder per class, optionally inside `train/` and `val/`.

Evaluation split: the dataset's own (`validation-*`, `val/`, TFDS `validation` or else `test`)
when it has one; otherwise a seeded `holdout_fraction` of the training data, which is then left
out of training.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError

DEFAULT_DATASET = "imagenette_mini"
EMBEDDED_DIRNAME = "imagenette_mini"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VAL_DIRNAMES = ("val", "validation")
# Shuffle buffer for record-based sources (a full ImageNet record is ~110 kB).
RECORD_SHUFFLE_BUFFER = 2048
FILE_SHUFFLE_BUFFER_MAX = 1_000_000

IMAGENET_NUM_CLASSES = 1000
IMAGENET_TRAIN_EXAMPLES = 1_281_167
IMAGENET_VALIDATION_EXAMPLES = 50_000
# Record files this large are not counted record by record; their count is estimated.
_EXACT_COUNT_MAX_BYTES = 1 << 30

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


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


def _is_remote(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    """Expand ~ and make a local path absolute; leave URLs (gs://...) alone."""
    return path if _is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _glob(pattern: str) -> list[str]:
    return sorted(tf.io.gfile.glob(pattern))


def _size(path: str) -> int:
    return int(tf.io.gfile.stat(path).length)


def _num_pipelines(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return input_context.num_input_pipelines, input_context.input_pipeline_id


# ---------------------------------------------------------------------------------------------
# Image folders (and the embedded dataset, which is one).


class FileListSource(Source):
    """Images listed as files with labels: the `folder:` and embedded sources."""

    def __init__(
        self,
        name: str,
        class_names: Sequence[str],
        train: tuple[list[str], list[int]],
        evaluation: tuple[list[str], list[int]],
        *,
        location: str,
    ):
        super().__init__(
            name,
            class_names,
            len(train[0]),
            len(evaluation[0]),
            location=location,
            shuffle_buffer_size=max(1, min(len(train[0]), FILE_SHUFFLE_BUFFER_MAX)),
        )
        self._splits = {"train": train, "eval": evaluation}

    def files(self, split: str) -> tuple[list[str], list[int]]:
        """The (paths, labels) of a split."""
        return self._splits[split]

    def records(self, split, input_context=None, *, shuffle_files=False, seed=None):
        paths, labels = self._splits[split]
        dataset = tf.data.Dataset.from_tensor_slices(
            {
                "payload": tf.constant(paths, tf.string, shape=[len(paths)]),
                "label": tf.constant(labels, tf.int32, shape=[len(labels)]),
                "id": tf.constant(paths, tf.string, shape=[len(paths)]),
            }
        )
        count, index = _num_pipelines(input_context)
        if count > 1:
            dataset = dataset.shard(count, index)
        return dataset

    def read(self, payload):
        return tf.io.read_file(payload)


def _image_kind(path: str) -> str | None:
    """Why `path` cannot be an image we decode (None when its header looks fine)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if not head:
        return "empty file"
    if not any(head.startswith(magic) for magic, _ in _MAGIC):
        return "not a JPEG, PNG, BMP or GIF image"
    return None


def _list_images(class_dir: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in filenames:
            if not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.join(dirpath, filename))
    return sorted(found)


def _class_dirs(root: str) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _scan_split(
    root: str, class_names: list[str], bad: list[tuple[str, str]], workers: int = 16
) -> dict[str, list[str]]:
    """Usable image files per class under `root`; bad files and empty class folders go to `bad`."""
    per_class = {}
    for name in class_names:
        class_dir = os.path.join(root, name)
        per_class[name] = _list_images(class_dir) if os.path.isdir(class_dir) else []
    all_files = [path for files in per_class.values() for path in files]
    if len(all_files) > 256:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            problems = dict(zip(all_files, pool.map(_image_kind, all_files), strict=True))
    else:
        problems = {path: _image_kind(path) for path in all_files}
    for name, files in per_class.items():
        good = [path for path in files if problems[path] is None]
        bad.extend((path, problems[path]) for path in files if problems[path] is not None)
        per_class[name] = good
        class_dir = os.path.join(root, name)
        if not good and os.path.isdir(class_dir):
            bad.append((class_dir + os.sep, "class folder has no usable images"))
    return per_class


def folder_source(
    root: str,
    *,
    holdout_fraction: float = 0.1,
    seed: int = 0,
    name: str | None = None,
    display_names: dict[str, str] | None = None,
) -> FileListSource:
    """A class-per-sub-folder image tree (`train/` and `val/` when present, else a seeded split)."""
    root = os.path.abspath(os.path.expanduser(root))
    name = name or f"folder:{root}"
    if not os.path.isdir(root):
        raise UserError(
            f"dataset folder {root} does not exist; "
            "point folder:<path> at a directory with one sub-folder per class"
        )
    train_root, val_root = root, None
    if os.path.isdir(os.path.join(root, "train")):
        train_root = os.path.join(root, "train")
        for dirname in VAL_DIRNAMES:
            if os.path.isdir(os.path.join(root, dirname)):
                val_root = os.path.join(root, dirname)
                break
    dir_names = set(_class_dirs(train_root))
    if val_root:
        val_only = sorted(set(_class_dirs(val_root)) - dir_names)
        if val_only:
            logging.warning("Classes %s of %s have no training folder", val_only, val_root)
        dir_names |= set(val_only)
    dir_names = sorted(dir_names)
    if not dir_names:
        raise UserError(
            f"no class sub-folders in {train_root}; "
            f"put the images of each class in {train_root}/<class name>/"
        )
    display_names = display_names or {}
    class_names = [display_names.get(d, d) for d in dir_names]

    started = time.time()
    bad: list[tuple[str, str]] = []
    train_files = _scan_split(train_root, dir_names, bad)
    if val_root:
        val_files = _scan_split(val_root, dir_names, bad)
    else:
        train_files, val_files = _split_per_class(train_files, holdout_fraction, seed)

    def flatten(per_class):
        paths, labels = [], []
        for label, dirname in enumerate(dir_names):
            paths.extend(per_class.get(dirname, []))
            labels.extend([label] * len(per_class.get(dirname, [])))
        return paths, labels

    train, evaluation = flatten(train_files), flatten(val_files)
    if not train[0]:
        raise UserError(f"no usable training images (JPEG, PNG, BMP or GIF) under {train_root}")
    source = FileListSource(name, class_names, train, evaluation, location=root)
    for item, reason in bad:
        source.report_bad(item, reason)
    logging.info(
        "%s: %d classes, %d train / %d eval images, %d skipped (scanned in %.1fs)",
        name, len(class_names), len(train[0]), len(evaluation[0]), len(source.bad_files),
        time.time() - started,
    )  # fmt: skip
    return source


def _split_per_class(
    per_class: dict[str, list[str]], holdout_fraction: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Seeded per-class split into (train, hold-out); a class keeps at least one training image."""
    train, held = {}, {}
    for index, (dirname, files) in enumerate(sorted(per_class.items())):
        count = len(files)
        n_held = int(round(count * holdout_fraction))
        if holdout_fraction > 0 and count >= 2:
            n_held = min(max(n_held, 1), count - 1)
        else:
            n_held = 0
        order = np.random.default_rng([seed, index]).permutation(count)
        held_idx = set(order[:n_held].tolist())
        train[dirname] = [f for i, f in enumerate(files) if i not in held_idx]
        held[dirname] = [f for i, f in enumerate(files) if i in held_idx]
    return train, held


def embedded_root() -> str:
    """Directory of the embedded Imagenette subset shipped inside this package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), EMBEDDED_DIRNAME)


def read_class_table(path: str) -> dict[str, str]:
    """Read a `dirname<TAB>display name` table (the embedded dataset's classes.tsv)."""
    table = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                key, _, value = line.partition("\t")
                table[key] = value or key
    return table


def embedded_source(*, seed: int = 0) -> FileListSource:
    """The embedded Imagenette subset (10 classes, train/ + val/)."""
    root = embedded_root()
    if not os.path.isdir(os.path.join(root, "train")):
        raise UserError(
            f"the embedded dataset is missing from {root}; reinstall the package or rebuild it with "
            "`python -m data.make_embedded`"
        )
    names = read_class_table(os.path.join(root, "classes.tsv"))
    return folder_source(root, holdout_fraction=0.0, seed=seed, name=DEFAULT_DATASET, display_names=names)


# ---------------------------------------------------------------------------------------------
# ImageNet TFRecords in the reference converter's format.


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
        count, index = _num_pipelines(input_context)
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
    total = sum(_size(f) for f in files)
    if total <= _EXACT_COUNT_MAX_BYTES:
        return _count_records(files)
    if all(re.search(rf"-of-{standard_shards:05d}$", f) for f in files):
        return int(round(standard_count * len(files) / standard_shards))
    first = _count_records(files[:1])
    estimate = int(round(first * total / max(_size(files[0]), 1)))
    logging.info("Estimated %d records in %d shards from the first shard", estimate, len(files))
    return estimate


def imagenet_source(
    data_dir: str | None, *, holdout_fraction: float = 0.1, minival: bool = False
) -> TFRecordSource:
    """ImageNet TFRecords (`train-*`, `validation-*`) from the reference converter under `data_dir`."""
    if not data_dir:
        raise UserError(
            "dataset 'imagenet' needs data_dir (--data_dir) set to the folder of its TFRecord shards "
            "(train-*, validation-*)"
        )
    data_dir = _absolute(data_dir)
    train_files = _glob(os.path.join(data_dir, "train-*"))
    val_files = _glob(os.path.join(data_dir, "validation-*"))
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
        if sum(_size(f) for f in train_files) <= _EXACT_COUNT_MAX_BYTES:
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


# ---------------------------------------------------------------------------------------------
# TFDS.


def _tfds_data_dir(data_dir: str | None) -> str:
    return _absolute(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _prepare_hint(full_name: str, data_dir: str) -> str:
    return (
        f"prepare it first on a machine with internet access: `tfds build {full_name} --data_dir={data_dir}` "
        "(or copy a prepared copy there)"
    )


class TFDSSource(Source):
    """An image-classification dataset prepared by TensorFlow Datasets."""

    def __init__(self, name, class_names, builder, image_key, label_key, split_names, counts, *, location):
        super().__init__(name, class_names, counts["train"], counts["eval"], location=location)
        self._builder = builder
        self._image_key = image_key
        self._label_key = label_key
        self._split_names = split_names

    def records(self, split, input_context=None, *, shuffle_files=False, seed=None):
        import tensorflow_datasets as tfds

        count, index = _num_pipelines(input_context)
        split_name = self._split_names[split]
        shard_by_file = False
        if count > 1:
            try:
                num_shards = self._builder.info.splits[split_name].num_shards
                shard_by_file = num_shards >= count
            except (KeyError, AttributeError, TypeError, ValueError):
                shard_by_file = False
        read_config = tfds.ReadConfig(
            add_tfds_id=True,
            shuffle_seed=seed,
            input_context=input_context if shard_by_file else None,
        )
        dataset = self._builder.as_dataset(
            split=split_name,
            decoders={self._image_key: tfds.decode.SkipDecoding()},
            read_config=read_config,
            shuffle_files=shuffle_files,
        )
        if count > 1 and not shard_by_file:
            dataset = dataset.shard(count, index)
        prefix = f"{self.name}/"
        image_key, label_key = self._image_key, self._label_key
        return dataset.map(
            lambda ex: {
                "payload": ex[image_key],
                "label": tf.cast(ex[label_key], tf.int32),
                "id": tf.strings.join([prefix, ex["tfds_id"]]),
            },
            num_parallel_calls=tf.data.AUTOTUNE,
        )


def _find_prepared(data_dir: str, name: str, config: str | None) -> bool:
    """Whether a prepared TFDS dataset (its dataset_info.json) exists under data_dir."""
    base = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
    patterns = [
        os.path.join(base, "*", "dataset_info.json"),
        os.path.join(base, "*", "*", "dataset_info.json"),
    ]
    return any(glob.glob(p) for p in patterns)


def tfds_source(
    name: str, config: str | None, data_dir: str | None, *, holdout_fraction: float = 0.1
) -> TFDSSource:
    """A TFDS dataset already prepared under `data_dir`; fails fast (no download) when it is not."""
    data_dir = _tfds_data_dir(data_dir)
    full_name = f"{name}/{config}" if config else name
    spec = f"tfds:{name}" + (f":{config}" if config else "")
    # Importing TFDS costs seconds; when it is not loaded yet no test mock can be active either, so
    # a dataset absent from disk is reported straight away.
    if (
        "tensorflow_datasets" not in sys.modules
        and not _is_remote(data_dir)
        and not _find_prepared(data_dir, name, config)
    ):
        raise UserError(
            f"TFDS dataset {full_name} is not prepared under {data_dir}; {_prepare_hint(full_name, data_dir)}"
        )
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(full_name, data_dir=data_dir, try_gcs=False)
    except Exception as error:  # DatasetNotFoundError, config errors, bad names
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"unknown TFDS dataset {full_name!r} ({first_line}); check the name and config"
        ) from None
    info = builder.info
    image_key, label_key = _tfds_keys(info, full_name)
    label_feature = info.features[label_key]
    num_classes = int(label_feature.num_classes)
    class_names = list(label_feature.names) if label_feature.names else [str(i) for i in range(num_classes)]
    split_counts = {str(k): int(v.num_examples) for k, v in info.splits.items()}
    if split_counts and "train" not in split_counts:
        raise UserError(f"TFDS dataset {full_name} has no 'train' split (it has {', '.join(split_counts)})")
    eval_split = next((s for s in ("validation", "test") if s in split_counts), None)
    if eval_split:
        split_names = {"train": "train", "eval": eval_split}
    elif holdout_fraction <= 0:
        raise UserError(
            f"TFDS dataset {full_name} has only a train split; "
            "set holdout_fraction > 0 to evaluate on a hold-out of it"
        )
    elif "train" in split_counts:
        n_train = split_counts["train"]
        n_held = min(n_train - 1, max(1, int(round(n_train * holdout_fraction))))
        split_names = {"train": f"train[:{n_train - n_held}]", "eval": f"train[{n_train - n_held}:]"}
    else:
        percent = max(1, min(99, int(round(holdout_fraction * 100))))
        split_names = {"train": f"train[:{100 - percent}%]", "eval": f"train[{100 - percent}%:]"}
    # Opening the split checks that the data is there; an unprepared dataset fails here at once.
    try:
        probe = builder.as_dataset(
            split=split_names["train"], decoders={image_key: tfds.decode.SkipDecoding()}
        )
    except AssertionError:
        raise UserError(
            f"TFDS dataset {full_name} is not prepared under {data_dir}; {_prepare_hint(full_name, data_dir)}"
        ) from None
    counts = {}
    for split, split_name in split_names.items():
        base = split_name.split("[")[0]
        if base in split_counts and "[" not in split_name:
            counts[split] = split_counts[base]
        elif split_counts and "[" in split_name and "%" not in split_name:
            start, _, stop = split_name[len(base) + 1 : -1].partition(":")
            counts[split] = (int(stop) if stop else split_counts[base]) - (int(start) if start else 0)
        else:
            dataset = (
                probe
                if split == "train"
                else builder.as_dataset(split=split_name, decoders={image_key: tfds.decode.SkipDecoding()})
            )
            cardinality = int(dataset.cardinality())
            counts[split] = cardinality if cardinality >= 0 else 0
    return TFDSSource(
        spec,
        class_names,
        builder,
        image_key,
        label_key,
        split_names,
        counts,
        location=f"{data_dir}/{full_name}",
    )


def _tfds_keys(info, full_name: str) -> tuple[str, str]:
    """Names of the image and class-label features of a TFDS dataset."""
    import tensorflow_datasets as tfds

    features = info.features
    keys = tuple(info.supervised_keys or ())
    if len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        image_key = next((k for k, f in features.items() if isinstance(f, tfds.features.Image)), None)
        label_key = next((k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)), None)
    if (
        image_key not in features
        or label_key not in features
        or not isinstance(features[image_key], tfds.features.Image)
        or not isinstance(features[label_key], tfds.features.ClassLabel)
    ):
        raise UserError(
            f"TFDS dataset {full_name} is not an image-classification dataset "
            "(no Image and ClassLabel features)"
        )
    return image_key, label_key


# ---------------------------------------------------------------------------------------------


def get_source(
    dataset: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    *,
    holdout_fraction: float = 0.1,
    seed: int = 0,
) -> Source:
    """Resolve a dataset spec (imagenette_mini, imagenet, tfds:<name>[:<config>], folder:<path>)."""
    spec = (dataset or DEFAULT_DATASET).strip()
    if not 0.0 <= holdout_fraction < 1.0:
        raise UserError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if spec == DEFAULT_DATASET:
        return embedded_source(seed=seed)
    if spec in ("imagenet", "imagenet:minival"):
        return imagenet_source(data_dir, holdout_fraction=holdout_fraction, minival=spec.endswith(":minival"))
    if spec.startswith("tfds:"):
        parts = spec[len("tfds:") :].split(":")
        if not parts[0] or len(parts) > 2 or not all(parts):
            raise UserError(f"bad TFDS dataset spec {spec!r}; write tfds:<name> or tfds:<name>:<config>")
        return tfds_source(
            parts[0], parts[1] if len(parts) == 2 else None, data_dir, holdout_fraction=holdout_fraction
        )
    if spec.startswith("folder:"):
        path = spec[len("folder:") :]
        if not path:
            raise UserError("dataset spec folder: needs a path, e.g. folder:/data/my_images")
        if data_dir and not os.path.isabs(os.path.expanduser(path)) and not os.path.exists(path):
            path = os.path.join(data_dir, path)
        return folder_source(path, holdout_fraction=holdout_fraction, seed=seed)
    raise UserError(
        f"unknown dataset {spec!r}; use {DEFAULT_DATASET}, imagenet, imagenet:minival, "
        "tfds:<name>[:<config>] or folder:<path>"
    )
