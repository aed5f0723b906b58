"""Keras 3 layers of EfficientNet: drop-connect and the MBConv block with squeeze-excite."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3


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
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + bn_name)(x)
    if activation:
        x = layers.Activation(activation, name=name + act_name)(x)
    return x


def mbconv_block(
    inputs,
    *,
    name: str,
    kernel_size: int,
    filters_in: int,
    filters_out: int,
    expand_ratio: int,
    strides: int,
    se_ratio: float,
    drop_rate: float,
    activation: str,
):
    """Mobile inverted bottleneck: expand 1x1 -> depthwise kxk -> squeeze-excite -> project 1x1.

    Strided depthwise convolutions use TensorFlow 'same' padding, which for every input size pads
    exactly as keras.applications' explicit `correct_pad` does, so outputs match it.
    """
    filters = filters_in * expand_ratio
    x = inputs
    if expand_ratio != 1:
        x = conv_bn_act(x, filters, 1, 1, activation, name, "expand_conv", "expand_bn", "expand_activation")
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=ConvKernelInitializer(),
        name=name + "dwconv",
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + "bn")(x)
    x = layers.Activation(activation, name=name + "activation")(x)

    if 0 < se_ratio <= 1:
        # The squeeze width comes from the block's INPUT channels, not the expanded ones.
        filters_se = max(1, int(filters_in * se_ratio))
        se = layers.GlobalAveragePooling2D(keepdims=True, name=name + "se_squeeze")(x)
        se = layers.Conv2D(
            filters_se, 1, activation=activation, kernel_initializer=ConvKernelInitializer(), name=name + "se_reduce"
        )(se)
        se = layers.Conv2D(
            filters, 1, activation="sigmoid", kernel_initializer=ConvKernelInitializer(), name=name + "se_expand"
        )(se)
        x = layers.Multiply(name=name + "se_excite")([x, se])

    x = conv_bn_act(x, filters_out, 1, 1, None, name, "project_conv", "project_bn", "")
    if strides == 1 and filters_in == filters_out:
        if drop_rate > 0:
            x = DropConnect(drop_rate, name=name + "drop")(x)
        x = layers.Add(name=name + "add")([x, inputs])
    return x
