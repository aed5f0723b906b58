"""A small random-number helper shared by preprocessing, augmentation and mixing.

Every random draw in the pipeline goes through `RandomStream`. Without a seed it uses TensorFlow's
stateful ops (fresh randomness on every call). With a seed (a `[2]` integer tensor, as the
`tf.random.stateless_*` ops take) each draw folds a distinct call-site counter into the seed, so a
traced function gives the same numbers for the same seed and different numbers for different
seeds; that is what makes the deterministic input pipeline reproducible.
"""

from __future__ import annotations

import tensorflow as tf


def as_seed(seed: tf.Tensor | None) -> tf.Tensor | None:
    """Return `seed` as an int64 `[2]` tensor (or None when unseeded)."""
    if seed is None:
        return None
    seed = tf.convert_to_tensor(seed)
    if seed.dtype not in (tf.int32, tf.int64):
        raise TypeError(f"seed must be an integer tensor of shape [2], got {seed.dtype}")
    return tf.cast(tf.reshape(seed, [2]), tf.int64)


class RandomStream:
    """Draws random tensors, statelessly from `seed` when given, otherwise from the global RNG."""

    def __init__(self, seed: tf.Tensor | None = None):
        self._seed = as_seed(seed)
        self._count = 0

    @property
    def seeded(self) -> bool:
        """Whether draws are stateless (reproducible)."""
        return self._seed is not None

    def next_seed(self) -> tf.Tensor:
        """A fresh `[2]` seed for a stateless op; only valid when seeded."""
        if self._seed is None:
            raise ValueError("next_seed() needs a seeded RandomStream")
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)

    def sub_seed(self) -> tf.Tensor | None:
        """The seed of a sub-stream: a fresh one when seeded, None (the global RNG) when not."""
        return self.next_seed() if self.seeded else None

    def uniform(self, shape=(), minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
        """Float32 uniform in [minval, maxval)."""
        if self._seed is None:
            return tf.random.uniform(shape, minval, maxval, dtype=tf.float32)
        return tf.random.stateless_uniform(shape, self.next_seed(), minval, maxval, dtype=tf.float32)

    def integer(self, maxval: int | tf.Tensor, shape=()) -> tf.Tensor:
        """Int32 uniform in [0, maxval)."""
        if self._seed is None:
            return tf.random.uniform(shape, 0, maxval, dtype=tf.int32)
        return tf.random.stateless_uniform(shape, self.next_seed(), 0, maxval, dtype=tf.int32)

    def bernoulli(self, probability: float) -> tf.Tensor:
        """Scalar bool that is True with the given probability."""
        return self.uniform() < probability

    def sign(self) -> tf.Tensor:
        """+1.0 or -1.0 with equal probability."""
        return tf.where(self.uniform() < 0.5, -1.0, 1.0)

    def beta(self, alpha: float, shape=()) -> tf.Tensor:
        """Float32 Beta(alpha, alpha) samples, as a ratio of two gamma draws."""
        if self._seed is None:
            a = tf.random.gamma(shape, alpha, dtype=tf.float32)
            b = tf.random.gamma(shape, alpha, dtype=tf.float32)
        else:
            a = tf.random.stateless_gamma(shape, self.next_seed(), alpha, dtype=tf.float32)
            b = tf.random.stateless_gamma(shape, self.next_seed(), alpha, dtype=tf.float32)
        total = a + b
        return tf.where(total > 0, a / tf.maximum(total, 1e-30), 0.5)
