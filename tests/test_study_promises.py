"""The scaling study's promises checked against answers worked out by hand (no training, no networks built):
the claims' signs and verdicts on arms whose outcome is known, claim (c)'s even / odd hold-out split,
the calibration, the predicted-time formula and the trimming order the documentation describes."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import run_model, study, training
from efficientnet_tf.models import counting
from efficientnet_tf.study import candidates
from efficientnet_tf.study import plan as study_plan
from efficientnet_tf.study.arm_results import Correctness, best_search_point, result_rows

IMAGES = 200  # hold-out images: 100 even-indexed, 100 odd-indexed
HALF = IMAGES // 2
X, Y, Z = "grid-d1.00-w0.00-r0.00", "grid-d0.00-w0.00-r1.00", "grid-d0.00-w1.00-r0.00"
PAPER, SEARCHED, WIDTH_SHARE = "compound-paper", "compound-searched", "width-share-0.8"

# ------------------------------------------------------------------------------------------------
# Recorded arms with known outcomes


def _correct(even: int, odd: int) -> np.ndarray:
    """Per-image correctness: the first `even` even-indexed and the first `odd` odd-indexed images are right.
    Arms built this way are nested (a better arm is right wherever a worse one is), so intervals are tight."""
    out = np.zeros(IMAGES, np.int8)
    out[0::2][:even] = 1
    out[1::2][:odd] = 1
    return out


def _even(percent: int) -> tuple[int, int]:
    """`percent` % right, spread evenly over both halves."""
    return percent, percent


# (part, rule, s) -> (right on the even half, right on the odd half), each half of 100 images.
OUTCOMES: dict[tuple[str, str, float], tuple[int, int]] = {
    # (a) depth 50 -> 70 -> 72 %: gains +20 then +2, saturation +18 points (holds);
    #     width 50 -> 55 -> 75 %: +5 then +20, -15 points (does not hold);
    #     resolution 50 -> 60 -> 70 %: +10 then +10, 0 points (inconclusive).
    ("curves", "baseline", 1.0): _even(50),
    ("curves", "depth", 2.0): _even(70), ("curves", "depth", 4.0): _even(72),
    ("curves", "width", 2.0): _even(55), ("curves", "width", 4.0): _even(75),
    ("curves", "resolution", 2.0): _even(60), ("curves", "resolution", 4.0): _even(70),
    # (c) chosen on the even half the search prefers X (90 %); on the odd half X has 40 %, the paper's point 50 %
    #     (-10 points, does not hold) and the width-share point 30 % (+10 points, holds). Choosing on the odd
    #     half would pick Y, choosing on every image would pick Y too, and testing X on the even half or on
    #     every image would give +40 or +15 points.
    ("search", X, 2.0): (90, 40), ("search", Y, 2.0): (60, 95), ("search", Z, 2.0): (20, 20),
    ("search", PAPER, 2.0): (50, 50), ("search", WIDTH_SHARE, 2.0): (50, 30),
    # (b) the best single dimension is resolution (65 %); the paper's compound point 75 % (+10, holds), the
    #     searched one 50 % (-15, does not hold).
    ("equal_flops", "depth", 2.0): _even(55), ("equal_flops", "width", 2.0): _even(60),
    ("equal_flops", "resolution", 2.0): _even(65), ("equal_flops", PAPER, 2.0): _even(75),
    ("equal_flops", SEARCHED, 2.0): _even(50),
}

SHARES = {"depth": (1.0, 0.0, 0.0), "width": (0.0, 1.0, 0.0), "resolution": (0.0, 0.0, 1.0),
          X: (1.0, 0.0, 0.0), Y: (0.0, 0.0, 1.0), Z: (0.0, 1.0, 0.0), PAPER: (0.28, 0.29, 0.43),
          SEARCHED: (0.2, 0.3, 0.5), WIDTH_SHARE: (0.1, 0.8, 0.1)}

SPEC = {"name": "known", "dataset": "synthetic", "steps": 2, "batch_size": 16,
        "baseline": {"width": 0.25, "depth": 0.25, "resolution": 32},
        "timing": {"calibrate": False, "step_seconds": 0.05, "overhead_seconds": 15},
        "curves": {"dimensions": ["depth", "width", "resolution"], "multiples": [1, 2, 4]},
        "search": {"step": 1.0},
        "equal_flops": {"multiple": 2, "arms": ["depth", "width", "resolution", PAPER, SEARCHED]}}


def _known_plan() -> tuple[study.StudyPlan, dict[str, float]]:
    """A plan of 17 arms, each its own network (distinct coefficients), and each network's step time:
    exactly proportional to its activations, while its MAdds follow another order."""
    spec = study.parse_spec(SPEC)
    base = counting.NetworkCounts(madds=1_000_000, params=50_000, activations=40_000)
    time_model = study.TimeModel("spec constants", 0.05, 15.0, base.madds, base.activations)
    arms, step_times = [], {}
    for index, (part, rule, s) in enumerate(OUTCOMES):
        activations = 40_000 + 3_000 * index
        madds = 1_000_000 + 150_000 * ((7 * index) % 17)  # a scrambled order: a worse predictor of step time
        network = candidates.Candidate(rule, s, 1.0, 1.0, 1.0, round(0.25 + 0.01 * index, 4), 0.25, 32, madds,
                                       50_000, activations, s, madds / base.madds)
        arm = study.Arm(part, 0, network, SHARES.get(rule), 20.0)
        arms.append(arm)
        step_times[arm.arm_dir] = 1e-7 * activations
    plan = study.StudyPlan(spec, tuple(arms), base, 10, 1280, IMAGES, 2, 16, "synthetic", time_model, (), "recipe")
    return plan, step_times


def _record(plan: study.StudyPlan, step_times: dict[str, float], arms_dir: pathlib.Path) -> list[dict]:
    """predictions.npz and arm_result.json of every arm, with the outcomes above; the results rows."""
    labels = np.random.default_rng(0).integers(0, 10, IMAGES).astype(np.int32)
    results = {}
    for arm in plan.arms:
        right = _correct(*OUTCOMES[(arm.part, arm.rule, arm.s)])
        directory = arms_dir / arm.arm_dir
        directory.mkdir(parents=True)
        study.save_predictions(str(directory), labels, np.where(right == 1, labels, (labels + 1) % 10))
        step = step_times[arm.arm_dir]
        results[arm.arm_dir] = study.ArmResult(
            arm.arm_dir, arm.width_coefficient, arm.depth_coefficient, arm.resolution, 0, 2, 16, "synthetic",
            "recipe", float(right.mean()), IMAGES, 16 / step, step, 1.0, 3.0)
        results[arm.arm_dir].save(str(directory))
    return result_rows(plan.arms, results)


@pytest.fixture(scope="module")
def known_claims(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, study.StudyPlan, pathlib.Path]:
    model_dir = tmp_path_factory.mktemp("known")
    plan, step_times = _known_plan()
    rows = _record(plan, step_times, model_dir / "arms")
    claims, _ = study.write_report(plan, rows, str(model_dir), Correctness(str(model_dir / "arms")))
    return claims, plan, model_dir


def _claim(claims: list, key: str, fragment: str):
    (found,) = [c for c in claims if c.key == key and fragment in c.statement]
    return found


def test_saturation_claims_have_the_known_sign_and_verdict(known_claims) -> None:
    claims, _, _ = known_claims
    expected = {"depth": (18.0, "holds"), "width": (-15.0, "does not hold"), "resolution": (0.0, "inconclusive")}
    for rule, (estimate, verdict) in expected.items():
        claim = _claim(claims, "a", f"{rule} saturates")
        assert claim.estimate == pytest.approx(estimate, abs=1e-9), (rule, claim)
        assert claim.verdict == verdict, (rule, claim)
        assert claim.low <= claim.estimate <= claim.high
    depth = _claim(claims, "a", "depth saturates")
    assert "gain 1->2: +20.00 points, 2->4: +2.00 points" in depth.detail


def test_compound_claims_compare_with_the_best_single_dimension(known_claims) -> None:
    claims, _, _ = known_claims
    paper = _claim(claims, "b", PAPER)
    assert paper.estimate == pytest.approx(10.0) and paper.verdict == "holds" and paper.low > 0
    assert "best single dimension: resolution (65.00%" in paper.detail
    searched = _claim(claims, "b", SEARCHED)
    assert searched.estimate == pytest.approx(-15.0) and searched.verdict == "does not hold" and searched.high < 0


def test_search_claims_choose_on_the_even_half_and_test_on_the_odd_half(known_claims) -> None:
    claims, plan, model_dir = known_claims
    best, scores = best_search_point([a for a in plan.arms if a.part == "search"],
                                     Correctness(str(model_dir / "arms")))
    assert best == X and scores[X] == pytest.approx(0.9) and scores[Y] == pytest.approx(0.6)
    paper = _claim(claims, "c", "the paper's point")
    assert paper.estimate == pytest.approx(-10.0) and paper.verdict == "does not hold", paper
    width_share = _claim(claims, "c", "width-share point")
    assert width_share.estimate == pytest.approx(10.0) and width_share.verdict == "holds", width_share
    assert paper.detail.startswith(f"the search prefers {X}")


def test_time_claim_favours_the_exact_predictor(known_claims) -> None:
    claims, plan, _ = known_claims
    (claim,) = [c for c in claims if c.key == "d"]
    activations = np.array([a.activations for a in plan.arms], np.float64)
    madds = np.array([a.madds for a in plan.arms], np.float64)
    # Step time is exactly linear in activations (R² 1); R² of a least-squares line is the squared correlation.
    r2_madds = np.corrcoef(madds, 1e-7 * activations)[0, 1] ** 2
    assert r2_madds < 0.5
    assert claim.estimate == pytest.approx(1.0 - r2_madds, abs=1e-9)
    assert claim.verdict == "holds" and claim.low > 0, claim
    assert "(better: activations)" in claim.detail


def test_report_table_shows_the_verdicts(known_claims) -> None:
    _, _, model_dir = known_claims
    table = (model_dir / "report.md").read_text().split("## Claims")[1].split("Details:")[0]
    assert "| (a) | depth saturates: gain from s=2 to 4 < gain from 1 to 2 | +18.00 [" in table
    assert "| (c) | the search's best point beats the paper's point (test half of the hold-out) | -10.00 [" in table
    assert table.count("| holds |") == 4 and table.count("| does not hold |") == 3
    assert table.count("| inconclusive |") == 1


# ------------------------------------------------------------------------------------------------
# The plan: calibration, predicted time, trimming (network counts replaced by a formula)


def _fake_counts(baseline, width: float, depth: float, resolution: int, num_classes: int):
    """MAdds ∝ d·w²·r² and activations ∝ d·w·r², from the 0.25 / 0.25 / 32 px baseline's 1 M and 40 k."""
    d, w, r = depth / 0.25, width / 0.25, resolution / 32
    return counting.NetworkCounts(round(1e6 * d * w * w * r * r), round(5e4 * d * w), round(4e4 * d * w * r * r))


@pytest.fixture
def counted_by_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(candidates, "count_network", _fake_counts)


def test_predicted_time_formula_by_hand() -> None:
    model = study.TimeModel("made up", step_seconds=0.3, overhead_seconds=12.0, base_madds=1_000_000,
                            base_activations=50_000)
    # MAdds ratio 3, activations ratio 2: mean 2.5, to the power 0.85.
    ratio = 2.5**0.85
    assert model.cost_ratio(3_000_000, 100_000) == pytest.approx(ratio)
    # 100 steps at 0.3 s x ratio, plus 64 hold-out images in batches of 16, each a third of a step.
    expected = 12.0 + 100 * 0.3 * ratio + (64 / 16) * 0.3 * ratio / 3
    assert model.arm_seconds(3_000_000, 100_000, 100, 64, 16) == pytest.approx(expected, rel=1e-12)
    assert model.arm_seconds(1_000_000, 50_000, 10, 0, 16) == pytest.approx(12.0 + 3.0)


class _Clock:
    """A monotonic clock that moves only when the fakes below say so."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def _calibration_fakes(monkeypatch: pytest.MonkeyPatch, clock: _Clock, calls: list[int]) -> None:
    class FakeTrainer:
        def __init__(self, *args, **kwargs) -> None:
            clock.now += 7.0  # building the model and the trainer

        def time_steps(self, steps: int, *, warmup_steps: int) -> float:
            calls.append(steps)
            clock.now += 2.5 + 1.5  # the warmup call, then the timed steps
            return 1.5

    def fake_model(config):
        clock.now += 2.0  # building the inference model
        return lambda images, training=False: tf.zeros([tf.shape(images)[0], 10])

    monkeypatch.setattr(study_plan, "time", clock)
    monkeypatch.setattr(training, "Trainer", FakeTrainer)
    monkeypatch.setattr(run_model, "build_model_from_config", fake_model)


def test_calibration_by_hand(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, counted_by_formula) -> None:
    spec = study.parse_spec({**SPEC, "timing": {"calibrate": True, "calibration_steps": 5},
                             "curves": {"dimensions": ["width"], "multiples": [1, 2]}, "search": None,
                             "equal_flops": None})
    clock, calls = _Clock(), []
    _calibration_fakes(monkeypatch, clock, calls)
    plan = study.plan_study(spec, model_dir=str(tmp_path))
    # 5 timed steps took 1.5 s: 0.3 s a step. Set-up: 7 s (trainer) + 2.5 s (warmup) + 2 s (inference model).
    assert calls == [5]
    assert plan.time_model.step_seconds == pytest.approx(0.3)
    assert plan.time_model.overhead_seconds == pytest.approx(11.5)
    assert plan.time_model.source.startswith("calibrated: 5 timed training steps")
    # The baseline arm: set-up + 2 steps + 256 hold-out images in batches of 16 at a third of a step each.
    (baseline,) = [a for a in plan.arms if a.rule == "baseline"]
    assert baseline.predicted_seconds == pytest.approx(11.5 + 2 * 0.3 + 16 * 0.3 / 3)
    (width,) = [a for a in plan.arms if a.rule == "width"]
    # Width x√2 -> 0.3536: MAdds x2, activations x√2 under the formula counts.
    ratio = (0.5 * (width.madds / 1e6 + width.activations / 4e4)) ** 0.85
    assert width.madds / 1e6 == pytest.approx(2.0, rel=1e-3) and ratio == pytest.approx(1.707**0.85, rel=1e-3)
    assert width.predicted_seconds == pytest.approx(11.5 + (2 + 16 / 3) * 0.3 * ratio)
    stored = json.loads((tmp_path / "calibration.json").read_text())
    assert stored["step_seconds"] == pytest.approx(0.3) and stored["overhead_seconds"] == pytest.approx(11.5)
    # The same study again reads the cache; another number of calibration steps calibrates again.
    assert study.plan_study(spec, model_dir=str(tmp_path)).time_model == plan.time_model and calls == [5]
    other = dataclasses.replace(spec, timing=dataclasses.replace(spec.timing, calibration_steps=3))
    assert study.plan_study(other, model_dir=str(tmp_path)).time_model.step_seconds == pytest.approx(0.5)
    assert calls == [5, 3]


# Every training predicted at 60 s (plus a few microseconds of steps): the budget in minutes is the number of
# trainings that fit. 24 trainings: curves (baseline and resolution at s=3) x 2 seeds, the φ = 1 grid at step
# 0.5 (6 points and the 2 anchors) x 2 seeds, the equal-FLOPs depth and resolution arms at s=4 x 2 seeds.
TRIM_SPEC = {**SPEC, "seeds": 2, "timing": {"calibrate": False, "step_seconds": 1e-6, "overhead_seconds": 60},
             "curves": {"dimensions": ["resolution"], "multiples": [1, 3]}, "search": {"step": 0.5},
             "equal_flops": {"multiple": 4, "arms": ["depth", "resolution"]}}
# Grid points by squared distance of their log-FLOPs shares from the paper's (0.280, 0.292, 0.428), farthest
# first: (1,0,0) 0.788, (0,1,0) 0.763, (0,0,1) 0.490, (.5,.5,0) 0.275, (.5,0,.5) 0.139, (0,.5,.5) 0.126.
FARTHEST_FIRST = ["grid-d1.00-w0.00-r0.00", "grid-d0.00-w1.00-r0.00", "grid-d0.00-w0.00-r1.00",
                  "grid-d0.50-w0.50-r0.00", "grid-d0.50-w0.00-r0.50", "grid-d0.00-w0.50-r0.50"]


def _trimmed_plan(budget_minutes: float) -> study.StudyPlan:
    return study.plan_study(study.parse_spec({**TRIM_SPEC, "budget_minutes": budget_minutes}))


def test_trimming_drops_the_farthest_grid_points_first(counted_by_formula) -> None:
    full = study.plan_study(study.parse_spec(TRIM_SPEC))
    assert len(full.runs()) == 24 and full.predicted_seconds == pytest.approx(24 * 60, abs=0.01)
    assert {a.rule for a in full.arms if a.part == "search"} == {*FARTHEST_FIRST, PAPER, WIDTH_SHARE}
    plan = _trimmed_plan(21.5)  # 24 -> 22 -> 20 trainings
    assert list(plan.trimmed) == [f"search point {FARTHEST_FIRST[0]}: 2 arm(s), -2m00s",
                                  f"search point {FARTHEST_FIRST[1]}: 2 arm(s), -2m00s"]
    assert len(plan.runs()) == 20 and not any("still over budget" in note for note in plan.notes)
    assert {a.rule for a in plan.arms if a.part == "search"} == {*FARTHEST_FIRST[2:], PAPER, WIDTH_SHARE}


def test_trimming_then_drops_extra_seeds(counted_by_formula) -> None:
    plan = _trimmed_plan(10.5)  # the 6 grid points (12 trainings), then the search's seed 1 (2): 10 left
    assert [t.split(":")[0] for t in plan.trimmed] == [f"search point {p}" for p in FARTHEST_FIRST] + [
        "search seed 1"]
    assert len(plan.runs()) == 10
    assert {(a.part, a.seed) for a in plan.arms} == {("curves", 0), ("curves", 1), ("search", 0),
                                                     ("equal_flops", 0), ("equal_flops", 1)}


def test_trimming_then_drops_the_search_but_never_the_equal_flops_part(counted_by_formula) -> None:
    plan = _trimmed_plan(4.5)  # ... every extra seed (6 left), then the search's 2 anchors: 4 left
    assert [t.split(":")[0] for t in plan.trimmed][6:] == ["search seed 1", "curves seed 1", "equal_flops seed 1",
                                                           "the search part"]
    assert len(plan.runs()) == 4 and {a.part for a in plan.arms} == {"curves", "equal_flops"}
    last = _trimmed_plan(1)
    assert [t.split(":")[0] for t in last.trimmed][-1] == "the curves part"
    assert {a.part for a in last.arms} == {"equal_flops"} and len(last.runs()) == 2
    assert any("still over budget" in note for note in last.notes)
    assert math.isclose(last.predicted_seconds, 120, abs_tol=0.01)
