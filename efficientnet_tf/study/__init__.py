"""The compound-scaling study: a strict YAML spec, a plan of counted arms with a predicted time, every arm
trained through `app.train`, per-image hold-out correctness, results files, TensorBoard HParams, and a
report of the four claims with paired-bootstrap intervals.

    from efficientnet_tf import study
    spec = study.load_spec("smoke")                    # hparams/studies/smoke.yaml, or a YAML path
    plan = study.plan_study(spec)                      # arms, counted MAdds, predicted time, trimming
    outcome = study.run_study(spec, model_dir="runs/scaling-smoke")
    print(outcome.report())

Modules: `spec` (the YAML schema and presets), `scaling_rules` (rules as data, the φ=1 grid),
`candidates` (rules built and counted, FLOPs matching), `plan` (arms, time model, trimming),
`arm_results` (arm results, predictions, results.csv / .json), `run` (training every arm, resuming),
`claims` (the claims, figures and report.md), `statistics` (paired bootstrap, time fits), `plots` (the
PNG figures) and `writing` (how multiples and notes read; atomic file writes).

A study directory holds:
    study.yaml, plan.json       the spec as read and the plan as run (after trimming)
    calibration.json            the timed calibration the time prediction used (when calibrated)
    arms/<arm_dir>/             one training run (app.train's run directory) per distinct network
                                and seed, plus arm_result.json, train_result.json, predictions.npz
                                and logs/study/<part>.<rule>.s<s>: one HParams session per arm
    results.csv, results.json   one row per arm, rewritten after every trained arm
    report.md, *.png            the claims and the figures
    hparams/                    the HParams experiment (TensorBoard --logdir <study dir>)

Arms of different parts that build the same network with the same seed share one training: their
rows point to the same arm directory. Nothing here parses flags or prints; progress goes to absl
logging.

The spec's names are imported here; the planning, running and reporting names are loaded on first
use, so that the command line checks a spec before TensorFlow starts.
"""

from __future__ import annotations

import importlib
from typing import Any

from efficientnet_tf.study.spec import (
    CONTROLLED_KEYS, PAPER, PARTS, PRESETS_DIR, PROJECT_DIR, SEARCHED, CurvesSpec, EqualFlopsSpec, SearchSpec,
    StudySpec, TimingSpec, default_model_dir, load_spec, paper_rule, parse_spec, presets, study_path,
)

_LAZY = {
    "efficientnet_tf.study.plan": ("Arm", "StudyPlan", "TimeModel", "arm_config", "plan_study", "SEARCH_MULTIPLE",
                                   "TIME_EXPONENT", "EVAL_STEP_FRACTION"),
    "efficientnet_tf.study.arm_results": ("ArmResult", "save_predictions", "load_predictions", "write_results",
                                      "RESULT_COLUMNS", "ARM_RESULT_FILE", "TRAIN_RESULT_FILE", "PREDICTIONS_FILE",
                                      "RESULTS_CSV", "RESULTS_JSON", "REPORT_FILE"),
    "efficientnet_tf.study.run": ("ArmProgress", "StudyOutcome", "run_study", "METRICS"),
    "efficientnet_tf.study.claims": ("Claim", "write_report", "VERDICTS", "PLOTS", "BOOTSTRAP_SAMPLES"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted([
    "CONTROLLED_KEYS", "PAPER", "PARTS", "PRESETS_DIR", "PROJECT_DIR", "SEARCHED", "CurvesSpec", "EqualFlopsSpec",
    "SearchSpec", "StudySpec", "TimingSpec", "default_model_dir", "load_spec", "paper_rule", "parse_spec",
    "presets", "study_path", *_MODULE_OF,
])


def __getattr__(name: str) -> Any:
    """A planning, running or reporting name, imported on first use and kept."""
    try:
        module = _MODULE_OF[name]
    except KeyError:
        raise AttributeError(f"module 'efficientnet_tf.study' has no attribute {name!r}") from None
    globals()[name] = value = getattr(importlib.import_module(module), name)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
