"""The study's report: the four claims with paired-bootstrap intervals and verdicts, the figures and
report.md, all from finished arm directories (parts that did not run say so).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from efficientnet_tf.errors import UserError
from efficientnet_tf.study import plots, scaling_rules, statistics
from efficientnet_tf.study.arm_results import REPORT_FILE, Correctness, best_search_point
from efficientnet_tf.study.plan import Arm, StudyPlan
from efficientnet_tf.study.spec import PAPER, PROJECT_DIR, SEARCHED
from efficientnet_tf.study.writing import format_multiple, write_text
from efficientnet_tf.training.summaries import format_duration

BOOTSTRAP_SAMPLES = 2000
VERDICTS = ("holds", "does not hold", "inconclusive", "not run")
PLOTS = ("accuracy_vs_madds.png", "search.png", "equal_flops.png", "time_fits.png")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of the report: a statistic with its 95% interval and a verdict."""

    key: str  # a, b, c, d
    statement: str
    estimate: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = "points"
    verdict: str = "not run"
    detail: str = ""

    def interval_text(self) -> str:
        """"+1.23 [-0.40, +2.90] points", or the reason it was not run."""
        if self.estimate is None:
            return self.detail or "not run"
        if self.low is None:
            return f"{self.estimate:+.3f} {self.unit} (no interval)"
        digits = 2 if self.unit == "points" else 3
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] {self.unit}"



def _groups(arms: Iterable[Arm], part: str) -> dict[tuple[str, float], list[Arm]]:
    """(rule, s) -> the arms of one part (every seed), in plan order."""
    out: dict[tuple[str, float], list[Arm]] = {}
    for arm in arms:
        if arm.part == part:
            out.setdefault((arm.rule, arm.s), []).append(arm)
    return out


def _stacks(correct: Correctness, *groups: Sequence[Arm]) -> list[np.ndarray] | None:
    """[seeds, images] arrays of several groups over their common seeds (seed k pairs with seed k)."""
    seeds = set.intersection(*[{a.seed for a in g} for g in groups]) if groups else set()
    if not seeds:
        return None
    return [correct.stack([a for a in g if a.seed in seeds]) for g in groups]


def _accuracy(stack: np.ndarray) -> statistics.BootstrapResult:
    """Top-1 in points with its bootstrap interval over images and seeds."""
    return statistics.paired_bootstrap(stack, np.zeros_like(stack), num_samples=BOOTSTRAP_SAMPLES)


def _is_single(arm: Arm) -> bool:
    return arm.shares is not None and max(arm.shares) > 1 - 1e-9


def _not_run(key: str, statement: str, why: str) -> Claim:
    return Claim(key, statement, detail=f"not run ({why})")


def _saturation_claims(plan: StudyPlan, arms: Sequence[Arm], correct: Correctness) -> list[Claim]:
    statement = "{} saturates: gain from s=2 to 4 < gain from 1 to 2"
    curves = plan.spec.curves
    if curves is None:
        return [_not_run("a", statement.format("each single dimension"), "the curves part is off")]
    groups = _groups(arms, "curves")
    base = groups.get(("baseline", 1.0), [])
    singles = [r for r in curves.dimensions if r.kind in ("depth", "width", "resolution")]
    if not singles:
        return [_not_run("a", statement.format("each single dimension"), "no single-dimension rule in curves")]
    claims = []
    for rule in singles:
        text = statement.format(rule.name)
        g2, g4 = groups.get((rule.name, 2.0), []), groups.get((rule.name, 4.0), [])
        stacks = _stacks(correct, base, g2, g4) if base and g2 and g4 else None
        if stacks is None:
            why = "trimmed" if any("curves" in t for t in plan.trimmed) else "needs curves at s = 1, 2 and 4"
            claims.append(_not_run("a", text, why))
            continue
        result = statistics.saturation_test(*stacks, num_samples=BOOTSTRAP_SAMPLES)
        d = result.difference
        claims.append(Claim("a", text, d.estimate, d.low, d.high, "points", d.verdict,
                            f"gain 1->2: {result.first_gain:+.2f} points, 2->4: {result.second_gain:+.2f} points; "
                            "estimate = first gain - second gain"))
    return claims


def _compound_claims(plan: StudyPlan, arms: Sequence[Arm], correct: Correctness) -> list[Claim]:
    statement = "{} beats the best single dimension at equal MAdds"
    if plan.spec.equal_flops is None:
        return [_not_run("b", statement.format("compound"), "the equal-FLOPs part is off")]
    groups = {rule: g for (rule, _), g in _groups(arms, "equal_flops").items()}
    singles = {rule: g for rule, g in groups.items() if _is_single(g[0])}
    if not singles or PAPER not in groups:
        return [_not_run("b", statement.format("compound"), f"needs {PAPER} and a single-dimension arm")]
    scored = {rule: float(correct.stack(g).mean()) for rule, g in singles.items()}
    best = max(scored, key=lambda rule: (scored[rule], -list(scored).index(rule)))
    claims = []
    contenders = [PAPER] + [r for r in (SEARCHED,) if r in groups and
                            {a.arm_dir for a in groups[r]} != {a.arm_dir for a in groups[PAPER]}]
    for rule in list(contenders):
        same = [single for single, g in singles.items() if {a.arm_dir for a in g} == {a.arm_dir for a in groups[rule]}]
        if same:  # the search picked a corner of the simplex: a single dimension is no compound to compare
            contenders.remove(rule)
            claims.append(_not_run("b", statement.format(rule), f"the search chose a single dimension, the same "
                                   f"networks as the {same[0]} arm: there is no compound point to compare"))
    for rule in contenders:
        stacks = _stacks(correct, groups[rule], singles[best])
        assert stacks is not None
        result = statistics.paired_bootstrap(*stacks, num_samples=BOOTSTRAP_SAMPLES)
        tolerance = plan.spec.equal_flops.tolerance
        compared = (groups[rule][0], singles[best][0])
        gaps = ", ".join(f"{a.rule} {a.flops_gap:+.1%}" for a in compared if a.flops_gap is not None)
        off = [a.rule for a in compared if a.flops_gap is not None and abs(a.flops_gap) > tolerance]
        detail = (f"best single dimension: {best} ({100 * scored[best]:.2f}%, chosen on the same images, which "
                  f"favours it); MAdds vs target: {gaps}"
                  + (f"; UNMATCHED beyond ±{tolerance:.0%}: {', '.join(off)}" if off else ""))
        claims.append(Claim("b", statement.format(rule), result.estimate, result.low, result.high, "points",
                            result.verdict, detail))
    return claims


def _search_claims(plan: StudyPlan, arms: Sequence[Arm], correct: Correctness) -> list[Claim]:
    statement = "the search's best point beats {} (test half of the hold-out)"
    if plan.spec.search is None:
        return [_not_run("c", statement.format("the paper's point"), "the search part is off")]
    search = [a for a in arms if a.part == "search"]
    planned = {a.arm_dir for a in plan.arms if a.part == "search"}
    if not search or {a.arm_dir for a in search} != planned:
        return [_not_run("c", statement.format("the paper's point"),
                         "the search was trimmed" if not planned else "the search has not finished")]
    best, _ = best_search_point(search, correct)
    groups = {rule: g for (rule, _), g in _groups(search, "search").items()}
    shares = groups[best][0].shares or (0.0, 0.0, 0.0)
    prefix = f"{best} (log-FLOPs shares depth {shares[0]:.2f}, width {shares[1]:.2f}, resolution {shares[2]:.2f})"
    claims = []
    for anchor, label in ((PAPER, "the paper's point"),
                          (f"width-share-{scaling_rules.DOLLAR_WIDTH_SHARE:g}", "the width-share point (a = 0.8)")):
        text = statement.format(label)
        if anchor not in groups:
            claims.append(_not_run("c", text, f"{anchor} is not in the search"))
            continue
        if anchor == best:
            claims.append(Claim("c", text, 0.0, 0.0, 0.0, "points", "does not hold",
                                f"the search prefers {prefix}: the anchor itself"))
            continue
        stacks = _stacks(correct, groups[best], groups[anchor])
        assert stacks is not None
        result = statistics.paired_bootstrap(stacks[0][:, 1::2], stacks[1][:, 1::2], num_samples=BOOTSTRAP_SAMPLES)
        claims.append(Claim("c", text, result.estimate, result.low, result.high, "points", result.verdict,
                            f"the search prefers {prefix}, chosen on the even-indexed half of the hold-out and "
                            "tested on the odd-indexed half"))
    return claims


def _networks(arms: Sequence[Arm], results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Distinct trained networks with their mean measured step time over seeds."""
    nets: dict[tuple, dict[str, Any]] = {}
    for arm in arms:
        row = results.get(arm.arm_dir)
        if not row or row.get("step_time_seconds") is None:
            continue
        key = (arm.width_coefficient, arm.depth_coefficient, arm.resolution)
        net = nets.setdefault(key, {"madds": arm.madds, "activations": arm.activations, "times": {},
                                    "name": f"{arm.rule}@{format_multiple(arm.s)}"})
        net["times"][arm.arm_dir] = float(row["step_time_seconds"])
    return [{**n, "step_time": float(np.mean(list(n["times"].values())))} for n in nets.values()]


def _time_claim(nets: Sequence[Mapping[str, Any]]) -> tuple[Claim, statistics.TimeFit | None]:
    statement = "activations predict training step time better than MAdds (R² activations - R² MAdds)"
    if len(nets) < 3:
        return _not_run("d", statement, f"needs measured step times of >= 3 networks, has {len(nets)}"), None
    times = np.array([n["step_time"] for n in nets])
    madds = np.array([n["madds"] for n in nets], np.float64)
    acts = np.array([n["activations"] for n in nets], np.float64)
    try:
        fit = statistics.fit_time(times, madds, acts)
    except UserError as error:
        return _not_run("d", statement, str(error)), None
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, len(nets), len(nets))
        try:
            sample = statistics.fit_time(times[pick], madds[pick], acts[pick])
        except UserError:  # a resample of too few distinct networks
            continue
        diffs.append(sample.activations.r2 - sample.madds.r2)
    estimate = fit.activations.r2 - fit.madds.r2
    detail = (f"R² of step time on MAdds {fit.madds.r2:.3f}, on activations {fit.activations.r2:.3f} over "
              f"{len(nets)} networks (better: {fit.better}); interval: bootstrap over networks")
    if len(diffs) < 100:
        return Claim("d", statement, estimate, None, None, "R²", "inconclusive", detail), fit
    low, high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    return Claim("d", statement, estimate, low, high, "R²", statistics.verdict((low, high)), detail), fit


def _draw_figures(plan: StudyPlan, arms: Sequence[Arm], correct: Correctness, nets: Sequence[Mapping[str, Any]],
           fit: statistics.TimeFit | None, model_dir: str) -> dict[str, str | None]:
    paths: dict[str, str | None] = dict.fromkeys(PLOTS)
    curves = _groups(arms, "curves")
    if curves:
        series: dict[str, dict[str, list[float]]] = {}
        base = curves.get(("baseline", 1.0))
        rules = list(dict.fromkeys(rule for rule, _ in curves if rule != "baseline"))
        for rule in rules:
            points = ([base] if base else []) + [g for (r, _), g in sorted(curves.items(), key=lambda kv: kv[0][1])
                                                 if r == rule]
            data: dict[str, list[float]] = {"madds": [], "accuracy": [], "low": [], "high": []}
            for group in points:
                acc = _accuracy(correct.stack(group))
                data["madds"].append(float(group[0].madds))
                data["accuracy"].append(acc.estimate)
                data["low"].append(acc.low)
                data["high"].append(acc.high)
            series[rule] = data
        if series:
            paths["accuracy_vs_madds.png"] = os.fspath(plots.plot_accuracy_vs_madds(
                series, os.path.join(model_dir, "accuracy_vs_madds.png"), compound=PAPER,
                title=f"{plan.spec.name}: hold-out top-1 vs multiply-adds"))
    search = _groups(arms, "search")
    if search:
        points = [{"share_depth": g[0].shares[0], "share_width": g[0].shares[1], "share_resolution": g[0].shares[2],
                   "accuracy": 100 * float(correct.stack(g).mean())} for g in search.values() if g[0].shares]
        paths["search.png"] = os.fspath(plots.plot_search_grid(points, os.path.join(model_dir, "search.png"),
                                                                     metric="accuracy"))
    equal = _groups(arms, "equal_flops")
    if equal:
        bars = {}
        for (rule, _), group in equal.items():
            acc = _accuracy(correct.stack(group))
            bars[rule] = (acc.estimate, acc.low, acc.high)
        paths["equal_flops.png"] = os.fspath(plots.plot_equal_flops_bars(
            bars, os.path.join(model_dir, "equal_flops.png"),
            title=f"Arms at {format_multiple(plan.spec.equal_flops.multiple)}x the baseline's MAdds"))
    if fit is not None:
        paths["time_fits.png"] = os.fspath(plots.plot_time_fits(
            [n["step_time"] for n in nets], [n["madds"] for n in nets], [n["activations"] for n in nets],
            os.path.join(model_dir, "time_fits.png"), names=[n["name"] for n in nets]))
    for name, path in paths.items():
        stale = os.path.join(model_dir, name)
        if path is None and os.path.exists(stale):
            os.remove(stale)
    return paths


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _report_text(plan: StudyPlan, rows: Sequence[Mapping[str, Any]], claims: Sequence[Claim],
                 figures: Mapping[str, str | None]) -> str:
    spec, b, counts = plan.spec, plan.spec.baseline, plan.baseline_counts
    done = [r for r in rows if r["status"] == "done"]
    measured = sum({r["arm_dir"]: r["train_seconds"] or 0.0 for r in done}.values())
    runs = plan.runs()
    length = (f"{spec.steps} steps" if spec.steps else
              f"{spec.epochs:g} epoch{'' if spec.epochs == 1 else 's'} ({plan.train_steps} steps)")
    recipe = ", ".join(f"`{os.path.relpath(h, PROJECT_DIR) if os.path.isabs(h) else h}`" for h in spec.hparams)
    lines = [
        f"# Scaling study `{spec.name}`",
        "",
        f"Dataset `{plan.dataset}`: {plan.num_classes} classes, {plan.num_train} training images, {plan.num_eval} "
        f"hold-out images scored image by image. Every arm trains {length} of {plan.batch_size} images with the "
        f"recipe {recipe or '(defaults)'}.",
        f"Baseline: {'EfficientNet-B0' if b.title == 'B0' else b.title} blocks at width {b.width:g}, "
        f"depth {b.depth:g}, {b.resolution} px "
        f"({counts.madds / 1e6:.2f} M MAdds, {counts.params / 1e6:.3f} M parameters, "
        f"{counts.activations / 1e3:.1f} k activations per image).",
        f"{len(rows)} arms in {len(runs)} trainings, {len(done)} arms done. Predicted training time "
        f"{format_duration(plan.predicted_seconds)} ({plan.time_model.source}); measured (sum of the arms' "
        f"app.train calls) {format_duration(measured)}.",
        "",
        "Trimmed to fit the budget: " + ("; ".join(plan.trimmed) if plan.trimmed else "nothing") + ".",
    ]
    lines += [f"Note: {n}." for n in plan.notes]
    lines += [
        "",
        "## Claims",
        "",
        "Estimates and 95% intervals in points of hold-out top-1 accuracy (R² for (d)), from a paired bootstrap "
        f"over hold-out images and seeds ({BOOTSTRAP_SAMPLES} samples; seed k of one arm pairs with seed k of "
        "another). Verdict: *holds* when the interval lies above 0, *does not hold* below 0, *inconclusive* "
        "when it covers 0.",
        "",
        "| | claim | estimate [95% interval] | verdict |",
        "|---|---|---|---|",
    ]
    lines += [f"| ({c.key}) | {c.statement} | {c.interval_text()} | {c.verdict} |" for c in claims]
    lines += ["", "Details:", ""]
    lines += [f"- ({c.key}) {c.statement}: {c.detail}" for c in claims if c.detail and c.estimate is not None]
    equal = [r for r in rows if r["part"] in ("equal_flops", "search") and r["seed"] == 0]
    if equal:
        lines += ["", "## FLOPs matching", "",
                  "Arms compared at equal cost are moved in 8 px steps of resolution towards s x the baseline's "
                  "MAdds; those that cannot get within the tolerance are marked.", "",
                  "| arm | d | w | r | px | MAdds (M) | vs target | note |", "|---|---|---|---|---|---|---|---|"]
        for r in equal:
            lines.append(f"| {r['part']}/{r['rule']} s={format_multiple(r['s'])} | {r['d']:.3f} | {r['w']:.3f} | "
                         f"{r['r']:.3f} | {r['resolution']} | {r['madds'] / 1e6:.3f} | "
                         f"{_fmt(r['flops_gap'], '+.1%')} | {r['note'] or ''} |")
    lines += ["", "## Arms", "",
              "| arm | arm_dir | MAdds (M) | params (M) | activations (k) | top-1 % | train img/s | latency ms |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        top1 = None if r["top1"] is None else 100 * r["top1"]
        lines.append(f"| {r['arm_id']} | {r['arm_dir']} | {r['madds'] / 1e6:.3f} | {r['params'] / 1e6:.3f} | "
                     f"{r['activations'] / 1e3:.1f} | {_fmt(top1)} | {_fmt(r['images_per_second'], '.1f')} | "
                     f"{_fmt(r['latency_ms'])} |")
    lines += ["", "## Figures", ""]
    for name, path in figures.items():
        lines.append(f"![{name}]({name})" if path else f"- {name}: not drawn (its part did not run or has too few "
                                                       "arms)")
    lines += ["", "Every arm's hparams and metrics are in TensorBoard's HParams dashboard: "
              "`tensorboard --logdir <this directory>`."]
    return "\n".join(lines) + "\n"


def write_report(plan: StudyPlan, rows: Sequence[Mapping[str, Any]], model_dir: str,
                 correct: Correctness | None = None) -> tuple[list[Claim], dict[str, str | None]]:
    """The four claims from the finished arms, the figures and report.md; parts that did not run say so."""
    correct = correct or Correctness(os.path.join(model_dir, "arms"))
    finished = {r["arm_dir"].split("/", 1)[1]: r for r in rows if r["status"] == "done"}
    arms = [a for a in plan.arms if a.arm_dir in finished]
    nets = _networks(arms, finished)
    time_claim, fit = _time_claim(nets)
    claims = (_saturation_claims(plan, arms, correct) + _compound_claims(plan, arms, correct)
              + _search_claims(plan, arms, correct) + [time_claim])
    figures = _draw_figures(plan, arms, correct, nets, fit, model_dir)
    write_text(os.path.join(model_dir, REPORT_FILE), _report_text(plan, rows, claims, figures))
    return claims, figures
