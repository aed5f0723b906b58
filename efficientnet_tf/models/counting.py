"""Sizes of built networks: parameters, multiply-adds and activations per variant, the `--mode=summary`
table, and counted networks (built once per distinct shape, cached) for the scaling study."""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
from keras import layers

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import scaling
from efficientnet_tf.models.builder import build_model

@dataclasses.dataclass(frozen=True)
class Counts:
    """Sizes of one built model."""

    total_params: int
    trainable_params: int
    madds: int


def count_madds(model: keras.Model) -> int:
    """Multiply-adds of the conv, depthwise-conv and dense layers (incl. squeeze-excite) per image."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw, channels, mult = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape
            total += oh * ow * kh * kw * channels * mult
        elif isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, oh, ow, _ = layer.output.shape
            total += oh * ow * kh * kw * cin * cout
        elif isinstance(layer, layers.Dense):
            cin, cout = layer.kernel.shape
            total += cin * cout
    return int(total)


def count_params(model: keras.Model) -> Counts:
    """Total (incl. batch-norm statistics) and trainable parameters, and multiply-adds."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    return Counts(total_params=int(model.count_params()), trainable_params=trainable, madds=count_madds(model))


def variant_counts(model_name: str, resolution: int | None = None, classes: int = 1000) -> Counts:
    """Counts of a named variant at its own (or the given) resolution."""
    model = build_model(model_name, resolution=resolution, classes=classes, weights=None)
    counts = count_params(model)
    keras.backend.clear_session()
    return counts


def summary_table(model_names: tuple[str, ...] | None = None) -> str:
    """A text table of every variant: resolution, width, depth, params and MAdds beside the paper's.

    Paper figures come from the variant table (`scaling.VARIANTS`); B8 (AdvProp) has none. L2 (480M parameters
    at 800 px) is left out unless named.
    """
    names = model_names or tuple(n for n in scaling.VARIANT_NAMES if n != "efficientnet-l2")
    names = tuple(scaling.canonical_name(n) for n in names)
    header = (
        f"{'model':<20}{'res':>5}{'width':>7}{'depth':>7}{'params':>10}{'trainable':>11}{'paper':>8}"
        f"{'MAdds':>10}{'paper':>9}{'diff':>8}{'dropout':>9}"
    )
    rows = [header, "-" * len(header)]
    for name in names:
        variant = scaling.get_variant(name)
        counts = variant_counts(name)
        paper = (variant.paper_params_m, variant.paper_madds_b) if variant.paper_madds_b else None
        madds = counts.madds / 1e9
        paper_params = f"{paper[0]:>7.1f}M" if paper else f"{'-':>8}"
        paper_madds = f"{paper[1]:>8.3g}B" if paper else f"{'-':>9}"
        diff = f"{100 * (madds / paper[1] - 1):>+7.1f}%" if paper else f"{'-':>8}"
        rows.append(
            f"{name:<20}{variant.resolution:>5}{variant.width:>7.2f}{variant.depth:>7.2f}"
            f"{counts.total_params / 1e6:>9.2f}M{counts.trainable_params / 1e6:>10.2f}M{paper_params}"
            f"{madds:>9.3f}B{paper_madds}{diff}{variant.dropout_rate:>9.2f}"
        )
    rows.append("params include batch-norm statistics (as keras.applications counts); MAdds: conv, depthwise, "
                "SE and dense multiply-adds at the listed resolution, 1000 classes")
    if any(scaling.get_variant(name).family == "efficientnetv2" for name in names):
        rows.append("efficientnetv2: res is the evaluation size (progressive training ends below it); paper: the "
                    "reference's published table (XL: the paper's Table 7)")
    return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class NetworkCounts:
    """Sizes of one built network, per image."""

    madds: int
    params: int  # incl. batch-norm statistics, as keras counts them
    activations: int


def count_activations(model: keras.Model) -> int:
    """Conv output elements per image: H·W·C summed over every Conv2D and DepthwiseConv2D (RegNet's definition)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D)):
            dims = tuple(layer.output.shape[1:])
            if any(dim is None for dim in dims):
                raise UserError(f"layer {layer.name!r} has an unknown output size {dims}; build the model "
                                "with a fixed input size to count activations")
            total += math.prod(dims)
    return int(total)


_COUNTS: dict[tuple, NetworkCounts] = {}


def clear_count_cache() -> None:
    """Forget every counted network (the next request builds again)."""
    _COUNTS.clear()


def count_cache_size() -> int:
    """How many distinct networks have been built and counted."""
    return len(_COUNTS)


def _network_key(model_name: str, width: float, depth: float, resolution: int, num_classes: int,
                 baseline_blocks: tuple[scaling.BlockSpec, ...]) -> tuple:
    # Coefficients that round to the same channels and block counts build the same network.
    variant = scaling.get_variant(model_name)
    blocks = scaling.scaled_blocks(variant, width=width, depth=depth, baseline=baseline_blocks)
    shape = tuple((b.kernel_size, b.filters_in, b.filters_out, b.expand_ratio, b.strides) for b in blocks)
    return (model_name, resolution, num_classes, scaling.stem_filters(variant, width),
            scaling.head_filters(variant, width), shape)


def count_network(model_name: str, width: float, depth: float, resolution: int, num_classes: int,
                  baseline_blocks: tuple[scaling.BlockSpec, ...] = scaling.BASELINE_BLOCKS) -> NetworkCounts:
    """Build `model_name`'s fixed settings over `baseline_blocks` at (width, depth, resolution), count it and
    clear the Keras session; networks that round to the same shape are built once."""
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    key = _network_key(model_name, width, depth, resolution, num_classes, baseline_blocks)
    if key not in _COUNTS:
        model = build_model(model_name, resolution=resolution, width_coefficient=width, depth_coefficient=depth,
                            baseline_blocks=baseline_blocks, classes=num_classes, weights=None)
        _COUNTS[key] = NetworkCounts(count_madds(model), int(model.count_params()), count_activations(model))
        del model
        keras.backend.clear_session()
    return _COUNTS[key]
