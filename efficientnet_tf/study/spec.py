"""The study spec: a strict YAML schema (every key checked, a misspelt one answered with the nearest valid
one), presets in hparams/studies, and the recipe layers every arm shares. Nothing here imports
TensorFlow, so a spec error reaches the command line before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from efficientnet_tf.errors import UserError
from efficientnet_tf.hparams import split_overrides, suggest_key
from efficientnet_tf.hparams.config import CONFIG_DIR
from efficientnet_tf.study import scaling_rules

PRESETS_DIR = os.path.join(CONFIG_DIR, "studies")
PROJECT_DIR = os.path.dirname(CONFIG_DIR)
PARTS = ("curves", "search", "equal_flops")  # also the training order
SEARCHED = "compound-searched"
PAPER = "compound-paper"
CONTROLLED_KEYS = ("model.name", "model.width_coefficient", "model.depth_coefficient", "model.image_size",
                   "train.seed", "train.epochs", "train.train_steps", "train.batch_size", "data.dataset",
                   "data.data_dir")


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
            "baseline": {"model": self.baseline.model, "width": self.baseline.width, "depth": self.baseline.depth,
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
    "baseline": {"model": "str", "width": "float", "depth": "float", "resolution": "int", "resolution_step": "int"},
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


def paper_rule() -> scaling_rules.ScalingRule:
    """The paper's compound rule (1.2, 1.1, 1.15), named as the study's arms and rows name it."""
    return dataclasses.replace(scaling_rules.paper_compound(), name=PAPER)


def _parse_rule(entry: Any, key: str, origin: str, *, allow_searched: bool) -> scaling_rules.ScalingRule | str:
    """A rule from a name (depth, width, resolution, compound / compound-paper, width_share) or a mapping."""
    if isinstance(entry, str):
        name = entry.strip()
        named = {"depth": scaling_rules.depth_only, "width": scaling_rules.width_only,
                 "resolution": scaling_rules.resolution_only, "compound": paper_rule, PAPER: paper_rule,
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
                                                                      scaling_rules.RESOLUTION_STEP)),
                                         model=str(base.get("model", "efficientnet-b0")))
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
            # TensorFlow's file system only for a remote spec: a local one is read before TensorFlow starts.
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

