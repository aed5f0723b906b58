"""AutoAugment (ImageNet policy v0) and RandAugment as TensorFlow graph ops on one uint8 image.

Everything here works on a single `uint8 [H, W, 3]` image inside a `tf.data` map function and
returns a `uint8` image of the same shape. The numbers (policy, level-to-argument mapping, fill
value 128) are those of the EfficientNet reference recipe, written down in docs/recipe.md §5.

Conventions used by the geometric ops (x = column, y = row, origin top-left):
- `rotate(image, degrees)` turns the content counter-clockwise as seen on screen, about the centre.
- `shear_x(image, s)`: output pixel (x, y) comes from input (x + s·y, y); `shear_y` likewise.
- `translate_x(image, dx)`: content moves dx pixels to the right (down for `translate_y`).
Pixels that come from outside the input are filled with `FILL_VALUE`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from efficientnet_tf.data._random import RandomStream

FILL_VALUE = 128
MAX_LEVEL = 10.0

# (translate_const, cutout_const) per policy family, docs/recipe.md §5.
AUTOAUGMENT_HPARAMS = {"translate_const": 250.0, "cutout_const": 100.0}
RANDAUGMENT_HPARAMS = {"translate_const": 100.0, "cutout_const": 40.0}


# ---------------------------------------------------------------------------------------------
# Pixel (colour) operations.


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Round a float image, clip it to 0..255 and cast to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def invert(image: tf.Tensor) -> tf.Tensor:
    """255 − pixel."""
    return tf.constant(255, tf.uint8) - image


def posterize(image: tf.Tensor, shift: int | tf.Tensor) -> tf.Tensor:
    """Zero the `shift` lowest bits of every channel (keep the top 8 − shift bits)."""
    shift = tf.clip_by_value(tf.cast(shift, tf.int32), 0, 8)
    mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(tf.constant(255, tf.int32), shift), 255)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.uint8)


def solarize(image: tf.Tensor, threshold: int | tf.Tensor) -> tf.Tensor:
    """Invert every pixel value at or above `threshold`."""
    pixels = tf.cast(image, tf.int32)
    # Arithmetic select (x or 255 − x): several times faster than tf.where on CPU.
    flip = tf.cast(pixels >= tf.cast(threshold, tf.int32), tf.int32)
    return tf.cast(pixels + flip * (255 - 2 * pixels), tf.uint8)


def solarize_add(image: tf.Tensor, addition: int | tf.Tensor, threshold: int = 128) -> tf.Tensor:
    """Add `addition` (saturating) to every pixel value below `threshold`."""
    pixels = tf.cast(image, tf.int32)
    added = tf.clip_by_value(pixels + tf.cast(addition, tf.int32), 0, 255)
    below = tf.cast(pixels < threshold, tf.int32)
    return tf.cast(pixels + below * (added - pixels), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretch each channel linearly so that its minimum becomes 0 and its maximum 255."""
    pixels = tf.cast(image, tf.float32)
    low = tf.reduce_min(pixels, axis=[0, 1])
    high = tf.reduce_max(pixels, axis=[0, 1])
    spread = high - low
    # A flat channel has nothing to stretch and is left as it is.
    scale = tf.where(spread > 0, 255.0 / tf.maximum(spread, 1.0), 1.0)
    offset = tf.where(spread > 0, -low * scale, 0.0)
    return _to_uint8(pixels * scale + offset)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram-equalise each channel (the lookup table PIL's ImageOps.equalize builds)."""
    pixels = tf.cast(image, tf.int32)
    channel_offsets = tf.range(3, dtype=tf.int32) * 256
    hist = tf.math.bincount(
        tf.reshape(pixels + channel_offsets, [-1]), minlength=768, maxlength=768, dtype=tf.int32
    )
    hist = tf.reshape(hist, [3, 256])
    values = tf.range(256, dtype=tf.int32)
    # Count of the brightest value present: it is left out of the step so that it maps to 255.
    last_value = tf.reduce_max(tf.where(hist > 0, values[None, :], -1), axis=1)
    last_count = tf.gather(hist, tf.maximum(last_value, 0), axis=1, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - last_count) // 255
    below = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.clip_by_value((below + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None], 0, 255)
    # step == 0 (a channel with one value, or nearly so) is left unchanged.
    lut = tf.where(step[:, None] > 0, lut, values[None, :])
    equalized = tf.gather(tf.reshape(lut, [-1]), pixels + channel_offsets)
    return tf.cast(equalized, tf.uint8)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """degenerate + factor · (image − degenerate), clipped to 0..255 (factor > 1 extrapolates)."""
    image = tf.cast(image, tf.float32)
    degenerate = tf.cast(degenerate, tf.float32)
    factor = tf.cast(factor, tf.float32)
    return _to_uint8(degenerate + factor * (image - degenerate))


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    """Luma of a uint8 image as float32 [H, W, 1], rounded to whole values."""
    return tf.round(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))


def color(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Saturation: 0 gives the greyscale image, 1 the original, > 1 more saturated."""
    return _blend(tf.tile(_grayscale(image), [1, 1, 3]), image, factor)


def contrast(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Contrast: 0 gives a flat image at the mean luma, 1 the original, > 1 more contrast."""
    mean = tf.reduce_mean(_grayscale(image))
    return _blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Brightness: 0 gives black, 1 the original, > 1 brighter."""
    return _blend(tf.zeros_like(image, tf.float32), image, factor)


def sharpness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
    """Sharpness: 0 gives a smoothed image, 1 the original, > 1 sharper; the 1-px border is kept."""
    pixels = tf.cast(image, tf.float32)
    # The 3×3 kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a box sum plus 4× the centre, from
    # shifted slices (much faster on CPU than a depthwise convolution).
    rows = pixels[:-2] + pixels[1:-1] + pixels[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    smoothed = tf.round((box + 4.0 * pixels[1:-1, 1:-1]) / 13.0)
    # Border pixels keep their value: only the interior gets the (smoothed − original) change.
    degenerate = pixels + tf.pad(smoothed - pixels[1:-1, 1:-1], [[1, 1], [1, 1], [0, 0]])
    return _blend(degenerate, pixels, factor)


# ---------------------------------------------------------------------------------------------
# Geometric operations.


def _project(image: tf.Tensor, transform: list, fill: int = FILL_VALUE) -> tf.Tensor:
    """Apply a projective transform (output → input coordinates), nearest pixel, constant fill."""
    transform = tf.reshape(tf.stack([tf.cast(t, tf.float32) for t in transform]), [1, 8])
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=shape[:2],
        fill_value=tf.constant(float(fill), tf.float32),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]
    return tf.ensure_shape(out, image.shape)


def rotate(image: tf.Tensor, degrees: float | tf.Tensor, fill: int = FILL_VALUE) -> tf.Tensor:
    """Rotate counter-clockwise by `degrees` about the image centre."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    shape = tf.cast(tf.shape(image), tf.float32)
    cy, cx = (shape[0] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
    # Output (x, y) samples input R(θ)·(x − c) + c, with y pointing down.
    return _project(
        image,
        [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0],
        fill,
    )


def shear_x(image: tf.Tensor, shear: float | tf.Tensor, fill: int = FILL_VALUE) -> tf.Tensor:
    """Horizontal shear: output (x, y) takes input (x + shear·y, y)."""
    return _project(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], fill)


def shear_y(image: tf.Tensor, shear: float | tf.Tensor, fill: int = FILL_VALUE) -> tf.Tensor:
    """Vertical shear: output (x, y) takes input (x, y + shear·x)."""
    return _project(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0], fill)


def translate_x(image: tf.Tensor, pixels: float | tf.Tensor, fill: int = FILL_VALUE) -> tf.Tensor:
    """Move the content `pixels` to the right (left when negative)."""
    return _project(image, [1.0, 0.0, -tf.cast(pixels, tf.float32), 0.0, 1.0, 0.0, 0.0, 0.0], fill)


def translate_y(image: tf.Tensor, pixels: float | tf.Tensor, fill: int = FILL_VALUE) -> tf.Tensor:
    """Move the content `pixels` down (up when negative)."""
    return _project(image, [1.0, 0.0, 0.0, 0.0, 1.0, -tf.cast(pixels, tf.float32), 0.0, 0.0], fill)


def cutout_at(
    image: tf.Tensor,
    half_size: int | tf.Tensor,
    center_y: int | tf.Tensor,
    center_x: int | tf.Tensor,
    fill: int = FILL_VALUE,
) -> tf.Tensor:
    """Fill the square [cy − s, cy + s) × [cx − s, cx + s) (clipped to the image) with `fill`."""
    shape = tf.shape(image)
    half_size = tf.cast(half_size, tf.int32)
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    cy, cx = tf.cast(center_y, tf.int32), tf.cast(center_x, tf.int32)
    inside = (
        (rows >= cy - half_size)
        & (rows < cy + half_size)
        & (cols >= cx - half_size)
        & (cols < cx + half_size)
    )
    return tf.where(inside, tf.constant(fill, tf.uint8), image)


def cutout(
    image: tf.Tensor, half_size: int | tf.Tensor, *, seed: tf.Tensor | None = None, fill: int = FILL_VALUE
) -> tf.Tensor:
    """Fill a square of half-size `half_size` at a uniformly random centre with `fill`."""
    rng = RandomStream(seed)
    return _cutout(image, half_size, rng, fill)


def _cutout(image: tf.Tensor, half_size, rng: RandomStream, fill: int = FILL_VALUE) -> tf.Tensor:
    shape = tf.shape(image)
    return cutout_at(image, half_size, rng.integer(shape[0]), rng.integer(shape[1]), fill)


# ---------------------------------------------------------------------------------------------
# Level (0..10, or beyond for RandAugment) to operation, docs/recipe.md §5.
# Notes on two mappings taken as the recipe states them:
# - Posterize shifts out int(level/10·4) bits, so level 0 leaves the image alone and level 10
#   keeps 4 bits (beyond 10 the shift is capped at 8, a black image).
# - AutoAugment translates by up to 250 px (translate_const 250), which at 224 px moves the whole
#   picture out of frame for TranslateY at level 9: that sub-policy yields a grey image 80 % of
#   the times it is drawn, as in the reference.


def _enhance_factor(level: float) -> float:
    return level / MAX_LEVEL * 1.8 + 0.1


# The argument each op takes at a level; the signed ops get a random sign on top.
_LEVEL_TO_ARG: dict[str, Callable[[float, dict], float]] = {
    "AutoContrast": lambda level, hp: 0.0,
    "Equalize": lambda level, hp: 0.0,
    "Invert": lambda level, hp: 0.0,
    "Rotate": lambda level, hp: level / MAX_LEVEL * 30.0,
    "Posterize": lambda level, hp: int(level / MAX_LEVEL * 4),
    "Solarize": lambda level, hp: int(level / MAX_LEVEL * 256),
    "SolarizeAdd": lambda level, hp: int(level / MAX_LEVEL * 110),
    "Color": lambda level, hp: _enhance_factor(level),
    "Contrast": lambda level, hp: _enhance_factor(level),
    "Brightness": lambda level, hp: _enhance_factor(level),
    "Sharpness": lambda level, hp: _enhance_factor(level),
    "ShearX": lambda level, hp: level / MAX_LEVEL * 0.3,
    "ShearY": lambda level, hp: level / MAX_LEVEL * 0.3,
    "TranslateX": lambda level, hp: level / MAX_LEVEL * hp["translate_const"],
    "TranslateY": lambda level, hp: level / MAX_LEVEL * hp["translate_const"],
    "Cutout": lambda level, hp: int(level / MAX_LEVEL * hp["cutout_const"]),
}

SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


def op_argument(name: str, level: float, hparams: dict | None = None) -> float:
    """The argument of op `name` at `level` (degrees, shear, pixels, bits, threshold, factor ...), unsigned."""
    if name not in _LEVEL_TO_ARG:
        raise ValueError(f"unknown augmentation op {name!r}; known: {', '.join(_LEVEL_TO_ARG)}")
    return _LEVEL_TO_ARG[name](level, hparams or AUTOAUGMENT_HPARAMS)


_OpFn = Callable[[tf.Tensor, float, RandomStream], tf.Tensor]

_APPLY: dict[str, _OpFn] = {
    "AutoContrast": lambda img, arg, rng: autocontrast(img),
    "Equalize": lambda img, arg, rng: equalize(img),
    "Invert": lambda img, arg, rng: invert(img),
    "Rotate": lambda img, arg, rng: rotate(img, rng.sign() * arg),
    "Posterize": lambda img, arg, rng: posterize(img, arg),
    "Solarize": lambda img, arg, rng: solarize(img, arg),
    "SolarizeAdd": lambda img, arg, rng: solarize_add(img, arg),
    "Color": lambda img, arg, rng: color(img, arg),
    "Contrast": lambda img, arg, rng: contrast(img, arg),
    "Brightness": lambda img, arg, rng: brightness(img, arg),
    "Sharpness": lambda img, arg, rng: sharpness(img, arg),
    "ShearX": lambda img, arg, rng: shear_x(img, rng.sign() * arg),
    "ShearY": lambda img, arg, rng: shear_y(img, rng.sign() * arg),
    "TranslateX": lambda img, arg, rng: translate_x(img, rng.sign() * arg),
    "TranslateY": lambda img, arg, rng: translate_y(img, rng.sign() * arg),
    "Cutout": lambda img, arg, rng: _cutout(img, arg, rng),
}


def _run_op(image: tf.Tensor, name: str, level: float, rng: RandomStream, hparams: dict) -> tf.Tensor:
    return _APPLY[name](image, op_argument(name, level, hparams), rng)


OP_NAMES: tuple[str, ...] = tuple(_APPLY)

# The 16 operations RandAugment draws from (docs/recipe.md §5).
RANDAUGMENT_OPS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)  # fmt: skip

# AutoAugment ImageNet policy v0: 25 sub-policies of two (op, probability, level) each.
POLICY_V0: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


def apply_op(
    image: tf.Tensor,
    name: str,
    level: float,
    *,
    seed: tf.Tensor | None = None,
    hparams: dict | None = None,
) -> tf.Tensor:
    """Apply the named operation at `level` (random sign / position drawn as the recipe says)."""
    if name not in _APPLY:
        raise ValueError(f"unknown augmentation op {name!r}; known: {', '.join(OP_NAMES)}")
    return _run_op(image, name, level, RandomStream(seed), hparams or AUTOAUGMENT_HPARAMS)


def _maybe_apply(image: tf.Tensor, name: str, probability: float, level: float, rng, hparams) -> tf.Tensor:
    if probability <= 0.0:
        return image
    if probability >= 1.0:
        return _run_op(image, name, level, rng, hparams)
    return tf.cond(
        rng.bernoulli(probability), lambda: _run_op(image, name, level, rng, hparams), lambda: tf.identity(image)
    )


def _check_image(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"augmentation expects a uint8 image, got {image.dtype.name}")
    if image.shape.rank != 3:
        raise ValueError(f"augmentation expects one [H, W, 3] image, got shape {image.shape}")
    return image


def autoaugment_v0(image: tf.Tensor, *, seed: tf.Tensor | None = None) -> tf.Tensor:
    """AutoAugment ImageNet policy v0: one of 25 sub-policies drawn uniformly, its two ops applied."""
    image = _check_image(image)
    rng = RandomStream(seed)
    hparams = AUTOAUGMENT_HPARAMS

    def branch(sub_policy):
        def run():
            out = image
            for name, probability, level in sub_policy:
                out = _maybe_apply(out, name, probability, level, rng, hparams)
            return out

        return run

    choice = rng.integer(len(POLICY_V0))
    out = tf.switch_case(choice, [branch(p) for p in POLICY_V0])
    return tf.ensure_shape(out, image.shape)


def randaugment(
    image: tf.Tensor, num_layers: int = 2, magnitude: float = 10, *, seed: tf.Tensor | None = None
) -> tf.Tensor:
    """RandAugment: `num_layers` ops drawn uniformly from the 16, each applied at `magnitude`."""
    image = _check_image(image)
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    rng = RandomStream(seed)
    magnitude = float(magnitude)
    hparams = RANDAUGMENT_HPARAMS
    out = image
    for _ in range(int(num_layers)):
        choice = rng.integer(len(RANDAUGMENT_OPS))
        current = out
        branches = [
            (lambda name=name, current=current: _run_op(current, name, magnitude, rng, hparams))
            for name in RANDAUGMENT_OPS
        ]
        out = tf.ensure_shape(tf.switch_case(choice, branches), image.shape)
    return out
