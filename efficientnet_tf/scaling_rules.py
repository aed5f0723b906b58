"""Scaling rules for the compound-scaling study: rules, built-and-counted candidates, FLOPs matching, the φ=1 grid.

A rule maps a compute multiple s (>= 1) to depth / width / resolution multipliers (d, w, r) with
d·w²·r² = s in the ideal formula. Rounding of channels (multiples of 8), blocks (ceil) and
resolution (multiples of 8 px) moves the real cost away from the formula, so every candidate is
built and its multiply-adds counted. Keras is imported only by the functions that build models.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from efficientnet_tf import scaling
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


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The network every rule scales: its stages, coefficients and image size."""

    blocks: tuple[scaling.BlockSpec, ...] = scaling.BASELINE_BLOCKS
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    lite: bool = False
    # The grid of image sizes scaled and FLOPs-matched resolutions snap to. 8 px (the usual multiple)
    # suits 200+ px baselines; a small proxy (64 px) needs a finer one, or a single step moves its
    # MAdds by 25 % and no arm can be matched within ±5 %.
    resolution_step: int = RESOLUTION_STEP

    def __post_init__(self) -> None:
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
           resolution_step: int = RESOLUTION_STEP) -> Baseline:
        """EfficientNet-B0's stages at the given resolution and coefficients."""
        return cls(width=width, depth=depth, resolution=resolution, resolution_step=resolution_step)

    @property
    def model_name(self) -> str:
        """The variant whose fixed settings (activation, SE, lite rules) the built models use."""
        return "efficientnet-lite0" if self.lite else "efficientnet-b0"

    def scaled_resolution(self, r: float) -> int:
        """The image size for resolution multiplier r, on the baseline's grid (8 px unless it says otherwise)."""
        return round_resolution(self.resolution * r, self.resolution_step)


@dataclasses.dataclass(frozen=True)
class NetworkCounts:
    """Sizes of one built network, per image."""

    madds: int
    params: int  # incl. batch-norm statistics, as keras counts them
    activations: int


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One rule at one compute multiple: its multipliers, the network they round to, and its measured cost."""

    rule: str
    s: float
    d: float
    w: float
    r: float
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    madds: int
    params: int
    activations: int
    predicted_madds_ratio: float  # d·w²·r²
    measured_madds_ratio: float  # madds / the baseline's, built the same way
    flag: str | None = None  # set when measured and predicted differ by more than the tolerance
    matched_from: int | None = None  # resolution before `match_flops` moved it

    @property
    def relative_gap(self) -> float:
        """Measured over predicted MAdds ratio, minus one."""
        return self.measured_madds_ratio / self.predicted_madds_ratio - 1


def count_activations(model) -> int:
    """Conv output elements per image: H·W·C summed over every Conv2D and DepthwiseConv2D (RegNet's definition)."""
    from keras import layers

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


def _network_key(baseline: Baseline, width: float, depth: float, resolution: int, num_classes: int) -> tuple:
    # Coefficients that round to the same channels and block counts build the same network.
    variant = scaling.get_variant(baseline.model_name)
    blocks = scaling.scaled_blocks(variant, width=width, depth=depth, baseline=baseline.blocks)
    shape = tuple((b.kernel_size, b.filters_in, b.filters_out, b.expand_ratio, b.strides) for b in blocks)
    return (baseline.model_name, resolution, num_classes, scaling.stem_filters(variant, width),
            scaling.head_filters(variant, width), shape)


def count_network(baseline: Baseline, width: float, depth: float, resolution: int, num_classes: int) -> NetworkCounts:
    """Build the baseline's stages at (width, depth, resolution), count it and clear the Keras session (cached)."""
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    key = _network_key(baseline, width, depth, resolution, num_classes)
    if key not in _COUNTS:
        import keras

        from efficientnet_tf.counting import count_madds
        from efficientnet_tf.model import build_model

        model = build_model(baseline.model_name, resolution=resolution, width_coefficient=width,
                            depth_coefficient=depth, baseline_blocks=baseline.blocks, classes=num_classes,
                            weights=None)
        _COUNTS[key] = NetworkCounts(count_madds(model), int(model.count_params()), count_activations(model))
        del model
        keras.backend.clear_session()
    return _COUNTS[key]


def _flag(predicted: float, measured: float, tolerance: float) -> str | None:
    gap = measured / predicted - 1
    if abs(gap) <= tolerance:
        return None
    return (f"measured MAdds ratio {measured:.3f} vs predicted {predicted:.3f} ({gap:+.1%}, beyond ±{tolerance:.0%}): "
            "rounding of channels, blocks or resolution")


def _candidate(baseline: Baseline, rule: str, s: float, d: float, w: float, r: float, resolution: int,
               num_classes: int, tolerance: float, matched_from: int | None = None) -> Candidate:
    width, depth = baseline.width * w, baseline.depth * d
    counts = count_network(baseline, width, depth, resolution, num_classes)
    base = count_network(baseline, baseline.width, baseline.depth, baseline.resolution, num_classes)
    predicted, measured = d * w**2 * r**2, counts.madds / base.madds
    return Candidate(rule, s, d, w, r, width, depth, resolution, counts.madds, counts.params, counts.activations,
                     predicted, measured, _flag(predicted, measured, tolerance), matched_from)


def build_candidate(baseline: Baseline, rule: ScalingRule, s: float, num_classes: int,
                    tolerance: float = FLOPS_TOLERANCE) -> Candidate:
    """Scale the baseline by `rule` to compute multiple s, build it and count it (flagged beyond `tolerance`)."""
    d, w, r = rule.multipliers(s)
    return _candidate(baseline, rule.name, s, d, w, r, baseline.scaled_resolution(r), num_classes, tolerance)


def build_candidates(baseline: Baseline, rules: Iterable[ScalingRule], multiples: Iterable[float],
                     num_classes: int, tolerance: float = FLOPS_TOLERANCE) -> list[Candidate]:
    """Every rule at every compute multiple, in rule-major order."""
    multiples = list(multiples)
    return [build_candidate(baseline, rule, s, num_classes, tolerance) for rule in rules for s in multiples]


@dataclasses.dataclass(frozen=True)
class UnmatchedArm:
    """An arm `match_flops` could not bring within tolerance of the target."""

    rule: str
    s: float
    resolution: int  # the closest resolution found
    madds: int
    relative_gap: float  # madds / target - 1


@dataclasses.dataclass(frozen=True)
class FlopsMatch:
    """Arms compared at equal FLOPs: every arm (moved where needed) and those left outside tolerance."""

    target_madds: int
    reference: str | None
    tolerance: float
    candidates: tuple[Candidate, ...]
    unmatched: tuple[UnmatchedArm, ...]


def match_flops(candidates: Sequence[Candidate], baseline: Baseline, num_classes: int, *,
                reference: str | None = None, target_madds: int | None = None,
                tolerance: float = FLOPS_TOLERANCE, max_steps: int = 64) -> FlopsMatch:
    """Move each arm's resolution in steps of the baseline's resolution_step (8 px by default) until its MAdds are within ±tolerance of the reference arm's
    (named by rule) or of `target_madds`; arms that cannot get there keep their closest size and are reported.

    Moved arms keep their rule's (d, w, r) and record the old size in `matched_from`; their measured
    figures (and flag) are those of the network actually built.
    """
    if (reference is None) == (target_madds is None):
        raise UserError("match_flops needs exactly one of reference (a rule name) or target_madds")
    if not 0 < tolerance < 1:
        raise UserError(f"FLOPs tolerance must be in (0, 1), got {tolerance}")
    ref: Candidate | None = None
    if reference is not None:
        found = [c for c in candidates if c.rule == reference]
        if len(found) != 1:
            raise UserError(f"reference arm {reference!r} must appear exactly once among the candidates, "
                            f"found {len(found)}")
        ref = found[0]
        target = ref.madds
    else:
        assert target_madds is not None
        if target_madds <= 0:
            raise UserError(f"target_madds must be > 0, got {target_madds}")
        target = int(target_madds)
    adjusted: list[Candidate] = []
    unmatched: list[UnmatchedArm] = []
    for cand in candidates:
        moved = cand if cand is ref else _match_one(cand, baseline, num_classes, target, tolerance, max_steps)
        adjusted.append(moved)
        gap = moved.madds / target - 1
        if abs(gap) > tolerance:
            unmatched.append(UnmatchedArm(moved.rule, moved.s, moved.resolution, moved.madds, gap))
    return FlopsMatch(target, reference, tolerance, tuple(adjusted), tuple(unmatched))


def _match_one(cand: Candidate, baseline: Baseline, num_classes: int, target: int, tolerance: float,
               max_steps: int) -> Candidate:
    def gap(madds: int) -> float:
        return madds / target - 1

    best_res, best_gap = cand.resolution, gap(cand.madds)
    res, madds = cand.resolution, cand.madds
    step = baseline.resolution_step if madds < target else -baseline.resolution_step
    for _ in range(max_steps):
        if abs(gap(madds)) <= tolerance or res + step < baseline.resolution_step:
            break
        res += step
        below_before = madds < target
        madds = count_network(baseline, cand.width_coefficient, cand.depth_coefficient, res, num_classes).madds
        if abs(gap(madds)) < abs(best_gap):
            best_res, best_gap = res, gap(madds)
        if (madds < target) != below_before:  # stepped over the target: the closer side is kept
            break
    if best_res == cand.resolution:
        return cand
    return _candidate(baseline, cand.rule, cand.s, cand.d, cand.w, cand.r, best_res, num_classes, tolerance,
                      matched_from=cand.resolution)


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
