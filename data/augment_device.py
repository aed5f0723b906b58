"""AutoAugment v0 and RandAugment on a whole batch, then mixup / CutMix (mixing_device.py), for the accelerator.

With `data.augment_on_device` the host pipeline stops after decode, crop, flip and resize, and
these run inside the replicated train step instead, so that on a GPU or TPU they take no host CPU
and are compiled by XLA with the step. They take a float32 `[B, H, W, 3]` batch with whole values
in 0..255 and keep the uint8 semantics of augment.py: every op rounds and clips to 0..255.

Every image still gets its own random choices (sub-policy or ops, probability draws, signs, cutout
positions, mixing weights). Each op is computed once for the whole batch with a per-image argument
(one nearest-pixel sampling for all geometric ops, one blend for the four enhance ops, per-image
histograms for equalize) and each image keeps the result of the op it drew: no Python loop over
images, no map_fn, static shapes, stateless random ops only. The op set, levels, probabilities,
constants and fill value are those of augment.py (`op_argument`, `POLICY_V0`, `RANDAUGMENT_OPS`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Iterable

import tensorflow as tf
from absl import logging

from efficientnet_tf.data._random import RandomStream
from efficientnet_tf.data.augment import (
    AUTOAUGMENT_HPARAMS,
    FILL_VALUE,
    OP_NAMES,
    POLICY_V0,
    RANDAUGMENT_HPARAMS,
    RANDAUGMENT_OPS,
    SIGNED_OPS,
    op_argument,
)
from efficientnet_tf.data.mixing_device import mix_batch
from efficientnet_tf.data.pipeline import check_augmentation

# Folded with the run's seed so that the device streams differ from the host pipeline's.
DEVICE_SEED_SALT = 0x0A06D0E5

_GEOMETRIC_OPS = tuple(name for name in OP_NAMES if name in SIGNED_OPS)  # the signed ops are the geometric ones
_ENHANCE_OPS = ("Color", "Contrast", "Brightness", "Sharpness")


# ---------------------------------------------------------------------------------------------
# Helpers.


def _as_batch(images: tf.Tensor) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"batched augmentation expects [B, H, W, 3] images, got shape {images.shape}")
    return tf.cast(images, tf.float32)


def _per_image(value: float | tf.Tensor, images: tf.Tensor) -> tf.Tensor:
    """A scalar or `[B]` argument as float32 `[B, 1, 1, 1]`."""
    value = tf.cast(value, tf.float32)
    return tf.reshape(tf.broadcast_to(value, tf.shape(images)[:1]), [-1, 1, 1, 1])


def _to_pixels(images: tf.Tensor) -> tf.Tensor:
    """Round and clip to whole values in 0..255 (the uint8 cast of the host ops)."""
    return tf.clip_by_value(tf.round(images), 0.0, 255.0)


def _where_image(chosen: tf.Tensor, yes: tf.Tensor, no: tf.Tensor) -> tf.Tensor:
    """Per image: `yes` where `chosen[i]`, else `no`."""
    return tf.where(tf.reshape(chosen, [-1, 1, 1, 1]), yes, no)


# ---------------------------------------------------------------------------------------------
# Pixel (colour) operations, each with a scalar or per-image `[B]` argument.


def invert(images: tf.Tensor) -> tf.Tensor:
    """255 − pixel."""
    return 255.0 - _as_batch(images)


def posterize(images: tf.Tensor, shift: float | tf.Tensor) -> tf.Tensor:
    """Zero the `shift` lowest bits of every channel (shift clipped to 0..8)."""
    images = _as_batch(images)
    scale = tf.pow(2.0, tf.clip_by_value(tf.floor(_per_image(shift, images)), 0.0, 8.0))
    return tf.floor(images / scale) * scale


def solarize(images: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """Invert every pixel value at or above `threshold`."""
    images = _as_batch(images)
    return tf.where(images >= _per_image(threshold, images), 255.0 - images, images)


def solarize_add(images: tf.Tensor, addition: float | tf.Tensor, threshold: float = 128) -> tf.Tensor:
    """Add `addition` (saturating) to every pixel value below `threshold`."""
    images = _as_batch(images)
    added = tf.clip_by_value(images + _per_image(addition, images), 0.0, 255.0)
    return tf.where(images < threshold, added, images)


def autocontrast(images: tf.Tensor) -> tf.Tensor:
    """Stretch each channel of each image linearly to 0..255; flat channels are left alone."""
    images = _as_batch(images)
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    spread = high - low
    scale = tf.where(spread > 0, 255.0 / tf.maximum(spread, 1.0), 1.0)
    offset = tf.where(spread > 0, -low * scale, 0.0)
    return _to_pixels(images * scale + offset)


def equalize(images: tf.Tensor) -> tf.Tensor:
    """Histogram-equalise each channel of each image (the lookup table of augment.equalize)."""
    images = _as_batch(images)
    pixels = tf.cast(_to_pixels(images), tf.int32)
    batch = tf.shape(images)[0]
    # One 256-bin histogram per (image, channel): bin = (image · 3 + channel) · 256 + value.
    histogram_ids = (tf.range(batch)[:, None, None, None] * 3 + tf.range(3)) * 256 + pixels
    hist = tf.math.unsorted_segment_sum(tf.ones_like(histogram_ids), histogram_ids, batch * 768)
    hist = tf.reshape(hist, [batch, 3, 256])
    values = tf.range(256, dtype=tf.int32)
    last_value = tf.reduce_max(tf.where(hist > 0, values, -1), axis=2)
    last_count = tf.gather(hist, tf.maximum(last_value, 0), axis=2, batch_dims=2)
    step = (tf.reduce_sum(hist, axis=2) - last_count) // 255
    below = tf.cumsum(hist, axis=2, exclusive=True)
    lut = tf.clip_by_value((below + (step // 2)[..., None]) // tf.maximum(step, 1)[..., None], 0, 255)
    lut = tf.where(step[..., None] > 0, lut, values)
    return tf.cast(tf.gather(tf.reshape(lut, [-1]), histogram_ids), tf.float32)


def _grayscale(images: tf.Tensor) -> tf.Tensor:
    return tf.round(tf.image.rgb_to_grayscale(images))


def _blend(degenerate: tf.Tensor, images: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    return _to_pixels(degenerate + _per_image(factor, images) * (images - degenerate))


def _color_degenerate(images: tf.Tensor) -> tf.Tensor:
    return tf.tile(_grayscale(images), [1, 1, 1, 3])


def _contrast_degenerate(images: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(_grayscale(images), axis=[1, 2, 3], keepdims=True)
    return tf.broadcast_to(mean, tf.shape(images))


def _brightness_degenerate(images: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(images)


def _sharpness_degenerate(images: tf.Tensor) -> tf.Tensor:
    # The 3×3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 from shifted slices; the border keeps its value.
    rows = images[:, :-2] + images[:, 1:-1] + images[:, 2:]
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    smoothed = tf.round((box + 4.0 * images[:, 1:-1, 1:-1]) / 13.0)
    return images + tf.pad(smoothed - images[:, 1:-1, 1:-1], [[0, 0], [1, 1], [1, 1], [0, 0]])


_DEGENERATE: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "Color": _color_degenerate,
    "Contrast": _contrast_degenerate,
    "Brightness": _brightness_degenerate,
    "Sharpness": _sharpness_degenerate,
}


def color(images: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Saturation: 0 gives the greyscale image, 1 the original, > 1 more saturated."""
    images = _as_batch(images)
    return _blend(_color_degenerate(images), images, factor)


def contrast(images: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Contrast: 0 gives a flat image at the image's mean luma, 1 the original."""
    images = _as_batch(images)
    return _blend(_contrast_degenerate(images), images, factor)


def brightness(images: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Brightness: 0 gives black, 1 the original, > 1 brighter."""
    images = _as_batch(images)
    return _blend(_brightness_degenerate(images), images, factor)


def sharpness(images: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Sharpness: 0 gives a smoothed image, 1 the original, > 1 sharper; the 1-px border is kept."""
    images = _as_batch(images)
    return _blend(_sharpness_degenerate(images), images, factor)


# ---------------------------------------------------------------------------------------------
# Geometric operations: one affine map per image, sampled at the nearest pixel.


def _round_half_away(values: tf.Tensor) -> tf.Tensor:
    # ImageProjectiveTransformV3 (the host ops) rounds with std::round, halves away from zero.
    return tf.sign(values) * tf.floor(tf.abs(values) + 0.5)


def transform(images: tf.Tensor, transforms: tf.Tensor, fill: float = FILL_VALUE) -> tf.Tensor:
    """Per image, output (x, y) takes input (a0·x + a1·y + a2, b0·x + b1·y + b2); `transforms` is `[B, 6]`.

    Nearest pixel, constant `fill` outside: what augment.py's projective transform does, written
    as a gather so that XLA compiles it.
    """
    images = _as_batch(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    transforms = tf.cast(transforms, tf.float32)
    a0, a1, a2, b0, b1, b2 = (transforms[:, k, None, None] for k in range(6))
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    source_x = _round_half_away(a0 * xs + a1 * ys + a2)
    source_y = _round_half_away(b0 * xs + b1 * ys + b2)
    inside = (
        (source_x >= 0.0)
        & (source_x < tf.cast(width, tf.float32))
        & (source_y >= 0.0)
        & (source_y < tf.cast(height, tf.float32))
    )
    col = tf.cast(tf.clip_by_value(source_x, 0.0, tf.cast(width - 1, tf.float32)), tf.int32)
    row = tf.cast(tf.clip_by_value(source_y, 0.0, tf.cast(height - 1, tf.float32)), tf.int32)
    flat_index = (tf.range(batch)[:, None, None] * height + row) * width + col
    gathered = tf.gather(tf.reshape(images, [-1, 3]), flat_index)
    return tf.where(inside[..., None], gathered, tf.constant(float(fill), tf.float32))


def _rotation(degrees: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> list[tf.Tensor]:
    radians = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    # The same expressions, in the same order, as augment.rotate: equal float32 results.
    return [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]


def _affine_rows(name: str, amount: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """`[B, 6]` transforms of a geometric op for signed per-image amounts `[B]`."""
    one, zero = tf.ones_like(amount), tf.zeros_like(amount)
    if name == "Rotate":
        parts = _rotation(amount, height, width)
    elif name == "ShearX":
        parts = [one, amount, zero, zero, one, zero]
    elif name == "ShearY":
        parts = [one, zero, zero, amount, one, zero]
    elif name == "TranslateX":
        parts = [one, zero, -amount, zero, one, zero]
    else:
        parts = [one, zero, zero, zero, one, -amount]
    return tf.stack([p + zero for p in parts], axis=1)


def _geometric(images: tf.Tensor, name: str, amount: float | tf.Tensor) -> tf.Tensor:
    images = _as_batch(images)
    shape = tf.shape(images)
    amount = tf.broadcast_to(tf.cast(amount, tf.float32), shape[:1])
    return transform(images, _affine_rows(name, amount, shape[1], shape[2]))


def rotate(images: tf.Tensor, degrees: float | tf.Tensor) -> tf.Tensor:
    """Rotate each image counter-clockwise by its `degrees` about its centre."""
    return _geometric(images, "Rotate", degrees)


def shear_x(images: tf.Tensor, shear: float | tf.Tensor) -> tf.Tensor:
    """Horizontal shear: output (x, y) takes input (x + shear·y, y)."""
    return _geometric(images, "ShearX", shear)


def shear_y(images: tf.Tensor, shear: float | tf.Tensor) -> tf.Tensor:
    """Vertical shear: output (x, y) takes input (x, y + shear·x)."""
    return _geometric(images, "ShearY", shear)


def translate_x(images: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
    """Move the content `pixels` to the right (left when negative)."""
    return _geometric(images, "TranslateX", pixels)


def translate_y(images: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
    """Move the content `pixels` down (up when negative)."""
    return _geometric(images, "TranslateY", pixels)


def cutout_at(
    images: tf.Tensor,
    half_size: float | tf.Tensor,
    center_y: int | tf.Tensor,
    center_x: int | tf.Tensor,
    fill: float = FILL_VALUE,
) -> tf.Tensor:
    """Per image, fill the square [cy − s, cy + s) × [cx − s, cx + s) (clipped) with `fill`."""
    images = _as_batch(images)
    shape = tf.shape(images)

    def column(value) -> tf.Tensor:
        return tf.reshape(tf.broadcast_to(tf.cast(value, tf.int32), shape[:1]), [-1, 1, 1])

    size, cy, cx = column(half_size), column(center_y), column(center_x)
    rows = tf.range(shape[1])[None, :, None]
    cols = tf.range(shape[2])[None, None, :]
    inside = (rows >= cy - size) & (rows < cy + size) & (cols >= cx - size) & (cols < cx + size)
    return tf.where(inside[..., None], tf.constant(float(fill), tf.float32), images)


# ---------------------------------------------------------------------------------------------
# One op per image, chosen by index.


def apply_ops(
    images: tf.Tensor,
    op_ids: tf.Tensor,
    arguments: tf.Tensor,
    *,
    seed: tf.Tensor | None = None,
    candidates: Iterable[str] = OP_NAMES,
) -> tf.Tensor:
    """Apply to image i the op `OP_NAMES[op_ids[i]]` with argument `arguments[i]`; −1 leaves it.

    The arguments are augment.op_argument's; the signed ops get a random sign per image and
    Cutout a random centre per image. Only the ops named in `candidates` are computed.
    """
    images = _as_batch(images)
    rng = RandomStream(seed)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    op_ids = tf.cast(op_ids, tf.int32)
    arguments = tf.cast(arguments, tf.float32)
    candidates = sorted(set(candidates), key=OP_NAMES.index)
    sign = tf.where(rng.uniform([batch]) < 0.5, -1.0, 1.0)
    center_y = rng.integer(height, [batch])
    center_x = rng.integer(width, [batch])

    def chosen(name: str) -> tf.Tensor:
        return tf.equal(op_ids, OP_NAMES.index(name))

    out = images
    geometric = [name for name in candidates if name in _GEOMETRIC_OPS]
    if geometric:
        amount = arguments * sign
        identity = tf.constant([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]]) + tf.zeros([batch, 1])
        rows = identity
        for name in geometric:
            rows = tf.where(chosen(name)[:, None], _affine_rows(name, amount, height, width), rows)
        any_geometric = tf.reduce_any(tf.stack([chosen(name) for name in geometric]), axis=0)
        out = _where_image(any_geometric, transform(images, rows), out)
    enhance = [name for name in candidates if name in _ENHANCE_OPS]
    if enhance:
        degenerate = images
        for name in enhance:
            degenerate = _where_image(chosen(name), _DEGENERATE[name](images), degenerate)
        any_enhance = tf.reduce_any(tf.stack([chosen(name) for name in enhance]), axis=0)
        out = _where_image(any_enhance, _blend(degenerate, images, arguments), out)
    pixel_ops: dict[str, Callable[[], tf.Tensor]] = {
        "AutoContrast": lambda: autocontrast(images),
        "Equalize": lambda: equalize(images),
        "Invert": lambda: invert(images),
        "Posterize": lambda: posterize(images, arguments),
        "Solarize": lambda: solarize(images, arguments),
        "SolarizeAdd": lambda: solarize_add(images, arguments),
        "Cutout": lambda: cutout_at(images, arguments, center_y, center_x),
    }
    for name in candidates:
        if name in pixel_ops:
            out = _where_image(chosen(name), pixel_ops[name](), out)
    return out


def _table(values: Iterable[float], dtype: tf.DType = tf.float32) -> tf.Tensor:
    return tf.constant(list(values), dtype)


Plan = list[tuple[tf.Tensor, tf.Tensor]]  # per stage: op ids `[B]` (−1: none) and their arguments `[B]`


def _autoaugment_plan(rng: RandomStream, batch: tf.Tensor) -> Plan:
    choice = rng.integer(len(POLICY_V0), [batch])
    plan = []
    for stage in range(2):
        ops = [sub_policy[stage] for sub_policy in POLICY_V0]
        op_table = _table((OP_NAMES.index(name) for name, _, _ in ops), tf.int32)
        probabilities = _table(probability for _, probability, _ in ops)
        arguments = _table(float(op_argument(name, level, AUTOAUGMENT_HPARAMS)) for name, _, level in ops)
        applied = rng.uniform([batch]) < tf.gather(probabilities, choice)
        plan.append((tf.where(applied, tf.gather(op_table, choice), -1), tf.gather(arguments, choice)))
    return plan


def _randaugment_plan(rng: RandomStream, batch: tf.Tensor, num_layers: int, magnitude: float) -> Plan:
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    op_table = _table((OP_NAMES.index(name) for name in RANDAUGMENT_OPS), tf.int32)
    arguments = _table(float(op_argument(name, float(magnitude), RANDAUGMENT_HPARAMS)) for name in RANDAUGMENT_OPS)
    plan = []
    for _ in range(int(num_layers)):
        pick = rng.integer(len(RANDAUGMENT_OPS), [batch])
        plan.append((tf.gather(op_table, pick), tf.gather(arguments, pick)))
    return plan


def autoaugment_v0_plan(batch: int | tf.Tensor, *, seed: tf.Tensor | None = None) -> Plan:
    """The per-image choices `autoaugment_v0` makes with this seed: a sub-policy, then each op or not."""
    return _autoaugment_plan(RandomStream(seed), batch)


def randaugment_plan(
    batch: int | tf.Tensor, num_layers: int = 2, magnitude: float = 10, *, seed: tf.Tensor | None = None
) -> Plan:
    """The per-image choices `randaugment` makes with this seed: `num_layers` ops drawn uniformly."""
    return _randaugment_plan(RandomStream(seed), batch, num_layers, magnitude)


def _run_plan(images: tf.Tensor, plan: Plan, rng: RandomStream, candidates: list[Iterable[str]]) -> tf.Tensor:
    for (op_ids, arguments), names in zip(plan, candidates, strict=True):
        images = apply_ops(images, op_ids, arguments, seed=rng.sub_seed(), candidates=names)
    return images


def autoaugment_v0(images: tf.Tensor, *, seed: tf.Tensor | None = None) -> tf.Tensor:
    """AutoAugment policy v0 per image: a uniformly drawn sub-policy, its two ops each with its probability."""
    images = _to_pixels(_as_batch(images))
    rng = RandomStream(seed)
    plan = _autoaugment_plan(rng, tf.shape(images)[0])
    # Per stage, only the ops that stage of some sub-policy uses are computed.
    candidates = [[sub_policy[stage][0] for sub_policy in POLICY_V0] for stage in range(2)]
    return _run_plan(images, plan, rng, candidates)


def randaugment(
    images: tf.Tensor, num_layers: int = 2, magnitude: float = 10, *, seed: tf.Tensor | None = None
) -> tf.Tensor:
    """RandAugment per image: `num_layers` ops, each drawn uniformly from the 16, at `magnitude`."""
    images = _to_pixels(_as_batch(images))
    rng = RandomStream(seed)
    plan = _randaugment_plan(rng, tf.shape(images)[0], num_layers, magnitude)
    return _run_plan(images, plan, rng, [RANDAUGMENT_OPS] * len(plan))


# ---------------------------------------------------------------------------------------------
# The train step's entry point.


def augment_batch(
    images: tf.Tensor,
    labels: tf.Tensor,
    *,
    augment: str,
    randaug_num_layers: int,
    randaug_magnitude: float,
    mixup_alpha: float,
    cutmix_alpha: float,
    seed: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """What the host pipeline does after resizing (policy per image, then mixing), on a batch."""
    augment = check_augmentation(augment, randaug_num_layers, randaug_magnitude, mixup_alpha, cutmix_alpha)
    rng = RandomStream(seed)
    images = _as_batch(images)
    if augment == "autoaugment":
        images = autoaugment_v0(images, seed=rng.sub_seed())
    elif augment == "randaugment":
        images = randaugment(images, int(randaug_num_layers), float(randaug_magnitude), seed=rng.sub_seed())
    labels = tf.cast(labels, tf.float32)
    return mix_batch(images, labels, float(mixup_alpha), float(cutmix_alpha), seed=rng.sub_seed())


@dataclasses.dataclass(frozen=True)
class DeviceAugmentation:
    """A run's augmentation settings and base seed, applied per replica inside the train step."""

    augment: str
    randaug_num_layers: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    seed: int

    @classmethod
    def create(
        cls,
        *,
        augment: str,
        randaug_num_layers: int,
        randaug_magnitude: float,
        mixup_alpha: float,
        cutmix_alpha: float,
        seed: int | None,
        deterministic: bool = False,
    ) -> DeviceAugmentation | None:
        """The augmentation, or None when the settings ask for none; the seed policy of the host pipeline."""
        augment = check_augmentation(augment, randaug_num_layers, randaug_magnitude, mixup_alpha, cutmix_alpha)
        if augment == "none" and mixup_alpha <= 0 and cutmix_alpha <= 0:
            return None
        if seed is None:
            if deterministic:
                seed = 0
                logging.info("Deterministic augmentation on the device without a seed: using seed 0")
            else:
                seed = random.SystemRandom().randrange(1 << 31)
        return cls(augment, int(randaug_num_layers), float(randaug_magnitude), float(mixup_alpha),
                   float(cutmix_alpha), int(seed))

    def step_seed(self, step: tf.Tensor | int, replica_id: tf.Tensor | int) -> tf.Tensor:
        """The `[2]` seed of one replica's batch at one step: the same on a rerun or a resumed run."""
        base = tf.constant([self.seed, DEVICE_SEED_SALT], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int64))
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int64))

    def __call__(
        self, images: tf.Tensor, labels: tf.Tensor, step: tf.Tensor | int, replica_id: tf.Tensor | int
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """Augment one replica's batch (float32 images 0..255, one-hot labels) at `step`."""
        return augment_batch(
            images, labels, augment=self.augment, randaug_num_layers=self.randaug_num_layers,
            randaug_magnitude=self.randaug_magnitude, mixup_alpha=self.mixup_alpha,
            cutmix_alpha=self.cutmix_alpha, seed=self.step_seed(step, replica_id),
        )
