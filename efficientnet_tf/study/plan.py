"""The plan of a study: its arms (counted networks, FLOPs-matched where parts compare them at equal cost),
a predicted time per arm (timed on the baseline or from the spec's constants) and deterministic
trimming to the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import tensorflow as tf

from efficientnet_tf import app, data, hparams, run_model, training
from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import LayeredConfig, RunConfig
from efficientnet_tf.models.counting import NetworkCounts
from efficientnet_tf.study import candidates, scaling_rules
from efficientnet_tf.study.spec import CONTROLLED_KEYS, PAPER, PARTS, SEARCHED, SearchSpec, StudySpec, paper_rule
from efficientnet_tf.study.writing import format_multiple, join_notes, write_text
from efficientnet_tf.training.summaries import format_duration

SEARCH_MULTIPLE = 2.0  # the φ = 1 grid doubles the baseline's FLOPs
# On a CPU small models are overhead-bound: this project's benchmark trains B0 at 106, 40 and 13.4
# img/s at 64, 128 and 224 px, i.e. 12x the MAdds for 8x the time; cost^0.85 reproduces that.
TIME_EXPONENT = 0.85
EVAL_STEP_FRACTION = 1 / 3  # a forward pass costs about a third of a training step


def _from_network(name: str, doc: str) -> property:
    """A read-only property of Arm that reads the field `name` of the arm's counted network."""
    return property(lambda arm: getattr(arm.network, name), doc=doc)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of the study: a part, a seed and the counted network it trains (a Candidate named after the
    arm's rule, at the coefficients the training uses); the network's fields below read as the arm's own."""

    part: str
    seed: int
    network: candidates.Candidate
    shares: tuple[float, float, float] | None  # log-FLOPs shares of depth, width, resolution
    predicted_seconds: float  # of its training run (shared by arms with the same arm_dir)
    flops_gap: float | None = None  # matched parts: MAdds over the target, minus one
    note: str | None = None
    pending: bool = False  # the compound-searched placeholder until the search has run

    rule = _from_network("rule", "The rule's name (\"baseline\" for the shared s = 1 arm).")
    s = _from_network("s", "The compute multiple.")
    d = _from_network("d", "The rule's depth multiplier.")
    w = _from_network("w", "The rule's width multiplier.")
    r = _from_network("r", "The rule's resolution multiplier.")
    width_coefficient = _from_network("width_coefficient", "Width coefficient trained (rounded to 4 decimals).")
    depth_coefficient = _from_network("depth_coefficient", "Depth coefficient trained (rounded to 4 decimals).")
    resolution = _from_network("resolution", "Image size trained, px.")
    madds = _from_network("madds", "Counted multiply-adds per image.")
    params = _from_network("params", "Counted parameters.")
    activations = _from_network("activations", "Counted conv activations per image.")
    predicted_madds_ratio = _from_network("predicted_madds_ratio", "d·w²·r².")
    measured_madds_ratio = _from_network("measured_madds_ratio", "Counted MAdds over the baseline's.")
    flag = _from_network("flag", "Set when measured and predicted MAdds differ beyond the tolerance.")
    matched_from = _from_network("matched_from", "Resolution before FLOPs matching moved it.")

    @property
    def arm_id(self) -> str:
        """part/rule/s<s>/seed<k>."""
        return f"{self.part}/{self.rule}/s{format_multiple(self.s)}/seed{self.seed}"

    @property
    def role(self) -> str:
        """part.rule.s<s>: the arm without its seed."""
        return f"{self.part}.{self.rule}.s{format_multiple(self.s)}"

    @property
    def arm_dir(self) -> str:
        """The training run's directory name under arms/: the network and the seed."""
        return f"d{self.depth_coefficient:.4f}-w{self.width_coefficient:.4f}-r{self.resolution}-seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class TimeModel:
    """Seconds per arm: overhead + steps x baseline step time x cost ratio^0.85, plus the hold-out pass."""

    source: str
    step_seconds: float
    overhead_seconds: float
    base_madds: int
    base_activations: int

    def cost_ratio(self, madds: int, activations: int) -> float:
        """Mean of the MAdds and activations ratios to the baseline, to TIME_EXPONENT."""
        ratio = 0.5 * (madds / self.base_madds + activations / self.base_activations)
        return ratio**TIME_EXPONENT

    def arm_seconds(self, madds: int, activations: int, train_steps: int, eval_images: int, batch: int) -> float:
        """Predicted wall time of one arm."""
        step = self.step_seconds * self.cost_ratio(madds, activations)
        return self.overhead_seconds + train_steps * step + eval_images / batch * step * EVAL_STEP_FRACTION


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """Every arm (after FLOPs matching and trimming), the time model and what trimming dropped."""

    spec: StudySpec
    arms: tuple[Arm, ...]
    baseline_counts: NetworkCounts
    num_classes: int
    num_train: int
    num_eval: int
    train_steps: int
    batch_size: int
    dataset: str
    time_model: TimeModel
    search_rules: tuple[scaling_rules.ScalingRule, ...]  # the grid as planned (before trimming)
    recipe: str  # fingerprint of every arm's config apart from the study's own keys
    trimmed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def runs(self) -> dict[str, list[Arm]]:
        """Arm directory -> its arms, in training order (parts in PARTS order, then seeds, then rows)."""
        order = sorted(range(len(self.arms)), key=lambda i: (PARTS.index(self.arms[i].part), self.arms[i].seed, i))
        runs: dict[str, list[Arm]] = {}
        for i in order:
            runs.setdefault(self.arms[i].arm_dir, []).append(self.arms[i])
        return runs

    @property
    def predicted_seconds(self) -> float:
        """Predicted time of every distinct training run."""
        return _total_seconds(self.arms)

    def parts(self) -> tuple[str, ...]:
        """The parts with at least one arm."""
        return tuple(p for p in PARTS if any(a.part == p for a in self.arms))

    def describe(self) -> list[str]:
        """Log lines: the study, the baseline, the time prediction, trimming and one line per training run."""
        b, counts = self.spec.baseline, self.baseline_counts
        runs = self.runs()
        budget = f"budget {format_duration(60 * self.spec.budget_minutes)}" if self.spec.budget_minutes else "no budget"
        lines = [
            f"Study {self.spec.name}: {len(self.arms)} arms ({', '.join(self.parts())}) in {len(runs)} trainings "
            f"on {self.dataset} ({self.num_classes} classes, {self.num_train} training / {self.num_eval} hold-out "
            f"images), {self.train_steps} steps of {self.batch_size} images per arm",
            f"Baseline: {b.title} blocks at width {b.width:g}, depth {b.depth:g}, {b.resolution} px "
            f"(resolutions on a {b.resolution_step} px grid): "
            f"{counts.madds / 1e6:.2f} M MAdds, {counts.params / 1e6:.3f} M params, "
            f"{counts.activations / 1e3:.1f} k activations",
            f"Time model: {self.time_model.source}",
            f"Predicted time: {format_duration(self.predicted_seconds)} in all ({budget})",
        ]
        lines += [f"Trimmed to fit the budget: {t}" for t in self.trimmed] or ["Trimmed: nothing"]
        lines += [f"Note: {n}" for n in self.notes]
        for run_id, arms in runs.items():
            a = arms[0]
            lines.append(f"  {run_id}: {a.madds / 1e6:.2f} M MAdds, {a.activations / 1e3:.1f} k act., predicted "
                         f"{format_duration(a.predicted_seconds)}; {', '.join(x.arm_id for x in arms)}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (plan.json)."""
        return {
            "study": self.spec.name, "dataset": self.dataset, "num_classes": self.num_classes,
            "num_train": self.num_train, "num_eval": self.num_eval, "train_steps": self.train_steps,
            "batch_size": self.batch_size, "recipe": self.recipe, "baseline": dataclasses.asdict(self.baseline_counts),
            "time_model": dataclasses.asdict(self.time_model), "predicted_seconds": self.predicted_seconds,
            "trimmed": list(self.trimmed), "notes": list(self.notes),
            "arms": [{**_arm_dict(a), "arm_id": a.arm_id, "arm_dir": a.arm_dir} for a in self.arms],
        }


def _arm_dict(arm: Arm) -> dict[str, Any]:
    """An arm as flat plain data: its own fields and its network's."""
    data = {"part": arm.part, "seed": arm.seed, **dataclasses.asdict(arm.network)}
    data.update({f.name: getattr(arm, f.name) for f in dataclasses.fields(arm) if f.name not in ("part", "seed",
                                                                                                  "network")})
    return data


def _total_seconds(arms: Iterable[Arm]) -> float:
    return float(sum({a.arm_dir: a.predicted_seconds for a in arms}.values()))


@dataclasses.dataclass
class StudyContext:
    """What planning and running share: the spec, the data and the resolved baseline config."""

    spec: StudySpec
    config: LayeredConfig  # layered config of the baseline arm (unresolved)
    resolved: RunConfig  # the same, resolved against the data
    source: data.Source
    dataset: str

    @property
    def recipe(self) -> str:
        """Fingerprint of the layered config without the keys the study sets per arm (and the data's place)."""
        values = {k: v for k, v in hparams.flatten(self.config).items() if k not in CONTROLLED_KEYS}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        """Classes of the dataset."""
        return self.resolved.model.num_classes

    @property
    def train_steps(self) -> int:
        """Training steps of every arm."""
        return self.resolved.train.train_steps

    @property
    def batch_size(self) -> int:
        """Global training batch of every arm."""
        return self.resolved.train.batch_size


def arm_config(spec: StudySpec, *, width: float, depth: float, resolution: int, seed: int) -> LayeredConfig:
    """The layered config of one arm: the spec's recipe layers, then the study's own keys on top."""
    dataset, data_dir = spec.data_settings()
    values: dict[str, Any] = {
        "model.name": spec.baseline.model_name, "model.width_coefficient": float(width),
        "model.depth_coefficient": float(depth), "model.image_size": int(resolution), "train.seed": int(seed),
        "data.dataset": dataset,
    }
    if data_dir:
        values["data.data_dir"] = data_dir
    if spec.batch_size:
        values["train.batch_size"] = int(spec.batch_size)
    if spec.steps:
        values["train.train_steps"] = int(spec.steps)
    else:
        values["train.epochs"] = float(spec.epochs)
    return app.layered_config(list(spec.hparams), values)


def study_context(spec: StudySpec) -> StudyContext:
    """Layer the baseline's config and open the data (every input error surfaces here)."""
    b = spec.baseline
    config = arm_config(spec, width=b.width, depth=b.depth, resolution=b.resolution, seed=0)
    source = app.load_source(config)
    resolved = hparams.resolve(config, num_classes=int(source.num_classes), num_train=int(source.num_train))
    if int(source.num_eval) < 2:
        raise UserError(f"dataset {config.data.dataset} has {source.num_eval} hold-out images; the study needs "
                        "a hold-out set (set data.holdout_fraction > 0)")
    return StudyContext(spec, config, resolved, source, str(config.data.dataset))


def _calibrate(ctx: StudyContext, hardware: app.Hardware, cache: str | None) -> TimeModel:
    """Time a few training steps of the baseline fed by its real input pipeline, and the set-up of an arm
    (cached in `cache`)."""
    b, counts = ctx.spec.baseline, _base_counts(ctx)
    key = {"width": b.width, "depth": b.depth, "resolution": b.resolution, "batch_size": ctx.batch_size,
           "steps": ctx.spec.timing.calibration_steps, "hparams": list(ctx.spec.hparams), "input": ctx.dataset,
           "hardware": dataclasses.asdict(hardware)}
    if cache and os.path.isfile(cache):
        with open(cache, encoding="utf-8") as handle:
            stored = json.load(handle)
        if stored.get("key") == key:
            return TimeModel(stored["source"], stored["step_seconds"], stored["overhead_seconds"], counts.madds,
                             counts.activations)
    info = app.make_strategy(hardware)
    config = app.resolve_training_config(ctx.config, info, ctx.source)
    training.set_precision(config.runtime.mixed_precision)
    size = config.model.image_size
    # The real input pipeline (decode, crop, resize, augment) shares the CPU with the step: time both.
    dataset_fn = training.inputs.train_dataset_fn(config, ctx.source)
    images = tf.zeros([1, size, size, 3])
    steps = ctx.spec.timing.calibration_steps
    with tempfile.TemporaryDirectory() as scratch:
        began = time.monotonic()
        trainer = training.Trainer(config, info, scratch, train_dataset_fn=dataset_fn)
        timed = trainer.time_steps(steps, warmup_steps=3)
        setup = time.monotonic() - began - timed
        began = time.monotonic()
        model = run_model.build_model_from_config(config)
        forward = tf.function(lambda x: model(x, training=False))
        forward(images[:1]).numpy()
        setup += time.monotonic() - began
    del trainer, model
    keras.backend.clear_session()
    step = timed / steps
    source = (f"calibrated: {steps} timed training steps of the baseline with its input pipeline on {info.describe()} "
              f"({step:.3f} s/step, {setup:.1f} s set-up per arm), scaled by the mean of the MAdds and activations "
              f"ratios to the power {TIME_EXPONENT}")
    if cache:
        write_text(cache, json.dumps({"key": key, "source": source, "step_seconds": step,
                                       "overhead_seconds": setup}, indent=2) + "\n")
    return TimeModel(source, step, setup, counts.madds, counts.activations)


def _base_counts(ctx: StudyContext) -> NetworkCounts:
    """The baseline network's counts (built once, cached by candidates)."""
    b = ctx.spec.baseline
    return candidates.count_network(b, b.width, b.depth, b.resolution, ctx.num_classes)


def _time_model(ctx: StudyContext, hardware: app.Hardware, cache: str | None) -> TimeModel:
    """Calibrated when the spec asks, otherwise from its constants."""
    timing = ctx.spec.timing
    if timing.calibrate:
        return _calibrate(ctx, hardware, cache)
    counts = _base_counts(ctx)
    source = (f"spec constants, not measured: {timing.step_seconds:g} s per baseline step, "
              f"{timing.overhead_seconds:g} s set-up per arm, scaled by the mean of the MAdds and activations "
              f"ratios to the power {TIME_EXPONENT}")
    return TimeModel(source, timing.step_seconds, timing.overhead_seconds, counts.madds, counts.activations)


class ArmMaker:
    """Builds arms from candidates: rounded coefficients, counted networks, predicted time."""

    def __init__(self, ctx: StudyContext, time_model: TimeModel):
        self.ctx, self.time_model = ctx, time_model
        self.baseline = ctx.spec.baseline
        self.base = _base_counts(ctx)

    def candidate(self, rule: scaling_rules.ScalingRule, s: float) -> candidates.Candidate:
        """The rule's built and counted network at compute multiple s."""
        return candidates.build_candidate(self.baseline, rule, s, self.ctx.num_classes)

    def match(self, cands: Sequence[candidates.Candidate], s: float,
              tolerance: float) -> candidates.FlopsMatch:
        """Candidates moved to within `tolerance` of s x the baseline's MAdds (or reported)."""
        return candidates.match_flops(cands, self.baseline, self.ctx.num_classes,
                                         target_madds=int(round(s * self.base.madds)), tolerance=tolerance)

    def arms(self, part: str, rule: scaling_rules.ScalingRule | None, cand: candidates.Candidate, seeds: int, *,
             name: str | None = None, target: int | None = None, note: str | None = None,
             pending: bool = False) -> list[Arm]:
        """One arm per seed for a candidate (trained at coefficients rounded to 4 decimals)."""
        width, depth = round(cand.width_coefficient, 4), round(cand.depth_coefficient, 4)
        counts = candidates.count_network(self.baseline, width, depth, cand.resolution, self.ctx.num_classes)
        seconds = self.time_model.arm_seconds(counts.madds, counts.activations, self.ctx.train_steps,
                                              int(self.ctx.source.num_eval), self.ctx.batch_size)
        gap = counts.madds / target - 1 if target else None
        network = dataclasses.replace(cand, rule=name or (rule.name if rule else "baseline"), s=float(cand.s),
                                      width_coefficient=width, depth_coefficient=depth, madds=counts.madds,
                                      params=counts.params, activations=counts.activations,
                                      measured_madds_ratio=counts.madds / self.base.madds)
        return [Arm(part=part, seed=seed, network=network, shares=tuple(rule.shares) if rule else None,
                    predicted_seconds=seconds, flops_gap=gap, note=note, pending=pending)
                for seed in range(seeds)]


def _search_grid(search: SearchSpec) -> list[scaling_rules.ScalingRule]:
    rules = scaling_rules.search_grid(search.step, search.tolerance)
    return [dataclasses.replace(r, name=PAPER) if r.name == "compound" else r for r in rules]


def _matched_arms(maker: ArmMaker, part: str, rules: Sequence[scaling_rules.ScalingRule], s: float, seeds: int,
                  tolerance: float, notes: list[str]) -> list[Arm]:
    cands = [maker.candidate(rule, s) for rule in rules]
    match = maker.match(cands, s, tolerance)
    arms: list[Arm] = []
    for rule, cand in zip(rules, match.candidates):
        gap = cand.madds / match.target_madds - 1
        note = None
        if abs(gap) > tolerance:
            note = f"unmatched: {gap:+.1%} from {format_multiple(s)}x the baseline's MAdds (beyond ±{tolerance:.0%})"
        elif cand.matched_from is not None:
            note = f"matched: {cand.matched_from} -> {cand.resolution} px"
        arms += maker.arms(part, rule, cand, seeds, target=match.target_madds, note=note)
    if match.unmatched:
        notes.append(f"{part}: {len(match.unmatched)} arm(s) left outside ±{tolerance:.0%} of "
                     f"{format_multiple(s)}x the baseline's MAdds ({', '.join(u.rule for u in match.unmatched)}); "
                     "reported as unmatched")
    return arms


def _build_arms(ctx: StudyContext, maker: ArmMaker) -> tuple[list[Arm], list[scaling_rules.ScalingRule], list[str]]:
    spec, notes, arms = ctx.spec, [], []
    grid: list[scaling_rules.ScalingRule] = []
    if spec.curves:
        base = maker.candidate(scaling_rules.depth_only(), 1.0)
        arms += maker.arms("curves", None, base, spec.curves.seeds)
        for rule in spec.curves.dimensions:
            for s in spec.curves.multiples:
                if s > 1:
                    arms += maker.arms("curves", rule, maker.candidate(rule, s), spec.curves.seeds)
    if spec.search:
        grid = _search_grid(spec.search)
        arms += _matched_arms(maker, "search", grid, SEARCH_MULTIPLE, spec.search.seeds,
                              scaling_rules.FLOPS_TOLERANCE, notes)
    if spec.equal_flops:
        e = spec.equal_flops
        rules = [dataclasses.replace(paper_rule(), name=SEARCHED) if r == SEARCHED else r for r in e.arms]
        arms += _matched_arms(maker, "equal_flops", rules, e.multiple, e.seeds, e.tolerance, notes)
        if SEARCHED in e.arms:
            pending = spec.search is not None
            note = ("placeholder (the paper's point) until the search has run" if pending
                    else "search not run: the paper's point")
            arms = [dataclasses.replace(a, note=join_notes(note, a.note), pending=pending) if a.rule == SEARCHED else a
                    for a in arms]
    return arms, grid, notes


def _trim_steps(arms: Sequence[Arm], grid: Sequence[scaling_rules.ScalingRule]) -> list[tuple[str, Callable]]:
    """Deterministic trimming order: curve multiples above 4, grid points farthest from the paper's, extra
    seeds, curve multiple 4, the search, the curves. The equal-FLOPs part is never dropped."""
    steps: list[tuple[str, Callable[[Arm], bool]]] = []
    multiples = sorted({a.s for a in arms if a.part == "curves"}, reverse=True)
    for m in [m for m in multiples if m > 4]:
        steps.append((f"curves multiple {format_multiple(m)}", lambda a, m=m: a.part == "curves" and a.s == m))
    paper = paper_rule().shares
    anchors = {PAPER, f"width-share-{scaling_rules.DOLLAR_WIDTH_SHARE:g}"}
    points = [g for g in grid if g.name not in anchors]
    points.sort(key=lambda g: (-sum((x - y) ** 2 for x, y in zip(g.shares, paper)), g.name))
    for g in points:
        steps.append((f"search point {g.name}", lambda a, n=g.name: a.part == "search" and a.rule == n))
    for seed in range(max((a.seed for a in arms), default=0), 0, -1):
        for part in ("search", "curves", "equal_flops"):
            steps.append((f"{part} seed {seed}", lambda a, p=part, k=seed: a.part == p and a.seed == k))
    if 4.0 in multiples:
        steps.append(("curves multiple 4", lambda a: a.part == "curves" and a.s == 4.0))
    steps.append(("the search part", lambda a: a.part == "search"))
    steps.append(("the curves part", lambda a: a.part == "curves"))
    return steps


def _trim(arms: list[Arm], grid: Sequence[scaling_rules.ScalingRule], budget_seconds: float | None,
          notes: list[str]) -> tuple[list[Arm], list[str]]:
    """Drop arms in `_trim_steps` order while the predicted time exceeds the budget; say what went."""
    if budget_seconds is None:
        return arms, []
    trimmed: list[str] = []
    for description, drop in _trim_steps(arms, grid):
        total = _total_seconds(arms)
        if total <= budget_seconds:
            break
        kept = [a for a in arms if not drop(a)]
        saved = total - _total_seconds(kept)
        if saved <= 0:  # its arms share every training with arms that stay
            continue
        trimmed.append(f"{description}: {len(arms) - len(kept)} arm(s), -{format_duration(saved)}")
        arms = kept
    if _total_seconds(arms) > budget_seconds:
        notes.append(f"still over budget after trimming everything trimmable: predicted "
                     f"{_total_seconds(arms) / 60:.1f} min for a budget of {budget_seconds / 60:.1f} min")
    if not any(a.part == "search" for a in arms):
        arms = [dataclasses.replace(a, pending=False, note="search trimmed: the paper's point") if a.pending else a
                for a in arms]
    return arms, trimmed


def make_plan(ctx: StudyContext, hardware: app.Hardware, model_dir: str | None) -> StudyPlan:
    """The plan of an opened study; a calibration is cached in <model_dir>/calibration.json."""
    cache = os.path.join(model_dir, "calibration.json") if model_dir else None
    time_model = _time_model(ctx, hardware, cache)
    maker = ArmMaker(ctx, time_model)
    arms, grid, notes = _build_arms(ctx, maker)
    budget = 60 * ctx.spec.budget_minutes if ctx.spec.budget_minutes else None
    arms, trimmed = _trim(arms, grid, budget, notes)
    return StudyPlan(ctx.spec, tuple(arms), maker.base, ctx.num_classes, int(ctx.source.num_train),
                     int(ctx.source.num_eval), ctx.train_steps, ctx.batch_size, ctx.dataset, time_model, tuple(grid),
                     ctx.recipe, tuple(trimmed), tuple(notes))


def plan_study(spec: StudySpec, *, model_dir: str | None = None, hardware: app.Hardware | None = None) -> StudyPlan:
    """Every arm with counted MAdds / params / activations (FLOPs-matched where compared), a predicted time
    per arm (calibrated or from the spec's constants) and deterministic trimming to the budget."""
    return make_plan(study_context(spec), hardware or app.Hardware(), model_dir)
