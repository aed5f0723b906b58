"""Scaling rules of the compound-scaling study: rules as data, the baseline they scale, the φ=1 grid.

A rule maps a compute multiple s (>= 1) to depth / width / resolution multipliers (d, w, r) with
d·w²·r² = s in the ideal formula. Rounding of channels (multiples of 8), blocks (ceil) and
resolution (multiples of 8 px) moves the real cost away from the formula, so every candidate is
built and its multiply-adds counted: see `efficientnet_tf.study.candidates`. This module builds
nothing, so a study spec can be checked before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

from efficientnet_tf.models import scaling
from efficientnet_tf.errors import UserError

RULE_KINDS = ("compound", "depth", "width", "resolution", "width_share")
RESOLUTION_STEP = 8
FLOPS_TOLERANCE = 0.05  # measured vs predicted / matched MAdds
# The paper's own (1.2, 1.1, 1.15) has α·β²·γ² = 1.9245, 3.8% below 2, so a grid tolerance under
# that could not contain it; 5% is the smallest round figure that does.
GRID_TOLERANCE = 0.05
DOLLAR_WIDTH_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class ScalingRule:
    """How a compute multiple s is split over depth, width and resolution."""

    name: str
    kind: str
    alpha: float = 1.0  # compound: depth base
    beta: float = 1.0  # compound: width base
    gamma: float = 1.0  # compound: resolution base
    a: float | None = None  # width_share: Dollár et al.'s width share of log-FLOPs

    def __post_init__(self) -> None:
        if not self.name:
            raise UserError("a scaling rule needs a non-empty name")
        if self.kind not in RULE_KINDS:
            raise UserError(f"unknown scaling rule kind {self.kind!r}; valid kinds: {', '.join(RULE_KINDS)}")
        if self.kind == "compound":
            for label, value in (("alpha", self.alpha), ("beta", self.beta), ("gamma", self.gamma)):
                if not math.isfinite(value) or value < 1:
                    raise UserError(f"compound rule {self.name!r}: {label} must be >= 1, got {value}")
            if self.base <= 1 + 1e-12:
                raise UserError(f"compound rule {self.name!r}: alpha·beta²·gamma² must exceed 1 to scale at all, "
                                f"got {self.base:g}")
        if self.kind == "width_share":
            if self.a is None or not math.isfinite(self.a) or not 0 <= self.a <= 1:
                raise UserError(f"width-share rule {self.name!r}: exponent a must be in [0, 1], got {self.a}")

    @property
    def base(self) -> float:
        """FLOPs growth per unit φ of a compound rule (α·β²·γ²); 2 for the other kinds."""
        return self.alpha * self.beta**2 * self.gamma**2 if self.kind == "compound" else 2.0

    @property
    def shares(self) -> tuple[float, float, float]:
        """Shares of log-FLOPs going to depth, width and resolution (they sum to 1)."""
        if self.kind == "compound":
            log_base = math.log(self.base)
            return (math.log(self.alpha) / log_base, 2 * math.log(self.beta) / log_base,
                    2 * math.log(self.gamma) / log_base)
        if self.kind == "width_share":
            assert self.a is not None
            return ((1 - self.a) / 2, self.a, (1 - self.a) / 2)
        return {"depth": (1.0, 0.0, 0.0), "width": (0.0, 1.0, 0.0), "resolution": (0.0, 0.0, 1.0)}[self.kind]

    def multipliers(self, s: float) -> tuple[float, float, float]:
        """Depth, width and resolution multipliers (d, w, r) for compute multiple s, with d·w²·r² = s."""
        _check_multiple(s)
        if self.kind == "compound":
            phi = math.log(s) / math.log(self.base)
            return self.alpha**phi, self.beta**phi, self.gamma**phi
        share_d, share_w, share_r = self.shares
        return s**share_d, s ** (share_w / 2), s ** (share_r / 2)

    def to_dict(self) -> dict[str, object]:
        """A plain dict for YAML / JSON (only the parameters this kind uses)."""
        out: dict[str, object] = {"name": self.name, "kind": self.kind}
        if self.kind == "compound":
            out.update(alpha=self.alpha, beta=self.beta, gamma=self.gamma)
        elif self.kind == "width_share":
            out["a"] = self.a
        return out


def _check_multiple(s: float) -> None:
    if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s < 1:
        raise UserError(f"compute multiple s must be a finite number >= 1, got {s!r}")


def compound(alpha: float, beta: float, gamma: float, name: str | None = None) -> ScalingRule:
    """EfficientNet's rule: d = α^φ, w = β^φ, r = γ^φ with φ = log s / log(α·β²·γ²)."""
    return ScalingRule(name or f"compound-{alpha:g}-{beta:g}-{gamma:g}", "compound", alpha, beta, gamma)


def paper_compound() -> ScalingRule:
    """The paper's searched coefficients (α, β, γ) = (1.2, 1.1, 1.15)."""
    return compound(scaling.ALPHA, scaling.BETA, scaling.GAMMA, name="compound")


def depth_only() -> ScalingRule:
    """Scale depth alone: d = s."""
    return ScalingRule("depth", "depth")


def width_only() -> ScalingRule:
    """Scale width alone: w = √s."""
    return ScalingRule("width", "width")


def resolution_only() -> ScalingRule:
    """Scale resolution alone: r = √s."""
    return ScalingRule("resolution", "resolution")


def width_share(a: float = DOLLAR_WIDTH_SHARE, name: str | None = None) -> ScalingRule:
    """Dollár et al.'s rule: d = s^((1−a)/2), w = s^(a/2), r = s^((1−a)/4); a = 0.8 is their fast default."""
    return ScalingRule(name or f"width-share-{a:g}", "width_share", a=a)


def rule_from_dict(data: Mapping[str, Any]) -> ScalingRule:
    """The rule a `to_dict` mapping (e.g. a YAML entry) describes; a width_share without `a` gets 0.8."""
    allowed = {"compound": {"alpha", "beta", "gamma"}, "width_share": {"a"}}
    kind = data.get("kind")
    if kind not in RULE_KINDS:
        raise UserError(f"scaling rule {dict(data)!r}: kind must be one of {', '.join(RULE_KINDS)}")
    unknown = set(data) - {"name", "kind"} - allowed.get(str(kind), set())
    if unknown:
        raise UserError(f"scaling rule of kind {kind!r}: unknown keys {', '.join(sorted(unknown))}")
    name = data.get("name")
    try:
        if kind == "compound":
            return compound(float(data["alpha"]), float(data["beta"]), float(data["gamma"]),
                            name=str(name) if name else None)
        if kind == "width_share":
            return width_share(float(data.get("a", DOLLAR_WIDTH_SHARE)), name=str(name) if name else None)
    except UserError:
        raise
    except KeyError as missing:
        raise UserError(f"compound scaling rule {dict(data)!r} lacks {missing.args[0]!r}") from None
    except (TypeError, ValueError) as bad:
        raise UserError(f"scaling rule {dict(data)!r}: parameters must be numbers ({bad})") from None
    return ScalingRule(str(name or kind), str(kind))


def round_resolution(pixels: float, step: int = RESOLUTION_STEP) -> int:
    """Round an image size to the nearest multiple of `step` px (halves up, at least one step)."""
    return max(step, int(math.floor(pixels / step + 0.5)) * step)


# Networks a study may start from: each family's unscaled base. EfficientNetV2-B0 is one (the paper scales it to
# B1-B3 with V1's compound rule); V2-S/M/L/XL are sized by hand, not a base for rules.
BASE_MODELS = ("efficientnet-b0", "efficientnet-lite0", "efficientnetv2-b0")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The network every rule scales: its stages, coefficients and image size."""

    blocks: tuple[scaling.BlockSpec, ...] = scaling.BASELINE_BLOCKS
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    lite: bool = False
    model: str = "efficientnet-b0"  # whose fixed settings (family, activation, SE) the built models use
    # The grid of image sizes scaled and FLOPs-matched resolutions snap to. 8 px (the usual multiple)
    # suits 200+ px baselines; a small proxy (64 px) needs a finer one, or a single step moves its
    # MAdds by 25 % and no arm can be matched within ±5 %.
    resolution_step: int = RESOLUTION_STEP

    def __post_init__(self) -> None:
        if self.model not in BASE_MODELS:
            raise UserError(f"baseline.model {self.model!r} is no family's base network; a study scales one of "
                            f"{', '.join(BASE_MODELS)} (the others are already scaled, or sized by hand: V2-S/M/L/XL)")
        if not self.blocks:
            raise UserError("a baseline needs at least one stage of blocks")
        if not (self.width > 0 and self.depth > 0):
            raise UserError(f"baseline width and depth must be > 0, got {self.width} and {self.depth}")
        if not 1 <= self.resolution_step <= 64:
            raise UserError(f"baseline resolution_step must be 1 to 64 px, got {self.resolution_step}")
        if self.resolution < self.resolution_step or self.resolution % self.resolution_step:
            raise UserError(f"baseline resolution must be a positive multiple of {self.resolution_step} px "
                            f"(resolution_step), got {self.resolution}")

    @classmethod
    def b0(cls, resolution: int = 224, width: float = 1.0, depth: float = 1.0,
           resolution_step: int = RESOLUTION_STEP, model: str = "efficientnet-b0") -> Baseline:
        """A base network's stages (EfficientNet-B0's unless `model` names another base) at the given resolution
        and coefficients."""
        key = scaling.canonical_name(model)
        blocks = scaling.get_variant(key).blocks if key in BASE_MODELS else scaling.BASELINE_BLOCKS
        return cls(blocks=blocks, width=width, depth=depth, resolution=resolution, resolution_step=resolution_step,
                   model=key)

    @property
    def model_name(self) -> str:
        """The variant whose fixed settings (activation, SE, lite rules) the built models use."""
        return "efficientnet-lite0" if self.lite else self.model

    @property
    def title(self) -> str:
        """How reports name the baseline's blocks: "B0" or "EfficientNetV2-B0"."""
        return "B0" if self.model == "efficientnet-b0" else self.model

    def scaled_resolution(self, r: float) -> int:
        """The image size for resolution multiplier r, on the baseline's grid (8 px unless it says otherwise)."""
        return round_resolution(self.resolution * r, self.resolution_step)


def search_grid(step: float = 0.1, tolerance: float = GRID_TOLERANCE, *, include_anchors: bool = True,
                decimals: int | None = None) -> list[ScalingRule]:
    """The φ=1 candidates (α, β, γ ≥ 1, α·β²·γ² within `tolerance` of 2) over a grid of log-FLOPs shares.

    Shares (depth, width, resolution) step by `step` over the simplex; α = 2^share_d, β = 2^(share_w/2),
    γ = 2^(share_r/2). `decimals` rounds α, β, γ as a hand search would (points then leaving the
    tolerance are dropped). With `include_anchors` the paper's (1.2, 1.1, 1.15) and the width-share
    point (a = 0.8 at s = 2) are always present, named "compound" and "width-share-0.8".
    """
    n = round(1 / step) if step > 0 else 0
    if n < 1 or abs(n * step - 1) > 1e-9:
        raise UserError(f"grid step must divide 1 (e.g. 0.1, 0.05), got {step}")
    if not 0 < tolerance < 1:
        raise UserError(f"grid tolerance must be in (0, 1), got {tolerance}")
    rules: list[ScalingRule] = []
    for i in range(n + 1):
        for j in range(n + 1 - i):
            share_d, share_w, share_r = i / n, j / n, (n - i - j) / n
            coeffs = [2**share_d, 2 ** (share_w / 2), 2 ** (share_r / 2)]
            if decimals is not None:
                coeffs = [max(1.0, round(c, decimals)) for c in coeffs]
            alpha, beta, gamma = coeffs
            product = alpha * beta**2 * gamma**2
            if product <= 1 or abs(product / 2 - 1) > tolerance:
                continue
            rules.append(compound(alpha, beta, gamma, name=f"grid-d{share_d:.2f}-w{share_w:.2f}-r{share_r:.2f}"))
    if include_anchors:
        a = DOLLAR_WIDTH_SHARE
        d, w, r = width_share(a).multipliers(2.0)
        for anchor in (paper_compound(), compound(d, w, r, name=f"width-share-{a:g}")):
            if abs(anchor.base / 2 - 1) > tolerance:
                raise UserError(f"grid tolerance {tolerance:g} excludes anchor {anchor.name!r} "
                                f"(α·β²·γ² = {anchor.base:.4f}); use a tolerance >= {abs(anchor.base / 2 - 1):.3f} "
                                "or include_anchors=False")
            # An anchor on the grid replaces that grid point rather than duplicating it.
            rules = [g for g in rules if max(abs(x - y) for x, y in zip(g.shares, anchor.shares)) > 1e-6]
            rules.append(anchor)
    return rules
