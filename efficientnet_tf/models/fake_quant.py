"""Fake quantisation that computes what TFLite's int8 kernels compute, as ops and Keras layers.

Weights: int8 symmetric per output channel, range -127..127, zero point 0 (scale = max|w| / 127).
Activations: 8 bits asymmetric per tensor, the zero point nudged onto the integer grid, as
TensorFlow's FakeQuant ops and the TFLite converter both do (one uint8 step = (max - min) / 255).
Biases: int32 with scale input_scale x weight_scale. Ranges narrower than 1e-6 are widened to
[-5e-7, 5e-7] around zero, as the converter does before it picks a scale (its ExpandVerySmallRange).
Every rounding has a straight-through gradient inside the range and none outside it (TensorFlow's
FakeQuant gradients), so a model trains through it.

The layers here keep the names of the float layers they stand for, and their weight lists begin with
the float layers' weights, so a float model's weights copy into them by layer name. `efficientnet_tf.models.quantize` builds models of them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from efficientnet_tf.models.layers import FusedBatchNormalization

NEAR_ZERO_RANGE = 1e-6  # the converter widens narrower ranges to +-HALF_NEAR_ZERO_RANGE
HALF_NEAR_ZERO_RANGE = NEAR_ZERO_RANGE / 2
INT32_MAX = 2**31 - 1
BIAS_HEADROOM = 2.0  # a bias uses at most half the int32 range: the kernel's sum of products has the rest
# LOGISTIC and SOFTMAX write int8 with scale 1/256 and zero point -128 (TFLite's quantisation
# spec): as a uint8 range that is [0, 255/256].
PROBABILITY_RANGE = (0.0, 255.0 / 256.0)
PIXEL_RANGE = (0.0, 255.0)  # the model's input: 0..255 pixels, one step per value
DEFAULT_RANGE_MOMENTUM = 0.99


def widen_small_range(minimum, maximum):
    """The converter's guard against huge quantised values: ranges under 1e-6 become at least +-5e-7."""
    small = (maximum - minimum) <= NEAR_ZERO_RANGE
    return (tf.where(small, tf.minimum(minimum, -HALF_NEAR_ZERO_RANGE), minimum),
            tf.where(small, tf.maximum(maximum, HALF_NEAR_ZERO_RANGE), maximum))


def fake_quant(x, minimum, maximum):
    """8-bit asymmetric per-tensor fake quantisation of x to [minimum, maximum] (nudged to hold zero exactly)."""
    minimum, maximum = widen_small_range(tf.cast(minimum, tf.float32), tf.cast(maximum, tf.float32))
    return tf.quantization.fake_quant_with_min_max_vars(x, minimum, maximum, num_bits=8, narrow_range=False)


def activation_scale(minimum, maximum):
    """The per-tensor scale (one step) of an 8-bit activation range."""
    minimum, maximum = widen_small_range(tf.cast(minimum, tf.float32), tf.cast(maximum, tf.float32))
    return (maximum - minimum) / 255.0


def weight_ranges(kernel, per_channel: bool = True):
    """Half-range of each output channel (the last axis) of a kernel, or of the whole kernel: max |w|, widened
    as the converter does."""
    axes = list(range(len(kernel.shape) - 1)) if per_channel else None
    return tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), HALF_NEAR_ZERO_RANGE)


def _symmetric(kernel, bound, per_channel: bool):
    """int8 symmetric fake quantisation to [-bound, bound] (per channel over the last axis), -127..127."""
    if per_channel:
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -bound, bound, num_bits=8,
                                                                        narrow_range=True)
    return tf.quantization.fake_quant_with_min_max_vars(kernel, -bound, bound, num_bits=8, narrow_range=True)


def fake_quant_weights(kernel, per_channel: bool = True):
    """int8 symmetric fake quantisation, per channel over the last axis or per tensor: round(w / s) * s with
    s = max|w| / 127, -127..127."""
    return _symmetric(kernel, tf.stop_gradient(weight_ranges(kernel, per_channel)), per_channel)


def bias_floor(bias, input_scale):
    """The smallest weight half-range whose bias scale (input x weight scale) holds `bias` within 1/BIAS_HEADROOM of
    the int32 range. A channel whose folded weights are (nearly) zero but whose bias is not would otherwise get
    a bias clamped to the int32 limit, and the kernel's int32 sum then overflows; the converter takes the
    weight range from the fake quantisation as it is, so the simulation widens it (the weights still round to
    zero) the way TFLite's own quantizer adjusts such weight scales."""
    return tf.abs(bias) * 127.0 * BIAS_HEADROOM / (input_scale * float(INT32_MAX))


def fake_quant_bias(bias, input_scale, weight_scales):
    """int32 fake quantisation of a bias with scale input_scale x weight_scale, clamped as TFLite clamps it."""
    scale = tf.stop_gradient(input_scale * weight_scales)
    steps = tf.clip_by_value(tf.round(bias / scale), -float(INT32_MAX), float(INT32_MAX))
    return bias + tf.stop_gradient(steps * scale - bias)


class _Untracked:
    """A reference that Keras and checkpoints do not follow (the model owns the layer it points to)."""

    def __init__(self, item):
        self.item = item


@keras.saving.register_keras_serializable("efficientnet_tf")
class ActivationQuantizer(layers.Layer):
    """Fake-quantises a tensor where the integer model requantises it.

    Learned ranges: in training, the batch's min / max (widened to hold 0) are averaged with
    `momentum` (the first batch sets them) until `frozen` is set; at inference the stored range
    applies. Fixed ranges (`fixed_range`, e.g. LOGISTIC's [0, 255/256]) hold no variables.
    """

    def __init__(self, fixed_range: tuple[float, float] | None = None, momentum: float = DEFAULT_RANGE_MOMENTUM,
                 **kwargs):
        super().__init__(**kwargs)
        self.fixed_range = None if fixed_range is None else (float(fixed_range[0]), float(fixed_range[1]))
        self.momentum = float(momentum)

    def build(self, input_shape):
        if self.fixed_range is None:
            weight = lambda name, value: self.add_weight(  # noqa: E731
                shape=(), name=name, initializer=keras.initializers.Constant(value), trainable=False)
            # Before any range is seen, +-6 (a common default) keeps the model usable.
            self.minimum, self.maximum = weight("minimum", -6.0), weight("maximum", 6.0)
            self.observed = weight("observed", 0.0)
            self.frozen = weight("frozen", 0.0)
        self.built = True

    @property
    def learned(self) -> bool:
        """Whether this point's range is learned (else fixed by the kernel)."""
        return self.fixed_range is None

    def range(self):
        """The (min, max) this quantizer applies now."""
        if self.fixed_range is not None:
            return tf.constant(self.fixed_range[0]), tf.constant(self.fixed_range[1])
        return ops.convert_to_tensor(self.minimum), ops.convert_to_tensor(self.maximum)

    def scale(self):
        """One quantisation step of this point, as the converter computes it."""
        return activation_scale(*self.range())

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            return fake_quant(inputs, *self.fixed_range)
        if training:
            x = tf.cast(inputs, tf.float32)
            low = tf.minimum(tf.stop_gradient(tf.reduce_min(x)), 0.0)
            high = tf.maximum(tf.stop_gradient(tf.reduce_max(x)), 0.0)
            frozen, first = self.frozen > 0.5, self.observed < 0.5
            m = self.momentum
            old_low, old_high = ops.convert_to_tensor(self.minimum), ops.convert_to_tensor(self.maximum)
            new_low = tf.where(frozen, old_low, tf.where(first, low, old_low * m + low * (1.0 - m)))
            new_high = tf.where(frozen, old_high, tf.where(first, high, old_high * m + high * (1.0 - m)))
            self.minimum.assign(new_low)
            self.maximum.assign(new_high)
            self.observed.assign(tf.where(frozen, ops.convert_to_tensor(self.observed), 1.0))
            return fake_quant(inputs, new_low, new_high)
        return fake_quant(inputs, self.minimum, self.maximum)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "fixed_range": self.fixed_range, "momentum": self.momentum}


def _input_scale(quantizer: _Untracked | None):
    return quantizer.item.scale() if quantizer is not None else None


def _quantized_conv(layer, x, kernel):
    """The convolution of `layer` (Conv2D or DepthwiseConv2D) of x with another kernel."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                  dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    return layer.convolution_op(x, kernel)


def quantize_kernel(kernel, kind: str = "conv", floor=None):
    """(fake-quantised kernel, weight scales) of a "conv" kernel (per output channel), a "depthwise" one (per
    output channel c·M + m) or a "dense" one (per tensor: TFLite's FULLY_CONNECTED converts only that from
    fake quantisation, the converter cannot carry per-channel scales through the weights' transpose).
    `floor`: the smallest half-range per output channel (see `bias_floor`)."""
    per_channel = kind != "dense"
    flat = tf.reshape(kernel, [kernel.shape[0], kernel.shape[1], -1]) if kind == "depthwise" else kernel
    bound = weight_ranges(flat, per_channel)
    if floor is not None:
        bound = tf.maximum(bound, floor if per_channel else tf.reduce_max(floor))
    bound = tf.stop_gradient(bound)
    quantized = _symmetric(flat, bound, per_channel)
    if kind == "depthwise":
        quantized = tf.reshape(quantized, tf.shape(kernel))
    return quantized, bound / 127.0


def kernel_kind(layer) -> str:
    """"depthwise", "dense" or "conv": how `layer`'s kernel is quantised."""
    if isinstance(layer, layers.DepthwiseConv2D):
        return "depthwise"
    return "dense" if isinstance(layer, layers.Dense) else "conv"


def per_output_channel(layer, values):
    """A per-output-channel vector shaped to multiply `layer`'s kernel."""
    if isinstance(layer, layers.DepthwiseConv2D):
        channels = layer.kernel.shape[2]
        return tf.reshape(values, [1, 1, channels, -1])
    return values


class _QuantizedBiasMixin:
    """Kernel and bias fake-quantised as the integer kernel holds them; the activation is applied apart."""

    def set_input_quantizer(self, quantizer: ActivationQuantizer) -> None:
        """The quantizer of this layer's input, whose scale sets the bias scale."""
        self._input_quantizer = _Untracked(quantizer)

    def quantized_call(self, x, compute):
        quantizer = getattr(self, "_input_quantizer", None)
        bias = ops.convert_to_tensor(self.bias) if self.use_bias else None
        if bias is None or quantizer is None:
            kernel, _ = quantize_kernel(self.kernel, kernel_kind(self))
            outputs = compute(x, kernel)
            return outputs if bias is None else outputs + bias
        input_scale = _input_scale(quantizer)
        kernel, scales = quantize_kernel(self.kernel, kernel_kind(self), bias_floor(bias, input_scale))
        return compute(x, kernel) + fake_quant_bias(bias, input_scale, scales)


@keras.saving.register_keras_serializable("efficientnet_tf")
class QuantConv2D(_QuantizedBiasMixin, layers.Conv2D):
    """Conv2D computed with int8 per-channel weights and an int32 bias (its activation applied by the next layers)."""

    def call(self, inputs):
        return self.quantized_call(inputs, self.convolution_op)


@keras.saving.register_keras_serializable("efficientnet_tf")
class QuantDepthwiseConv2D(_QuantizedBiasMixin, layers.DepthwiseConv2D):
    """DepthwiseConv2D computed with int8 per-channel weights and an int32 bias."""

    def call(self, inputs):
        return self.quantized_call(inputs, lambda x, k: _quantized_conv(self, x, k))


@keras.saving.register_keras_serializable("efficientnet_tf")
class QuantDense(_QuantizedBiasMixin, layers.Dense):
    """Dense computed with int8 per-output-unit weights and an int32 bias."""

    def call(self, inputs):
        return self.quantized_call(inputs, lambda x, k: ops.matmul(x, k))


@keras.saving.register_keras_serializable("efficientnet_tf")
class FoldedBatchNormalization(FusedBatchNormalization):
    """Batch norm folded into the convolution before it, as the TFLite converter folds it, with int8 weights.

    Called on [conv input, conv output]; the conv layer (set with `set_conv`) only holds the kernel
    (its own output is left unused, so graphs drop it). The integer model computes
    conv(x, q(W·γ/σ)) + q(β − γ·μ/σ) with the moving statistics (μ, σ² + ε); that is what this
    layer computes at inference and once `stats_frozen` is set. Before that, training follows the
    standard recipe (Krishnamoorthi 2018, §3.2): the weights are quantised folded with the moving
    statistics, so they do not jitter with the batch, and the output is corrected by σ/σ_B and
    shifted with the batch statistics, which equals batch norm in training mode while updating
    the moving statistics as batch norm does.
    """

    def set_conv(self, conv: layers.Layer, input_quantizer: ActivationQuantizer | None = None) -> None:
        """The Conv2D / DepthwiseConv2D (no bias) whose kernel is folded, and the quantizer of its input."""
        self._conv = _Untracked(conv)
        self._input_quantizer = None if input_quantizer is None else _Untracked(input_quantizer)

    @property
    def conv(self) -> layers.Layer:
        return self._conv.item

    def build(self, input_shape):
        super().build(input_shape[1])
        self.stats_frozen = self.add_weight(shape=(), name="stats_frozen", initializer="zeros", trainable=False)
        self.input_spec = None

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def _fold(self, x):
        """conv(x, q(W·γ/σ)) + q(β − γ·μ/σ) with the moving statistics, and that conv without its bias."""
        mean, variance = ops.convert_to_tensor(self.moving_mean), ops.convert_to_tensor(self.moving_variance)
        factor = ops.convert_to_tensor(self.gamma) * tf.math.rsqrt(variance + self.epsilon)
        kernel = ops.convert_to_tensor(self.conv.kernel) * per_output_channel(self.conv, factor)
        bias = ops.convert_to_tensor(self.beta) - mean * factor
        kind = kernel_kind(self.conv)
        if self._input_quantizer is None:
            quantized, _ = quantize_kernel(kernel, kind)
            outputs = _quantized_conv(self.conv, x, quantized)
            return outputs + bias, outputs
        input_scale = _input_scale(self._input_quantizer)
        quantized, scales = quantize_kernel(kernel, kind, bias_floor(bias, input_scale))
        outputs = _quantized_conv(self.conv, x, quantized)
        return outputs + fake_quant_bias(bias, input_scale, scales), outputs

    def _inference(self, x):
        return self._fold(x)[0]

    def _training(self, x):
        raw = _quantized_conv(self.conv, x, ops.convert_to_tensor(self.conv.kernel))
        mean, variance = tf.nn.moments(raw, axes=[0, 1, 2])
        moving_variance = ops.convert_to_tensor(self.moving_variance)
        _, outputs = self._fold(x)
        batch_sigma = tf.sqrt(variance + self.epsilon)
        correction = tf.sqrt(moving_variance + self.epsilon) / batch_sigma
        bias = ops.convert_to_tensor(self.beta) - ops.convert_to_tensor(self.gamma) * mean / batch_sigma
        m = self.momentum
        self.moving_mean.assign(ops.convert_to_tensor(self.moving_mean) * m + tf.stop_gradient(mean) * (1.0 - m))
        self.moving_variance.assign(moving_variance * m + tf.stop_gradient(variance) * (1.0 - m))
        return outputs * correction + bias

    def call(self, inputs, training=None, mask=None):
        x = inputs[0]
        if training and self.trainable:
            return tf.cond(self.stats_frozen > 0.5, lambda: self._inference(x), lambda: self._training(x))
        return self._inference(x)


@keras.saving.register_keras_serializable("efficientnet_tf")
class InputAffine(layers.Layer):
    """The input rescaling and normalisation as one per-channel x·a + b, computed as the integer model does.

    A 1x1 depthwise convolution with int8 weights a and an int32 bias b: one op, one requantisation
    (three separate MUL / SUB / MUL ops would round three times).
    """

    def __init__(self, scale, offset, **kwargs):
        super().__init__(**kwargs)
        self.scale_values = [float(v) for v in scale]
        self.offset_values = [float(v) for v in offset]

    def set_input_quantizer(self, quantizer: ActivationQuantizer) -> None:
        """The quantizer of the pixels, whose scale sets the bias scale."""
        self._input_quantizer = _Untracked(quantizer)

    def build(self, input_shape):
        # Variables, so that checkpoints hold the normalisation the model was trained with.
        constant = keras.initializers.Constant
        channels = len(self.scale_values)
        self.scale = self.add_weight(shape=(channels,), name="scale", initializer=constant(self.scale_values),
                                     trainable=False)
        self.offset = self.add_weight(shape=(channels,), name="offset", initializer=constant(self.offset_values),
                                      trainable=False)
        self.built = True

    def call(self, inputs):
        kernel = tf.reshape(ops.convert_to_tensor(self.scale), [1, 1, -1, 1])
        bias = ops.convert_to_tensor(self.offset)
        quantizer = getattr(self, "_input_quantizer", None)
        if quantizer is None:
            quantized, _ = quantize_kernel(kernel, "depthwise")
            return ops.depthwise_conv(inputs, quantized, strides=1, padding="valid") + bias
        input_scale = _input_scale(quantizer)
        quantized, scales = quantize_kernel(kernel, "depthwise", bias_floor(bias, input_scale))
        outputs = ops.depthwise_conv(inputs, quantized, strides=1, padding="valid")
        return outputs + fake_quant_bias(bias, input_scale, scales)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale_values, "offset": self.offset_values}
