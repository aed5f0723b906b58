"""Synthetic input for tests and benchmarks: random 0..255 images with fixed labels."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def synthetic_dataset_fn(
    image_size: int,
    num_classes: int,
    global_batch: int,
    *,
    seed: int = 0,
    distinct_batches: int = 8,
    eval: bool = False,
    eval_examples: int = 64,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset function yielding per-replica batches of fixed random data.

    Training: `distinct_batches` different batches repeated forever, one-hot labels. Eval: one
    pass over `eval_examples` images with integer labels. Labels depend on the image (the
    brightest channel), so a model can learn them.
    """

    def images_and_labels(count: int, offset: int) -> tuple[tf.Tensor, tf.Tensor]:
        images = tf.random.stateless_uniform([count, image_size, image_size, 3], [seed, offset], 0, 255)
        labels = tf.argmax(tf.reduce_mean(images, axis=[1, 2]), axis=-1, output_type=tf.int32) % num_classes
        return images, labels

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
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
