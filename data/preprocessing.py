"""Decoding, cropping and resizing of one encoded image (docs/recipe.md §4).

Training: an Inception-style random crop (8–100 % of the area, aspect 3/4–4/3, at least 10 % of
the object, 10 attempts, falling back to the evaluation crop) fused with JPEG decoding, a random
horizontal flip and a resize. Evaluation: the central size/(size + 32) of the shorter side, then a
resize. Both return float32 `[size, size, 3]` with values in 0..255; normalisation is the model's
job. JPEGs are decoded only inside the crop window (`tf.io.decode_and_crop_jpeg`); PNG, BMP and GIF
(first frame) are decoded whole and then cropped. Greyscale and CMYK images come out as RGB.
"""

from __future__ import annotations

import tensorflow as tf

from efficientnet_tf.errors import UserError

from efficientnet_tf.data._random import RandomStream

CROP_PADDING = 32
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MIN_OBJECT_COVERED = 0.1
MAX_ATTEMPTS = 10

RESIZE_METHODS = (
    "bicubic",
    "bilinear",
    "area",
    "nearest",
    "lanczos3",
    "lanczos5",
    "gaussian",
    "mitchellcubic",
)


def check_resize_method(resize_method: str) -> str:
    """Return the tf.image.resize method name for `resize_method`, or raise ValueError."""
    method = resize_method.lower()
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize_method {resize_method!r}; use one of {', '.join(RESIZE_METHODS)}")
    return method


def _tf_method(method: str) -> str:
    return tf.image.ResizeMethod.NEAREST_NEIGHBOR if method == "nearest" else method


def center_crop_window(image_shape: tf.Tensor, image_size: int) -> tf.Tensor:
    """[offset_y, offset_x, height, width] of the central size/(size + 32) square of the shorter side."""
    height, width = image_shape[0], image_shape[1]
    fraction = image_size / (image_size + CROP_PADDING)
    crop = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    crop = tf.maximum(crop, 1)
    offset_y = (height - crop + 1) // 2
    offset_x = (width - crop + 1) // 2
    return tf.stack([offset_y, offset_x, crop, crop])


def random_crop_window(
    image_shape: tf.Tensor, image_size: int, rng: RandomStream, min_area: float = AREA_RANGE[0]
) -> tf.Tensor:
    """[offset_y, offset_x, height, width] of an Inception-style random crop (eval crop on failure).

    The crop covers `min_area`..100% of the image (the reference: 8%); short schedules on small
    datasets learn faster with a larger minimum.
    """
    image_shape = tf.cast(image_shape, tf.int32)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    kwargs = dict(
        bounding_boxes=whole_image,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=(float(min_area), AREA_RANGE[1]),
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    if rng.seeded:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            image_shape, seed=rng.next_seed(), **kwargs
        )
    else:
        begin, size, _ = tf.image.sample_distorted_bounding_box(image_shape, **kwargs)
    # When no box satisfies the constraints within MAX_ATTEMPTS the op returns the whole image;
    # the reference then uses the evaluation crop instead, and so do we.
    failed = tf.logical_and(tf.equal(size[0], image_shape[0]), tf.equal(size[1], image_shape[1]))
    sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.where(failed, center_crop_window(image_shape, image_size), sampled)


def _decode_and_crop(image_bytes: tf.Tensor, window_fn) -> tf.Tensor:
    """Decode `image_bytes` to uint8 RGB, cropped to `window_fn(shape)`; fused for JPEGs."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def jpeg():
        window = window_fn(tf.io.extract_jpeg_shape(image_bytes))
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        window = window_fn(tf.shape(image))
        return tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], 3]))

    crop = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    return tf.ensure_shape(crop, [None, None, 3])


def _resize(image: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
    resized = tf.image.resize(image, [image_size, image_size], method=_tf_method(method))
    # Bicubic and Lanczos overshoot; keep the documented 0..255 range.
    resized = tf.clip_by_value(tf.cast(resized, tf.float32), 0.0, 255.0)
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes to a uint8 RGB `[H, W, 3]` image (first frame of a GIF)."""
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def preprocess_for_train(
    image_bytes: tf.Tensor,
    image_size: int,
    resize_method: str = "bicubic",
    seed: tf.Tensor | None = None,
    min_crop_area: float = AREA_RANGE[0],
) -> tf.Tensor:
    """Random Inception crop, random horizontal flip and resize → float32 [size, size, 3] in 0..255."""
    method = check_resize_method(resize_method)
    if not 0.0 < float(min_crop_area) <= 1.0:
        raise UserError(f"min_crop_area must be in (0, 1], got {min_crop_area}")
    rng = RandomStream(seed)
    crop = _decode_and_crop(image_bytes, lambda shape: random_crop_window(shape, image_size, rng, min_crop_area))
    if rng.seeded:
        crop = tf.image.stateless_random_flip_left_right(crop, seed=rng.next_seed())
    else:
        crop = tf.image.random_flip_left_right(crop)
    return _resize(crop, image_size, method)


def preprocess_for_eval(image_bytes: tf.Tensor, image_size: int, resize_method: str = "bicubic") -> tf.Tensor:
    """Central size/(size + 32) crop and resize → float32 [size, size, 3] in 0..255."""
    method = check_resize_method(resize_method)
    crop = _decode_and_crop(image_bytes, lambda shape: center_crop_window(shape, image_size))
    return _resize(crop, image_size, method)
