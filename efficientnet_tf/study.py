"""The compound-scaling study (issue 11): a strict YAML spec, a plan of counted arms with a predicted
time, every arm trained through `app.train`, per-image hold-out correctness, results files, TensorBoard
HParams, and a report of the four claims with paired-bootstrap intervals.

    from efficientnet_tf import study
    spec = study.load_spec("smoke")                    # hparams/studies/smoke.yaml, or a YAML path
    plan = study.plan_study(spec)                      # arms, counted MAdds, predicted time, trimming
    outcome = study.run_study(spec, model_dir="runs/scaling-smoke")
    print(outcome.report())

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
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import yaml
from absl import logging

from efficientnet_tf import scaling_rules, study_stats
from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import suggest_key
from efficientnet_tf.hparams.config import CONFIG_DIR

PRESETS_DIR = os.path.join(CONFIG_DIR, "studies")
PROJECT_DIR = os.path.dirname(CONFIG_DIR)
PARTS = ("curves", "search", "equal_flops")  # also the training order
SEARCHED = "compound-searched"
PAPER = "compound-paper"
SEARCH_MULTIPLE = 2.0  # the φ = 1 grid doubles the baseline's FLOPs
# On a CPU small models are overhead-bound: this project's benchmark trains B0 at 106, 40 and 13.4
# img/s at 64, 128 and 224 px, i.e. 12x the MAdds for 8x the time; cost^0.85 reproduces that.
TIME_EXPONENT = 0.85
EVAL_STEP_FRACTION = 1 / 3  # a forward pass costs about a third of a training step
BOOTSTRAP_SAMPLES = 2000
CONTROLLED_KEYS = ("model.name", "model.width_coefficient", "model.depth_coefficient", "model.image_size",
                   "train.seed", "train.epochs", "train.train_steps", "train.batch_size", "data.dataset",
                   "data.data_dir")
VERDICTS = ("holds", "does not hold", "inconclusive", "not run")

ARM_RESULT_FILE = "arm_result.json"
TRAIN_RESULT_FILE = "train_result.json"
PREDICTIONS_FILE = "predictions.npz"
RESULTS_CSV, RESULTS_JSON, REPORT_FILE = "results.csv", "results.json", "report.md"
PLOTS = ("accuracy_vs_madds.png", "search.png", "equal_flops.png", "time_fits.png")
METRICS = (("study/top1", "hold-out top-1"), ("study/images_per_second", "training images/s"),
           ("study/latency_ms", "latency ms/image (batch 1)"))

RESULT_COLUMNS = (
    "arm_id", "part", "rule", "s", "seed", "arm_dir", "status", "d", "w", "r", "width_coefficient",
    "depth_coefficient", "resolution", "share_depth", "share_width", "share_resolution", "madds", "params",
    "activations", "predicted_madds_ratio", "measured_madds_ratio", "flops_gap", "matched_from", "flag",
    "predicted_seconds", "top1", "examples", "images_per_second", "step_time_seconds", "latency_ms",
    "train_seconds", "note",
)


# ------------------------------------------------------------------------------------------------
# The spec


@dataclasses.dataclass(frozen=True)
class TimingSpec:
    """How the time per arm is predicted: a timed calibration on the baseline, or these constants."""

    calibrate: bool = True
    calibration_steps: int = 5
    step_seconds: float = 0.1  # one baseline training step, when not calibrated
    overhead_seconds: float = 20.0  # per arm: build, trace, data set-up, the hold-out pass


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    """The φ = 1 grid search at s = 2: grid step over log-FLOPs shares, α·β²·γ² tolerance, seeds."""

    step: float = 0.25
    tolerance: float = scaling_rules.GRID_TOLERANCE
    seeds: int = 1


@dataclasses.dataclass(frozen=True)
class CurvesSpec:
    """Accuracy against MAdds along each rule at compute multiples (1 is the shared baseline)."""

    dimensions: tuple[scaling_rules.ScalingRule, ...]
    multiples: tuple[float, ...] = (1.0, 2.0, 4.0)
    seeds: int = 1


@dataclasses.dataclass(frozen=True)
class EqualFlopsSpec:
    """Rules compared at one compute multiple, every arm moved to within `tolerance` of s x baseline MAdds."""

    multiple: float
    arms: tuple[scaling_rules.ScalingRule | str, ...]  # SEARCHED stands for the search's best point
    seeds: int = 1
    tolerance: float = scaling_rules.FLOPS_TOLERANCE


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A scaling study: data, recipe, baseline, budget and the parts to run."""

    name: str
    origin: str  # where it was read from, for messages
    dataset: str = "imagenette_mini"
    data_dir: str | None = None
    hparams: tuple[str, ...] = ()  # YAML recipe files (resolved paths) and dotted overrides, for every arm
    epochs: float | None = None
    steps: int | None = None
    batch_size: int | None = None
    baseline: scaling_rules.Baseline = scaling_rules.Baseline()
    seeds: int = 1
    budget_minutes: float | None = None
    timing: TimingSpec = TimingSpec()
    search: SearchSpec | None = None
    curves: CurvesSpec | None = None
    equal_flops: EqualFlopsSpec | None = None

    def data_settings(self) -> tuple[str, str | None]:
        """(data.dataset, data.data_dir) for every arm; `dataset: folder` takes its path from data_dir."""
        if self.dataset == "folder":
            if not self.data_dir:
                raise UserError(f"study {self.name} reads photos from a folder: give --data_dir=<folder with one "
                                "sub-folder per class, e.g. an extracted imagenette2-224sq/train> "
                                "or data_dir: in the spec")
            return f"folder:{self.data_dir}", None
        return self.dataset, self.data_dir

    def with_overrides(self, *, data_dir: str | None = None, dataset: str | None = None,
                       hparams: Sequence[str] = ()) -> StudySpec:
        """The spec with a data directory, a dataset and extra --hparams items (applied to every arm) set."""
        extra = _check_hparams(list(hparams), "--hparams", os.getcwd())
        return dataclasses.replace(self, data_dir=data_dir or self.data_dir, dataset=dataset or self.dataset,
                                   hparams=self.hparams + tuple(extra))

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (what study.yaml records)."""
        def rule(entry: Any) -> Any:
            return entry if isinstance(entry, str) else entry.to_dict()

        out: dict[str, Any] = {
            "name": self.name, "dataset": self.dataset, "data_dir": self.data_dir, "hparams": list(self.hparams),
            "epochs": self.epochs, "steps": self.steps, "batch_size": self.batch_size,
            "baseline": {"width": self.baseline.width, "depth": self.baseline.depth,
                         "resolution": self.baseline.resolution, "resolution_step": self.baseline.resolution_step},
            "seeds": self.seeds, "budget_minutes": self.budget_minutes, "timing": dataclasses.asdict(self.timing),
            "search": dataclasses.asdict(self.search) if self.search else None,
            "curves": None, "equal_flops": None,
        }
        if self.curves:
            out["curves"] = {"dimensions": [rule(r) for r in self.curves.dimensions],
                             "multiples": list(self.curves.multiples), "seeds": self.curves.seeds}
        if self.equal_flops:
            e = self.equal_flops
            out["equal_flops"] = {"multiple": e.multiple, "arms": [rule(r) for r in e.arms], "seeds": e.seeds,
                                  "tolerance": e.tolerance}
        return out


_SCHEMA: dict[str, Any] = {
    "name": "str", "dataset": "str", "data_dir": "str?", "hparams": "list", "epochs": "float?", "steps": "int?",
    "batch_size": "int?", "seeds": "int", "budget_minutes": "float?",
    "baseline": {"width": "float", "depth": "float", "resolution": "int", "resolution_step": "int"},
    "timing": {"calibrate": "bool", "calibration_steps": "int", "step_seconds": "float",
               "overhead_seconds": "float"},
    "search": {"step": "float", "tolerance": "float", "seeds": "int?"},
    "curves": {"dimensions": "list", "multiples": "list", "seeds": "int?"},
    "equal_flops": {"multiple": "float", "arms": "list", "seeds": "int?", "tolerance": "float"},
}
_TYPE_WORDS = {"str": "a string", "float": "a number", "int": "an integer", "bool": "true or false", "list": "a list"}


def _valid_keys() -> list[str]:
    return [f"{k}.{sub}" if isinstance(v, dict) else k for k, v in _SCHEMA.items()
            for sub in (v if isinstance(v, dict) else [None])]


def _unknown(key: str, origin: str) -> UserError:
    suggestion = suggest_key(key, _valid_keys())
    hint = f"; did you mean {suggestion}?" if suggestion else f"; valid keys: {', '.join(_SCHEMA)}"
    return UserError(f"unknown study key {key!r} in {origin}{hint}")


def _typed(value: Any, kind: str, key: str, origin: str) -> Any:
    """`value` checked against a schema type ("int?" allows null); ints become floats where numbers go."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise UserError(f"study key {key!r} in {origin} needs {_TYPE_WORDS[kind]}, got null")
    ok = {"str": isinstance(value, str) and value.strip() != "",
          "float": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "int": (isinstance(value, int) and not isinstance(value, bool))
          or (isinstance(value, float) and value.is_integer()),
          "bool": isinstance(value, bool), "list": isinstance(value, list)}[kind]
    if not ok:
        raise UserError(f"study key {key!r} in {origin} needs {_TYPE_WORDS[kind]}, got {value!r}")
    return float(value) if kind == "float" else int(value) if kind == "int" else value


def _section(values: Any, name: str, origin: str, *, part: bool) -> dict[str, Any] | None:
    """A checked sub-mapping; for a part, null / false mean off and true means on with defaults."""
    if values is None or values is False:
        return None if part else {}
    if values is True and part:
        return {}
    if not isinstance(values, Mapping):
        raise UserError(f"study key {name!r} in {origin} needs a mapping of {', '.join(_SCHEMA[name])}, "
                        f"got {values!r}")
    out = {}
    for key, value in values.items():
        if key not in _SCHEMA[name]:
            raise _unknown(f"{name}.{key}", origin)
        out[key] = _typed(value, _SCHEMA[name][key], f"{name}.{key}", origin)
    return out


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _positive_int(value: int, key: str, origin: str) -> int:
    if value < 1:
        raise UserError(f"study key {key!r} in {origin} must be >= 1, got {value}")
    return value


_RULE_NAMES = ("depth", "width", "resolution", "compound", PAPER, "width_share", SEARCHED)


def _paper() -> scaling_rules.ScalingRule:
    return dataclasses.replace(scaling_rules.paper_compound(), name=PAPER)


def _parse_rule(entry: Any, key: str, origin: str, *, allow_searched: bool) -> scaling_rules.ScalingRule | str:
    """A rule from a name (depth, width, resolution, compound / compound-paper, width_share) or a mapping."""
    if isinstance(entry, str):
        name = entry.strip()
        named = {"depth": scaling_rules.depth_only, "width": scaling_rules.width_only,
                 "resolution": scaling_rules.resolution_only, "compound": _paper, PAPER: _paper,
                 "width_share": scaling_rules.width_share, "width-share": scaling_rules.width_share}
        if name in named:
            return named[name]()
        if name == SEARCHED and allow_searched:
            return SEARCHED
        valid = [n for n in _RULE_NAMES if allow_searched or n != SEARCHED]
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; valid: {', '.join(valid)} or a mapping with kind:"
        raise UserError(f"unknown rule {name!r} in {key} of {origin}{hint}")
    if isinstance(entry, Mapping):
        rule = scaling_rules.rule_from_dict(entry)
        if rule.kind == "compound" and abs(rule.base / 2 - 1) > scaling_rules.GRID_TOLERANCE:
            raise UserError(f"compound rule {rule.name!r} in {key} of {origin} has alpha·beta²·gamma² = "
                            f"{rule.base:.3f}, not within {scaling_rules.GRID_TOLERANCE:.0%} of 2 (phi = 1 must "
                            "double the FLOPs)")
        return rule
    raise UserError(f"{key} in {origin} lists {entry!r}; give a rule name or a mapping with kind:")


def _rules(entries: list, key: str, origin: str, *, allow_searched: bool) -> tuple[Any, ...]:
    """The rules of a list, with distinct names."""
    if not entries:
        raise UserError(f"study key {key!r} in {origin} needs at least one rule")
    rules = tuple(_parse_rule(e, key, origin, allow_searched=allow_searched) for e in entries)
    names = [r if isinstance(r, str) else r.name for r in rules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{key} in {origin} names rule {twice[0]!r} twice; give custom rules distinct name:s")
    return rules


def _find_hparams_file(path: str, spec_dir: str) -> str | None:
    """A recipe file as given, beside the spec, or under the project (so `hparams/x.yaml` works anywhere)."""
    if "://" in path:
        return path
    for candidate in (path, os.path.join(spec_dir, path), os.path.join(PROJECT_DIR, path)):
        if os.path.isfile(candidate):
            return os.path.abspath(candidate)
    return None


def _check_hparams(items: list, origin: str, spec_dir: str) -> list[str]:
    """Recipe files (resolved to paths) and dotted overrides; the study's own keys may not be overridden."""
    from efficientnet_tf.hparams import split_overrides

    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UserError(f"hparams in {origin} lists {item!r}; give YAML files or section.key=value strings")
        for part in split_overrides([item]):
            if "=" in part:
                key = part.partition("=")[0].strip()
                if key in CONTROLLED_KEYS:
                    raise UserError(f"{key} is set by the study for every arm (hparams {part!r} in {origin}); "
                                    "use the spec's dataset, data_dir, epochs, steps, batch_size or baseline")
                out.append(part)
                continue
            found = _find_hparams_file(part, spec_dir)
            if found is None:
                raise UserError(f"hparams file {part} (in {origin}) does not exist")
            out.append(found)
    return out


def parse_spec(values: Any, origin: str = "<spec>", *, default_name: str = "study",
               spec_dir: str | None = None) -> StudySpec:
    """A StudySpec from parsed YAML, strictly: unknown keys and impossible settings are one-line UserErrors."""
    if not isinstance(values, Mapping):
        raise UserError(f"study spec {origin} must be a mapping of keys (name:, dataset:, curves:, ...), "
                        f"got {type(values).__name__}")
    for key in values:
        if key not in _SCHEMA:
            raise _unknown(str(key), origin)
    top = {k: _typed(v, _SCHEMA[k], k, origin) for k, v in values.items() if not isinstance(_SCHEMA[k], dict)}
    name = str(top.get("name") or default_name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"study name {name!r} in {origin} may use only letters, digits, '.', '_' and '-'")
    seeds = _positive_int(top.get("seeds", 1), "seeds", origin)
    epochs, steps = top.get("epochs"), top.get("steps")
    if epochs is not None and steps is not None:
        raise UserError(f"study spec {origin} sets both epochs and steps; keep one")
    if epochs is not None and epochs <= 0:
        raise UserError(f"study key 'epochs' in {origin} must be > 0, got {epochs}")
    if steps is not None:
        _positive_int(steps, "steps", origin)
    if epochs is None and steps is None:
        epochs = 1.0
    if top.get("batch_size") is not None:
        _positive_int(top["batch_size"], "batch_size", origin)
    budget = top.get("budget_minutes")
    if budget is not None and budget <= 0:
        raise UserError(f"study key 'budget_minutes' in {origin} must be > 0 (or null for no budget), got {budget}")

    base = _section(values.get("baseline"), "baseline", origin, part=False)
    baseline = scaling_rules.Baseline.b0(resolution=int(base.get("resolution", 224)),
                                         width=float(base.get("width", 1.0)), depth=float(base.get("depth", 1.0)),
                                         resolution_step=int(base.get("resolution_step",
                                                                      scaling_rules.RESOLUTION_STEP)))
    t = _section(values.get("timing"), "timing", origin, part=False)
    timing = TimingSpec(**t)
    _positive_int(timing.calibration_steps, "timing.calibration_steps", origin)
    if timing.step_seconds <= 0 or timing.overhead_seconds < 0:
        raise UserError(f"timing.step_seconds must be > 0 and timing.overhead_seconds >= 0 in {origin}")

    search = curves = equal = None
    s = _section(values.get("search"), "search", origin, part=True)
    if s is not None:
        search = SearchSpec(step=s.get("step", 0.25), tolerance=s.get("tolerance", scaling_rules.GRID_TOLERANCE),
                            seeds=_positive_int(_or(s.get("seeds"), seeds), "search.seeds", origin))
        try:
            scaling_rules.search_grid(search.step, search.tolerance)
        except UserError as error:
            raise UserError(f"search in {origin}: {error}") from None
    c = _section(values.get("curves"), "curves", origin, part=True)
    if c is not None:
        dims = _rules(c.get("dimensions", ["depth", "width", "resolution", "compound"]), "curves.dimensions",
                      origin, allow_searched=False)
        multiples = []
        for m in c.get("multiples", [1, 2, 4]):
            m = _typed(m, "float", "curves.multiples", origin)
            if m < 1:
                raise UserError(f"curves.multiples in {origin} lists {m:g}: a compute multiple s must be >= 1")
            multiples.append(m)
        multiples = sorted(set(multiples) | {1.0})
        if len(multiples) < 2:
            raise UserError(f"curves.multiples in {origin} needs a multiple above 1 (1 is the baseline)")
        curves = CurvesSpec(dims, tuple(multiples), _positive_int(_or(c.get("seeds"), seeds), "curves.seeds", origin))
    e = _section(values.get("equal_flops"), "equal_flops", origin, part=True)
    if e is not None:
        multiple = e.get("multiple", 4.0)
        if multiple <= 1:
            raise UserError(f"equal_flops.multiple in {origin} must be > 1 (s = 1 is the baseline), got {multiple:g}")
        tolerance = e.get("tolerance", scaling_rules.FLOPS_TOLERANCE)
        if not 0 < tolerance < 1:
            raise UserError(f"equal_flops.tolerance in {origin} must be in (0, 1), got {tolerance:g}")
        arms = _rules(e.get("arms", ["depth", "width", "resolution", PAPER, SEARCHED, "width_share"]),
                      "equal_flops.arms", origin, allow_searched=True)
        equal = EqualFlopsSpec(multiple, arms, _positive_int(_or(e.get("seeds"), seeds), "equal_flops.seeds", origin),
                               tolerance)
    if search is None and curves is None and equal is None:
        raise UserError(f"study spec {origin} enables no part; add search:, curves: or equal_flops:")
    hparams = _check_hparams(top.get("hparams") or [], origin, spec_dir or os.getcwd())
    return StudySpec(name=name, origin=origin, dataset=str(top.get("dataset", "imagenette_mini")).strip(),
                     data_dir=top.get("data_dir"), hparams=tuple(hparams), epochs=epochs, steps=steps,
                     batch_size=top.get("batch_size"), baseline=baseline, seeds=seeds, budget_minutes=budget,
                     timing=timing, search=search, curves=curves, equal_flops=equal)


def presets() -> list[str]:
    """Names of the study presets in hparams/studies."""
    if not os.path.isdir(PRESETS_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(PRESETS_DIR) if f.endswith(".yaml"))


def study_path(study: str) -> str:
    """The YAML file of a preset name (hparams/studies/<name>.yaml) or of a path."""
    if study.endswith((".yaml", ".yml")) or os.sep in study or "/" in study:
        if "://" not in study and not os.path.isfile(study):
            raise UserError(f"study file {study} does not exist; give a preset ({', '.join(presets())}) "
                            "or a study YAML file")
        return study
    path = os.path.join(PRESETS_DIR, f"{study}.yaml")
    if not os.path.isfile(path):
        raise UserError(f"unknown study preset {study!r}; presets: {', '.join(presets())}, or a path to a .yaml file")
    return path


def load_spec(study: str, *, data_dir: str | None = None, dataset: str | None = None,
              hparams: Sequence[str] = ()) -> StudySpec:
    """Read a study spec (preset name or YAML path) and apply command-line overrides."""
    path = study_path(study)
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path) as handle:
                text = handle.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"study file {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}") \
            from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read study file {path}: {getattr(error, 'strerror', None) or error}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = parse_spec(values, path, default_name=stem, spec_dir=os.path.dirname(os.path.abspath(path)))
    return spec.with_overrides(data_dir=data_dir, dataset=dataset, hparams=hparams)


def default_model_dir(spec: StudySpec) -> str:
    """runs/scaling-<study name>."""
    return os.path.join("runs", f"scaling-{spec.name}")


# ------------------------------------------------------------------------------------------------
# Arms and the plan


def _fmt_s(s: float) -> str:
    return f"{s:g}"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of the study: a part, a seed and the counted network it trains (a Candidate named after the
    arm's rule, at the coefficients the training uses); the network's fields read as the arm's own."""

    part: str
    seed: int
    network: scaling_rules.Candidate
    shares: tuple[float, float, float] | None  # log-FLOPs shares of depth, width, resolution
    predicted_seconds: float  # of its training run (shared by arms with the same arm_dir)
    flops_gap: float | None = None  # matched parts: MAdds over the target, minus one
    note: str | None = None
    pending: bool = False  # the compound-searched placeholder until the search has run

    def __getattr__(self, name: str) -> Any:
        # rule, s, d, w, r, width/depth coefficients, resolution, madds, params, activations, ratios, flag ...
        if name == "network":
            raise AttributeError(name)
        return getattr(self.network, name)

    @property
    def arm_id(self) -> str:
        """part/rule/s<s>/seed<k>."""
        return f"{self.part}/{self.rule}/s{_fmt_s(self.s)}/seed{self.seed}"

    @property
    def role(self) -> str:
        """part.rule.s<s>: the arm without its seed."""
        return f"{self.part}.{self.rule}.s{_fmt_s(self.s)}"

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
    baseline_counts: scaling_rules.NetworkCounts
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
        from efficientnet_tf.training.summaries import format_duration

        b, counts = self.spec.baseline, self.baseline_counts
        runs = self.runs()
        budget = f"budget {format_duration(60 * self.spec.budget_minutes)}" if self.spec.budget_minutes else "no budget"
        lines = [
            f"Study {self.spec.name}: {len(self.arms)} arms ({', '.join(self.parts())}) in {len(runs)} trainings "
            f"on {self.dataset} ({self.num_classes} classes, {self.num_train} training / {self.num_eval} hold-out "
            f"images), {self.train_steps} steps of {self.batch_size} images per arm",
            f"Baseline: B0 blocks at width {b.width:g}, depth {b.depth:g}, {b.resolution} px "
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
class _Context:
    """What planning and running share: the spec, the data and the resolved baseline config."""

    spec: StudySpec
    config: Any  # layered config of the baseline arm (unresolved)
    resolved: Any  # the same, resolved against the data
    source: Any
    dataset: str

    @property
    def recipe(self) -> str:
        """Fingerprint of the layered config without the keys the study sets per arm (and the data's place)."""
        import hashlib

        from efficientnet_tf.hparams import flatten

        values = {k: v for k, v in flatten(self.config).items() if k not in CONTROLLED_KEYS}
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def num_classes(self) -> int:
        """Classes of the dataset."""
        return int(self.resolved.model.num_classes)

    @property
    def train_steps(self) -> int:
        """Training steps of every arm."""
        return int(self.resolved.train.train_steps)

    @property
    def batch_size(self) -> int:
        """Global training batch of every arm."""
        return int(self.resolved.train.batch_size)


def arm_config(spec: StudySpec, *, width: float, depth: float, resolution: int, seed: int) -> Any:
    """The layered config of one arm: the spec's recipe layers, then the study's own keys on top."""
    from efficientnet_tf import app

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


def _context(spec: StudySpec) -> _Context:
    """Layer the baseline's config and open the data (every input error surfaces here)."""
    from efficientnet_tf import app, hparams

    b = spec.baseline
    config = arm_config(spec, width=b.width, depth=b.depth, resolution=b.resolution, seed=0)
    source = app.load_source(config)
    resolved = hparams.resolve(config, num_classes=int(source.num_classes), num_train=int(source.num_train))
    if int(source.num_eval) < 2:
        raise UserError(f"dataset {config.data.dataset} has {source.num_eval} hold-out images; the study needs "
                        "a hold-out set (set data.holdout_fraction > 0)")
    return _Context(spec, config, resolved, source, str(config.data.dataset))


def _calibrate(ctx: _Context, hardware: Any, cache: str | None) -> TimeModel:
    """Time a few training steps of the baseline fed by its real input pipeline, and the set-up of an arm
    (cached in `cache`)."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import app, model_io, training

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
    info = app.make_strategy(ctx.config, hardware)
    config = app.resolve_training_config(ctx.config, info, ctx.source)
    size = int(config.model.image_size)
    # The real input pipeline (decode, crop, resize, augment) shares the CPU with the step: time both.
    dataset_fn, _ = app.dataset_functions(config, ctx.source)
    images = tf.zeros([1, size, size, 3])
    steps = ctx.spec.timing.calibration_steps
    with tempfile.TemporaryDirectory() as scratch:
        began = time.monotonic()
        trainer = training.Trainer(config, info, scratch, train_dataset_fn=dataset_fn)
        timed = trainer.time_steps(steps, warmup_steps=3)
        setup = time.monotonic() - began - timed
        began = time.monotonic()
        model = model_io.build_model_from_config(config)
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
        _write_text(cache, json.dumps({"key": key, "source": source, "step_seconds": step,
                                       "overhead_seconds": setup}, indent=2) + "\n")
    return TimeModel(source, step, setup, counts.madds, counts.activations)


def _base_counts(ctx: _Context) -> scaling_rules.NetworkCounts:
    """The baseline network's counts (built once, cached by scaling_rules)."""
    b = ctx.spec.baseline
    return scaling_rules.count_network(b, b.width, b.depth, b.resolution, ctx.num_classes)


def _time_model(ctx: _Context, hardware: Any, cache: str | None) -> TimeModel:
    """Calibrated when the spec asks, otherwise from its constants."""
    timing = ctx.spec.timing
    if timing.calibrate:
        return _calibrate(ctx, hardware, cache)
    counts = _base_counts(ctx)
    source = (f"spec constants, not measured: {timing.step_seconds:g} s per baseline step, "
              f"{timing.overhead_seconds:g} s set-up per arm, scaled by the mean of the MAdds and activations "
              f"ratios to the power {TIME_EXPONENT}")
    return TimeModel(source, timing.step_seconds, timing.overhead_seconds, counts.madds, counts.activations)


class _ArmMaker:
    """Builds arms from candidates: rounded coefficients, counted networks, predicted time."""

    def __init__(self, ctx: _Context, time_model: TimeModel):
        self.ctx, self.time_model = ctx, time_model
        self.baseline = ctx.spec.baseline
        self.base = _base_counts(ctx)

    def candidate(self, rule: scaling_rules.ScalingRule, s: float) -> scaling_rules.Candidate:
        """The rule's built and counted network at compute multiple s."""
        return scaling_rules.build_candidate(self.baseline, rule, s, self.ctx.num_classes)

    def match(self, candidates: Sequence[scaling_rules.Candidate], s: float,
              tolerance: float) -> scaling_rules.FlopsMatch:
        """Candidates moved to within `tolerance` of s x the baseline's MAdds (or reported)."""
        return scaling_rules.match_flops(candidates, self.baseline, self.ctx.num_classes,
                                         target_madds=int(round(s * self.base.madds)), tolerance=tolerance)

    def arms(self, part: str, rule: scaling_rules.ScalingRule | None, cand: scaling_rules.Candidate, seeds: int, *,
             name: str | None = None, target: int | None = None, note: str | None = None,
             pending: bool = False) -> list[Arm]:
        """One arm per seed for a candidate (trained at coefficients rounded to 4 decimals)."""
        width, depth = round(cand.width_coefficient, 4), round(cand.depth_coefficient, 4)
        counts = scaling_rules.count_network(self.baseline, width, depth, cand.resolution, self.ctx.num_classes)
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


def _matched_arms(maker: _ArmMaker, part: str, rules: Sequence[scaling_rules.ScalingRule], s: float, seeds: int,
                  tolerance: float, notes: list[str]) -> list[Arm]:
    cands = [maker.candidate(rule, s) for rule in rules]
    match = maker.match(cands, s, tolerance)
    arms: list[Arm] = []
    for rule, cand in zip(rules, match.candidates):
        gap = cand.madds / match.target_madds - 1
        note = None
        if abs(gap) > tolerance:
            note = f"unmatched: {gap:+.1%} from {_fmt_s(s)}x the baseline's MAdds (beyond ±{tolerance:.0%})"
        elif cand.matched_from is not None:
            note = f"matched: {cand.matched_from} -> {cand.resolution} px"
        arms += maker.arms(part, rule, cand, seeds, target=match.target_madds, note=note)
    if match.unmatched:
        notes.append(f"{part}: {len(match.unmatched)} arm(s) left outside ±{tolerance:.0%} of {_fmt_s(s)}x the "
                     f"baseline's MAdds ({', '.join(u.rule for u in match.unmatched)}); reported as unmatched")
    return arms


def _build_arms(ctx: _Context, maker: _ArmMaker) -> tuple[list[Arm], list[scaling_rules.ScalingRule], list[str]]:
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
        rules = [dataclasses.replace(_paper(), name=SEARCHED) if r == SEARCHED else r for r in e.arms]
        arms += _matched_arms(maker, "equal_flops", rules, e.multiple, e.seeds, e.tolerance, notes)
        if SEARCHED in e.arms:
            pending = spec.search is not None
            note = ("placeholder (the paper's point) until the search has run" if pending
                    else "search not run: the paper's point")
            arms = [dataclasses.replace(a, note=_join(note, a.note), pending=pending) if a.rule == SEARCHED else a
                    for a in arms]
    return arms, grid, notes


def _join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None


def _trim_steps(arms: Sequence[Arm], grid: Sequence[scaling_rules.ScalingRule]) -> list[tuple[str, Callable]]:
    """Deterministic trimming order: curve multiples above 4, grid points farthest from the paper's, extra
    seeds, curve multiple 4, the search, the curves. The equal-FLOPs part is never dropped."""
    steps: list[tuple[str, Callable[[Arm], bool]]] = []
    multiples = sorted({a.s for a in arms if a.part == "curves"}, reverse=True)
    for m in [m for m in multiples if m > 4]:
        steps.append((f"curves multiple {_fmt_s(m)}", lambda a, m=m: a.part == "curves" and a.s == m))
    paper = _paper().shares
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
    from efficientnet_tf.training.summaries import format_duration

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


def _plan(ctx: _Context, hardware: Any, model_dir: str | None) -> StudyPlan:
    cache = os.path.join(model_dir, "calibration.json") if model_dir else None
    time_model = _time_model(ctx, hardware, cache)
    maker = _ArmMaker(ctx, time_model)
    arms, grid, notes = _build_arms(ctx, maker)
    budget = 60 * ctx.spec.budget_minutes if ctx.spec.budget_minutes else None
    arms, trimmed = _trim(arms, grid, budget, notes)
    return StudyPlan(ctx.spec, tuple(arms), maker.base, ctx.num_classes, int(ctx.source.num_train),
                     int(ctx.source.num_eval), ctx.train_steps, ctx.batch_size, ctx.dataset, time_model, tuple(grid),
                     ctx.recipe, tuple(trimmed), tuple(notes))


def plan_study(spec: StudySpec, *, model_dir: str | None = None, hardware: Any = None) -> StudyPlan:
    """Every arm with counted MAdds / params / activations (FLOPs-matched where compared), a predicted time
    per arm (calibrated or from the spec's constants) and deterministic trimming to the budget."""
    from efficientnet_tf import app

    return _plan(_context(spec), hardware or app.Hardware(), model_dir)


# ------------------------------------------------------------------------------------------------
# Arm results


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """What one trained arm directory measured (arm_result.json); its presence marks the arm finished."""

    arm_dir: str
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    seed: int
    train_steps: int
    batch_size: int
    dataset: str
    recipe: str
    top1: float
    examples: int
    images_per_second: float | None
    step_time_seconds: float | None
    latency_ms: float | None
    train_seconds: float

    IDENTITY = ("width_coefficient", "depth_coefficient", "resolution", "seed", "train_steps", "batch_size",
                "recipe")

    def save(self, directory: str) -> str:
        """Write arm_result.json into an arm directory (atomically)."""
        path = os.path.join(directory, ARM_RESULT_FILE)
        _write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str) -> ArmResult | None:
        """The arm's result, or None when it has not finished."""
        path = os.path.join(directory, ARM_RESULT_FILE)
        if not os.path.isfile(path) or not os.path.isfile(os.path.join(directory, PREDICTIONS_FILE)):
            return None
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        try:
            return cls(**values)
        except TypeError:
            raise UserError(f"{path} is not an arm result written by this version; delete it to redo the arm") \
                from None


def save_predictions(directory: str, labels: np.ndarray, predictions: np.ndarray) -> str:
    """Write predictions.npz: hold-out labels and predicted classes, in hold-out order."""
    path = os.path.join(directory, PREDICTIONS_FILE)
    buffer = io.BytesIO()
    np.savez(buffer, labels=np.asarray(labels, np.int32), predictions=np.asarray(predictions, np.int32))
    _write_bytes(path, buffer.getvalue())
    return path


def load_predictions(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of an arm directory."""
    with np.load(os.path.join(directory, PREDICTIONS_FILE)) as data:
        return data["labels"], data["predictions"]


def _write_bytes(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _predict_holdout(config: Any, directory: str, source: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and predicted classes of the hold-out with the arm's final weights, and batch-1 latency in ms."""
    import tensorflow as tf

    from efficientnet_tf import app, model_io
    from efficientnet_tf.rundir import RunDir

    model = model_io.build_model_from_config(config)
    model_io.restore_weights(model, RunDir(directory).checkpoint("latest"))
    size = int(config.model.image_size)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def classify(images: Any) -> Any:
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

    _, eval_fn = app.dataset_functions(config, source)
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


# ------------------------------------------------------------------------------------------------
# Running


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


def _train_arm(ctx: _Context, arm: Arm, directory: str, hardware: Any) -> ArmResult:
    """Train (or resume) one arm through app.train, then score the hold-out image by image."""
    import keras

    from efficientnet_tf import app

    config = arm_config(ctx.spec, width=arm.width_coefficient, depth=arm.depth_coefficient,
                        resolution=arm.resolution, seed=arm.seed)
    began = time.monotonic()
    outcome = app.train(config, model_dir=directory, hardware=hardware, evaluate=False)
    seconds = time.monotonic() - began
    timing_path = os.path.join(directory, TRAIN_RESULT_FILE)
    step_time = outcome.result.step_time_seconds  # over every timed step of the run, not the last log window
    if step_time:
        timing = {"images_per_second": int(outcome.config.train.batch_size) / step_time,
                  "step_time_seconds": step_time, "train_seconds": seconds}
        _write_text(timing_path, json.dumps(timing, indent=2) + "\n")
    elif os.path.isfile(timing_path):  # trained to the end by an earlier, interrupted run
        with open(timing_path, encoding="utf-8") as handle:
            timing = json.load(handle)
    else:
        timing = {"images_per_second": None, "step_time_seconds": None, "train_seconds": seconds}
    labels, predictions, latency = _predict_holdout(outcome.config, directory, ctx.source)
    save_predictions(directory, labels, predictions)
    result = ArmResult(arm.arm_dir, arm.width_coefficient, arm.depth_coefficient, arm.resolution, arm.seed,
                       int(outcome.config.train.train_steps), int(outcome.config.train.batch_size), ctx.dataset,
                       ctx.recipe, float(np.mean(labels == predictions)), int(labels.size), timing["images_per_second"],
                       timing["step_time_seconds"], latency, float(timing["train_seconds"]))
    result.save(directory)
    keras.backend.clear_session()
    return result


def _check_identity(result: ArmResult, arm: Arm, ctx: _Context, directory: str) -> None:
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
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

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
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

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


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _rows(arms: Sequence[Arm], results: Mapping[str, ArmResult]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        result = results.get(arm.arm_dir)
        shares = arm.shares or (None, None, None)
        row = {
            "arm_id": arm.arm_id, "part": arm.part, "rule": arm.rule, "s": arm.s, "seed": arm.seed,
            "arm_dir": f"arms/{arm.arm_dir}", "status": "done" if result else "pending", "d": arm.d, "w": arm.w,
            "r": arm.r, "width_coefficient": arm.width_coefficient, "depth_coefficient": arm.depth_coefficient,
            "resolution": arm.resolution, "share_depth": shares[0], "share_width": shares[1],
            "share_resolution": shares[2], "madds": arm.madds, "params": arm.params, "activations": arm.activations,
            "predicted_madds_ratio": arm.predicted_madds_ratio, "measured_madds_ratio": arm.measured_madds_ratio,
            "flops_gap": arm.flops_gap, "matched_from": arm.matched_from, "flag": arm.flag,
            "predicted_seconds": arm.predicted_seconds,
        }
        for key in ("top1", "examples", "images_per_second", "step_time_seconds", "latency_ms", "train_seconds"):
            row[key] = getattr(result, key) if result else None
        row["note"] = arm.note
        rows.append(row)
    return rows


def write_results(model_dir: str, study_name: str, rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """results.csv and results.json: one row per arm, in plan order."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow([_csv_value(row[c]) for c in RESULT_COLUMNS])
    csv_path, json_path = os.path.join(model_dir, RESULTS_CSV), os.path.join(model_dir, RESULTS_JSON)
    _write_text(csv_path, text.getvalue())
    document = {"study": study_name, "columns": list(RESULT_COLUMNS),
                "rows": [{c: row[c] for c in RESULT_COLUMNS} for row in rows]}
    _write_text(json_path, json.dumps(document, indent=1) + "\n")
    return csv_path, json_path


class _Correctness:
    """Per-image correctness of finished arm directories, loaded once and checked for one shared hold-out."""

    def __init__(self, arms_dir: str):
        self.arms_dir = arms_dir
        self._cache: dict[str, np.ndarray] = {}
        self._labels: tuple[str, np.ndarray] | None = None

    def __call__(self, arm_dir: str) -> np.ndarray:
        if arm_dir not in self._cache:
            labels, predictions = load_predictions(os.path.join(self.arms_dir, arm_dir))
            if self._labels is None:
                self._labels = (arm_dir, labels)
            elif not np.array_equal(self._labels[1], labels):
                raise UserError(f"arms {self._labels[0]} and {arm_dir} were scored on different hold-out images; "
                                "the data changed during the study")
            self._cache[arm_dir] = (labels == predictions).astype(np.int8)
        return self._cache[arm_dir]

    def stack(self, arms: Sequence[Arm]) -> np.ndarray:
        """[seeds, images] for one rule's arms (sorted by seed)."""
        return np.stack([self(a.arm_dir) for a in sorted(arms, key=lambda a: a.seed)])


def _resolve_searched(plan: StudyPlan, ctx: _Context, maker: _ArmMaker, correct: _Correctness,
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
    best, _ = _best_search_point(search, correct)
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


def _best_search_point(search: Sequence[Arm], correct: _Correctness) -> tuple[str, dict[str, float]]:
    """The grid point with the highest mean top-1 on the selection half (even-indexed images); ties: grid order."""
    scores: dict[str, float] = {}
    for rule in dict.fromkeys(a.rule for a in search):
        stacked = correct.stack([a for a in search if a.rule == rule])
        scores[rule] = float(stacked[:, 0::2].mean())
    best = max(scores, key=lambda name: (scores[name], -list(scores).index(name)))
    return best, scores


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
        from efficientnet_tf.training.summaries import format_duration

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


def run_study(spec: StudySpec, *, model_dir: str | None = None, hardware: Any = None,
              ready: Callable[[], None] | None = None,
              progress: Callable[[ArmProgress], None] | None = None) -> StudyOutcome:
    """Plan, train every arm not yet finished (resuming unfinished ones), write results, report and plots.

    `ready` is called once the spec and data are checked (before planning's log lines); `progress`
    after every arm directory, trained or found finished.
    """
    from efficientnet_tf import app
    from efficientnet_tf.rundir import RunDir
    from efficientnet_tf.training.summaries import format_duration

    hardware = hardware or app.Hardware()
    model_dir = model_dir or default_model_dir(spec)
    started = time.monotonic()
    ctx = _context(spec)
    RunDir(model_dir).ensure_writable()
    if ready:
        ready()
    plan = _plan(ctx, hardware, model_dir)
    for line in plan.describe():
        logging.info("%s", line)
    _write_text(os.path.join(model_dir, "plan.json"), json.dumps(plan.to_dict(), indent=1) + "\n")
    _write_text(os.path.join(model_dir, "study.yaml"), yaml.safe_dump(spec.to_dict(), sort_keys=False))
    _write_experiment(model_dir)
    arms_dir = os.path.join(model_dir, "arms")
    maker = _ArmMaker(ctx, plan.time_model)
    correct = _Correctness(arms_dir)
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
            write_results(model_dir, spec.name, _rows(plan.arms, results))
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
    rows = _rows(plan.arms, results)
    write_results(model_dir, spec.name, rows)
    _write_text(os.path.join(model_dir, "plan.json"), json.dumps(plan.to_dict(), indent=1) + "\n")
    claims, plots = write_report(plan, rows, model_dir, correct)
    return StudyOutcome(plan, model_dir, rows, claims, plots, trained, skipped, time.monotonic() - started)



# ------------------------------------------------------------------------------------------------
# Statistics, figures and the report


def _groups(arms: Iterable[Arm], part: str) -> dict[tuple[str, float], list[Arm]]:
    """(rule, s) -> the arms of one part (every seed), in plan order."""
    out: dict[tuple[str, float], list[Arm]] = {}
    for arm in arms:
        if arm.part == part:
            out.setdefault((arm.rule, arm.s), []).append(arm)
    return out


def _stacks(correct: _Correctness, *groups: Sequence[Arm]) -> list[np.ndarray] | None:
    """[seeds, images] arrays of several groups over their common seeds (seed k pairs with seed k)."""
    seeds = set.intersection(*[{a.seed for a in g} for g in groups]) if groups else set()
    if not seeds:
        return None
    return [correct.stack([a for a in g if a.seed in seeds]) for g in groups]


def _accuracy(stack: np.ndarray) -> study_stats.BootstrapResult:
    """Top-1 in points with its bootstrap interval over images and seeds."""
    return study_stats.paired_bootstrap(stack, np.zeros_like(stack), num_samples=BOOTSTRAP_SAMPLES)


def _is_single(arm: Arm) -> bool:
    return arm.shares is not None and max(arm.shares) > 1 - 1e-9


def _not_run(key: str, statement: str, why: str) -> Claim:
    return Claim(key, statement, detail=f"not run ({why})")


def _saturation_claims(plan: StudyPlan, arms: Sequence[Arm], correct: _Correctness) -> list[Claim]:
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
        result = study_stats.saturation_test(*stacks, num_samples=BOOTSTRAP_SAMPLES)
        d = result.difference
        claims.append(Claim("a", text, d.estimate, d.low, d.high, "points", d.verdict,
                            f"gain 1->2: {result.first_gain:+.2f} points, 2->4: {result.second_gain:+.2f} points; "
                            "estimate = first gain - second gain"))
    return claims


def _compound_claims(plan: StudyPlan, arms: Sequence[Arm], correct: _Correctness) -> list[Claim]:
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
        result = study_stats.paired_bootstrap(*stacks, num_samples=BOOTSTRAP_SAMPLES)
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


def _search_claims(plan: StudyPlan, arms: Sequence[Arm], correct: _Correctness) -> list[Claim]:
    statement = "the search's best point beats {} (test half of the hold-out)"
    if plan.spec.search is None:
        return [_not_run("c", statement.format("the paper's point"), "the search part is off")]
    search = [a for a in arms if a.part == "search"]
    planned = {a.arm_dir for a in plan.arms if a.part == "search"}
    if not search or {a.arm_dir for a in search} != planned:
        return [_not_run("c", statement.format("the paper's point"),
                         "the search was trimmed" if not planned else "the search has not finished")]
    best, _ = _best_search_point(search, correct)
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
        result = study_stats.paired_bootstrap(stacks[0][:, 1::2], stacks[1][:, 1::2], num_samples=BOOTSTRAP_SAMPLES)
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
                                    "name": f"{arm.rule}@{_fmt_s(arm.s)}"})
        net["times"][arm.arm_dir] = float(row["step_time_seconds"])
    return [{**n, "step_time": float(np.mean(list(n["times"].values())))} for n in nets.values()]


def _time_claim(nets: Sequence[Mapping[str, Any]]) -> tuple[Claim, study_stats.TimeFit | None]:
    statement = "activations predict training step time better than MAdds (R² activations - R² MAdds)"
    if len(nets) < 3:
        return _not_run("d", statement, f"needs measured step times of >= 3 networks, has {len(nets)}"), None
    times = np.array([n["step_time"] for n in nets])
    madds = np.array([n["madds"] for n in nets], np.float64)
    acts = np.array([n["activations"] for n in nets], np.float64)
    try:
        fit = study_stats.fit_time(times, madds, acts)
    except UserError as error:
        return _not_run("d", statement, str(error)), None
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(BOOTSTRAP_SAMPLES):
        pick = rng.integers(0, len(nets), len(nets))
        try:
            sample = study_stats.fit_time(times[pick], madds[pick], acts[pick])
        except UserError:  # a resample of too few distinct networks
            continue
        diffs.append(sample.activations.r2 - sample.madds.r2)
    estimate = fit.activations.r2 - fit.madds.r2
    detail = (f"R² of step time on MAdds {fit.madds.r2:.3f}, on activations {fit.activations.r2:.3f} over "
              f"{len(nets)} networks (better: {fit.better}); interval: bootstrap over networks")
    if len(diffs) < 100:
        return Claim("d", statement, estimate, None, None, "R²", "inconclusive", detail), fit
    low, high = (float(x) for x in np.percentile(diffs, [2.5, 97.5]))
    return Claim("d", statement, estimate, low, high, "R²", study_stats.verdict((low, high)), detail), fit


def _plots(plan: StudyPlan, arms: Sequence[Arm], correct: _Correctness, nets: Sequence[Mapping[str, Any]],
           fit: study_stats.TimeFit | None, model_dir: str) -> dict[str, str | None]:
    from efficientnet_tf import study_plots

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
            paths["accuracy_vs_madds.png"] = os.fspath(study_plots.plot_accuracy_vs_madds(
                series, os.path.join(model_dir, "accuracy_vs_madds.png"), compound=PAPER,
                title=f"{plan.spec.name}: hold-out top-1 vs multiply-adds"))
    search = _groups(arms, "search")
    if search:
        points = [{"share_depth": g[0].shares[0], "share_width": g[0].shares[1], "share_resolution": g[0].shares[2],
                   "accuracy": 100 * float(correct.stack(g).mean())} for g in search.values() if g[0].shares]
        paths["search.png"] = os.fspath(study_plots.plot_search_grid(points, os.path.join(model_dir, "search.png"),
                                                                     metric="accuracy"))
    equal = _groups(arms, "equal_flops")
    if equal:
        bars = {}
        for (rule, _), group in equal.items():
            acc = _accuracy(correct.stack(group))
            bars[rule] = (acc.estimate, acc.low, acc.high)
        paths["equal_flops.png"] = os.fspath(study_plots.plot_equal_flops_bars(
            bars, os.path.join(model_dir, "equal_flops.png"),
            title=f"Arms at {_fmt_s(plan.spec.equal_flops.multiple)}x the baseline's MAdds"))
    if fit is not None:
        paths["time_fits.png"] = os.fspath(study_plots.plot_time_fits(
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
                 plots: Mapping[str, str | None]) -> str:
    from efficientnet_tf.training.summaries import format_duration

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
        f"Baseline: EfficientNet-B0 blocks at width {b.width:g}, depth {b.depth:g}, {b.resolution} px "
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
            lines.append(f"| {r['part']}/{r['rule']} s={_fmt_s(r['s'])} | {r['d']:.3f} | {r['w']:.3f} | "
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
    for name, path in plots.items():
        lines.append(f"![{name}]({name})" if path else f"- {name}: not drawn (its part did not run or has too few "
                                                       "arms)")
    lines += ["", "Every arm's hparams and metrics are in TensorBoard's HParams dashboard: "
              "`tensorboard --logdir <this directory>`."]
    return "\n".join(lines) + "\n"


def write_report(plan: StudyPlan, rows: Sequence[Mapping[str, Any]], model_dir: str,
                 correct: _Correctness | None = None) -> tuple[list[Claim], dict[str, str | None]]:
    """The four claims from the finished arms, the figures and report.md; parts that did not run say so."""
    correct = correct or _Correctness(os.path.join(model_dir, "arms"))
    finished = {r["arm_dir"].split("/", 1)[1]: r for r in rows if r["status"] == "done"}
    arms = [a for a in plan.arms if a.arm_dir in finished]
    nets = _networks(arms, finished)
    time_claim, fit = _time_claim(nets)
    claims = (_saturation_claims(plan, arms, correct) + _compound_claims(plan, arms, correct)
              + _search_claims(plan, arms, correct) + [time_claim])
    plots = _plots(plan, arms, correct, nets, fit, model_dir)
    _write_text(os.path.join(model_dir, REPORT_FILE), _report_text(plan, rows, claims, plots))
    return claims, plots
