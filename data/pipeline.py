"""tf.data input pipelines for training and evaluation over a `Source`.

Training: shard per input pipeline → (cache encoded bytes) → shuffle → repeat → per element, in
parallel: read, decode with the Inception crop, flip, resize, augment (AutoAugment v0, RandAugment
or none) → batch (drop remainder) → [keras-cv's RandAugment per batch, with
augment_backend="keras_cv", instead of the per-image augment] → one-hot labels, mixup / cutmix
→ prefetch.
Evaluation: shard → read, centre crop, resize → batch → prefetch, one pass.

Every random choice is drawn from a per-element seed folded from (seed, input pipeline, element
counter), so with `deterministic=True` and a seed two runs yield identical batches; without a seed
one is drawn at random. Bad items (undecodable images, missing files, labels out of range) are
dropped and recorded in `source.bad_files`; they never stop an epoch.
"""

from __future__ import annotations

import random

import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError

from efficientnet_tf.data import augment as augment_lib
from efficientnet_tf.data import augment_keras_cv, mixing, preprocessing
from efficientnet_tf.data._guard import OK, guarded_map, label_status
from efficientnet_tf.data.sources import Source

AUGMENTATIONS = ("autoaugment", "randaugment", "none")


def _check_common(image_size: int, batch_size: int, resize_method: str) -> str:
    if int(image_size) < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}")
    if int(batch_size) < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    try:
        return preprocessing.check_resize_method(resize_method)
    except ValueError as error:
        raise UserError(str(error)) from None


def check_augmentation(
    augment: str | None, randaug_num_layers: int, randaug_magnitude: float, mixup_alpha: float, cutmix_alpha: float
) -> str:
    """The augmentation name in lower case; UserError for settings out of range."""
    augment = (augment or "none").lower()
    if augment not in AUGMENTATIONS:
        raise UserError(f"unknown augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise UserError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
    if augment == "randaugment" and (randaug_num_layers < 0 or randaug_magnitude < 0):
        raise UserError(
            "randaug_num_layers and randaug_magnitude must be >= 0, "
            f"got {randaug_num_layers} and {randaug_magnitude}"
        )
    return augment


def _options(deterministic: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    options.experimental_optimization.map_parallelization = True
    return options


def _pipeline_seed(seed: int, input_context: tf.distribute.InputContext | None) -> tf.Tensor:
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    return tf.constant([seed, pipeline_id], tf.int64)


def build_train_dataset(
    src: Source,
    *,
    image_size: int,
    batch_size: int,
    resize_method: str,
    augment: str,
    randaug_num_layers: int,
    randaug_magnitude: float,
    mixup_alpha: float,
    cutmix_alpha: float,
    min_crop_area: float,
    seed: int | None,
    deterministic: bool = False,
    cache: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    augment_backend: str = "native",
) -> tf.data.Dataset:
    """Infinite shuffled batches (float32 [B, H, W, 3] in 0..255, float32 one-hot [B, classes]).

    The augmentation settings have no defaults here: they come from the config (`data:` section
    of hparams/defaults.yaml); `seed=None` draws a random seed unless `deterministic`.
    `augment_backend="keras_cv"` runs keras-cv's RandAugment on each batch instead of the native
    per-image ops (data/augment_keras_cv.py; RandAugment only, not deterministic).
    """
    method = _check_common(image_size, batch_size, resize_method)
    if not 0.0 < float(min_crop_area) <= 1.0:
        raise UserError(f"min_crop_area must be in (0, 1], got {min_crop_area}")
    augment = check_augmentation(augment, randaug_num_layers, randaug_magnitude, mixup_alpha, cutmix_alpha)
    backend = augment_keras_cv.check_backend(augment_backend, augment, magnitude=randaug_magnitude,
                                             deterministic=deterministic)
    if src.num_train == 0:
        raise UserError(f"dataset {src.name} has no training images ({src.location})")
    if input_context is not None and src.num_train < input_context.num_input_pipelines:
        raise UserError(
            f"dataset {src.name} has {src.num_train} training images, fewer than the "
            f"{input_context.num_input_pipelines} input pipelines that each need a share"
        )
    if seed is None:
        if deterministic:
            seed = 0
            logging.info("Deterministic input pipeline without a seed: using seed 0")
        else:
            seed = random.SystemRandom().randrange(1 << 31)
    seed = int(seed)
    image_size, batch_size = int(image_size), int(batch_size)
    num_classes = src.num_classes
    base_seed = _pipeline_seed(seed, input_context)
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    keras_cv_augment = None
    if backend == "keras_cv" and augment != "none":
        keras_cv_augment = augment_keras_cv.batch_augmenter(randaug_num_layers, randaug_magnitude,
                                                            seed + 7919 * pipeline_id)
        augment = "none"  # the per-image native ops are skipped; keras-cv augments each batch

    records = src.records("train", input_context, shuffle_files=True, seed=seed + 7919 * pipeline_id)
    if cache:
        records = guarded_map(
            records,
            lambda r: (
                {"payload": src.read(r["payload"]), "label": r["label"], "id": r["id"]},
                tf.constant(OK),
            ),
            src.report_bad,
            deterministic=True,
        ).cache()
        read = lambda payload: payload  # noqa: E731 - already read before the cache
    else:
        read = src.read
    records = records.shuffle(src.shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True).repeat()
    records = tf.data.Dataset.zip(records, tf.data.Dataset.counter())

    def with_counter(record, count):
        return {**record, "count": count}

    records = records.map(with_counter)

    def prepare(record):
        element_seed = tf.random.experimental.stateless_fold_in(base_seed, record["count"])
        crop_seed = tf.random.experimental.stateless_fold_in(element_seed, 1)
        augment_seed = tf.random.experimental.stateless_fold_in(element_seed, 2)
        image_bytes, label = src.parse(read(record["payload"]), record["label"])
        image = preprocessing.preprocess_for_train(
            image_bytes, image_size, method, seed=crop_seed, min_crop_area=min_crop_area
        )
        label = tf.cast(label, tf.int32)
        outputs = (image, label) if augment == "none" else (image, label, augment_seed)
        return outputs, label_status(label, num_classes)

    # Only reading and decoding can fail, so only they run under the per-element guard: the guard
    # instantiates its function once per element, which for the augmentation graphs cost more than
    # the augmentation itself (AutoAugment: 264 -> 413 images per CPU-second).
    dataset = guarded_map(records, prepare, src.report_bad, deterministic=deterministic)

    @tf.autograph.experimental.do_not_convert
    def augment_image(image, label, augment_seed):
        pixels = tf.cast(tf.round(image), tf.uint8)  # already clipped to 0..255
        if augment == "autoaugment":
            pixels = augment_lib.autoaugment_v0(pixels, seed=augment_seed)
        else:
            pixels = augment_lib.randaugment(pixels, randaug_num_layers, randaug_magnitude, seed=augment_seed)
        return tf.cast(pixels, tf.float32), label

    if augment != "none":
        dataset = dataset.map(augment_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if keras_cv_augment is not None:
        dataset = dataset.map(keras_cv_augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    mix_seed = tf.random.experimental.stateless_fold_in(base_seed, -1)

    @tf.autograph.experimental.do_not_convert
    def finish(batch, count):
        images, labels = batch
        one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
        if mixup_alpha > 0 or cutmix_alpha > 0:
            batch_seed = tf.random.experimental.stateless_fold_in(mix_seed, count)
            images, one_hot = mixing.mix_batch(images, one_hot, mixup_alpha, cutmix_alpha, seed=batch_seed)
        return images, one_hot

    dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.counter())
    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(deterministic))


def build_eval_dataset(
    src: Source,
    *,
    image_size: int,
    batch_size: int,
    resize_method: str,
    input_context: tf.distribute.InputContext | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """One ordered pass over the eval split: (float32 [B, H, W, 3] in 0..255, int32 labels [B])."""
    method = _check_common(image_size, batch_size, resize_method)
    if src.num_eval == 0:
        raise UserError(
            f"dataset {src.name} has no evaluation images; add a val/ folder or set holdout_fraction > 0"
        )
    dataset = _eval_images(src, "eval", int(image_size), method, input_context)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(True))


def _eval_images(
    src: Source,
    split: str,
    image_size: int,
    method: str,
    input_context: tf.distribute.InputContext | None,
    records: tf.data.Dataset | None = None,
) -> tf.data.Dataset:
    if records is None:
        records = src.records(split, input_context)
    num_classes = src.num_classes

    def prepare(record):
        image_bytes, label = src.parse(src.read(record["payload"]), record["label"])
        image = preprocessing.preprocess_for_eval(image_bytes, image_size, method)
        label = tf.cast(label, tf.int32)
        return (image, label), label_status(label, num_classes)

    return guarded_map(records, prepare, src.report_bad, deterministic=True)


def sample_images(src: Source, n: int, image_size: int, resize_method: str) -> tf.Tensor:
    """`n` training images (seeded shuffle) through eval preprocessing: float32 [n, H, W, 3]."""
    method = _check_common(image_size, max(int(n), 1), resize_method)
    records = src.records("train", None, shuffle_files=True, seed=0)
    records = records.shuffle(min(src.shuffle_buffer_size, 10_000), seed=0, reshuffle_each_iteration=False)
    dataset = _eval_images(src, "train", int(image_size), method, None, records=records)
    dataset = dataset.map(lambda image, label: image).take(int(n)).batch(max(int(n), 1))
    images = None
    for batch in dataset.with_options(_options(True)):
        images = batch
    if images is None:
        raise UserError(f"dataset {src.name} has no usable training images to sample ({src.location})")
    if images.shape[0] < n:
        logging.warning("sample_images: asked for %d images, %s has only %d", n, src.name, images.shape[0])
    return images
