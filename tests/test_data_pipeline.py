"""Preprocessing, mixing and the train / eval pipelines over the embedded dataset."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import data
from efficientnet_tf.data import mixing, preprocessing
from efficientnet_tf.errors import UserError

import pipeline_defaults as defaults


@pytest.fixture(scope="module")
def src() -> data.Source:
    return defaults.get_source()


def _png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(tf.constant(array, tf.uint8)).numpy()


def _jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    return tf.io.encode_jpeg(tf.constant(array, tf.uint8), quality=quality).numpy()


def _framed(height: int, width: int, band: int) -> np.ndarray:
    """Blue picture with a red frame `band` pixels wide."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 220
    image[band:-band, band:-band] = (0, 0, 220)
    return image


# ----------------------------------------------------------------------------- the embedded dataset


def test_embedded_default_dataset(src):
    assert src.name == "imagenette_mini" == data.DEFAULT_DATASET
    assert src.num_classes == 10 and src.class_names[0] == "tench" and "English springer" in src.class_names
    assert (src.num_train, src.num_eval) == (800, 200)
    assert src.bad_files == []
    train_paths, train_labels = src.files("train")
    eval_paths, _ = src.files("eval")
    assert not set(train_paths) & set(eval_paths)
    assert np.bincount(train_labels).tolist() == [80] * 10


# ----------------------------------------------------------------------------- preprocessing


def test_eval_preprocessing_takes_the_central_crop():
    # 56 px: the crop is 56/88 of the side = 63 of 100 px, offset 19, so a 15 px frame is cut away.
    image = _framed(100, 100, 15)
    out = preprocessing.preprocess_for_eval(_png(image), 56).numpy()
    assert out.shape == (56, 56, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out.reshape(-1, 3), np.tile([0, 0, 220], (56 * 56, 1)), atol=1e-3)
    window = preprocessing.center_crop_window(tf.constant([100, 160, 3]), 56).numpy()
    assert window.tolist() == [19, 49, 63, 63]
    # The offset is (side - crop + 1) // 2, as the reference's: an even margin (102 - 64 = 38) splits in half, an
    # odd one (100 - 63 = 37, above) rounds up.
    assert preprocessing.center_crop_window(tf.constant([102, 102, 3]), 56).numpy().tolist() == [19, 19, 64, 64]
    # A 2x2 image: the crop is one pixel (int(56/88·2) = 1), the bottom-right one, filling the whole output.
    tiny = np.array([[[10, 10, 10], [20, 20, 20]], [[30, 30, 30], [40, 40, 40]]], np.uint8)
    np.testing.assert_allclose(preprocessing.preprocess_for_eval(_png(tiny), 56).numpy(), 40.0, atol=1e-3)


def test_eval_preprocessing_jpeg_and_png_agree():
    yy, xx = np.mgrid[0:120, 0:90]
    image = np.stack([yy * 2, xx * 2, (xx + yy)], -1).astype(np.uint8)  # smooth, JPEG-friendly
    from_png = preprocessing.preprocess_for_eval(_png(image), 64).numpy()
    from_jpeg = preprocessing.preprocess_for_eval(_jpeg(image, 98), 64).numpy()
    assert np.abs(from_png - from_jpeg).mean() < 2.0


def test_train_preprocessing_shape_range_and_seeding():
    image = np.random.default_rng(1).integers(0, 256, (96, 128, 3)).astype(np.uint8)
    encoded = _jpeg(image)
    outs = [
        preprocessing.preprocess_for_train(encoded, 48, seed=tf.constant([i, 0])).numpy() for i in range(6)
    ]
    for out in outs:
        assert out.shape == (48, 48, 3) and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 255.0
    assert len({o.tobytes() for o in outs}) == 6
    again = preprocessing.preprocess_for_train(encoded, 48, seed=tf.constant([2, 0])).numpy()
    np.testing.assert_array_equal(again, outs[2])
    unseeded = preprocessing.preprocess_for_train(_png(image), 48, "bilinear")
    assert unseeded.shape == (48, 48, 3)


def test_random_crop_windows_respect_area_and_aspect():
    shape = tf.constant([300, 400, 3])
    from efficientnet_tf.data._random import RandomStream

    areas, fallbacks = [], 0
    for i in range(150):
        y, x, h, w = (
            preprocessing.random_crop_window(shape, 224, RandomStream(tf.constant([i, 3]))).numpy().tolist()
        )
        assert 0 <= y and 0 <= x and y + h <= 300 and x + w <= 400
        if (h, w) == (262, 262):  # fallback: the eval crop (224/256 of the short side)
            fallbacks += 1
            continue
        areas.append(h * w / (300 * 400))
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    assert min(areas) >= 0.08 - 0.005 and max(areas) <= 1.0
    assert np.std(areas) > 0.1 and fallbacks < 15


def test_flip_happens_about_half_the_time():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 255  # left half white
    encoded = _png(image)
    left_white = 0
    for i in range(40):
        # A crop always contains both halves' pixels only if it straddles the middle; use the mean
        # brightness of the output's left and right halves.
        out = preprocessing.preprocess_for_train(encoded, 32, seed=tf.constant([i, 11])).numpy()
        left_white += out[:, :16].mean() > out[:, 16:].mean()
    assert 8 <= left_white <= 32


def test_unknown_resize_method_is_a_user_error(src):
    with pytest.raises(UserError, match="resize_method"):
        defaults.eval_dataset(src, image_size=32, batch_size=4, resize_method="cubic-ish")


# ----------------------------------------------------------------------------- mixing


def _two_class_batch():
    images = tf.concat([tf.zeros([4, 16, 16, 3]), tf.fill([4, 16, 16, 3], 255.0)], 0)
    labels = tf.one_hot([0] * 4 + [1] * 4, 2)
    return images, labels


def test_mixup_mixes_pixels_and_labels_with_the_same_weight():
    images, labels = _two_class_batch()
    mixed, mixed_labels = mixing.mixup(images, labels, 0.4, seed=tf.constant([1, 2]))
    # Example i (black, class 0) is mixed with example 7 - i (white, class 1).
    weight_white = mixed.numpy().mean(axis=(1, 2, 3)) / 255.0
    np.testing.assert_allclose(weight_white, mixed_labels.numpy()[:, 1], atol=1e-5)
    np.testing.assert_allclose(mixed_labels.numpy().sum(1), 1.0, atol=1e-6)
    assert 0 < np.std(mixed_labels.numpy()[:, 1])


def test_cutmix_pastes_a_box_and_weights_labels_by_area():
    images, labels = _two_class_batch()
    mixed, mixed_labels = mixing.cutmix(images, labels, 1.0, seed=tf.constant([4, 2]))
    white_fraction = (mixed.numpy()[..., 0] == 255).mean(axis=(1, 2))
    np.testing.assert_allclose(white_fraction, mixed_labels.numpy()[:, 1], atol=1e-6)
    assert set(np.unique(mixed.numpy())) <= {0.0, 255.0}  # pasted, not blended
    np.testing.assert_allclose(mixed_labels.numpy().sum(1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- pipelines


def test_train_dataset_batches(src):
    dataset = defaults.train_dataset(src, image_size=40, batch_size=16, augment="autoaugment", seed=3)
    batches = list(dataset.take(3).as_numpy_iterator())
    for images, labels in batches:
        assert images.shape == (16, 40, 40, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
        assert labels.shape == (16, 10) and labels.dtype == np.float32
        np.testing.assert_array_equal(labels.sum(1), 1.0)
        assert set(np.unique(labels)) == {0.0, 1.0}
    spec_images, spec_labels = dataset.element_spec
    assert spec_images.shape.as_list() == [16, 40, 40, 3] and spec_labels.shape.as_list() == [16, 10]


def test_train_dataset_repeats_past_an_epoch(src):
    dataset = defaults.train_dataset(src, image_size=16, batch_size=100, augment="none", seed=0)
    count = sum(1 for _ in dataset.take(src.num_train // 100 + 3))
    assert count == src.num_train // 100 + 3


def test_deterministic_mode_reproduces_batches(src):
    def first_two(seed, **kwargs):
        dataset = defaults.train_dataset(
            src, image_size=32, batch_size=8, augment="randaugment", seed=seed, deterministic=True, **kwargs
        )
        return [b[0] for b in dataset.take(2).as_numpy_iterator()]

    a, b, c = first_two(5), first_two(5), first_two(6)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    cached = first_two(5, cache=True)
    for x, y in zip(a, cached, strict=True):
        np.testing.assert_array_equal(x, y)


def test_mixup_and_cutmix_in_the_training_pipeline(src):
    dataset = defaults.train_dataset(
        src, image_size=32, batch_size=8, augment="none", mixup_alpha=0.2, cutmix_alpha=1.0, seed=1
    )
    labels = np.concatenate([y for _, y in dataset.take(4).as_numpy_iterator()])
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-5)
    assert ((labels > 0) & (labels < 1)).any()


def test_eval_dataset_is_one_ordered_pass(src):
    dataset = defaults.eval_dataset(src, image_size=32, batch_size=64)
    first = list(dataset.as_numpy_iterator())
    second = list(dataset.as_numpy_iterator())
    labels = np.concatenate([y for _, y in first])
    assert len(labels) == src.num_eval and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, src.files("eval")[1])
    for (x1, _), (x2, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
    dropped = defaults.eval_dataset(src, image_size=32, batch_size=64, drop_remainder=True)
    assert sum(x.shape[0] for x, _ in dropped.as_numpy_iterator()) == 192


def test_input_pipelines_shard_the_data(src):
    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]
    evals = [defaults.eval_dataset(src, image_size=16, batch_size=50, input_context=c) for c in contexts]
    labels = [np.concatenate([y for _, y in e.as_numpy_iterator()]) for e in evals]
    assert len(labels[0]) + len(labels[1]) == src.num_eval
    assert len(labels[0]) == len(labels[1]) == 100
    records = [{r["id"] for r in src.records("eval", c).as_numpy_iterator()} for c in contexts]
    assert not records[0] & records[1]
    trains = [
        defaults.train_dataset(src, image_size=16, batch_size=4, augment="none", seed=0, input_context=c)
        for c in contexts
    ]
    trains = [next(iter(t))[0] for t in trains]
    assert not np.array_equal(trains[0], trains[1])


def test_sample_images(src):
    images = data.sample_images(src, 12, 48, "bilinear")
    assert images.shape == (12, 48, 48, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(images)) <= 255.0 and float(tf.reduce_min(images)) >= 0.0
    np.testing.assert_array_equal(images.numpy(), data.sample_images(src, 12, 48, "bilinear").numpy())
    assert data.sample_images(src, 2000, 8, "bicubic").shape[0] == src.num_train


def test_bad_arguments_are_user_errors(src):
    with pytest.raises(UserError, match="augment"):
        defaults.train_dataset(src, image_size=32, batch_size=4, augment="autoaugment-v9")
    with pytest.raises(UserError, match="batch_size"):
        defaults.train_dataset(src, image_size=32, batch_size=0)
    with pytest.raises(UserError, match="unknown dataset"):
        defaults.get_source("imagenette_maxi")
    with pytest.raises(UserError, match="holdout_fraction"):
        defaults.get_source("imagenette_mini", holdout_fraction=1.5)


def test_pipeline_feeds_a_keras_model(src):
    import keras

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True))
    train = defaults.train_dataset(src, image_size=32, batch_size=32, augment="none", seed=0)
    history = model.fit(train, steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
