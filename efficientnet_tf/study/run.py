"""Running a study: every arm directory trained (or resumed) through `app.train` in plan order, its
hold-out scored image by image, one TensorBoard HParams session per arm, results rewritten after every
arm, and the report at the end. A rerun skips finished arm directories.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import yaml
from absl import logging
from tensorboard.plugins.hparams import api as hp

from efficientnet_tf import app, data, run_model, training
from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import RunConfig
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.study import scaling_rules
from efficientnet_tf.study.arm_results import (
    REPORT_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
    TRAIN_RESULT_FILE,
    ArmResult,
    Correctness,
    best_search_point,
    result_rows,
    save_predictions,
    write_results,
)
from efficientnet_tf.study.claims import Claim, write_report
from efficientnet_tf.study.plan import Arm, ArmMaker, StudyContext, StudyPlan, arm_config, make_plan, study_context
from efficientnet_tf.study.spec import PARTS, SEARCHED, StudySpec, default_model_dir
from efficientnet_tf.study.writing import write_text
from efficientnet_tf.training.summaries import format_duration

METRICS = (("study/top1", "hold-out top-1"), ("study/images_per_second", "training images/s"),
           ("study/latency_ms", "latency ms/image (batch 1)"))


@dataclasses.dataclass(frozen=True)
class ArmProgress:
    """Where the study is after one arm directory (trained now, or found finished)."""

    index: int  # 1-based
    total: int
    arm_dir: str
    arm_ids: tuple[str, ...]
    trained: bool
    elapsed_seconds: float
    remaining_seconds: float


def _train_arm(ctx: StudyContext, arm: Arm, directory: str, hardware: app.Hardware) -> ArmResult:
    """Train (or resume) one arm through app.train, then score the hold-out image by image."""
    config = arm_config(ctx.spec, width=arm.width_coefficient, depth=arm.depth_coefficient,
                        resolution=arm.resolution, seed=arm.seed)
    began = time.monotonic()
    outcome = app.train(config, model_dir=directory, hardware=hardware, evaluate=False)
    seconds = time.monotonic() - began
    timing_path = os.path.join(directory, TRAIN_RESULT_FILE)
    step_time = outcome.result.step_time_seconds  # over every timed step of the run, not the last log window
    if step_time:
        timing = {"images_per_second": outcome.config.train.batch_size / step_time,
                  "step_time_seconds": step_time, "train_seconds": seconds}
        write_text(timing_path, json.dumps(timing, indent=2) + "\n")
    elif os.path.isfile(timing_path):  # trained to the end by an earlier, interrupted run
        with open(timing_path, encoding="utf-8") as handle:
            timing = json.load(handle)
    else:
        timing = {"images_per_second": None, "step_time_seconds": None, "train_seconds": seconds}
    labels, predictions, latency = _predict_holdout(outcome.config, directory, ctx.source)
    save_predictions(directory, labels, predictions)
    result = ArmResult(arm.arm_dir, arm.width_coefficient, arm.depth_coefficient, arm.resolution, arm.seed,
                       outcome.config.train.train_steps, outcome.config.train.batch_size, ctx.dataset,
                       ctx.recipe, float(np.mean(labels == predictions)), int(labels.size), timing["images_per_second"],
                       timing["step_time_seconds"], latency, float(timing["train_seconds"]))
    result.save(directory)
    keras.backend.clear_session()
    return result


def _check_identity(result: ArmResult, arm: Arm, ctx: StudyContext, directory: str) -> None:
    expected = {"width_coefficient": arm.width_coefficient, "depth_coefficient": arm.depth_coefficient,
                "resolution": arm.resolution, "seed": arm.seed, "train_steps": ctx.train_steps,
                "batch_size": ctx.batch_size, "recipe": ctx.recipe}
    for key in ArmResult.IDENTITY:
        if getattr(result, key) != expected[key]:
            what = ("another recipe (the hparams changed since)" if key == "recipe"
                    else f"{key}={getattr(result, key)}, the study now asks {expected[key]}")
            raise UserError(f"{directory} holds an arm trained with {what}; use another --model_dir or the spec "
                            "it was run with")


def _hparams_names() -> list[str]:
    return ["part", "rule", "s", "seed", "d", "w", "r", "width_coefficient", "depth_coefficient", "resolution",
            "madds", "params", "activations"]


def _write_experiment(model_dir: str) -> None:
    """The HParams experiment (columns and metrics) for TensorBoard pointed at the study directory."""
    logdir = os.path.join(model_dir, "hparams")
    if os.path.isdir(logdir) and any(f.startswith("events.out") for f in os.listdir(logdir)):
        return
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp.hparams_config(hparams=[hp.HParam(name) for name in _hparams_names()],
                          metrics=[hp.Metric(tag, display_name=label) for tag, label in METRICS])
    writer.close()


def _write_arm_hparams(directory: str, arm: Arm, result: ArmResult) -> None:
    """One HParams session per arm in <arm_dir>/logs/study/<part>.<rule>.s<s> (written once)."""
    logdir = os.path.join(directory, "logs", "study", arm.role)
    if os.path.isdir(logdir):
        return
    values = {"part": arm.part, "rule": arm.rule, "s": float(arm.s), "seed": arm.seed, "d": arm.d, "w": arm.w,
              "r": arm.r, "width_coefficient": arm.width_coefficient, "depth_coefficient": arm.depth_coefficient,
              "resolution": arm.resolution, "madds": arm.madds, "params": arm.params, "activations": arm.activations}
    metrics = {"study/top1": result.top1, "study/images_per_second": result.images_per_second,
               "study/latency_ms": result.latency_ms}
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default(step=0):
        hp.hparams(values, trial_id=arm.arm_id)
        for tag, value in metrics.items():
            if value is not None:
                tf.summary.scalar(tag, float(value))
    writer.close()


def _predict_holdout(config: RunConfig, directory: str, source: data.Source) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and predicted classes of the hold-out with the arm's final weights, and batch-1 latency in ms."""
    model = run_model.build_model_from_config(config)
    run_model.restore_weights(model, RunDir(directory).checkpoint("latest"))
    size = config.model.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def classify(images: Any) -> Any:
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

    eval_fn = training.inputs.eval_dataset_fn(config, source)
    labels, predictions, first = [], [], None
    for images, batch_labels in eval_fn(tf.distribute.InputContext()):
        predictions.append(classify(images).numpy())
        labels.append(batch_labels.numpy())
        first = images[:1] if first is None else first
    if first is None:
        raise UserError(f"dataset {config.data.dataset} gave no hold-out images")
    classify(first).numpy()
    timings = []
    for _ in range(7):
        began = time.perf_counter()
        classify(first).numpy()
        timings.append(time.perf_counter() - began)
    return np.concatenate(labels), np.concatenate(predictions), 1000 * float(np.median(timings))


def _resolve_searched(plan: StudyPlan, ctx: StudyContext, maker: ArmMaker, correct: Correctness,
                      results: Mapping[str, ArmResult]) -> StudyPlan:
    """Replace the compound-searched placeholders by the search's best grid point (or the paper's, saying why)."""
    placeholders = [a for a in plan.arms if a.pending]
    if not placeholders:
        return plan
    search = [a for a in plan.arms if a.part == "search"]
    e = ctx.spec.equal_flops
    assert e is not None
    if not search or any(a.arm_dir not in results for a in search):
        note = "search not finished: the paper's point"
        arms = [dataclasses.replace(a, pending=False, note=note) if a.pending else a for a in plan.arms]
        return dataclasses.replace(plan, arms=tuple(arms))
    best, _ = best_search_point(search, correct)
    rule = next(r for r in plan.search_rules if r.name == best)
    searched = scaling_rules.compound(rule.alpha, rule.beta, rule.gamma, name=SEARCHED)
    match = maker.match([maker.candidate(searched, e.multiple)], e.multiple, e.tolerance)
    cand = match.candidates[0]
    gap = cand.madds / match.target_madds - 1
    note = (f"the search's best point {best} (alpha {rule.alpha:.3f}, beta {rule.beta:.3f}, gamma {rule.gamma:.3f}),"
            " chosen on the even-indexed half of the hold-out")
    if abs(gap) > e.tolerance:
        note += f"; unmatched: {gap:+.1%} from the target MAdds"
    new = maker.arms("equal_flops", searched, cand, e.seeds, target=match.target_madds, note=note)
    by_seed = {a.seed: a for a in new}
    arms = [by_seed[a.seed] if a.pending else a for a in plan.arms]
    return dataclasses.replace(plan, arms=tuple(arms))


@dataclasses.dataclass
class StudyOutcome:
    """A finished (or resumed and finished) study: the plan as run, its rows, claims and files."""

    plan: StudyPlan
    model_dir: str
    rows: list[dict[str, Any]]
    claims: list[Claim]
    plots: dict[str, str | None]  # file name -> path, None when not drawn
    trained: int
    skipped: int
    seconds: float

    @property
    def results_csv(self) -> str:
        """results.csv."""
        return os.path.join(self.model_dir, RESULTS_CSV)

    @property
    def results_json(self) -> str:
        """results.json."""
        return os.path.join(self.model_dir, RESULTS_JSON)

    @property
    def report_path(self) -> str:
        """report.md."""
        return os.path.join(self.model_dir, REPORT_FILE)

    def report(self) -> str:
        """The terminal summary: counts, where the files are, the claims table."""
        runs = self.plan.runs()
        drawn = [name for name, path in self.plots.items() if path]
        lines = [
            f"Scaling study {self.plan.spec.name}: {len(self.rows)} arms in {len(runs)} trainings "
            f"({self.trained} trained now, {self.skipped} already done) in {format_duration(self.seconds)}.",
            f"  results:     {self.results_csv}, {self.results_json}",
            f"  report:      {self.report_path}",
            f"  plots:       {', '.join(drawn) or 'none'} (in {self.model_dir})",
            f"  TensorBoard: tensorboard --logdir {self.model_dir}  (HParams dashboard: every arm)",
        ]
        if self.plan.trimmed:
            lines.append(f"  trimmed to the budget: {'; '.join(self.plan.trimmed)}")
        lines.append("Claims (95% paired-bootstrap intervals over hold-out images and seeds):")
        width = max(len(c.statement) for c in self.claims)
        for c in self.claims:
            lines.append(f"  ({c.key}) {c.statement.ljust(width)}  {c.interval_text()}  -> {c.verdict}")
        return "\n".join(lines)


def run_study(spec: StudySpec, *, model_dir: str | None = None, hardware: app.Hardware | None = None,
              ready: Callable[[], None] | None = None,
              progress: Callable[[ArmProgress], None] | None = None) -> StudyOutcome:
    """Plan, train every arm not yet finished (resuming unfinished ones), write results, report and plots.

    `ready` is called once the spec and data are checked (before planning's log lines); `progress`
    after every arm directory, trained or found finished.
    """
    hardware = hardware or app.Hardware()
    model_dir = model_dir or default_model_dir(spec)
    started = time.monotonic()
    ctx = study_context(spec)
    RunDir(model_dir).ensure_writable()
    if ready:
        ready()
    plan = make_plan(ctx, hardware, model_dir)
    for line in plan.describe():
        logging.info("%s", line)
    write_text(os.path.join(model_dir, "plan.json"), json.dumps(plan.to_dict(), indent=1) + "\n")
    write_text(os.path.join(model_dir, "study.yaml"), yaml.safe_dump(spec.to_dict(), sort_keys=False))
    _write_experiment(model_dir)
    arms_dir = os.path.join(model_dir, "arms")
    maker = ArmMaker(ctx, plan.time_model)
    correct = Correctness(arms_dir)
    results: dict[str, ArmResult] = {}
    trained = skipped = 0
    actual = predicted = 0.0
    done: set[str] = set()
    for part in PARTS:
        if part == "equal_flops":
            plan = _resolve_searched(plan, ctx, maker, correct, results)
        runs = plan.runs()
        for arm_dir, arms in runs.items():
            if arm_dir in done or not any(a.part == part for a in arms):
                continue
            arm, directory = arms[0], os.path.join(arms_dir, arm_dir)
            result = ArmResult.load(directory)
            index, was_trained = len(done) + 1, result is None
            if result is not None:
                _check_identity(result, arm, ctx, directory)
                skipped += 1
            else:
                logging.info("arm %d of %d (%s): training %s, predicted %s", index, len(runs), arm_dir,
                             ", ".join(a.arm_id for a in arms), format_duration(arm.predicted_seconds))
                began = time.monotonic()
                result = _train_arm(ctx, arm, directory, hardware)
                actual += time.monotonic() - began
                predicted += arm.predicted_seconds
                trained += 1
            results[arm_dir] = result
            done.add(arm_dir)
            for a in arms:
                _write_arm_hparams(directory, a, result)
            write_results(model_dir, spec.name, result_rows(plan.arms, results))
            # Time left: the plan's prediction, corrected by how far off it was for the arms trained so far.
            left = sum(a[0].predicted_seconds for d, a in runs.items() if d not in done)
            left *= actual / predicted if predicted > 0 else 1.0
            elapsed = time.monotonic() - started
            logging.info("arm %d of %d (%s) %s: hold-out top-1 %.2f%%; elapsed %s, estimated time left %s", index,
                         len(runs), arm_dir, "trained" if was_trained else "already done", 100 * result.top1,
                         format_duration(elapsed), format_duration(left))
            if progress:
                progress(ArmProgress(index, len(runs), arm_dir, tuple(a.arm_id for a in arms), was_trained,
                                     elapsed, left))
    rows = result_rows(plan.arms, results)
    write_results(model_dir, spec.name, rows)
    write_text(os.path.join(model_dir, "plan.json"), json.dumps(plan.to_dict(), indent=1) + "\n")
    claims, plots = write_report(plan, rows, model_dir, correct)
    return StudyOutcome(plan, model_dir, rows, claims, plots, trained, skipped, time.monotonic() - started)

