"""The model library against the paper's numbers and keras.applications."""

import math

import keras
import numpy as np
import pytest

import efficientnet_tf as et
from efficientnet_tf.models import counting, scaling
from efficientnet_tf.models.layers import DropConnect
from efficientnet_tf.models.weights import load_pretrained

# keras.applications' published totals (1000 classes, incl. batch-norm statistics), docs/recipe.md §3.
KERAS_PARAMS = {
    0: 5_330_571,
    1: 7_856_239,
    2: 9_177_569,
    3: 12_320_535,
    4: 19_466_823,
    5: 30_562_527,
    6: 43_265_143,
    7: 66_658_687,
}
TINY = dict(width_coefficient=0.25, depth_coefficient=0.25, resolution=32, classes=5)


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Give every weight (BN statistics too) distinct random values, so a misrouted copy shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            continue
        values = []
        for w in layer.get_weights():
            if "variance" in str(w.dtype) or w.ndim == 1:
                values.append(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
            else:
                values.append((rng.normal(0, 1, w.shape) * np.sqrt(2.0 / max(1, np.prod(w.shape[:-1])))).astype(w.dtype))
        layer.set_weights(values)


# B0 is the fast representative; B1-B7 (larger builds, same code path) run in the slow tier.
@pytest.mark.parametrize("index", [0] + [pytest.param(i, marks=pytest.mark.slow) for i in range(1, 8)])
def test_matches_keras_applications(index):
    """After importing keras.applications weights, probabilities agree to 1e-5 and params exactly."""
    resolution = 64
    ref = getattr(keras.applications, f"EfficientNetB{index}")(weights=None, input_shape=(resolution, resolution, 3))
    ours = et.build_model(f"efficientnet-b{index}", resolution=resolution)
    assert ours.count_params() == ref.count_params() == KERAS_PARAMS[index]
    assert [w.shape for w in ours.trainable_weights] == [w.shape for w in ref.trainable_weights]

    _randomize(ref, seed=index)
    report = load_pretrained(ours, ref)
    assert "predictions" in report.loaded and not report.skipped
    images = np.random.default_rng(index).uniform(0, 255, (2, resolution, resolution, 3)).astype("float32")
    expected = ref.predict(images, verbose=0)
    got = ours.predict(images, verbose=0)
    assert np.max(np.abs(got - expected)) <= 1e-5
    # Probabilities of a random 1000-way head are all tiny; the argmax must agree as well.
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize(
    "name, params, madds",
    [
        ("efficientnet-b0", 5.3, 0.39),
        ("efficientnet-b1", 7.8, 0.70),
        ("efficientnet-b2", 9.2, 1.0),
        ("efficientnet-b3", 12.0, 1.8),
        pytest.param("efficientnet-b6", 43.0, 19.0, marks=pytest.mark.slow),
        pytest.param("efficientnet-b7", 66.0, 37.0, marks=pytest.mark.slow),
    ],
)
def test_counts_match_paper(name, params, madds):
    """Params within 3% of the paper's and multiply-adds within 3% (B0-B3, B6, B7)."""
    counts = counting.variant_counts(name)
    assert counts.total_params / 1e6 == pytest.approx(params, rel=0.03)
    assert counts.madds / 1e9 == pytest.approx(madds, rel=0.03)


@pytest.mark.parametrize("name, madds", [("efficientnet-b4", 4.2), ("efficientnet-b5", 9.9)])
def test_counts_b4_b5_against_paper(name, madds):
    """B4 and B5 count 4.6% / 3.7% above the paper's rounded figures with the same rule that puts
    B0-B3, B6 and B7 within 2%; independent counters (e.g. timm: B4 4.49 GMACs at 384 px, i.e. 4.40
    at 380) agree with ours, so the gap is the paper's, and is bounded here at 5%."""
    counts = counting.variant_counts(name)
    assert counts.madds / 1e9 == pytest.approx(madds, rel=0.05)
    assert counts.madds / 1e9 > madds


@pytest.mark.parametrize("index, params, madds", [(0, 4.7, 0.407), (1, 5.4, 0.631), (2, 6.1, 0.899), (3, 8.2, 1.44), (4, 13.0, 2.64)])
def test_lite_counts(index, params, madds):
    """Lite params within 3% of the lite table; MAdds below it by 3-6% (the table counts lite0 above
    B0 although lite0 is B0 minus squeeze-excite, so it uses a broader op count than conv MACs)."""
    counts = counting.variant_counts(f"efficientnet-lite{index}")
    assert counts.total_params / 1e6 == pytest.approx(params, rel=0.03)
    assert 0.94 * madds < counts.madds / 1e9 < madds


def test_lite_structure():
    """Lite: no squeeze-excite, ReLU6, stem 32 and head 1280 whatever the width."""
    model = et.build_model("efficientnet-lite4", include_top=False, input_shape=(64, 64, 3))
    names = [layer.name for layer in model.layers]
    assert not any("se_" in n for n in names)
    assert model.get_layer("stem_conv").filters == 32
    assert model.get_layer("top_conv").filters == 1280
    assert model.get_layer("stem_activation").activation.__name__ == "relu6"


def test_rounding_rules():
    """Channel and repeat rounding per the reference (values from keras.applications' B2/B3/B7)."""
    assert scaling.round_filters(32, 1.1) == 32
    assert scaling.round_filters(32, 1.2) == 40
    assert scaling.round_filters(1280, 1.1) == 1408
    assert scaling.round_filters(1280, 2.0) == 2560
    assert scaling.round_filters(16, 0.25) == 8  # never below the divisor
    assert scaling.round_filters(40, 0.5) == 24  # 20 -> 16 would lose > 10%, so +8
    assert scaling.round_repeats(3, 1.4) == 5
    assert scaling.round_repeats(1, 3.1) == 4


def test_compound_scaling_phi():
    """efficientnet-phiX follows alpha^phi, beta^phi and 224*gamma^phi rounded to a multiple of 8."""
    variant = et.get_variant("efficientnet-phi1.5")
    assert variant.depth == pytest.approx(1.2**1.5, rel=1e-5)
    assert variant.width == pytest.approx(1.1**1.5, rel=1e-5)
    assert variant.resolution % 8 == 0
    assert abs(variant.resolution - 224 * 1.15**1.5) <= 4
    assert et.get_variant("efficientnet-phi0").resolution == 224
    custom = et.compound_variant(2.0, alpha=1.3, beta=1.0, gamma=1.0)
    assert (custom.depth, custom.width, custom.resolution) == (pytest.approx(1.69), 1.0, 224)
    # One step of phi costs about alpha * beta^2 * gamma^2 = 1.92x the multiply-adds.
    ratio = counting.variant_counts("efficientnet-phi1").madds / counting.variant_counts("efficientnet-b0").madds
    assert 1.6 < ratio < 2.3


def test_unknown_model_lists_names():
    with pytest.raises(et.UserError) as err:
        et.get_variant("efficientnet-b9")
    message = str(err.value)
    assert "\n" not in message and "efficientnet-b0" in message and "efficientnet-lite4" in message


def test_drop_connect_statistics():
    """Identity at inference; at training whole samples are kept with probability keep, scaled 1/keep."""
    layer = DropConnect(0.3, seed=7)
    x = np.random.default_rng(0).uniform(1, 2, (4000, 2, 2, 3)).astype("float32")  # every value its own
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape
    ratio = (out / x).reshape(4000, -1)
    np.testing.assert_allclose(ratio.min(1), ratio.max(1), rtol=1e-6)  # one decision per sample
    kept = ratio[:, 0] > 0
    np.testing.assert_allclose(ratio[kept], 1 / 0.7, rtol=1e-6)
    # 4000 Bernoulli(0.7) draws: 4 standard deviations is about 0.029.
    assert abs(kept.mean() - 0.7) < 0.03


def test_drop_connect_linear_schedule():
    """Block i of N (0-based) gets rate*i/N; blocks without a skip have no drop-connect."""
    blocks = scaling.scaled_blocks(scaling.get_variant("efficientnet-b0"), drop_connect_rate=0.2)
    assert len(blocks) == 16
    for i, block in enumerate(blocks):
        assert block.drop_rate == pytest.approx(0.2 * i / 16)
    model = et.build_model("efficientnet-b0", drop_connect_rate=0.2, resolution=32)
    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, DropConnect)}
    assert rates["block2b_drop"] == pytest.approx(0.2 * 2 / 16)
    assert "block7a_drop" not in rates  # 192 -> 320 channels: no identity skip
    assert "block2a_drop" not in rates  # stride 2: no residual
    assert max(rates.values()) == pytest.approx(0.2 * 14 / 16)  # block6d, the last with a skip
    plain = et.build_model("efficientnet-b0", drop_connect_rate=0.0, resolution=32)
    assert not [layer.name for layer in plain.layers if isinstance(layer, DropConnect)]  # rate 0: no layer at all


def test_dropout_and_overrides():
    model = et.build_model("efficientnet-b3", resolution=32, dropout_rate=0.45)
    assert model.get_layer("top_dropout").rate == 0.45
    assert et.build_model("efficientnet-b6", resolution=32).get_layer("top_dropout").rate == 0.5


def test_api_shape_like_keras_applications():
    no_top = et.build_model("efficientnet-b0", include_top=False, input_shape=(None, None, 3))
    assert no_top.output_shape == (None, None, None, 1280)
    pooled = et.build_model("efficientnet-b0", include_top=False, pooling="max", resolution=64)
    assert pooled.output_shape == (None, 1280)
    logits = et.build_model("efficientnet-b0", classes=7, classifier_activation=None, resolution=64)
    out = logits.predict(np.zeros((1, 64, 64, 3)), verbose=0)
    assert out.shape == (1, 7) and out.dtype == np.float32 and not np.isclose(out.sum(), 1.0)
    assert et.EfficientNetB2(weights=None).input_shape == (None, 260, 260, 3)


def test_backbone_endpoints():
    backbone = et.build_backbone("efficientnet-b0")
    out = backbone(np.zeros((1, 224, 224, 3), "float32"))
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    assert shapes == {
        "reduction_1": (1, 112, 112, 16),
        "reduction_2": (1, 56, 56, 24),
        "reduction_3": (1, 28, 28, 40),
        "reduction_4": (1, 14, 14, 112),
        "reduction_5": (1, 7, 7, 320),
    }


def test_normalisation_inside_model():
    """ImageNet mean/std on 0-255 input (lite: 127/128): a mean-coloured image normalises to zero."""
    model = et.build_model("efficientnet-b0", resolution=32)
    norm = keras.Model(model.input, model.get_layer("normalization").output)
    mean_image = np.broadcast_to(np.array([0.485, 0.456, 0.406]) * 255, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(norm(mean_image)), 0.0, atol=1e-5)
    one_std = mean_image + np.array([0.229, 0.224, 0.225], "float32") * 255
    np.testing.assert_allclose(np.asarray(norm(one_std)), 1.0, atol=1e-4)
    lite = et.build_model("efficientnet-lite0", resolution=32)
    lite_norm = keras.Model(lite.input, lite.get_layer("normalization").output)
    np.testing.assert_allclose(np.asarray(lite_norm(np.full((1, 32, 32, 3), 255.0, "float32"))), 1.0, atol=1e-5)


def test_keras_file_round_trip(tmp_path):
    """A .keras save / safe-mode load gives identical outputs (custom layers included)."""
    # Full depth, so that residual blocks (and their DropConnect layers) are in the file.
    model = et.build_model("efficientnet-b0", **{**TINY, "depth_coefficient": 1.0})
    _randomize(model)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(images, verbose=0), loaded.predict(images, verbose=0))
    assert any(isinstance(layer, DropConnect) for layer in loaded.layers)


def test_initialisers_follow_reference():
    """Conv kernels ~ N(0, sqrt(2/fan_out)), dense ~ U(+-1/sqrt(units))."""
    model = et.build_model("efficientnet-b0", resolution=32)
    kernel = np.asarray(model.get_layer("top_conv").kernel)  # 1x1, 320 -> 1280: fan_out 1280
    assert kernel.std() == pytest.approx(math.sqrt(2 / 1280), rel=0.02)
    dense = np.asarray(model.get_layer("predictions").kernel)
    assert np.abs(dense).max() <= 1 / math.sqrt(1000) + 1e-7
    assert np.abs(dense).max() > 0.9 / math.sqrt(1000)
    bn = model.get_layer("stem_bn")
    assert bn.momentum == 0.99 and bn.epsilon == 1e-3


def test_summary_table_rows():
    """`main.py --mode=summary`'s table: our counts beside the paper's, '-' where the paper has none."""
    table = counting.summary_table(("efficientnet-b0", "efficientnet-lite0", "efficientnet_phi0.5"))
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:5]}
    assert rows["efficientnet-b0"][:7] == ["efficientnet-b0", "224", "1.00", "1.00", "5.33M", "5.29M", "5.3M"]
    assert rows["efficientnet-b0"][7:10] == ["0.386B", "0.39B", "-1.1%"]
    assert rows["efficientnet-lite0"][4] == "4.69M" and rows["efficientnet-lite0"][8] == "0.407B"
    assert rows["efficientnet-phi0.5"][6] == "-" and rows["efficientnet-phi0.5"][8] == "-"
    assert scaling.get_variant("efficientnet-b8").paper_madds_b is None  # nor for B8


def test_deep_graphs_build_from_a_deep_caller_stack():
    """Keras walks the functional graph recursively; L2 (over 1,200 layers) passed Python's default limit of
    1,000 frames when built from inside a test runner. The builder raises the limit to what the graph needs.
    B0 at 900 frames deep under a limit of 1,000 fails the same way without that."""
    import sys

    et.build_model("efficientnet-b0", width_coefficient=0.25, resolution=32, classes=7)  # lazy imports done

    def at_depth(n: int):
        return et.build_model("efficientnet-b0", width_coefficient=0.25, resolution=32, classes=7) if n == 0 \
            else at_depth(n - 1)

    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        depth = 900 - len(__import__("inspect").stack(0))
        model = at_depth(depth)
        assert len(model.layers) > 200 and sys.getrecursionlimit() > 1000
    finally:
        sys.setrecursionlimit(max(saved, sys.getrecursionlimit()))
