"""TensorFlow Datasets: an image-classification dataset already prepared under data_dir (never downloaded)."""

from __future__ import annotations

import glob
import os
import sys

import tensorflow as tf

from efficientnet_tf.errors import UserError, first_line

from efficientnet_tf.data.sources.base import Source, absolute_path, is_remote, num_pipelines


def _tfds_data_dir(data_dir: str | None) -> str:
    return absolute_path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


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
        import tensorflow_datasets as tfds  # heavy (seconds to import): only tfds: datasets load it

        count, index = num_pipelines(input_context)
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
    name: str, config: str | None, data_dir: str | None, *, holdout_fraction: float
) -> TFDSSource:
    """A TFDS dataset already prepared under `data_dir`; fails fast (no download) when it is not."""
    data_dir = _tfds_data_dir(data_dir)
    full_name = f"{name}/{config}" if config else name
    spec = f"tfds:{name}" + (f":{config}" if config else "")
    # Importing TFDS costs seconds; when it is not loaded yet no test mock can be active either, so
    # a dataset absent from disk is reported straight away.
    if (
        "tensorflow_datasets" not in sys.modules
        and not is_remote(data_dir)
        and not _find_prepared(data_dir, name, config)
    ):
        raise UserError(
            f"TFDS dataset {full_name} is not prepared under {data_dir}; {_prepare_hint(full_name, data_dir)}"
        )
    import tensorflow_datasets as tfds  # heavy (seconds to import): only tfds: datasets load it

    try:
        builder = tfds.builder(full_name, data_dir=data_dir, try_gcs=False)
    except Exception as error:  # DatasetNotFoundError, config errors, bad names
        raise UserError(
            f"unknown TFDS dataset {full_name!r} ({first_line(error)}); check the name and config"
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
    import tensorflow_datasets as tfds  # heavy (seconds to import): only tfds: datasets load it

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
