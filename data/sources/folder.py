"""Image folders: one sub-folder per class, `train/` and `val/` when present, else a seeded hold-out."""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError

from efficientnet_tf.data.sources.base import Source, num_pipelines

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VAL_DIRNAMES = ("val", "validation")
FILE_SHUFFLE_BUFFER_MAX = 1_000_000
_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


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
        count, index = num_pipelines(input_context)
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
    holdout_fraction: float,
    seed: int,
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
