"""Scaling rules of the compound-scaling study: the φ=1 grid, multipliers, built candidates, FLOPs matching."""

from __future__ import annotations

import math

import keras
import pytest
from keras import layers

from efficientnet_tf.models import counting, scaling
from efficientnet_tf.errors import UserError
from efficientnet_tf.study import candidates
from efficientnet_tf.study import scaling_rules as sr

# Two B0 stages keep every build well under a second; the rounding rules are B0's.
MINI = scaling.BASELINE_BLOCKS[:2]
BASE = sr.Baseline(blocks=MINI, width=0.5, resolution=64)
TINY = sr.Baseline(blocks=MINI, width=0.25, resolution=32)
CLASSES = 10
ALL_RULES = (sr.paper_compound(), sr.depth_only(), sr.width_only(), sr.resolution_only(), sr.width_share())


def test_grid_points_satisfy_the_constraint() -> None:
    for step, decimals in ((0.1, None), (0.05, 2)):
        grid = sr.search_grid(step, tolerance=0.05, decimals=decimals)
        assert len(grid) > 10
        for rule in grid:
            assert min(rule.alpha, rule.beta, rule.gamma) >= 1
            assert abs(rule.alpha * rule.beta**2 * rule.gamma**2 / 2 - 1) <= 0.05
            assert math.isclose(sum(rule.shares), 1.0)
            assert rule.multipliers(1.0) == pytest.approx((1.0, 1.0, 1.0))
        assert len({rule.name for rule in grid}) == len(grid)


def test_grid_contains_the_paper_and_width_share_points() -> None:
    grid = {rule.name: rule for rule in sr.search_grid(0.1)}
    paper = grid["compound"]
    assert (paper.alpha, paper.beta, paper.gamma) == (1.2, 1.1, 1.15)
    assert [round(x, 2) for x in paper.shares] == [0.28, 0.29, 0.43]  # SCALING.md's shares
    fast = grid["width-share-0.8"]
    assert fast.multipliers(2.0) == pytest.approx(sr.width_share(0.8).multipliers(2.0))
    assert fast.shares == pytest.approx((0.1, 0.8, 0.1))
    # On the 0.1 grid the width-share point coincides with a grid point and replaces it.
    assert not any(name.startswith("grid-d0.10-w0.80") for name in grid)


def test_multipliers_obey_the_flops_formula() -> None:
    for rule in ALL_RULES + (sr.compound(1.4, 1.0, 1.0), sr.width_share(1 / 3)):
        for s in (1.0, 1.5, 2.0, 4.0, 37.0):
            d, w, r = rule.multipliers(s)
            assert d * w**2 * r**2 == pytest.approx(s, rel=1e-12), (rule.name, s)
            assert min(d, w, r) >= 1 - 1e-12, (rule.name, s)


def test_single_dimension_and_width_share_rules() -> None:
    assert sr.depth_only().multipliers(4) == (4, 1, 1)
    assert sr.width_only().multipliers(4) == pytest.approx((1, 2, 1))
    assert sr.resolution_only().multipliers(4) == pytest.approx((1, 1, 2))
    assert sr.width_share(0.8).multipliers(4) == pytest.approx((4**0.1, 4**0.4, 4**0.05))
    phi = math.log(2) / math.log(1.2 * 1.1**2 * 1.15**2)
    assert sr.paper_compound().multipliers(2) == pytest.approx((1.2**phi, 1.1**phi, 1.15**phi))


def test_rules_round_trip_through_dicts() -> None:
    for rule in ALL_RULES + (sr.compound(1.3, 1.05, 1.2, name="mine"),):
        assert sr.rule_from_dict(rule.to_dict()) == rule


BAD_INPUTS = [
    lambda: sr.paper_compound().multipliers(0.5),
    lambda: sr.depth_only().multipliers(float("nan")),
    lambda: sr.width_share(-0.1),
    lambda: sr.width_share(1.5),
    lambda: sr.compound(0.9, 1.1, 1.15),
    lambda: sr.compound(1.0, 1.0, 1.0),  # impossible: α·β²·γ² = 1 cannot grow FLOPs
    lambda: sr.search_grid(0.1, tolerance=0.02),  # impossible: excludes the paper's own point
    lambda: sr.search_grid(0.3),
    lambda: sr.rule_from_dict({"kind": "compound", "alpha": 1.2}),
    lambda: sr.rule_from_dict({"kind": "sideways"}),
    lambda: sr.rule_from_dict({"kind": "depth", "alpha": 2}),
    lambda: sr.Baseline(resolution=100),
    lambda: sr.Baseline(resolution=81, resolution_step=2),
    lambda: sr.Baseline(resolution=80, resolution_step=0),
    lambda: candidates.build_candidate(BASE, sr.depth_only(), 0.9, CLASSES),
]


def test_bad_inputs_raise_one_line_user_errors() -> None:
    for i, make in enumerate(BAD_INPUTS):
        with pytest.raises(UserError) as error:
            make()
        assert str(error.value) and "\n" not in str(error.value), i


def test_resolution_rounds_to_multiples_of_8() -> None:
    assert [sr.round_resolution(p) for p in (64, 67.9, 68, 75.9, 3)] == [64, 64, 72, 72, 8]
    assert sr.Baseline.b0().scaled_resolution(1.15) == 256
    assert sr.Baseline.b0(resolution=64, width=0.5) == sr.Baseline(width=0.5, resolution=64)


def test_activations_match_a_hand_count() -> None:
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same")(inputs)  # 4·4·4 = 64
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)  # 4·4·8 = 128
    x = layers.Conv2D(5, 1)(x)  # 4·4·5 = 80
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(10)(x)  # not a convolution
    assert counting.count_activations(keras.Model(inputs, outputs)) == 64 + 128 + 80


def test_activations_of_a_tiny_efficientnet_match_its_block_list() -> None:
    from efficientnet_tf.models.builder import build_model

    variant = scaling.get_variant("efficientnet-b0")
    width, size = TINY.width, TINY.resolution // 2  # after the stride-2 stem
    expected = size * size * scaling.stem_filters(variant, width)
    for block in scaling.scaled_blocks(variant, width=width, baseline=MINI):
        expanded = block.filters_in * block.expand_ratio
        expand = size * size * expanded if block.expand_ratio != 1 else 0
        size //= block.strides
        squeeze = max(1, int(block.filters_in * block.se_ratio)) + expanded  # 1x1 SE reduce and expand
        expected += expand + size * size * expanded + squeeze + size * size * block.filters_out
    expected += size * size * scaling.head_filters(variant, width)  # at the last block's size
    model = build_model("efficientnet-b0", width_coefficient=width, resolution=TINY.resolution,
                        baseline_blocks=MINI, classes=CLASSES)
    assert counting.count_activations(model) == expected


@pytest.fixture(scope="module")
def at_four() -> list[candidates.Candidate]:
    """Every rule at s = 4 from the 64-px baseline (networks are cached across tests)."""
    return candidates.build_candidates(BASE, ALL_RULES, [4.0], CLASSES)


def test_candidates_match_the_formula_or_are_flagged(at_four: list[candidates.Candidate]) -> None:
    base = candidates.build_candidate(BASE, sr.depth_only(), 1.0, CLASSES)
    assert base.measured_madds_ratio == 1.0 and base.flag is None and base.madds > 0 and base.activations > 0
    for cand in at_four:
        assert cand.predicted_madds_ratio == pytest.approx(4.0)
        assert cand.measured_madds_ratio == pytest.approx(cand.madds / base.madds)
        if abs(cand.relative_gap) > 0.05:
            assert cand.flag and "predicted" in cand.flag
        else:
            assert cand.flag is None
    by_rule = {c.rule: c for c in at_four}
    assert by_rule["resolution"].resolution == 128 and by_rule["resolution"].flag is None
    assert by_rule["depth"].depth_coefficient == 4.0 and by_rule["width"].width_coefficient == 1.0


def test_rounding_at_tiny_width_forces_a_flag() -> None:
    # At width 0.25 most layers sit at the 8-channel floor, so √2 more width adds far less than 2x MAdds.
    cand = candidates.build_candidate(TINY, sr.width_only(), 2.0, CLASSES)
    assert cand.measured_madds_ratio < 1.9
    assert cand.flag is not None and "rounding" in cand.flag and "\n" not in cand.flag


def test_rules_mapping_to_one_network_build_it_once() -> None:
    candidates.build_candidate(BASE, sr.depth_only(), 1.1, CLASSES)
    before = counting.count_cache_size()
    cand = candidates.build_candidate(BASE, sr.depth_only(), 1.2, CLASSES)  # repeats ceil(1.1·n) == ceil(1.2·n)
    assert counting.count_cache_size() == before
    assert cand.depth_coefficient == 1.2


def test_matcher_brings_arms_within_tolerance_or_reports_them(at_four: list[candidates.Candidate]) -> None:
    match = candidates.match_flops(at_four, BASE, CLASSES, reference="compound")
    target = next(c for c in at_four if c.rule == "compound").madds
    assert match.target_madds == target
    assert [c.rule for c in match.candidates] == [c.rule for c in at_four]  # nothing dropped
    unmatched = {arm.rule: arm for arm in match.unmatched}
    for cand in match.candidates:
        gap = cand.madds / target - 1
        if cand.rule in unmatched:
            assert abs(gap) > 0.05 and unmatched[cand.rule].relative_gap == pytest.approx(gap)
        else:
            assert abs(gap) <= 0.05
        if cand.matched_from is not None:
            assert cand.resolution % 8 == 0 and cand.resolution != cand.matched_from
    assert sum(c.matched_from is not None for c in match.candidates) >= 1
    assert "compound" not in unmatched


@pytest.mark.slow  # builds and counts dozens of networks
def test_the_matcher_moves_resolution_on_the_baselines_grid() -> None:
    """A baseline's resolution_step sets the grid: every matched size lies on it, and an arm the grid cannot
    bring within ±5 % (at 80 px a resolution step moves MAdds in jumps, feature maps being ceil(r / 2^k)) is
    reported with its gap rather than silently kept."""
    rules = [sr.depth_only(), sr.width_only(), sr.resolution_only(), sr.paper_compound(), sr.width_share()]
    for step in (8, 4):
        base = sr.Baseline.b0(resolution=80, width=0.5, depth=0.5, resolution_step=step)
        target = 2 * candidates.count_network(base, 0.5, 0.5, 80, CLASSES).madds
        match = candidates.match_flops([candidates.build_candidate(base, r, 2, CLASSES) for r in rules], base, CLASSES,
                               target_madds=target)
        assert all(c.resolution % step == 0 for c in match.candidates)
        unmatched = {u.rule for u in match.unmatched}
        for cand in match.candidates:
            assert (abs(cand.madds / target - 1) > 0.05) == (cand.rule in unmatched), (step, cand.rule)
        assert {"width", "compound", "width-share-0.8"}.isdisjoint(unmatched)


def test_matcher_reports_arms_it_cannot_reach(at_four: list[candidates.Candidate]) -> None:
    depth = next(c for c in at_four if c.rule == "depth")
    match = candidates.match_flops([depth], BASE, CLASSES, target_madds=depth.madds * 3, max_steps=1)
    (arm,) = match.unmatched
    assert arm.rule == "depth" and arm.relative_gap < -0.05
    assert match.candidates[0].resolution == depth.resolution + 8  # the closest size tried
    with pytest.raises(UserError):
        candidates.match_flops(at_four, BASE, CLASSES, reference="no-such-arm")
