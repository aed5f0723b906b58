"""Compound scaling: the variant table, the B0 baseline blocks and the rounding rules."""

from __future__ import annotations

import dataclasses
import math
import re

from efficientnet_tf.errors import UserError

# Compound coefficients found by the grid search on B0 at phi = 1 (paper, section 3.3).
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
DEPTH_DIVISOR = 8
STEM_FILTERS = 32
HEAD_FILTERS = 1280
SE_RATIO = 0.25
DEFAULT_DROP_CONNECT_RATE = 0.2
BATCH_NORM_MOMENTUM = 0.99  # Keras convention (moving = moving * momentum + batch * (1 - momentum))
BATCH_NORM_EPSILON = 1e-3


# Input normalisations, name -> (per-channel mean, per-channel std) on the 0-255 scale; the model
# computes (x - mean) / std in its `normalization` layer. "imagenet": the ImageNet statistics of the
# reference and keras.applications models; "advprop": [-1, 1] (x * 2 / 255 - 1), which the
# reference AdvProp checkpoints expect; "lite": the reference EfficientNet-Lite builder's 127 / 128.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "advprop": ((127.5,) * 3, (127.5,) * 3),
    "lite": ((127.0,) * 3, (128.0,) * 3),
}


def normalization_name(name: str) -> str:
    """The `NORMALIZATIONS` key of a normalisation name (case-insensitive); a one-line UserError
    names the valid ones."""
    key = str(name).strip().lower()
    if key not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {name!r}; valid: {', '.join(NORMALIZATIONS)}")
    return key


def normalization_values(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on the 0-255 scale of a named input normalisation."""
    return NORMALIZATIONS[normalization_name(name)]


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of the baseline network: `num_repeat` MBConv blocks of the same shape."""

    kernel_size: int
    num_repeat: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int


# EfficientNet-B0 stages 2-8 (docs/recipe.md §2); the stem and head are built separately.
BASELINE_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(3, 1, 32, 16, 1, 1),
    BlockSpec(3, 2, 16, 24, 6, 2),
    BlockSpec(5, 2, 24, 40, 6, 2),
    BlockSpec(3, 3, 40, 80, 6, 2),
    BlockSpec(5, 3, 80, 112, 6, 1),
    BlockSpec(5, 4, 112, 192, 6, 2),
    BlockSpec(3, 1, 192, 320, 6, 1),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scaled member of the family: coefficients, resolution, regularisation and published figures."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout_rate: float
    lite: bool = False
    paper_params_m: float | None = None  # published parameters, millions
    paper_madds_b: float | None = None  # published multiply-adds, billions

    @property
    def resize_method(self) -> str:
        """Image resize kernel used in preprocessing: bilinear for the int8-friendly lite models."""
        return "bilinear" if self.lite else "bicubic"

    @property
    def activation(self) -> str:
        """Block activation: ReLU6 for lite (quantisation friendly), swish otherwise."""
        return "relu6" if self.lite else "swish"

    @property
    def se_ratio(self) -> float:
        """Squeeze-excite ratio; lite variants drop squeeze-excite."""
        return 0.0 if self.lite else SE_RATIO

    @property
    def normalization(self) -> str:
        """Name of the default input normalisation in `NORMALIZATIONS`: "lite" for lite, else "imagenet"."""
        return "lite" if self.lite else "imagenet"

    @property
    def norm_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the default input normalisation, on the 0-255 scale."""
        return NORMALIZATIONS[self.normalization]


# The one variant table (architecture facts). (width, depth, resolution, dropout) from the reference
# implementation (docs/recipe.md §1); published params / MAdds from the paper's Table 2 (B0-B7) and
# the EfficientNet-Lite table (lite0-4), none for B8 and L2. Training settings that differ per variant
# live with the configuration (efficientnet_tf.hparams.variants).
_TABLE: tuple[tuple, ...] = (
    # name, width, depth, res, dropout, lite, params M, MAdds B
    ("efficientnet-b0", 1.0, 1.0, 224, 0.2, False, 5.3, 0.39),
    ("efficientnet-b1", 1.0, 1.1, 240, 0.2, False, 7.8, 0.70),
    ("efficientnet-b2", 1.1, 1.2, 260, 0.3, False, 9.2, 1.0),
    ("efficientnet-b3", 1.2, 1.4, 300, 0.3, False, 12.0, 1.8),
    ("efficientnet-b4", 1.4, 1.8, 380, 0.4, False, 19.0, 4.2),
    ("efficientnet-b5", 1.6, 2.2, 456, 0.4, False, 30.0, 9.9),
    ("efficientnet-b6", 1.8, 2.6, 528, 0.5, False, 43.0, 19.0),
    ("efficientnet-b7", 2.0, 3.1, 600, 0.5, False, 66.0, 37.0),
    ("efficientnet-b8", 2.2, 3.6, 672, 0.5, False, None, None),
    ("efficientnet-l2", 4.3, 5.3, 800, 0.5, False, None, None),
    ("efficientnet-lite0", 1.0, 1.0, 224, 0.2, True, 4.7, 0.407),
    ("efficientnet-lite1", 1.0, 1.1, 240, 0.2, True, 5.4, 0.631),
    ("efficientnet-lite2", 1.1, 1.2, 260, 0.3, True, 6.1, 0.899),
    ("efficientnet-lite3", 1.2, 1.4, 280, 0.3, True, 8.2, 1.44),
    ("efficientnet-lite4", 1.4, 1.8, 300, 0.3, True, 13.0, 2.64),
)
VARIANTS: dict[str, Variant] = {row[0]: Variant(*row) for row in _TABLE}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
_PHI_RE = re.compile(r"^efficientnet-phi(\d+(?:\.\d+)?)$")


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR) -> int:
    """Scale a channel count by `width`, rounding to a multiple of `divisor` (never below 90%)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up."""
    return int(math.ceil(depth * repeats))


def compound_variant(
    phi: float,
    alpha: float = ALPHA,
    beta: float = BETA,
    gamma: float = GAMMA,
    name: str | None = None,
) -> Variant:
    """A variant scaled from B0 by the compound coefficient phi: depth alpha^phi, width beta^phi,
    resolution 224*gamma^phi rounded to a multiple of 8."""
    if phi < 0:
        raise UserError(f"compound coefficient phi must be >= 0, got {phi}")
    resolution = int(round(224 * gamma**phi / 8)) * 8
    # Dropout grows with size in the published table (0.2 at B0 to 0.5 at B6/B7).
    dropout = min(0.5, round(0.2 + 0.05 * phi, 3))
    return Variant(
        name=name or f"efficientnet-phi{phi:g}",
        width=round(beta**phi, 6),
        depth=round(alpha**phi, 6),
        resolution=resolution,
        dropout_rate=dropout,
    )


def canonical_name(model_name: str) -> str:
    """The table's spelling of a model name: `EfficientNet_B5` and `efficientnet_b5` are `efficientnet-b5`."""
    return str(model_name).strip().lower().replace("_", "-")


def get_variant(model_name: str) -> Variant:
    """Look up a named variant (`efficientnet-b0`, `efficientnet-lite2`, `efficientnet-phi1.5`, ...)."""
    key = canonical_name(model_name)
    if key in VARIANTS:
        return VARIANTS[key]
    match = _PHI_RE.match(key)
    if match:
        return compound_variant(float(match.group(1)))
    raise UserError(
        f"unknown model {model_name!r}; valid names: {', '.join(VARIANT_NAMES)}, "
        "or efficientnet-phi<φ> (e.g. efficientnet-phi1.5) for compound scaling of B0"
    )


@dataclasses.dataclass(frozen=True)
class ScaledBlock:
    """One concrete MBConv block of a scaled network."""

    name: str  # keras.applications prefix, e.g. "block2a_"
    stage: int  # 0-based index into BASELINE_BLOCKS
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float
    drop_rate: float  # drop-connect rate of this block: rate * index / num_blocks


def scaled_blocks(
    variant: Variant,
    drop_connect_rate: float = DEFAULT_DROP_CONNECT_RATE,
    width: float | None = None,
    depth: float | None = None,
    baseline: tuple[BlockSpec, ...] = BASELINE_BLOCKS,
) -> list[ScaledBlock]:
    """Expand the baseline stages (B0's unless given) into the concrete block list of `variant`."""
    width = variant.width if width is None else width
    depth = variant.depth if depth is None else depth
    repeats = []
    for i, spec in enumerate(baseline):
        fixed = variant.lite and i in (0, len(baseline) - 1)
        # Lite models keep the first and last stage unscaled in depth (reference lite builder).
        repeats.append(spec.num_repeat if fixed else round_repeats(spec.num_repeat, depth))
    total = sum(repeats)
    blocks: list[ScaledBlock] = []
    for i, (spec, n) in enumerate(zip(baseline, repeats)):
        f_in = round_filters(spec.filters_in, width)
        if i == 0 and variant.lite:
            f_in = STEM_FILTERS
        f_out = round_filters(spec.filters_out, width)
        for j in range(n):
            blocks.append(
                ScaledBlock(
                    name=f"block{i + 1}{chr(ord('a') + j)}_",
                    stage=i,
                    kernel_size=spec.kernel_size,
                    filters_in=f_in if j == 0 else f_out,
                    filters_out=f_out,
                    expand_ratio=spec.expand_ratio,
                    strides=spec.strides if j == 0 else 1,
                    se_ratio=variant.se_ratio,
                    drop_rate=drop_connect_rate * len(blocks) / total,
                )
            )
    return blocks


def stem_filters(variant: Variant, width: float | None = None) -> int:
    """Channels of the stem convolution (fixed at 32 for lite variants)."""
    return STEM_FILTERS if variant.lite else round_filters(STEM_FILTERS, variant.width if width is None else width)


def head_filters(variant: Variant, width: float | None = None) -> int:
    """Channels of the 1x1 head convolution (fixed at 1280 for lite variants)."""
    return HEAD_FILTERS if variant.lite else round_filters(HEAD_FILTERS, variant.width if width is None else width)
