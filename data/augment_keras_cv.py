"""keras-cv's RandAugment as the host pipeline's augmentation (`data.augment_backend: keras_cv`).

The default backend (`native`) runs this project's graph ops (`augment.randaugment`). With
`keras_cv`, the training pipeline instead applies `keras_cv.layers.RandAugment` to each batch of
decoded, cropped, flipped and resized images, before mixup / cutmix. keras-cv is an optional
dependency, the `[keras-cv]` extra (`pip install -e '.[keras-cv]'`).

Settings mapped from ours (data.randaug_num_layers N, data.randaug_magnitude M on the 0..10 scale):

- `augmentations_per_image = N`;
- `magnitude = M / 10` (keras-cv's scale is 0..1, its 1.0 being our 10; M above 10 is refused);
- `magnitude_stddev = 0`: every op runs at exactly M, as ours do (keras-cv's default draws the
  magnitude from a normal distribution of standard deviation 0.15 around it);
- `rate = 1.0`: each of the N ops is applied, as ours are (keras-cv's default 10/11 stands in for
  the paper's Identity op);
- `value_range = (0, 255)`, `geometric = True`.

keras-cv draws from 10 operations (AutoContrast, Equalize, Solarize with an addition, Color,
Contrast, Brightness, ShearX, ShearY, TranslateX, TranslateY); ours from 16 (also Invert, Rotate,
Posterize, Sharpness, Cutout, SolarizeAdd). Its translations are a fraction of the image side
(up to M/10 of it), ours a number of pixels (up to 10·M at any size). keras-cv has no AutoAugment
policy.

What cannot run, and why (each is refused with one line):
- `data.augment_on_device: true`: keras-cv's Equalization uses `HistogramFixedWidth`, which has
  no XLA kernel, and the train step is XLA-compiled on GPU and TPU; its layers also draw from a
  stateful random generator (a variable) that a replicated step would share between replicas.
- `train.deterministic: true`: the layer draws from stateful generators (`tf.random.Generator`
  and stateful random ops), not from per-image seeds, which is how this project's pipeline makes
  runs repeatable; with a fixed `seed` and a single map thread, two runs still give different
  images (checked with keras-cv 0.9.0 on TensorFlow 2.21).
- `data.augment: autoaugment`: keras-cv implements no AutoAugment policy.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from efficientnet_tf.errors import UserError

BACKENDS = ("native", "keras_cv")
MAX_MAGNITUDE = 10.0  # our scale's maximum, keras-cv's 1.0
MISSING_EXTRA = ("data.augment_backend=keras_cv needs keras-cv, which is not installed; "
                 "install the extra: pip install -e '.[keras-cv]'")


def load_keras_cv() -> Any:
    """The keras_cv module, or UserError (one line naming the extra) when it cannot be imported."""
    try:
        # Imported here: keras-cv is an optional extra, and importing it takes seconds.
        import keras_cv
    except ImportError:
        raise UserError(MISSING_EXTRA) from None
    return keras_cv


def keras_cv_magnitude(magnitude: float) -> float:
    """Our RandAugment magnitude (0..10) on keras-cv's scale (0..1)."""
    magnitude = float(magnitude)
    if not 0.0 <= magnitude <= MAX_MAGNITUDE:
        raise UserError(f"data.augment_backend=keras_cv takes data.randaug_magnitude from 0 to "
                        f"{MAX_MAGNITUDE:g} (keras-cv's 0..1), got {magnitude:g}")
    return magnitude / MAX_MAGNITUDE


def check_backend(backend: str | None, augment: str, *, magnitude: float = 0.0, deterministic: bool = False) -> str:
    """The backend name in lower case; UserError (one line) for combinations keras-cv cannot run.
    (data.augment_on_device never reaches the host pipeline; the config refuses it with keras_cv.)"""
    backend = (backend or "native").lower()
    if backend not in BACKENDS:
        raise UserError(f"unknown data.augment_backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend != "keras_cv" or augment == "none":
        return backend
    if augment != "randaugment":
        raise UserError(f"data.augment_backend=keras_cv runs RandAugment only; keras-cv has no "
                        f"{augment!r} policy: set data.augment=randaugment or data.augment_backend=native")
    if deterministic:
        raise UserError("data.augment_backend=keras_cv cannot give train.deterministic=true: keras-cv's RandAugment "
                        "draws from stateful generators, not per-image seeds; use data.augment_backend=native")
    keras_cv_magnitude(magnitude)
    return backend


def randaugment_layer(num_layers: int, magnitude: float, seed: int | None = None) -> Any:
    """keras_cv.layers.RandAugment with our settings mapped onto it (see the module docstring)."""
    if int(num_layers) < 0:
        raise UserError(f"randaug_num_layers must be >= 0, got {num_layers}")
    keras_cv = load_keras_cv()
    return keras_cv.layers.RandAugment(
        value_range=(0, 255), augmentations_per_image=int(num_layers), magnitude=keras_cv_magnitude(magnitude),
        magnitude_stddev=0.0, rate=1.0, geometric=True, seed=seed,
    )


def batch_augmenter(num_layers: int, magnitude: float, seed: int | None = None):
    """A `tf.data` map function over (images float32 [B, H, W, 3] in 0..255, labels) batches: keras-cv's
    RandAugment, its output rounded and clipped to whole values in 0..255 like the native ops'."""
    layer = randaugment_layer(num_layers, magnitude, seed)

    def augment_batch(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        augmented = layer(images, training=True)
        augmented = tf.clip_by_value(tf.round(tf.cast(augmented, tf.float32)), 0.0, 255.0)
        return tf.ensure_shape(augmented, images.shape), labels

    return augment_batch
