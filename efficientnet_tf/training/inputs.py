"""A run's input pipelines: the data package's builders called with the values of a resolved config.

The training dataset of a stage (its image size and augmentation strength; a run without progressive
learning has one stage), the evaluation dataset, and the augmentation the train step applies on the
device when `data.augment_on_device` is set. Batches are per replica.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from efficientnet_tf import data
from efficientnet_tf.data.augment_device import DeviceAugmentation
from efficientnet_tf.hparams import RunConfig, Stage

TrainDatasetFn = Callable[[tf.distribute.InputContext, Stage], tf.data.Dataset]
EvalDatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


def train_dataset_fn(config: RunConfig, source: data.Source) -> TrainDatasetFn:
    """The training batches of a stage: infinite, per replica (images float32 0..255, one-hot labels)."""
    d, train = config.data, config.train
    # data.augment_on_device: the train step augments and mixes; the host only decodes, crops, flips, resizes.
    on_host = not d.augment_on_device

    def dataset(context: tf.distribute.InputContext, stage: Stage) -> tf.data.Dataset:
        return data.build_train_dataset(
            source, image_size=stage.image_size, batch_size=config.derived.per_replica_batch,
            resize_method=d.resize_method, augment=d.augment if on_host else "none",
            randaug_num_layers=d.randaug_num_layers, randaug_magnitude=stage.randaug_magnitude,
            mixup_alpha=stage.mixup_alpha if on_host else 0.0, cutmix_alpha=stage.cutmix_alpha if on_host else 0.0,
            min_crop_area=d.min_crop_area, seed=train.seed, deterministic=train.deterministic, cache=d.cache,
            input_context=context, augment_backend=d.augment_backend,
        )

    return dataset


def eval_dataset_fn(config: RunConfig, source: data.Source) -> EvalDatasetFn:
    """One pass over the evaluation split at model.image_size, per replica (images, integer labels)."""

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return data.build_eval_dataset(source, image_size=config.model.image_size,
                                       batch_size=config.derived.eval_per_replica_batch,
                                       resize_method=config.data.resize_method, input_context=context)

    return dataset


def device_augmentation(config: RunConfig, stage: Stage) -> DeviceAugmentation | None:
    """data.augment_on_device: the augmentation the train step applies in a stage (None when off or empty)."""
    d = config.data
    if not d.augment_on_device:
        return None
    return DeviceAugmentation.create(
        augment=d.augment, randaug_num_layers=d.randaug_num_layers, randaug_magnitude=stage.randaug_magnitude,
        mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha, seed=config.train.seed,
        deterministic=config.train.deterministic,
    )
