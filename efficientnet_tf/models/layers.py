"""Keras 3 layers of EfficientNet: drop-connect, fused batch norm, squeeze-excite and the blocks (MBConv,
Fused-MBConv) with the registry of block kinds that the block tables name."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling
from efficientnet_tf.models.scaling import NetworkPlan, ScaledBlock

BN_MOMENTUM = scaling.BATCH_NORM_MOMENTUM
BN_EPSILON = scaling.BATCH_NORM_EPSILON


class ConvKernelInitializer(keras.initializers.Initializer):
    """Reference conv initialiser: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out_channels.

    For a depthwise kernel [k, k, C, 1] the fan-out is k*k*1, as in the reference.
    """

    def __call__(self, shape, dtype=None):
        kernel_h, kernel_w, _, out_filters = shape
        fan_out = int(kernel_h * kernel_w * out_filters)
        return keras.random.normal(shape, mean=0.0, stddev=math.sqrt(2.0 / fan_out), dtype=dtype)

    def get_config(self) -> dict:
        return {}


class DenseKernelInitializer(keras.initializers.Initializer):
    """Reference dense initialiser: uniform(-1/sqrt(units), 1/sqrt(units))."""

    def __call__(self, shape, dtype=None):
        limit = 1.0 / math.sqrt(shape[1])
        return keras.random.uniform(shape, -limit, limit, dtype=dtype)

    def get_config(self) -> dict:
        return {}


keras.saving.register_keras_serializable("efficientnet_tf")(ConvKernelInitializer)
keras.saving.register_keras_serializable("efficientnet_tf")(DenseKernelInitializer)


@keras.saving.register_keras_serializable("efficientnet_tf")
class DropConnect(layers.Layer):
    """Stochastic depth on a residual branch: drops whole samples, scales the kept ones by 1/keep.

    Identity at inference. The mask has one value per sample (shape [B, 1, 1, 1]).
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-connect rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep_prob = 1.0 - self.rate
        batch = ops.shape(inputs)[0]
        mask_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, dtype=inputs.dtype, seed=self.seed_generator)
        mask = ops.floor(keep_prob + noise)
        return inputs / ops.cast(keep_prob, inputs.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


# cuDNN refuses smaller epsilons in its fused kernel (CUDNN_BN_MIN_EPSILON); such layers use Keras' ops.
_FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable("efficientnet_tf")
class FusedBatchNormalization(layers.BatchNormalization):
    """keras.layers.BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 on the TensorFlow backend normalises with separate moments, subtract, scale and shift
    ops, and as many more in the gradient (about 3x the time of the fused kernel forward and
    backward on CPU); at inference Grappler also folds the fused op into a preceding Conv2D.
    Same variables and names, the same momentum convention (moving = moving·momentum +
    batch·(1 − momentum), with the biased batch variance, as Keras) and the same outputs to float
    rounding; float16 / bfloat16 inputs are normalised with float32 statistics, as Keras does.
    Anything the fused kernel cannot do (masks, renorm, synchronized, other ranks or axes) falls
    back to Keras.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.scale
            and self.center
            and self.epsilon >= _FUSED_MIN_EPSILON
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16")
            and keras.backend.standardize_dtype(self.gamma.dtype) == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma = ops.convert_to_tensor(self.gamma)
        beta = ops.convert_to_tensor(self.beta)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
            )
            # The kernel returns the Bessel-corrected batch variance n/(n-1)·var (n/n for n = 1);
            # Keras' moving variance averages the biased one.
            count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
            variance = variance * (tf.maximum(count - 1.0, 1.0) / tf.maximum(count, 1.0))
            mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
            moving_mean = ops.cast(self.moving_mean, "float32")
            moving_variance = ops.cast(self.moving_variance, "float32")
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=ops.convert_to_tensor(self.moving_mean),
                variance=ops.convert_to_tensor(self.moving_variance), epsilon=self.epsilon, data_format="NHWC",
                is_training=False,
            )
        return ops.cast(outputs, self.compute_dtype)


def conv_bn_act(
    x,
    filters: int,
    kernel_size: int,
    strides: int,
    activation: str | None,
    name: str,
    conv_name: str,
    bn_name: str,
    act_name: str,
    batch_norm_momentum: float = BN_MOMENTUM,
):
    """Conv (no bias) + batch norm (+ activation), with keras.applications layer names."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=ConvKernelInitializer(),
        name=name + conv_name,
    )(x)
    x = FusedBatchNormalization(momentum=batch_norm_momentum, epsilon=BN_EPSILON, name=name + bn_name)(x)
    if activation:
        x = layers.Activation(activation, name=name + act_name)(x)
    return x


def squeeze_excite(x, block: ScaledBlock, filters: int, activation: str):
    """Squeeze-excite on `x` (`filters` channels), gated per channel; nothing when the block has none.

    The squeeze width comes from the block's INPUT channels, not the expanded ones (V1 and V2 alike).
    """
    if not 0 < block.se_ratio <= 1:
        return x
    name = block.name
    filters_se = max(1, int(block.filters_in * block.se_ratio))
    se = layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_squeeze")(x)
    se = layers.Conv2D(
        filters_se, 1, activation=activation, kernel_initializer=ConvKernelInitializer(), name=name + "se_reduce"
    )(se)
    se = layers.Conv2D(
        filters, 1, activation="sigmoid", kernel_initializer=ConvKernelInitializer(), name=name + "se_expand"
    )(se)
    return layers.Multiply(name=name + "se_excite")([x, se])


def _residual(x, inputs, block: ScaledBlock):
    """The identity skip, with drop-connect on the branch, where the block keeps its shape."""
    if not block.residual:
        return x
    if block.drop_rate > 0:
        x = DropConnect(block.drop_rate, name=block.name + "drop")(x)
    return layers.Add(name=block.name + "add")([x, inputs])


def mbconv_block(inputs, block: ScaledBlock, *, activation: str, batch_norm_momentum: float = BN_MOMENTUM):
    """Mobile inverted bottleneck: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1.

    Strided depthwise convolutions use TensorFlow 'same' padding, which for every input size pads
    exactly as keras.applications' explicit `correct_pad` does, so outputs match it.
    """
    name, momentum = block.name, batch_norm_momentum
    filters = block.filters_in * block.expand_ratio
    x = inputs
    if block.expand_ratio != 1:
        x = conv_bn_act(x, filters, 1, 1, activation, name, "expand_conv", "expand_bn", "expand_activation", momentum)
    x = layers.DepthwiseConv2D(
        block.kernel_size,
        strides=block.strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=ConvKernelInitializer(),
        name=name + block.depthwise_name,
    )(x)
    x = FusedBatchNormalization(momentum=momentum, epsilon=BN_EPSILON, name=name + "bn")(x)
    x = layers.Activation(activation, name=name + "activation")(x)
    x = squeeze_excite(x, block, filters, activation)
    x = conv_bn_act(x, block.filters_out, 1, 1, None, name, "project_conv", "project_bn", "", momentum)
    return _residual(x, inputs, block)


def fused_mbconv_block(inputs, block: ScaledBlock, *, activation: str, batch_norm_momentum: float = BN_MOMENTUM):
    """Fused-MBConv (EfficientNetV2): a full kxk convolution expands (no depthwise, no 1x1 expand), then
    squeeze-excite where the table has it, then a 1x1 projection without activation. With expand ratio 1
    the kxk convolution alone maps the input to the output channels, followed by batch norm and the
    activation (as in the reference's FusedMBConvBlock and keras.applications' efficientnet_v2)."""
    name, momentum = block.name, batch_norm_momentum
    filters = block.filters_in * block.expand_ratio
    x = inputs
    if block.expand_ratio != 1:
        x = conv_bn_act(x, filters, block.kernel_size, block.strides, activation, name, "expand_conv", "expand_bn",
                        "expand_activation", momentum)
    x = squeeze_excite(x, block, filters, activation)  # on the block's input when it does not expand
    if block.expand_ratio != 1:
        x = conv_bn_act(x, block.filters_out, 1, 1, None, name, "project_conv", "project_bn", "", momentum)
    else:
        x = conv_bn_act(x, block.filters_out, block.kernel_size, block.strides, activation, name, "project_conv",
                        "project_bn", "project_activation", momentum)
    return _residual(x, inputs, block)


@dataclasses.dataclass(frozen=True)
class BlockKind:
    """A block function and the name of its output layer (after the block's prefix), by shape."""

    build: Callable[..., Any]  # (inputs, block: ScaledBlock, *, activation, batch_norm_momentum) -> output
    output_layer: Callable[[ScaledBlock], str]


def _project_output(block: ScaledBlock) -> str:
    return "add" if block.residual else "project_bn"


def _fused_output(block: ScaledBlock) -> str:
    if block.residual:
        return "add"
    return "project_activation" if block.expand_ratio == 1 else "project_bn"


# The block kinds a table's `kind` field names; the builder looks blocks up here and nowhere else, so a new
# kind is a function registered here (and rows of that kind in a table).
BLOCK_KINDS: dict[str, BlockKind] = {
    "mbconv": BlockKind(mbconv_block, _project_output),
    "fused": BlockKind(fused_mbconv_block, _fused_output),
}


def block_kind(kind: str) -> BlockKind:
    """The registered block kind called `kind`; a one-line UserError names the registered ones."""
    if kind not in BLOCK_KINDS:
        raise UserError(f"unknown block kind {kind!r}; registered: {', '.join(BLOCK_KINDS)}")
    return BLOCK_KINDS[kind]


def network_body(x, plan: NetworkPlan):
    """The stem, every block of the plan (each by its kind) and the 1x1 head convolution, on normalised images."""
    act, momentum = plan.activation, plan.batch_norm_momentum
    x = conv_bn_act(x, plan.stem_filters, 3, 2, act, "stem_", "conv", "bn", "activation", momentum)
    for spec in plan.blocks:
        x = block_kind(spec.kind).build(x, spec, activation=act, batch_norm_momentum=momentum)
    return conv_bn_act(x, plan.head_filters, 1, 1, act, "top_", "conv", "bn", "activation", momentum)
