"""mixup and CutMix on a whole batch inside the train step (`data.augment_on_device`): the host pipeline's
mixing (mixing.py) with a Beta sampler that XLA compiles (normal and uniform draws, no gamma op)."""

from __future__ import annotations

import math

import tensorflow as tf

from efficientnet_tf.data import mixing
from efficientnet_tf.data._random import RandomStream

# Marsaglia–Tsang gamma proposals per sample; each is accepted with probability > 0.95, so all
# of them failing (then the last is kept) has probability below 1e-20.
GAMMA_PROPOSALS = 16


def _normal(shape: tf.Tensor, rng: RandomStream) -> tf.Tensor:
    if rng.seeded:
        return tf.random.stateless_normal(shape, rng.next_seed())
    return tf.random.normal(shape)


def _log_gamma(alpha: float, shape: tf.Tensor, rng: RandomStream) -> tf.Tensor:
    """log of Gamma(alpha, 1) samples: Marsaglia–Tsang with a fixed number of proposals."""
    boosted = alpha < 1.0  # Gamma(α) = Gamma(α + 1) · U^(1/α)
    k = alpha + 1.0 if boosted else alpha
    d = k - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    proposals = tf.concat([[GAMMA_PROPOSALS], shape], 0)
    x = _normal(proposals, rng)
    u = rng.uniform(proposals, minval=1e-30)
    v = (1.0 + c * x) ** 3
    log_v = tf.math.log(tf.maximum(v, 1e-30))
    accepted = (v > 0.0) & (tf.math.log(u) < 0.5 * x * x + d - d * v + d * log_v)
    # The first accepted proposal (the last one when none is).
    first = tf.argmax(tf.cast(accepted, tf.int32), axis=0, output_type=tf.int32)
    first = tf.where(tf.reduce_any(accepted, axis=0), first, GAMMA_PROPOSALS - 1)
    log_sample = math.log(d) + tf.reduce_sum(log_v * tf.one_hot(first, GAMMA_PROPOSALS, axis=0), axis=0)
    if boosted:
        log_sample += tf.math.log(rng.uniform(shape, minval=1e-30)) / alpha
    return log_sample


def sample_beta(alpha: float, size: int | tf.Tensor, *, seed: tf.Tensor | None = None) -> tf.Tensor:
    """`size` Beta(α, α) samples from normal and uniform draws (XLA compiles no gamma sampler)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    rng = RandomStream(seed)
    shape = tf.reshape(tf.cast(size, tf.int32), [1])
    # a / (a + b) from the logs, so that tiny gamma draws (small α) do not underflow to 0 / 0.
    return tf.sigmoid(_log_gamma(float(alpha), shape, rng) - _log_gamma(float(alpha), shape, rng))


def mixup(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, *, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """mixing.mixup with the XLA-friendly Beta sampler."""
    weight = sample_beta(alpha, tf.shape(images)[0], seed=seed)
    return mixing.mixup_with_weights(images, labels, weight)


def cutmix(
    images: tf.Tensor, labels: tf.Tensor, alpha: float, *, seed: tf.Tensor | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """mixing.cutmix with the XLA-friendly Beta sampler."""
    rng = RandomStream(seed)
    shape = tf.shape(images)
    weight = sample_beta(alpha, shape[0], seed=rng.sub_seed())
    center_y = rng.integer(shape[1], [shape[0]])
    center_x = rng.integer(shape[2], [shape[0]])
    return mixing.cutmix_with_boxes(images, labels, weight, center_y, center_x)


def mix_batch(images: tf.Tensor, labels: tf.Tensor, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, *,
              seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """mixing.mix_batch on the device: mixup or cutmix (50/50 per batch when both alphas are > 0)."""
    return mixing.mix_batch(images, labels, mixup_alpha, cutmix_alpha, seed=seed, mixup_fn=mixup, cutmix_fn=cutmix)
