"""Parameter and multiply-add counts per variant, and the `--mode=summary` table."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import layers

from efficientnet_tf import scaling

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
    from efficientnet_tf.model import build_model

    model = build_model(model_name, resolution=resolution, classes=classes, weights=None)
    counts = count_params(model)
    keras.backend.clear_session()
    return counts


def summary_table(model_names: tuple[str, ...] | None = None) -> str:
    """A text table of every variant: resolution, width, depth, params and MAdds beside the paper's.

    Paper figures come from the variant table (`scaling.VARIANTS`); B8 (AdvProp) has none. L2 (480M parameters at 800 px) is left out unless named.
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
    return "\n".join(rows)
