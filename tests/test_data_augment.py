"""AutoAugment / RandAugment operations, each checked on real pixel values for what it must do."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import reference_policy
from efficientnet_tf.data import augment as A
from efficientnet_tf.data.sources import embedded_root

FILL = 128


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real 128×128 RGB photo from the embedded Imagenette subset."""
    path = sorted(glob.glob(os.path.join(embedded_root(), "train", "*", "*.jpg")))[0]
    return tf.io.decode_jpeg(tf.io.read_file(path), channels=3).numpy()


def _u8(array) -> tf.Tensor:
    return tf.constant(np.asarray(array, np.uint8))


def _marked(height: int = 41, width: int = 41, row: int = 0, col: int = 0) -> np.ndarray:
    """A black image with one white pixel at (row, col)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[row, col] = 255
    return image


def _white_pixels(image) -> list[tuple[int, int]]:
    image = np.asarray(image)
    rows, cols = np.nonzero(image[..., 0] == 255)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


# ----------------------------------------------------------------------------- pixel ops


def test_invert_is_255_minus_pixel_and_an_involution(photo):
    out = A.invert(_u8(photo)).numpy()
    np.testing.assert_array_equal(out, 255 - photo.astype(np.int32))
    np.testing.assert_array_equal(A.invert(A.invert(_u8(photo))).numpy(), photo)


@pytest.mark.parametrize("shift", [1, 2, 4, 6])
def test_posterize_keeps_only_the_top_bits(photo, shift):
    out = A.posterize(_u8(photo), shift).numpy()
    np.testing.assert_array_equal(out & ((1 << shift) - 1), 0)  # low bits cleared
    np.testing.assert_array_equal(out >> shift, photo >> shift)  # top bits untouched
    assert len(np.unique(out)) <= 2 ** (8 - shift)


def test_posterize_edge_shifts(photo):
    np.testing.assert_array_equal(A.posterize(_u8(photo), 0).numpy(), photo)
    np.testing.assert_array_equal(A.posterize(_u8(photo), 8).numpy(), 0)
    np.testing.assert_array_equal(A.posterize(_u8(photo), 11).numpy(), 0)  # RandAugment M > 10


@pytest.mark.parametrize("threshold", [0, 77, 128, 204])
def test_solarize_inverts_at_and_above_threshold(photo, threshold):
    out = A.solarize(_u8(photo), threshold).numpy().astype(np.int32)
    above = photo >= threshold
    np.testing.assert_array_equal(out[above], 255 - photo[above].astype(np.int32))
    np.testing.assert_array_equal(out[~above], photo[~above])


def test_solarize_threshold_256_is_identity(photo):
    np.testing.assert_array_equal(A.solarize(_u8(photo), 256).numpy(), photo)


def test_solarize_add_brightens_only_dark_pixels_and_saturates(photo):
    out = A.solarize_add(_u8(photo), 77).numpy().astype(np.int32)
    dark = photo < 128
    np.testing.assert_array_equal(out[dark], np.minimum(photo[dark].astype(np.int32) + 77, 255))
    np.testing.assert_array_equal(out[~dark], photo[~dark])
    # 100 + 77 would not saturate, 120 + 200 would: values stay in 0..255.
    assert A.solarize_add(_u8([[[120, 100, 200]]]), 200).numpy().tolist() == [[[255, 255, 200]]]


def test_autocontrast_stretches_each_channel_to_full_range(photo):
    dull = (photo.astype(np.float32) * 0.3 + 90).astype(np.uint8)
    out = A.autocontrast(_u8(dull)).numpy()
    np.testing.assert_array_equal(out.reshape(-1, 3).min(0), 0)
    np.testing.assert_array_equal(out.reshape(-1, 3).max(0), 255)
    for c in range(3):  # monotonic: the order of values is kept
        order = np.argsort(dull[..., c].ravel(), kind="stable")
        assert np.all(np.diff(out[..., c].ravel()[order].astype(np.int32)) >= 0)


def test_autocontrast_leaves_a_flat_channel_alone():
    image = np.full((8, 8, 3), 77, np.uint8)
    image[..., 0] = np.arange(64).reshape(8, 8)
    out = A.autocontrast(_u8(image)).numpy()
    np.testing.assert_array_equal(out[..., 1:], 77)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255


def test_equalize_flattens_the_histogram(photo):
    dull = (photo.astype(np.float32) * 0.25 + 100).astype(np.uint8)  # values squeezed into 100..164
    out = A.equalize(_u8(dull)).numpy()
    for c in range(3):
        before = np.cumsum(np.bincount(dull[..., c].ravel(), minlength=256)) / dull[..., c].size
        after = np.cumsum(np.bincount(out[..., c].ravel(), minlength=256)) / out[..., c].size
        uniform = np.arange(1, 257) / 256.0
        # Distance of the cumulative histogram from the uniform one shrinks a lot.
        assert np.abs(after - uniform).max() < 0.1 < np.abs(before - uniform).max()
        assert out[..., c].max() == 255 and out[..., c].min() < 10


def test_equalize_matches_pil(photo):
    image_ops = pytest.importorskip("PIL.ImageOps")
    pil_image = pytest.importorskip("PIL.Image")
    expected = np.asarray(image_ops.equalize(pil_image.fromarray(photo)))
    np.testing.assert_array_equal(A.equalize(_u8(photo)).numpy(), expected)


def test_equalize_leaves_a_single_valued_channel_alone():
    image = np.full((6, 6, 3), 42, np.uint8)
    np.testing.assert_array_equal(A.equalize(_u8(image)).numpy(), image)


def _luma(image: np.ndarray) -> np.ndarray:
    return np.round(image.astype(np.float64) @ np.array([0.2989, 0.587, 0.114]))


def test_color_factor_0_is_greyscale_1_identity_2_more_saturated(photo):
    grey = A.color(_u8(photo), 0.0).numpy().astype(np.int32)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 1])
    np.testing.assert_array_equal(grey[..., 1], grey[..., 2])
    assert np.abs(grey[..., 0] - _luma(photo)).max() <= 1
    np.testing.assert_array_equal(A.color(_u8(photo), 1.0).numpy(), photo)
    spread = lambda im: np.mean(im.astype(np.float32).max(-1) - im.astype(np.float32).min(-1))  # noqa: E731
    assert spread(A.color(_u8(photo), 1.9).numpy()) > 1.3 * spread(photo)


def test_contrast_factor_0_is_flat_mean_1_identity_above_1_more_contrast(photo):
    flat = A.contrast(_u8(photo), 0.0).numpy()
    assert len(np.unique(flat)) == 1
    assert abs(int(flat[0, 0, 0]) - _luma(photo).mean()) <= 1
    np.testing.assert_array_equal(A.contrast(_u8(photo), 1.0).numpy(), photo)
    assert A.contrast(_u8(photo), 1.5).numpy().std() > 1.2 * photo.std()
    assert A.contrast(_u8(photo), 0.5).numpy().std() < 0.6 * photo.std()


def test_brightness_scales_pixels(photo):
    np.testing.assert_array_equal(A.brightness(_u8(photo), 0.0).numpy(), 0)
    np.testing.assert_array_equal(A.brightness(_u8(photo), 1.0).numpy(), photo)
    half = A.brightness(_u8(photo), 0.5).numpy().astype(np.int32)
    assert np.abs(half - photo.astype(np.float32) * 0.5).max() <= 0.5 + 1e-6
    bright = A.brightness(_u8(photo), 1.9).numpy().astype(np.int32)
    np.testing.assert_array_equal(bright, np.clip(np.round(photo * 1.9), 0, 255))


def _laplacian_energy(image: np.ndarray) -> float:
    x = image.astype(np.float32).mean(-1)
    lap = 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]
    return float(np.mean(lap**2))


def test_sharpness_smooths_below_1_sharpens_above_and_keeps_border(photo):
    smooth = A.sharpness(_u8(photo), 0.0).numpy()
    sharp = A.sharpness(_u8(photo), 1.9).numpy()
    np.testing.assert_array_equal(A.sharpness(_u8(photo), 1.0).numpy(), photo)
    assert _laplacian_energy(smooth) < 0.5 * _laplacian_energy(photo) < 0.5 * _laplacian_energy(sharp)
    for out in (smooth, sharp):
        np.testing.assert_array_equal(out[0], photo[0])
        np.testing.assert_array_equal(out[-1], photo[-1])
        np.testing.assert_array_equal(out[:, 0], photo[:, 0])
        np.testing.assert_array_equal(out[:, -1], photo[:, -1])
    # One interior pixel by hand: the 3×3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13.
    window = photo[9:12, 19:22, :].astype(np.float64)
    weights = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]])[..., None] / 13.0
    np.testing.assert_allclose(smooth[10, 20], np.round((window * weights).sum((0, 1))), atol=1)


# ----------------------------------------------------------------------------- geometric ops


def test_rotate_90_turns_content_counter_clockwise_about_the_centre():
    image = _marked(41, 41, row=20 + 10, col=20)  # 10 px below the centre
    assert _white_pixels(A.rotate(_u8(image), 90.0).numpy()) == [(20, 30)]  # now 10 px to the right
    assert _white_pixels(A.rotate(_u8(image), -90.0).numpy()) == [(20, 10)]


def test_rotate_fills_uncovered_corners_with_128(photo):
    out = A.rotate(_u8(photo), 30.0).numpy()
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        np.testing.assert_array_equal(corner, FILL)
    assert out.shape == photo.shape
    np.testing.assert_array_equal(out[64, 64], photo[64, 64])  # the centre stays put (ish)


def test_shear_x_moves_a_marked_pixel_and_fills_128():
    image = _marked(41, 41, row=20, col=30)
    out = A.shear_x(_u8(image), 0.5).numpy()
    # Output (x, y) takes input (x + 0.5·y, y): the pixel at x=30, y=20 lands at x=20.
    assert _white_pixels(out) == [(20, 20)]
    np.testing.assert_array_equal(out[40, 40], FILL)  # came from x = 60, outside
    np.testing.assert_array_equal(out[0, 40], 0)  # row 0 is not moved


def test_shear_y_moves_a_marked_pixel_and_fills_128():
    image = _marked(41, 41, row=30, col=20)
    out = A.shear_y(_u8(image), -0.5).numpy()
    assert _white_pixels(out) == [(40, 20)]  # input y = 40 - 0.5·20 = 30
    np.testing.assert_array_equal(out[0, 40], FILL)  # from y = -20
    np.testing.assert_array_equal(out[5, 0], 0)


def test_translate_moves_content_and_fills_128():
    image = _marked(41, 41, row=10, col=12)
    out = A.translate_x(_u8(image), 5).numpy()
    assert _white_pixels(out) == [(10, 17)]
    np.testing.assert_array_equal(out[:, :5], FILL)
    np.testing.assert_array_equal(out[:, 5:][out[:, 5:, 0] != 255], 0)
    out = A.translate_y(_u8(image), -7).numpy()
    assert _white_pixels(out) == [(3, 12)]
    np.testing.assert_array_equal(out[-7:], FILL)


def test_cutout_fills_a_clipped_square_with_128(photo):
    out = A.cutout_at(_u8(photo), 4, 10, 12).numpy()
    np.testing.assert_array_equal(out[6:14, 8:16], FILL)
    mask = np.ones(photo.shape[:2], bool)
    mask[6:14, 8:16] = False
    np.testing.assert_array_equal(out[mask], photo[mask])
    corner = A.cutout_at(_u8(photo), 5, 0, 0).numpy()  # clipped at the border
    np.testing.assert_array_equal(corner[:5, :5], FILL)
    np.testing.assert_array_equal(corner[5:, 5:], photo[5:, 5:])


def test_random_cutout_position_varies_and_size_is_bounded():
    image = np.zeros((64, 64, 3), np.uint8)
    positions = set()
    for i in range(12):
        out = A.cutout(_u8(image), 6, seed=tf.constant([i, 0])).numpy()
        rows, cols = np.nonzero(out[..., 0] == FILL)
        assert 0 < len(rows) <= 12 * 12
        positions.add((int(rows.min()), int(cols.min())))
    assert len(positions) > 6


# ----------------------------------------------------------------------------- levels, policies


def test_level_to_argument_mapping(photo):
    image = _u8(photo)
    np.testing.assert_array_equal(A.apply_op(image, "Posterize", 6).numpy(), A.posterize(image, 2).numpy())
    np.testing.assert_array_equal(A.apply_op(image, "Solarize", 3).numpy(), A.solarize(image, 76).numpy())
    np.testing.assert_array_equal(
        A.apply_op(image, "SolarizeAdd", 3).numpy(), A.solarize_add(image, 33).numpy()
    )
    np.testing.assert_array_equal(A.apply_op(image, "Color", 5).numpy(), A.color(image, 1.0).numpy())
    np.testing.assert_array_equal(A.apply_op(image, "Sharpness", 0).numpy(), A.sharpness(image, 0.1).numpy())
    rotated = A.apply_op(image, "Rotate", 10, seed=tf.constant([3, 4])).numpy()
    candidates = [A.rotate(image, 30.0).numpy(), A.rotate(image, -30.0).numpy()]
    assert any(np.array_equal(rotated, c) for c in candidates)
    translated = A.apply_op(
        image, "TranslateX", 2, seed=tf.constant([1, 1]), hparams=A.RANDAUGMENT_HPARAMS
    ).numpy()
    candidates = [A.translate_x(image, 20.0).numpy(), A.translate_x(image, -20.0).numpy()]
    assert any(np.array_equal(translated, c) for c in candidates)
    # Random sign: both directions occur (level 1 = 10 px with the RandAugment constant).
    marked = _u8(_marked(41, 41, 20, 20))
    rows = set()
    for s in range(10):
        out = A.apply_op(marked, "TranslateY", 1, seed=tf.constant([s, 9]), hparams=A.RANDAUGMENT_HPARAMS)
        ((row, col),) = _white_pixels(out.numpy())
        assert col == 20
        rows.add(row)
    assert rows == {10, 30}


def test_policy_v0_table():
    """Every one of the 25 sub-policies, op, probability and level, as the reference publishes them."""
    assert len(reference_policy.POLICY_V0) == 25
    for index, (ours, reference) in enumerate(zip(A.POLICY_V0, reference_policy.POLICY_V0, strict=True)):
        assert tuple(ours) == reference, f"sub-policy {index}: {ours} != {reference}"
        for name, _, _ in ours:
            assert name in A.OP_NAMES
    assert len(A.RANDAUGMENT_OPS) == 16 and set(A.RANDAUGMENT_OPS) == set(A.OP_NAMES)


@pytest.mark.parametrize("name", A.OP_NAMES)
def test_every_op_keeps_shape_and_dtype_in_graph_mode(photo, name):
    fn = tf.function(
        lambda image: A.apply_op(image, name, 7), input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)]
    )
    out = fn(_u8(photo[:100, :77]))
    assert out.dtype == tf.uint8 and out.shape == (100, 77, 3)


def test_autoaugment_output_is_uint8_same_shape_and_varies_per_image(photo):
    image = _u8(photo)
    outs = [A.autoaugment_v0(image, seed=tf.constant([i, 7])).numpy() for i in range(24)]
    assert all(o.dtype == np.uint8 and o.shape == photo.shape for o in outs)
    assert len({o.tobytes() for o in outs}) >= 10
    again = A.autoaugment_v0(image, seed=tf.constant([5, 7])).numpy()
    np.testing.assert_array_equal(again, outs[5])  # same seed, same result


def test_randaugment_output_is_uint8_same_shape_and_varies_per_image(photo):
    image = _u8(photo)
    outs = [A.randaugment(image, 2, 10, seed=tf.constant([i, 1])).numpy() for i in range(16)]
    assert all(o.dtype == np.uint8 and o.shape == photo.shape for o in outs)
    assert len({o.tobytes() for o in outs}) >= 10
    np.testing.assert_array_equal(A.randaugment(image, 0, 10).numpy(), photo)
    strong = A.randaugment(image, 3, 28, seed=tf.constant([0, 0])).numpy()  # M=28 as for B7
    assert strong.shape == photo.shape


def test_unseeded_augmentation_varies_across_elements_of_a_tf_data_pipeline(photo):
    dataset = tf.data.Dataset.from_tensors(_u8(photo)).repeat(12)
    outs = list(dataset.map(A.autoaugment_v0).as_numpy_iterator())
    assert len({o.tobytes() for o in outs}) >= 4
    outs = list(dataset.map(lambda x: A.randaugment(x, 2, 9)).as_numpy_iterator())
    assert len({o.tobytes() for o in outs}) >= 6


def test_augment_rejects_float_images():
    with pytest.raises(TypeError):
        A.autoaugment_v0(tf.zeros([8, 8, 3], tf.float32))
