"""Counted candidates of the scaling study: each rule at a compute multiple built as a Keras model and its
multiply-adds, parameters and activations counted (cached per distinct network), and FLOPs matching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from efficientnet_tf.errors import UserError
from efficientnet_tf.models import counting
from efficientnet_tf.study.scaling_rules import FLOPS_TOLERANCE, Baseline, ScalingRule


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


def count_network(baseline: Baseline, width: float, depth: float, resolution: int, num_classes: int) -> counting.NetworkCounts:
    """The baseline's stages built at (width, depth, resolution) and counted (cached in the model library)."""
    return counting.count_network(baseline.model_name, width, depth, resolution, num_classes, baseline.blocks)


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

