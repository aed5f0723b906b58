"""Dataset sources, one module per kind, and `get_source`, which turns a dataset spec into one.

Dataset specs:
- `imagenette_mini` (default): a small Imagenette subset embedded in this package (`embedded`).
- `imagenet`: TFRecord shards `train-*` / `validation-*` in the reference converter's format under
  `data_dir`; `imagenet:minival` evaluates on a hold-out of the training shards instead (`imagenet`).
- `tfds:<name>[:<config>]`: a TFDS dataset already prepared under `data_dir`, never downloaded (`tfds`).
- `folder:<path>`: one sub-folder per class, optionally inside `train/` and `val/` (`folder`).
- `synthetic`: random images with learnable labels, generated in memory (`synthetic`).

Evaluation split: the dataset's own (`validation-*`, `val/`, TFDS `validation` or else `test`) when
it has one; otherwise a seeded `holdout_fraction` of the training data, left out of training.
"""

from __future__ import annotations

import os

from efficientnet_tf.errors import UserError

from efficientnet_tf.data.sources.base import Source
from efficientnet_tf.data.sources.embedded import DEFAULT_DATASET, embedded_root, embedded_source
from efficientnet_tf.data.sources.folder import FileListSource, folder_source
from efficientnet_tf.data.sources.imagenet import TFRecordSource, imagenet_source
from efficientnet_tf.data.sources.synthetic import SYNTHETIC_CLASSES, SyntheticSource, synthetic_dataset_fn
from efficientnet_tf.data.sources.tfds import TFDSSource, tfds_source

__all__ = [
    "DEFAULT_DATASET",
    "FileListSource",
    "SYNTHETIC_CLASSES",
    "Source",
    "SyntheticSource",
    "TFDSSource",
    "TFRecordSource",
    "embedded_root",
    "embedded_source",
    "folder_source",
    "get_source",
    "imagenet_source",
    "synthetic_dataset_fn",
    "tfds_source",
]


def get_source(
    dataset: str,
    data_dir: str | None,
    *,
    holdout_fraction: float,
    seed: int,
    num_classes: int | None = None,
) -> Source:
    """The source of a dataset spec; `num_classes` sizes the synthetic dataset (10 when None)."""
    spec = (dataset or DEFAULT_DATASET).strip()
    if not 0.0 <= holdout_fraction < 1.0:
        raise UserError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if spec == DEFAULT_DATASET:
        return embedded_source(seed=seed)
    if spec == "synthetic":
        return SyntheticSource(int(num_classes or SYNTHETIC_CLASSES), seed=seed)
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
        "tfds:<name>[:<config>], folder:<path> or synthetic"
    )
