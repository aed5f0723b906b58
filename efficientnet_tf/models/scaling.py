"""Compound scaling and the families: block tables (V1, Lite, V2), the variant table and the rounding rules."""

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
# reference AdvProp checkpoints expect; "lite": the reference EfficientNet-Lite builder's 127 / 128;
# "v2": (x - 128) / 128, what the EfficientNetV2 reference (google/automl efficientnetv2/preprocessing.py)
# trains S/M/L/XL with and keras.applications' EfficientNetV2S/M/L compute (x / 128 - 1).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "advprop": ((127.5,) * 3, (127.5,) * 3),
    "lite": ((127.0,) * 3, (128.0,) * 3),
    "v2": ((128.0,) * 3, (128.0,) * 3),
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
    """One stage of a family's block table: `num_repeat` blocks of one kind and shape.

    `kind` names the block function (a key of `efficientnet_tf.models.layers.BLOCK_KINDS`: "mbconv",
    "fused"); `se` says whether the stage has squeeze-excite, at the family's ratio.
    """

    kernel_size: int
    num_repeat: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    kind: str = "mbconv"
    se: bool = True


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


def _v2_table(*rows: tuple[str, int, int, int, int, int]) -> tuple[BlockSpec, ...]:
    """EfficientNetV2 stages from (kind, repeats, stride, expand, in, out): all 3x3; the fused stages
    have no squeeze-excite, the MBConv stages have it (google/automl efficientnetv2/effnetv2_configs.py)."""
    return tuple(BlockSpec(3, r, i, o, e, s, kind, kind == "mbconv") for kind, r, s, e, i, o in rows)


F, M = "fused", "mbconv"  # block kinds, for the tables below
# EfficientNetV2 block tables (docs/recipe.md §7), one per network: B0-B3 scale the base table by
# width and depth; S, M, L and XL have their own (the reference calls them "about base x (width, depth)").
V2_BASE_BLOCKS = _v2_table((F, 1, 1, 1, 32, 16), (F, 2, 2, 4, 16, 32), (F, 2, 2, 4, 32, 48), (M, 3, 2, 4, 48, 96),
                           (M, 5, 1, 6, 96, 112), (M, 8, 2, 6, 112, 192))
V2_S_BLOCKS = _v2_table((F, 2, 1, 1, 24, 24), (F, 4, 2, 4, 24, 48), (F, 4, 2, 4, 48, 64), (M, 6, 2, 4, 64, 128),
                        (M, 9, 1, 6, 128, 160), (M, 15, 2, 6, 160, 256))
V2_M_BLOCKS = _v2_table((F, 3, 1, 1, 24, 24), (F, 5, 2, 4, 24, 48), (F, 5, 2, 4, 48, 80), (M, 7, 2, 4, 80, 160),
                        (M, 14, 1, 6, 160, 176), (M, 18, 2, 6, 176, 304), (M, 5, 1, 6, 304, 512))
V2_L_BLOCKS = _v2_table((F, 4, 1, 1, 32, 32), (F, 7, 2, 4, 32, 64), (F, 7, 2, 4, 64, 96), (M, 10, 2, 4, 96, 192),
                        (M, 19, 1, 6, 192, 224), (M, 25, 2, 6, 224, 384), (M, 7, 1, 6, 384, 640))
V2_XL_BLOCKS = _v2_table((F, 4, 1, 1, 32, 32), (F, 8, 2, 4, 32, 64), (F, 8, 2, 4, 64, 96), (M, 16, 2, 4, 96, 192),
                         (M, 24, 1, 6, 192, 256), (M, 32, 2, 6, 256, 512), (M, 8, 1, 6, 512, 640))


@dataclasses.dataclass(frozen=True)
class Family:
    """What the members of a family share besides their block tables: activation, squeeze-excite ratio,
    batch-norm momentum, the rounding rule of channel counts and keras.applications' layer names."""

    name: str
    activation: str = "swish"
    se_ratio: float = SE_RATIO
    batch_norm_momentum: float = BATCH_NORM_MOMENTUM
    # round_filters never returns fewer than this share of the scaled channels (V1's rule); 0: no such
    # guard (V2: google/automl efficientnetv2 and keras.applications' efficientnet_v2 both round plainly).
    round_limit: float = 0.9
    # Lite: stem 32 and head 1280 at every width, first and last stage unscaled in depth (reference lite builder).
    fixed_ends: bool = False
    depthwise_name: str = "dwconv"  # keras.applications: "dwconv" in efficientnet, "dwconv2" in efficientnet_v2


# Batch norm: V1 follows Keras' momentum convention for the reference's TF1 decay 0.99; V2's reference
# (effnetv2 hparams: bn_momentum 0.9, bn_epsilon 1e-3) and keras.applications' efficientnet_v2 use 0.9.
FAMILIES: dict[str, Family] = {
    "efficientnet": Family("efficientnet"),
    "efficientnet-lite": Family("efficientnet-lite", activation="relu6", se_ratio=0.0, fixed_ends=True),
    "efficientnetv2": Family("efficientnetv2", batch_norm_momentum=0.9, round_limit=0.0, depthwise_name="dwconv2"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scaled member of a family: coefficients, block table, resolution, regularisation and published figures."""

    name: str
    width: float
    depth: float
    resolution: int  # evaluation size, the model's default input
    dropout_rate: float
    family: str = "efficientnet"  # a key of FAMILIES
    paper_params_m: float | None = None  # published parameters, millions
    paper_madds_b: float | None = None  # published multiply-adds, billions
    blocks: tuple[BlockSpec, ...] = BASELINE_BLOCKS
    train_resolution: int | None = None  # the last training size when below `resolution` (V2)
    input_normalization: str | None = None  # a key of NORMALIZATIONS when not the family's "imagenet" / "lite"
    resize: str | None = None  # image resize kernel when not the family's

    @property
    def spec(self) -> Family:
        """The family's shared settings."""
        return FAMILIES[self.family]

    @property
    def lite(self) -> bool:
        """Whether this is an EfficientNet-Lite (quantisation-friendly) variant."""
        return self.spec.fixed_ends

    @property
    def resize_method(self) -> str:
        """Image resize kernel used in preprocessing: bilinear for the int8-friendly lite models."""
        return self.resize or ("bilinear" if self.lite else "bicubic")

    @property
    def activation(self) -> str:
        """Block activation: ReLU6 for lite (quantisation friendly), swish otherwise."""
        return self.spec.activation

    @property
    def se_ratio(self) -> float:
        """Squeeze-excite ratio; lite variants drop squeeze-excite."""
        return self.spec.se_ratio

    @property
    def batch_norm_momentum(self) -> float:
        """Batch-norm momentum the model is built with (Keras convention)."""
        return self.spec.batch_norm_momentum

    @property
    def normalization(self) -> str:
        """Name of the default input normalisation in `NORMALIZATIONS`: "lite" for lite, else "imagenet"
        unless the variant says otherwise (V2-S/M/L/XL: "v2")."""
        return self.input_normalization or ("lite" if self.lite else "imagenet")

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
# EfficientNetV2 (docs/recipe.md §7): (width, depth, train size, eval size, dropout) from the reference
# (google/automl efficientnetv2/effnetv2_configs.py; its train sizes are the last progressive stage's, the
# eval size is the model's default input). Published params / FLOPs from the reference's checkpoint tables
# (google/automl efficientnetv2/README.md); XL's (ImageNet-21k pre-training only, not in those tables) from
# the paper's Table 7. B0-B3 keep V1's ImageNet mean/std and bicubic resize (the reference's "effnetv1"
# preprocessing, kept for comparison with V1); S/M/L/XL take (x - 128) / 128 and bilinear resize (its
# preprocessing.py). keras.applications' EfficientNetV2 normalises the same way.
_V2_TABLE: tuple[tuple, ...] = (
    # name, width, depth, train res, eval res, dropout, blocks, normalization, params M, MAdds B
    ("efficientnetv2-b0", 1.0, 1.0, 192, 224, 0.2, V2_BASE_BLOCKS, "imagenet", 7.1, 0.72),
    ("efficientnetv2-b1", 1.0, 1.1, 192, 240, 0.2, V2_BASE_BLOCKS, "imagenet", 8.1, 1.2),
    ("efficientnetv2-b2", 1.1, 1.2, 208, 260, 0.3, V2_BASE_BLOCKS, "imagenet", 10.1, 1.7),
    ("efficientnetv2-b3", 1.2, 1.4, 240, 300, 0.3, V2_BASE_BLOCKS, "imagenet", 14.4, 3.0),
    ("efficientnetv2-s", 1.0, 1.0, 300, 384, 0.2, V2_S_BLOCKS, "v2", 21.5, 8.4),
    ("efficientnetv2-m", 1.0, 1.0, 384, 480, 0.3, V2_M_BLOCKS, "v2", 54.1, 24.7),
    ("efficientnetv2-l", 1.0, 1.0, 384, 480, 0.4, V2_L_BLOCKS, "v2", 119.5, 56.3),
    ("efficientnetv2-xl", 1.0, 1.0, 384, 512, 0.4, V2_XL_BLOCKS, "v2", 208.0, 94.0),
)
VARIANTS: dict[str, Variant] = {
    **{row[0]: Variant(*row[:5], family="efficientnet-lite" if row[5] else "efficientnet", paper_params_m=row[6],
                       paper_madds_b=row[7]) for row in _TABLE},
    **{name: Variant(name, width, depth, eval_size, dropout, "efficientnetv2", params, madds, blocks, train_size,
                     norm, None if norm == "imagenet" else "bilinear")
       for name, width, depth, train_size, eval_size, dropout, blocks, norm, params, madds in _V2_TABLE},
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)
_PHI_RE = re.compile(r"^efficientnet-phi(\d+(?:\.\d+)?)$")


def round_filters(filters: int, width: float, divisor: int = DEPTH_DIVISOR, limit: float = 0.9) -> int:
    """Scale a channel count by `width`, rounding to the nearest multiple of `divisor` (at least one), and
    up by one more when that lost more than `1 - limit` of the scaled count (V1: never below 90%; V2's
    limit is 0)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < limit * scaled:
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
    """One concrete block of a scaled network."""

    name: str  # keras.applications prefix, e.g. "block2a_"
    stage: int  # 0-based index into the block table
    kernel_size: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float
    drop_rate: float  # drop-connect rate of this block: rate * index / num_blocks
    kind: str = "mbconv"  # a key of efficientnet_tf.models.layers.BLOCK_KINDS
    depthwise_name: str = "dwconv"  # the depthwise convolution's name after the prefix, where there is one

    @property
    def residual(self) -> bool:
        """Whether the block adds its input to its output (stride 1, as many channels out as in)."""
        return self.strides == 1 and self.filters_in == self.filters_out


def scaled_blocks(
    variant: Variant,
    drop_connect_rate: float = DEFAULT_DROP_CONNECT_RATE,
    width: float | None = None,
    depth: float | None = None,
    baseline: tuple[BlockSpec, ...] | None = None,
) -> list[ScaledBlock]:
    """Expand a block table (the variant's unless given) into the concrete block list of `variant`."""
    width = variant.width if width is None else width
    depth = variant.depth if depth is None else depth
    baseline = variant.blocks if baseline is None else baseline
    family = variant.spec
    repeats = []
    for i, spec in enumerate(baseline):
        fixed = family.fixed_ends and i in (0, len(baseline) - 1)
        # Lite models keep the first and last stage unscaled in depth (reference lite builder).
        repeats.append(spec.num_repeat if fixed else round_repeats(spec.num_repeat, depth))
    total = sum(repeats)
    blocks: list[ScaledBlock] = []
    for i, (spec, n) in enumerate(zip(baseline, repeats)):
        f_in = round_filters(spec.filters_in, width, limit=family.round_limit)
        if i == 0 and family.fixed_ends:
            f_in = STEM_FILTERS
        f_out = round_filters(spec.filters_out, width, limit=family.round_limit)
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
                    se_ratio=family.se_ratio if spec.se else 0.0,
                    # Over the scaled block count, as the reference (keras.applications' V2 divides by
                    # the unscaled count; the rates differ for B1-B3 in training only).
                    drop_rate=drop_connect_rate * len(blocks) / total,
                    kind=spec.kind,
                    depthwise_name=family.depthwise_name,
                )
            )
    return blocks


def stem_filters(variant: Variant, width: float | None = None) -> int:
    """Channels of the stem convolution: the first stage's input channels, scaled (V1: 32; V2-S: 24);
    fixed at 32 for lite variants."""
    width = variant.width if width is None else width
    return STEM_FILTERS if variant.lite else round_filters(variant.blocks[0].filters_in, width,
                                                           limit=variant.spec.round_limit)


def head_filters(variant: Variant, width: float | None = None) -> int:
    """Channels of the 1x1 head convolution, 1280 scaled (fixed at 1280 for lite variants)."""
    width = variant.width if width is None else width
    return HEAD_FILTERS if variant.lite else round_filters(HEAD_FILTERS, width, limit=variant.spec.round_limit)


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
    """Everything the builder lays out, decided here in one place: the scaled stem, blocks and head, the block
    activation and batch-norm momentum, the input normalisation's mean and std, and the default dropout."""

    variant: Variant
    stem_filters: int
    blocks: tuple[ScaledBlock, ...]
    head_filters: int
    activation: str
    batch_norm_momentum: float
    normalization: tuple[tuple[float, ...], tuple[float, ...]]
    dropout_rate: float
    resolution: int


def plan_network(
    model_name: str,
    *,
    width: float | None = None,
    depth: float | None = None,
    drop_connect_rate: float | None = None,
    dropout_rate: float | None = None,
    baseline: tuple[BlockSpec, ...] | None = None,
    normalization: str | None = None,
) -> NetworkPlan:
    """The plan of `model_name` scaled by `width` / `depth` (the variant's when None): a bad name, block table
    or normalisation fails here, before any layer is built."""
    variant = get_variant(model_name)
    width = variant.width if width is None else width
    rate = DEFAULT_DROP_CONNECT_RATE if drop_connect_rate is None else drop_connect_rate
    blocks = scaled_blocks(variant, rate, width=width, depth=depth, baseline=baseline)
    return NetworkPlan(
        variant=variant,
        stem_filters=stem_filters(variant, width),
        blocks=tuple(blocks),
        head_filters=head_filters(variant, width),
        activation=variant.activation,
        batch_norm_momentum=variant.batch_norm_momentum,
        normalization=normalization_values(normalization or variant.normalization),
        dropout_rate=variant.dropout_rate if dropout_rate is None else dropout_rate,
        resolution=variant.resolution,
    )
