"""Keras 3 layers of EfficientNet: drop-connect, fused batch norm and the MBConv block with squeeze-excite."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from efficientnet_tf.models import scaling

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
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + bn_name)(x)
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
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + "bn")(x)
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
