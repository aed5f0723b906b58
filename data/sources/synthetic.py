"""Synthetic data for tests and benchmarks: `SyntheticSource` (the `synthetic` dataset) and fixed batches.

`SyntheticSource` is a real `Source`: its records are PNG-encoded random images, so they go through
the same decoding, cropping and augmentation as photos. Each class has its own mean colour, so a
model can learn the labels. `synthetic_dataset_fn` skips the pipeline altogether and repeats a few
fixed batches, for tests and throughput measurements of the training step alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from efficientnet_tf.errors import UserError

from efficientnet_tf.data.sources.base import Source, num_pipelines

SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_IMAGES = 1280
SYNTHETIC_EVAL_IMAGES = 256
SYNTHETIC_IMAGE_SIZE = 64


class SyntheticSource(Source):
    """Random images with per-class colours, encoded as PNG (deterministic for a seed)."""

    def __init__(self, num_classes: int = SYNTHETIC_CLASSES, *, seed: int = 0,
                 num_train: int = SYNTHETIC_TRAIN_IMAGES, num_eval: int = SYNTHETIC_EVAL_IMAGES,
                 image_size: int = SYNTHETIC_IMAGE_SIZE):
        if int(num_classes) < 1:
            raise UserError(f"the synthetic dataset needs at least one class, got {num_classes}")
        super().__init__("synthetic", [f"class_{i}" for i in range(int(num_classes))], num_train, num_eval,
                         location="(generated in memory)", shuffle_buffer_size=num_train)
        self._seed = int(seed)
        self._image_size = int(image_size)
        self._splits: dict[str, tuple[list[bytes], list[int]]] = {}

    def _split(self, split: str) -> tuple[list[bytes], list[int]]:
        if split not in self._splits:
            count = self.num_train if split == "train" else self.num_eval
            rng = np.random.default_rng([self._seed, 0 if split == "train" else 1])
            palette = np.random.default_rng([self._seed, 2]).uniform(40, 215, (self.num_classes, 3))
            labels = rng.integers(0, self.num_classes, count)
            noise = rng.normal(0.0, 40.0, (count, self._image_size, self._image_size, 3))
            pixels = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
            encoded = [tf.io.encode_png(image).numpy() for image in pixels]
            self._splits[split] = (encoded, labels.astype(np.int32).tolist())
        return self._splits[split]

    def records(self, split, input_context=None, *, shuffle_files=False, seed=None):
        payloads, labels = self._split(split)
        ids = [f"synthetic/{split}/{i}" for i in range(len(labels))]
        dataset = tf.data.Dataset.from_tensor_slices(
            {"payload": tf.constant(payloads, tf.string), "label": tf.constant(labels, tf.int32),
             "id": tf.constant(ids, tf.string)}
        )
        count, index = num_pipelines(input_context)
        return dataset.shard(count, index) if count > 1 else dataset


def synthetic_dataset_fn(
    image_size: int,
    num_classes: int,
    global_batch: int,
    *,
    seed: int = 0,
    distinct_batches: int = 8,
    eval: bool = False,
    eval_examples: int = 64,
) -> Callable[..., tf.data.Dataset]:
    """A dataset function yielding per-replica batches of fixed random data (a training stage, when given,
    is ignored: the images have one size).

    Training: `distinct_batches` different batches repeated forever, one-hot labels. Eval: one
    pass over `eval_examples` images with integer labels. Labels depend on the image (the
    brightest channel), so a model can learn them.
    """

    def images_and_labels(count: int, offset: int) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.random.stateless_uniform([count, image_size, image_size, 3], [seed, offset], 0, 255)
        labels = tf.argmax(tf.reduce_mean(images, axis=[1, 2]), axis=-1, output_type=tf.int32) % num_classes
        return images, labels

    def dataset_fn(context: tf.distribute.InputContext, stage: Any = None) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(global_batch) if context else global_batch
        pipeline = context.input_pipeline_id if context else 0
        if eval:
            count = max(1, eval_examples // max(1, context.num_input_pipelines if context else 1))
            images, labels = images_and_labels(count, 1000 + pipeline)
            return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
        images, labels = images_and_labels(batch * distinct_batches, pipeline)
        one_hot = tf.one_hot(labels, num_classes)
        return tf.data.Dataset.from_tensor_slices((images, one_hot)).batch(batch, drop_remainder=True).repeat()

    return dataset_fn
