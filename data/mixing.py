"""Mixup and CutMix on a batch of images with one-hot labels.

Each example is mixed with the example at the mirrored position of the batch (index B − 1 − i),
with its own Beta(α, α) weight. Labels are mixed with the same weight as the pixels (for CutMix:
the fraction of the image area that was kept).
"""

from __future__ import annotations

import tensorflow as tf

from efficientnet_tf.data._random import RandomStream


def mixup_with_weights(images: tf.Tensor, labels: tf.Tensor, weight: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup with given per-example weights λ `[B]`: x = λ·x_i + (1 − λ)·x_j, same for the labels."""
    weight_images = tf.reshape(weight, [-1, 1, 1, 1])
    weight_labels = tf.reshape(weight, [-1, 1])
    images = tf.cast(images, tf.float32)
    mixed_images = weight_images * images + (1.0 - weight_images) * tf.reverse(images, [0])
    mixed_labels = weight_labels * labels + (1.0 - weight_labels) * tf.reverse(labels, [0])
    return mixed_images, mixed_labels


def mixup(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, *, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup: x = λ·x_i + (1 − λ)·x_j, same for the one-hot labels, λ ~ Beta(α, α) per example."""
    rng = RandomStream(seed)
    return mixup_with_weights(images, labels, rng.beta(alpha, [tf.shape(images)[0]]))


def cutmix_with_boxes(
    images: tf.Tensor, labels: tf.Tensor, weight: tf.Tensor, center_y: tf.Tensor, center_x: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix with given per-example weights λ and box centres `[B]`: a box of area ≈ (1 − λ) pasted."""
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    cut_ratio = tf.sqrt(1.0 - weight)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut_ratio, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut_ratio, tf.int32)
    top = tf.clip_by_value(center_y - cut_h // 2, 0, height)
    bottom = tf.clip_by_value(center_y + cut_h // 2, 0, height)
    left = tf.clip_by_value(center_x - cut_w // 2, 0, width)
    right = tf.clip_by_value(center_x + cut_w // 2, 0, width)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    box = (
        (rows >= top[:, None, None])
        & (rows < bottom[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < right[:, None, None])
    )
    images = tf.cast(images, tf.float32)
    mixed_images = tf.where(box[..., None], tf.reverse(images, [0]), images)
    # The label weight is the area actually kept, after clipping the box at the border.
    kept = 1.0 - tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2])
    kept = tf.reshape(kept, [-1, 1])
    mixed_labels = kept * labels + (1.0 - kept) * tf.reverse(labels, [0])
    return mixed_images, mixed_labels


def cutmix(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, *, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix: paste a box of area ≈ (1 − λ) from the partner image, λ ~ Beta(α, α) per example."""
    rng = RandomStream(seed)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    weight = rng.beta(alpha, [batch])
    center_y = rng.integer(height, [batch])
    center_x = rng.integer(width, [batch])
    return cutmix_with_boxes(images, labels, weight, center_y, center_x)


def mix_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    *,
    seed: tf.Tensor | None = None,
    mixup_fn=None,
    cutmix_fn=None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply mixup or cutmix (one of the two, 50/50 per batch, when both alphas are > 0). `mixup_fn` /
    `cutmix_fn` replace this module's `mixup` / `cutmix` (the on-device forms sample Beta differently)."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, labels
    rng = RandomStream(seed)
    return choose_mix(images, labels, mixup_alpha, cutmix_alpha, rng, rng.sub_seed(), mixup_fn or mixup,
                      cutmix_fn or cutmix)


def choose_mix(images: tf.Tensor, labels: tf.Tensor, mixup_alpha: float, cutmix_alpha: float, rng: RandomStream,
               sub_seed: tf.Tensor | None, mixup_fn, cutmix_fn) -> tuple[tf.Tensor, tf.Tensor]:
    """The mixup or cutmix function for the alphas set (one of the two, 50/50 per batch, when both are > 0);
    shared by the host pipeline and the on-device augmentation."""
    if cutmix_alpha <= 0:
        return mixup_fn(images, labels, mixup_alpha, seed=sub_seed)
    if mixup_alpha <= 0:
        return cutmix_fn(images, labels, cutmix_alpha, seed=sub_seed)
    return tf.cond(
        rng.bernoulli(0.5),
        lambda: mixup_fn(images, labels, mixup_alpha, seed=sub_seed),
        lambda: cutmix_fn(images, labels, cutmix_alpha, seed=sub_seed),
    )
