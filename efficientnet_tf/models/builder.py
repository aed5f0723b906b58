"""The EfficientNet builder: a functional Keras model with keras.applications' API shape and layer names,
built from a variant's block table (V1, Lite, V2) by its family's scaling rules, optionally with published or
saved weights loaded. One builder for every family: each block is looked up by its table's `kind` in
`layers.BLOCK_KINDS`."""

from __future__ import annotations

import sys

import keras
from keras import layers

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling
from efficientnet_tf.models.layers import DenseKernelInitializer, block_kind, network_body
from efficientnet_tf.models.normalization import fix_normalization
from efficientnet_tf.models.weights import published
from efficientnet_tf.models.weights.load import load_pretrained

ENDPOINT_NAMES = ("reduction_1", "reduction_2", "reduction_3", "reduction_4", "reduction_5")


def build_model(
    model_name: str = "efficientnet-b0",
    *,
    include_top: bool = True,
    weights: str | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    drop_connect_rate: float | None = None,
    dropout_rate: float | None = None,
    resolution: int | None = None,
    width_coefficient: float | None = None,
    depth_coefficient: float | None = None,
    baseline_blocks: tuple[scaling.BlockSpec, ...] | None = None,
    name: str | None = None,
    normalization: str | None = None,
) -> keras.Model:
    """Build an EfficientNet as a functional Keras model taking 0-255 RGB images.

    `weights` is None (random init), a path understood by `efficientnet_tf.models.weights.load_pretrained`
    (.keras, keras.applications .h5, reference TF checkpoint, PyTorch state dict), or a weights name
    of `efficientnet_tf.models.weights.published` ("imagenet", "advprop", "noisy-student", ...; downloaded once
    into a cache). `normalization` names the input normalisation in `scaling.NORMALIZATIONS`
    ("imagenet", "advprop" = [-1, 1], "lite", "v2" = (x - 128) / 128); None takes the named weights'
    one, else the variant's default. `width_coefficient` / `depth_coefficient` override the variant's
    (e.g. tiny models for tests); `baseline_blocks` replaces the variant's block table (B0's stages
    for V1) with another (scaled by the same rules).
    """
    weights_name = None
    if weights is not None and not isinstance(weights, keras.Model) and published.is_weights_name(weights):
        weights_name = weights
        wanted = published.resolve(weights, model_name).normalization  # also checks the name early
        if normalization is not None and scaling.normalization_name(normalization) != wanted:
            raise UserError(
                f"weights {weights!r} expect the {wanted!r} input normalization, not {normalization!r}; "
                "leave normalization unset"
            )
        normalization = wanted
    if pooling not in (None, "avg", "max"):
        raise UserError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if include_top and classes < 1:
        raise UserError(f"classes must be >= 1, got {classes}")
    plan = scaling.plan_network(model_name, width=width_coefficient, depth=depth_coefficient,
                                drop_connect_rate=drop_connect_rate, dropout_rate=dropout_rate,
                                baseline=baseline_blocks, normalization=normalization)
    if input_shape is None:
        size = resolution or plan.resolution
        input_shape = (size, size, 3)

    if input_tensor is None:
        inputs = layers.Input(shape=input_shape, name="image")
    elif isinstance(input_tensor, keras.KerasTensor):
        inputs = input_tensor
    else:
        inputs = layers.Input(tensor=input_tensor, shape=input_shape, name="image")

    x = layers.Rescaling(1.0 / 255.0, name="rescaling")(inputs)
    norm_layer = layers.Normalization(axis=-1, name="normalization")
    x = norm_layer(x)
    fix_normalization(norm_layer, *plan.normalization)
    x = network_body(x, plan)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if plan.dropout_rate > 0:
            x = layers.Dropout(plan.dropout_rate, name="top_dropout")(x)
        # float32 head so that mixed-precision training gets float32 logits / probabilities.
        x = layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=DenseKernelInitializer(),
            dtype="float32",
            name="predictions",
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    _allow_graph_depth(len(plan.blocks))
    model = keras.Model(inputs, x, name=name or plan.variant.name.replace("-", "_"))
    if weights is not None:
        if weights_name is not None:
            load_pretrained(model, weights, variant=plan.variant.name, include_top=include_top)
        else:
            load_pretrained(model, weights)
    return model


def _allow_graph_depth(blocks: int) -> None:
    """Keras walks a functional graph recursively, a few frames per layer, when it builds, clones or saves
    a model; the deepest variants (L2: 88 blocks, over 1,200 layers) pass Python's default limit of 1,000
    frames. Raise the limit (never lower it) to what the graph needs plus room for the caller's stack."""
    needed = 2_000 + 150 * blocks
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def endpoint_layer_names(model_name: str, depth_coefficient: float | None = None) -> dict[str, str]:
    """Names of the layers whose outputs are the feature endpoints reduction_1..5 (strides 2..32).

    Each endpoint is the output of the last block at a given resolution: the block before the next
    stride-2 block, and the final block for reduction_5.
    """
    variant = scaling.get_variant(model_name)
    blocks = scaling.scaled_blocks(variant, depth=depth_coefficient)
    names: dict[str, str] = {}
    for i, spec in enumerate(blocks):
        last = i == len(blocks) - 1
        if last or blocks[i + 1].strides == 2:
            names[ENDPOINT_NAMES[len(names)]] = spec.name + block_kind(spec.kind).output_layer(spec)
    return names


def build_backbone(model_name: str = "efficientnet-b0", **kwargs) -> keras.Model:
    """A feature extractor returning {"reduction_1": ..., "reduction_5": ...} (strides 2 to 32)."""
    kwargs.setdefault("input_shape", (None, None, 3))
    model = build_model(model_name, include_top=False, **kwargs)
    names = endpoint_layer_names(model_name, kwargs.get("depth_coefficient"))
    outputs = {key: model.get_layer(layer).output for key, layer in names.items()}
    return keras.Model(model.inputs, outputs, name=model.name + "_backbone")


def _named_builder(model_name: str):
    def builder(**kwargs) -> keras.Model:
        return build_model(model_name, **kwargs)

    builder.__doc__ = f"{model_name} ({scaling.get_variant(model_name).resolution} px)."
    return builder


# keras.applications-style constructors.
EfficientNetB0 = _named_builder("efficientnet-b0")
EfficientNetB1 = _named_builder("efficientnet-b1")
EfficientNetB2 = _named_builder("efficientnet-b2")
EfficientNetB3 = _named_builder("efficientnet-b3")
EfficientNetB4 = _named_builder("efficientnet-b4")
EfficientNetB5 = _named_builder("efficientnet-b5")
EfficientNetB6 = _named_builder("efficientnet-b6")
EfficientNetB7 = _named_builder("efficientnet-b7")
EfficientNetV2B0 = _named_builder("efficientnetv2-b0")
EfficientNetV2B1 = _named_builder("efficientnetv2-b1")
EfficientNetV2B2 = _named_builder("efficientnetv2-b2")
EfficientNetV2B3 = _named_builder("efficientnetv2-b3")
EfficientNetV2S = _named_builder("efficientnetv2-s")
EfficientNetV2M = _named_builder("efficientnetv2-m")
EfficientNetV2L = _named_builder("efficientnetv2-l")
EfficientNetV2XL = _named_builder("efficientnetv2-xl")
