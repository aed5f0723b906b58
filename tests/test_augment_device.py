"""Batched AutoAugment / RandAugment / mixing for the train step (data.augment_on_device).

Each batched op is checked for what it must do on a batch with a different argument per image,
and against the host op of augment.py image by image; the per-image random choices against the
policy; XLA compilation; and the train step under the default strategy and two mirrored CPUs.
The mirrored case runs in a fresh process (this file is also its worker script), because logical
devices must be set up before TensorFlow starts.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FILL = 128
SIZE = 48

# As the mirrored worker script, TensorFlow must not start before the logical CPUs are set up.
if __name__ != "__main__":
    import keras
    import tensorflow as tf

    import reference_policy
    from efficientnet_tf import app, hparams, training
    from efficientnet_tf.data import augment as A
    from efficientnet_tf.data import augment_device as D
    from efficientnet_tf.data import mixing_device as M
    from efficientnet_tf.data import build_train_dataset, synthetic_dataset_fn
    from efficientnet_tf.data._random import RandomStream
    from efficientnet_tf.data.sources import embedded_root
    from efficientnet_tf.errors import UserError


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Four real photos of different classes from the embedded subset, 48×48 uint8."""
    folders = sorted(glob.glob(os.path.join(embedded_root(), "train", "*")))[:4]
    images = []
    for folder in folders:
        path = sorted(glob.glob(os.path.join(folder, "*.jpg")))[0]
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        images.append(tf.image.resize(image, [SIZE, SIZE]).numpy())
    return np.clip(np.round(np.stack(images)), 0, 255).astype(np.uint8)


def _f(images) -> tf.Tensor:
    return tf.constant(np.asarray(images, np.float32))


def _marked(rows_cols: list[tuple[int, int]], size: int = 41) -> np.ndarray:
    """A batch of black images, image i with one white pixel at rows_cols[i]."""
    images = np.zeros((len(rows_cols), size, size, 3), np.uint8)
    for i, (row, col) in enumerate(rows_cols):
        images[i, row, col] = 255
    return images


def _white_pixels(image) -> list[tuple[int, int]]:
    rows, cols = np.nonzero(np.asarray(image)[..., 0] == 255)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def _assert_pixels(out: tf.Tensor, shape) -> np.ndarray:
    """float32, the given shape, whole values in 0..255."""
    assert out.dtype == tf.float32 and tuple(out.shape) == tuple(shape)
    values = out.numpy()
    assert values.min() >= 0 and values.max() <= 255
    np.testing.assert_array_equal(values, np.round(values))
    return values


# ----------------------------------------------------------------------------- equal to the host ops

# (op, one argument per image of the four); None: the op takes no argument.
HOST_CASES = [
    ("invert", None),
    ("posterize", [0, 1, 4, 8]),
    ("solarize", [0, 77, 128, 256]),
    ("solarize_add", [0, 33, 77, 110]),
    ("autocontrast", None),
    ("equalize", None),
    ("color", [0.1, 1.0, 1.9, 0.55]),
    ("contrast", [0.1, 1.0, 1.9, 0.55]),
    ("brightness", [0.1, 1.0, 1.9, 0.55]),
    ("sharpness", [0.1, 1.0, 1.9, 0.55]),
    ("rotate", [30.0, -90.0, 13.5, 0.0]),
    ("shear_x", [0.3, -0.15, 0.27, 0.0]),
    ("shear_y", [-0.3, 0.15, 0.09, 0.0]),
    ("translate_x", [0.0, 12.0, -25.0, 100.0]),
    ("translate_y", [-7.0, 0.0, 31.0, -250.0]),
]


@pytest.mark.parametrize("name,arguments", HOST_CASES, ids=[c[0] for c in HOST_CASES])
def test_batched_op_equals_the_host_op_image_by_image(photos, name, arguments):
    host_op, device_op = getattr(A, name), getattr(D, name)
    if arguments is None:
        expected = np.stack([host_op(tf.constant(p)).numpy() for p in photos])
        out = device_op(_f(photos))
    else:
        expected = np.stack([host_op(tf.constant(p), a).numpy() for p, a in zip(photos, arguments, strict=True)])
        out = device_op(_f(photos), tf.constant(arguments, tf.float32))
    values = _assert_pixels(out, photos.shape)
    difference = np.abs(values - expected.astype(np.float32))
    assert difference.max() <= 1  # interpolation and rounding may differ by one level
    assert np.mean(difference > 0) < 0.01


def test_cutout_equals_the_host_op_image_by_image(photos):
    half, cy, cx = [4, 0, 10, 30], [10, 20, 0, 47], [12, 5, 47, 0]
    expected = np.stack([A.cutout_at(tf.constant(p), s, y, x).numpy()
                         for p, s, y, x in zip(photos, half, cy, cx, strict=True)])
    out = _assert_pixels(D.cutout_at(_f(photos), tf.constant(half), tf.constant(cy), tf.constant(cx)), photos.shape)
    np.testing.assert_array_equal(out, expected)


def test_uint8_batches_are_accepted_and_come_back_float32(photos):
    out = D.solarize(tf.constant(photos), 128)
    assert out.dtype == tf.float32
    np.testing.assert_array_equal(out.numpy(), np.stack([A.solarize(tf.constant(p), 128).numpy() for p in photos]))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        D.invert(tf.zeros([8, 8, 3]))


# ----------------------------------------------------------------------------- defining properties


def test_invert_is_255_minus_pixel_and_an_involution(photos):
    once = D.invert(_f(photos)).numpy()
    np.testing.assert_array_equal(once, 255.0 - photos)
    np.testing.assert_array_equal(D.invert(D.invert(_f(photos))).numpy(), photos)


def test_posterize_clears_each_images_own_low_bits(photos):
    shifts = [1, 2, 4, 6]
    out = D.posterize(_f(photos), tf.constant(shifts)).numpy().astype(np.int32)
    for image, source, shift in zip(out, photos, shifts, strict=True):
        np.testing.assert_array_equal(image & ((1 << shift) - 1), 0)
        np.testing.assert_array_equal(image >> shift, source >> shift)
    np.testing.assert_array_equal(D.posterize(_f(photos), 11).numpy(), 0)  # capped at 8 bits: black


def test_solarize_inverts_at_and_above_each_images_threshold(photos):
    thresholds = [0, 77, 128, 256]
    out = D.solarize(_f(photos), tf.constant(thresholds)).numpy()
    for image, source, threshold in zip(out, photos, thresholds, strict=True):
        above = source >= threshold
        np.testing.assert_array_equal(image[above], 255 - source[above].astype(np.int32))
        np.testing.assert_array_equal(image[~above], source[~above])


def test_solarize_add_brightens_only_dark_pixels_and_saturates(photos):
    out = D.solarize_add(_f(photos), tf.constant([0.0, 77.0, 200.0, 110.0])).numpy()
    dark = photos[1] < 128
    np.testing.assert_array_equal(out[1][dark], np.minimum(photos[1][dark].astype(np.int32) + 77, 255))
    np.testing.assert_array_equal(out[1][~dark], photos[1][~dark])
    np.testing.assert_array_equal(out[0], photos[0])
    assert out.max() <= 255


def test_autocontrast_stretches_each_image_and_channel_on_its_own():
    dull = np.full((2, 8, 8, 3), 77, np.uint8)
    dull[0, ..., 0] = np.arange(64).reshape(8, 8) + 50  # image 0: one channel spans 50..113
    dull[1] = (np.arange(192).reshape(8, 8, 3) // 2 + 60).astype(np.uint8)  # image 1: all channels vary
    out = D.autocontrast(_f(dull)).numpy()
    assert out[0, ..., 0].min() == 0 and out[0, ..., 0].max() == 255
    np.testing.assert_array_equal(out[0, ..., 1:], 77)  # flat channels are left alone
    np.testing.assert_array_equal(out[1].reshape(-1, 3).min(0), 0)
    np.testing.assert_array_equal(out[1].reshape(-1, 3).max(0), 255)


def test_equalize_flattens_each_images_histogram(photos):
    dull = (photos.astype(np.float32) * 0.25 + 100).astype(np.uint8)
    dull[3] = 42  # a single-valued image stays as it is
    out = D.equalize(_f(dull)).numpy().astype(np.int32)
    uniform = np.arange(1, 257) / 256.0
    for image, source in zip(out[:3], dull[:3], strict=True):
        for c in range(3):
            before = np.cumsum(np.bincount(source[..., c].ravel(), minlength=256)) / source[..., c].size
            after = np.cumsum(np.bincount(image[..., c].ravel(), minlength=256)) / image[..., c].size
            assert np.abs(after - uniform).max() < 0.15 < np.abs(before - uniform).max()
            assert image[..., c].max() == 255
    np.testing.assert_array_equal(out[3], 42)


def test_enhance_ops_factor_one_is_identity_and_zero_is_the_degenerate_image(photos):
    images = _f(photos)
    for op in (D.color, D.contrast, D.brightness, D.sharpness):
        np.testing.assert_array_equal(op(images, 1.0).numpy(), photos)
    grey = D.color(images, 0.0).numpy()
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    flat = D.contrast(images, 0.0).numpy()
    assert all(len(np.unique(image)) == 1 for image in flat)  # each image at its own mean luma
    assert len({float(image[0, 0, 0]) for image in flat}) > 1
    np.testing.assert_array_equal(D.brightness(images, 0.0).numpy(), 0)
    smooth = D.sharpness(images, tf.constant([0.0, 1.0, 1.9, 0.0])).numpy()
    np.testing.assert_array_equal(smooth[:, 0], photos[:, 0])  # the border is kept
    np.testing.assert_array_equal(smooth[1], photos[1])


def test_rotate_by_plus_and_minus_90_maps_a_marked_pixel_per_image():
    images = _marked([(30, 20), (30, 20)])  # 10 px below the centre of a 41×41 image
    out = D.rotate(_f(images), tf.constant([90.0, -90.0])).numpy()
    assert _white_pixels(out[0]) == [(20, 30)]  # counter-clockwise: now 10 px to the right
    assert _white_pixels(out[1]) == [(20, 10)]
    rotated = D.rotate(_f(np.zeros((1, 41, 41, 3))), 30.0).numpy()
    np.testing.assert_array_equal(rotated[0, 0, 0], FILL)  # uncovered corners are grey


def test_shear_moves_marked_pixels_and_fills_128():
    out = D.shear_x(_f(_marked([(20, 30), (20, 30)])), tf.constant([0.5, 0.0])).numpy()
    assert _white_pixels(out[0]) == [(20, 20)] and _white_pixels(out[1]) == [(20, 30)]
    np.testing.assert_array_equal(out[0, 40, 40], FILL)
    out = D.shear_y(_f(_marked([(30, 20)])), -0.5).numpy()
    assert _white_pixels(out[0]) == [(40, 20)]
    np.testing.assert_array_equal(out[0, 0, 40], FILL)


def test_translate_moves_each_images_content_and_fills_128():
    images = _marked([(10, 12), (10, 12)])
    out = D.translate_x(_f(images), tf.constant([5.0, -3.0])).numpy()
    assert _white_pixels(out[0]) == [(10, 17)] and _white_pixels(out[1]) == [(10, 9)]
    np.testing.assert_array_equal(out[0, :, :5], FILL)
    np.testing.assert_array_equal(out[1, :, -3:], FILL)
    out = D.translate_y(_f(images[:1]), -7.0).numpy()
    assert _white_pixels(out[0]) == [(3, 12)]
    np.testing.assert_array_equal(out[0, -7:], FILL)


def test_cutout_fills_each_images_square_with_128(photos):
    out = D.cutout_at(_f(photos), tf.constant([4, 5, 0, 3]), tf.constant([10, 0, 20, 40]),
                      tf.constant([12, 0, 20, 5])).numpy()
    np.testing.assert_array_equal(out[0, 6:14, 8:16], FILL)
    np.testing.assert_array_equal(out[1, :5, :5], FILL)  # clipped at the corner
    np.testing.assert_array_equal(out[2], photos[2])  # half-size 0: nothing
    mask = np.ones((SIZE, SIZE), bool)
    mask[6:14, 8:16] = False
    np.testing.assert_array_equal(out[0][mask], photos[0][mask])


# ----------------------------------------------------------------------------- one op per image


def test_apply_ops_gives_each_image_the_op_it_drew(photos):
    names = A.OP_NAMES
    batch = np.repeat(photos[:1], len(names) + 1, axis=0)
    op_ids = list(range(len(names))) + [-1]
    arguments = [float(A.op_argument(name, 7, A.RANDAUGMENT_HPARAMS)) for name in names] + [0.0]
    out = D.apply_ops(_f(batch), tf.constant(op_ids), tf.constant(arguments), seed=tf.constant([4, 2])).numpy()
    image = tf.constant(photos[0])
    for i, name in enumerate(names):
        argument = A.op_argument(name, 7, A.RANDAUGMENT_HPARAMS)
        if name == "Cutout":
            grey = np.all(out[i] == FILL, axis=-1) & ~np.all(photos[0] == FILL, axis=-1)
            assert 0 < grey.sum() <= (2 * argument) ** 2
            continue
        fn = {"AutoContrast": A.autocontrast, "Equalize": A.equalize, "Invert": A.invert}.get(name)
        if fn is not None:
            candidates = [fn(image)]
        else:
            host = A._APPLY[name]
            signs = (1.0, -1.0) if name in A.SIGNED_OPS else (1.0,)
            candidates = [host(image, sign * argument, _PlusSign()) for sign in signs]
        assert any(np.array_equal(out[i], c.numpy()) for c in candidates), name
    np.testing.assert_array_equal(out[-1], photos[0])  # −1: left alone


class _PlusSign:
    """A stand-in for the host RandomStream whose sign() is always +1 (the sign is in the argument)."""

    def sign(self) -> float:
        return 1.0


def test_autoaugment_plan_follows_policy_v0_per_image():
    batch = 20000
    plan = D.autoaugment_v0_plan(batch, seed=tf.constant([7, 1]))
    assert len(plan) == 2
    for stage, (op_ids, arguments) in enumerate(plan):
        op_ids, arguments = op_ids.numpy(), arguments.numpy()
        expected = np.zeros(len(A.OP_NAMES) + 1)
        for sub_policy in reference_policy.POLICY_V0:  # the reference's table, not the one under test
            name, probability, _ = sub_policy[stage]
            expected[A.OP_NAMES.index(name)] += probability / len(reference_policy.POLICY_V0)
        expected[-1] = 1.0 - expected[:-1].sum()  # not applied
        counts = np.bincount(np.where(op_ids < 0, len(A.OP_NAMES), op_ids), minlength=len(A.OP_NAMES) + 1)
        np.testing.assert_allclose(counts / batch, expected, atol=0.012)
        # Each applied op carries an argument of its own level in some sub-policy.
        for op_id in np.unique(op_ids[op_ids >= 0]):
            name = A.OP_NAMES[op_id]
            levels = {float(A.op_argument(n, level)) for sp in reference_policy.POLICY_V0
                      for n, _, level in [sp[stage]] if n == name}
            assert set(np.unique(arguments[op_ids == op_id]).tolist()) <= {np.float32(v) for v in levels}


def test_randaugment_plan_draws_ops_uniformly_at_the_magnitude():
    batch = 16000
    plan = D.randaugment_plan(batch, 3, 17, seed=tf.constant([2, 9]))
    assert len(plan) == 3
    first, second = plan[0][0].numpy(), plan[1][0].numpy()
    assert not np.array_equal(first, second)  # each layer draws afresh
    for op_ids, arguments in plan:
        op_ids, arguments = op_ids.numpy(), arguments.numpy()
        counts = np.bincount(op_ids, minlength=len(A.OP_NAMES))
        ra_ids = [A.OP_NAMES.index(n) for n in A.RANDAUGMENT_OPS]
        np.testing.assert_allclose(counts[ra_ids] / batch, 1 / 16, atol=0.008)
        for name in A.RANDAUGMENT_OPS:
            chosen = arguments[op_ids == A.OP_NAMES.index(name)]
            np.testing.assert_array_equal(chosen, np.float32(A.op_argument(name, 17, A.RANDAUGMENT_HPARAMS)))


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_policies_choose_per_image_and_follow_the_seed(photos, policy):
    batch = _f(np.repeat(photos[:1], 24, axis=0))  # 24 copies of one photo

    def run(seed):
        if policy == "autoaugment":
            return D.autoaugment_v0(batch, seed=tf.constant(seed))
        return D.randaugment(batch, 2, 10, seed=tf.constant(seed))

    out = _assert_pixels(run([1, 2]), batch.shape)
    assert len({image.tobytes() for image in out}) >= 12  # different images, different ops
    np.testing.assert_array_equal(run([1, 2]).numpy(), out)  # same seed, same batch
    assert not np.array_equal(run([1, 3]).numpy(), out)  # another seed, another batch
    if policy == "randaugment":
        _assert_pixels(D.randaugment(batch, 3, 28, seed=tf.constant([0, 0])), batch.shape)  # M=28 (B7)
        np.testing.assert_array_equal(D.randaugment(batch, 0, 10).numpy(), batch.numpy())


def test_policies_round_the_pipelines_float_images_first():
    images = tf.random.stateless_uniform([4, 16, 16, 3], [5, 5], 0, 255)  # resize output: not whole values
    _assert_pixels(D.autoaugment_v0(images, seed=tf.constant([1, 1])), images.shape)


# ----------------------------------------------------------------------------- mixing


def test_beta_sampler_matches_the_host_distribution():
    for alpha in (0.2, 1.0):
        device = M.sample_beta(alpha, 20000, seed=tf.constant([3, 4])).numpy()
        host = RandomStream(tf.constant([5, 6])).beta(alpha, [20000]).numpy()
        assert device.min() >= 0 and device.max() <= 1
        assert abs(device.mean() - 0.5) < 0.01
        assert device.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
        grid = np.linspace(0.01, 0.99, 99)
        cdf = lambda x: np.searchsorted(np.sort(x), grid) / len(x)  # noqa: E731
        assert np.abs(cdf(device) - cdf(host)).max() < 0.02  # two-sample KS distance


def test_mixup_mixes_each_image_with_its_mirror(photos):
    labels = tf.one_hot([0, 1, 2, 3], 4)
    images, mixed = M.mix_batch(_f(photos), labels, mixup_alpha=0.4, seed=tf.constant([1, 1]))
    mixed = mixed.numpy()
    np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-6)
    weight = mixed[np.arange(4), np.arange(4)]
    expected = weight[:, None, None, None] * photos + (1 - weight[:, None, None, None]) * photos[::-1]
    np.testing.assert_allclose(images.numpy(), expected, atol=1e-3)


def test_cutmix_pastes_a_box_and_weighs_labels_by_area(photos):
    labels = tf.one_hot([0, 1, 2, 3], 4)
    images, mixed = M.mix_batch(_f(photos), labels, cutmix_alpha=1.0, seed=tf.constant([2, 2]))
    images, mixed = images.numpy(), mixed.numpy()
    for i in range(4):
        own = np.all(images[i] == photos[i], axis=-1)
        partner = np.all(images[i] == photos[3 - i], axis=-1) & ~own
        assert np.all(own | partner)
        assert mixed[i, i] == pytest.approx(1.0 - partner.mean(), abs=0.03)


def test_mix_batch_picks_mixup_or_cutmix_per_batch(photos):
    labels = tf.one_hot([0, 1, 2, 3], 4)
    kinds = set()
    for s in range(8):
        images, _ = M.mix_batch(_f(photos), labels, 0.4, 1.0, seed=tf.constant([s, 0]))
        exact = np.all(images.numpy() == photos, axis=-1) | np.all(images.numpy() == photos[::-1], axis=-1)
        kinds.add("cutmix" if exact.all() else "mixup")
    assert kinds == {"mixup", "cutmix"}


# ----------------------------------------------------------------------------- XLA, settings, seeds


def test_whole_augmentation_compiles_with_xla(photos):
    augmentation = D.DeviceAugmentation.create(augment="randaugment", randaug_num_layers=2, randaug_magnitude=10,
                                               mixup_alpha=0.2, cutmix_alpha=1.0, seed=5)
    images = _f(np.resize(photos, (8, SIZE, SIZE, 3)))
    labels = tf.one_hot(tf.range(8) % 4, 4)
    compiled = tf.function(lambda x, y, step: augmentation(x, y, step, 1), jit_compile=True)
    out, mixed = compiled(images, labels, tf.constant(3, tf.int64))
    assert out.shape == images.shape and out.dtype == tf.float32
    assert 0 <= out.numpy().min() and out.numpy().max() <= 255
    np.testing.assert_allclose(mixed.numpy().sum(1), 1.0, rtol=1e-5)
    again, _ = compiled(images, labels, tf.constant(3, tf.int64))
    np.testing.assert_array_equal(again.numpy(), out.numpy())
    # The ops themselves give the same pixels compiled (XLA draws other random numbers, though).
    factors = tf.constant([0.3, 1.7, 0.0, 1.2])
    ops = lambda x: [D.rotate(x, tf.constant([30.0, -12.0, 90.0, 0.0])), D.equalize(x),  # noqa: E731
                     D.sharpness(x, factors), D.contrast(x, factors), D.autocontrast(x), D.shear_y(x, 0.2)]
    for eager, xla in zip(ops(_f(photos)), tf.function(ops, jit_compile=True)(_f(photos)), strict=True):
        assert np.abs(eager.numpy() - xla.numpy()).max() <= 1


def test_device_augmentation_settings_and_step_seeds():
    create = lambda **kw: D.DeviceAugmentation.create(  # noqa: E731
        **{"augment": "autoaugment", "randaug_num_layers": 2, "randaug_magnitude": 10, "mixup_alpha": 0.0,
           "cutmix_alpha": 0.0, "seed": 1, **kw})
    assert create(augment="none") is None
    assert create(augment="none", mixup_alpha=0.2) is not None
    assert create(seed=None, deterministic=True).seed == 0
    with pytest.raises(UserError, match="unknown augment 'autoaugmnt'"):
        create(augment="autoaugmnt")
    with pytest.raises(UserError, match="mixup_alpha and cutmix_alpha must be >= 0"):
        create(cutmix_alpha=-1.0)
    augmentation = create()
    seeds = {tuple(augmentation.step_seed(step, replica).numpy()) for step in range(3) for replica in range(2)}
    assert len(seeds) == 6
    np.testing.assert_array_equal(augmentation.step_seed(5, 1).numpy(), create().step_seed(5, 1).numpy())
    assert not np.array_equal(augmentation.step_seed(5, 1).numpy(), create(seed=2).step_seed(5, 1).numpy())


def test_augment_on_device_is_a_strict_switch_off_by_default():
    assert hparams.default_config().data.augment_on_device is False
    assert hparams.build_config(["data.augment_on_device=true"]).data.augment_on_device is True
    with pytest.raises(UserError, match="takes true or false"):
        hparams.build_config(["data.augment_on_device=1"])
    with pytest.raises(UserError, match="did you mean data.augment_on_device"):
        hparams.build_config(["data.augment_on_devise=true"])


def test_augment_on_device_leaves_the_host_pipeline_decode_crop_flip_resize():
    config = hparams.build_config(["data.augment_on_device=true,data.augment=autoaugment,data.mixup_alpha=0.2",
                                   "model.image_size=32,train.batch_size=4,train.seed=3,train.deterministic=true"])
    source = app.load_source(config)
    config = hparams.resolve(config, num_classes=source.num_classes, num_train=source.num_train)
    train_fn = training.inputs.train_dataset_fn(config, source)
    images, labels = next(iter(train_fn(tf.distribute.InputContext(), config.derived.stages[0])))
    plain = build_train_dataset(source, image_size=32, batch_size=4, resize_method=config.data.resize_method,
                                augment="none", randaug_num_layers=2, randaug_magnitude=10, mixup_alpha=0.0,
                                cutmix_alpha=0.0, min_crop_area=float(config.data.min_crop_area), seed=3,
                                deterministic=True)
    expected_images, expected_labels = next(iter(plain))
    np.testing.assert_array_equal(images.numpy(), expected_images.numpy())
    np.testing.assert_array_equal(labels.numpy(), expected_labels.numpy())  # one-hot, not mixed


# ----------------------------------------------------------------------------- the train step

TRAIN_OVERRIDES = [
    "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32",
    "train.batch_size=8,train.train_steps=2,train.steps_per_epoch=2,train.warmup_epochs=0",
    "train.base_learning_rate=0.5,train.log_every_steps=1,train.seed=3,train.deterministic=true",
    "data.augment=autoaugment,data.mixup_alpha=0.2,data.cutmix_alpha=1.0",
]


def _train_tiny(model_dir: str, on_device: bool, image_summary: bool = False) -> list[np.ndarray]:
    keras.utils.set_random_seed(1)
    switches = f"data.augment_on_device={str(on_device).lower()},train.image_summary={str(image_summary).lower()}"
    config = hparams.resolve(hparams.build_config(TRAIN_OVERRIDES + [switches]), num_classes=4, num_train=16)
    trainer = training.Trainer(config, training.create_strategy("default"), model_dir,
                               train_dataset_fn=synthetic_dataset_fn(32, 4, 8, seed=3))
    assert (trainer.step_fn.device_augment is not None) == on_device
    assert trainer.train().step == 2
    return [np.array(v.numpy()) for v in trainer.model.trainable_variables]


@pytest.mark.slow  # two short training runs; tests/test_runtime_promises.py resumes one exactly (slow)
def test_train_step_augments_on_the_device_reproducibly(tmp_path):
    first = _train_tiny(str(tmp_path / "a"), True, image_summary=True)
    again = _train_tiny(str(tmp_path / "b"), True)
    plain = _train_tiny(str(tmp_path / "c"), False)  # the synthetic batches bypass the host pipeline
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - c).max()) for a, c in zip(first, plain, strict=True)) > 1e-4


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_train_step_augments_on_the_device_under_two_mirrored_cpus(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run([sys.executable, __file__, str(out), str(tmp_path / "run")], env=env, cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads(out.read_text())
    assert report["num_replicas"] == 2
    assert report["replicas_augment_differently"]  # same input, different replica seeds
    assert report["step"] == 2
    assert report["max_replica_difference"] == 0.0, report["worst_variable"]
    assert report["weights_moved"] > 1e-6


@pytest.mark.slow  # two 600-step trainings of the embedded default: about 10 minutes on 2 CPU cores
def test_host_and_device_randaugment_reach_the_same_accuracy(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "augment_on_device.py"), "--work_dir",
                           str(tmp_path)], cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["host"]["examples"] == results["device"]["examples"] == 200
    assert results["host"]["top1"] > 0.2 and results["device"]["top1"] > 0.2  # chance is 0.1
    # Different random streams: equal within three standard errors of the difference (~15 points).
    assert abs(results["difference"]) <= 3 * results["difference_standard_error"], proc.stdout[-1500:]


# ----------------------------------------------------------------------------- worker side


def _mirrored_worker(out: str, model_dir: str) -> None:
    import keras
    import tensorflow as tf

    from efficientnet_tf import hparams, training
    from efficientnet_tf.data import augment_device, synthetic_dataset_fn

    keras.utils.set_random_seed(1)
    info = training.create_strategy("mirrored", cpu_devices=2)
    strategy = info.strategy
    augmentation = augment_device.DeviceAugmentation.create(
        augment="randaugment", randaug_num_layers=2, randaug_magnitude=10, mixup_alpha=0.0, cutmix_alpha=0.0,
        seed=4)
    images = tf.random.stateless_uniform([4, 32, 32, 3], [1, 1], 0, 255)
    labels = tf.one_hot(tf.range(4) % 4, 4)

    @tf.function
    def augment_per_replica():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            return augmentation(images, labels, tf.constant(0, tf.int64), replica)[0]
        return strategy.run(replica_fn)

    parts = [np.array(t) for t in strategy.experimental_local_results(augment_per_replica())]

    config = hparams.resolve(hparams.build_config(TRAIN_OVERRIDES + [
        "data.augment_on_device=true,train.image_summary=false,train.ema_decay=0.9"]), num_classes=4, num_train=16)
    trainer = training.Trainer(config, info, model_dir, train_dataset_fn=synthetic_dataset_fn(32, 4, 8, seed=3))
    initial = [np.array(v.value.read_value()) for v in trainer.model.trainable_variables]
    result = trainer.train()
    moved = max(float(np.abs(np.array(v.value.read_value()) - a).max())
                for v, a in zip(trainer.model.trainable_variables, initial, strict=True))
    worst, worst_name = 0.0, ""
    for variable in trainer.model.variables:
        values = [np.array(t) for t in variable.value.values]
        difference = float(np.abs(values[0].astype(np.float64) - values[1].astype(np.float64)).max())
        if difference > worst:
            worst, worst_name = difference, variable.path
    with open(out, "w") as handle:
        json.dump({"num_replicas": info.num_replicas, "step": result.step, "max_replica_difference": worst,
                   "worst_variable": worst_name, "weights_moved": moved,
                   "replicas_augment_differently": not np.array_equal(parts[0], parts[1])}, handle)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _mirrored_worker(sys.argv[1], sys.argv[2])
