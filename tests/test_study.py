"""The scaling-study driver: strict specs, plans (FLOPs matching, the grid, trimming), a resumable run,
the report's claims and figures, and the command line's one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import yaml

from efficientnet_tf import app, hparams, study
from efficientnet_tf.errors import UserError
from efficientnet_tf.study import scaling_rules

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = {"dataset": "synthetic", "steps": 2, "batch_size": 16,
        "baseline": {"width": 0.25, "depth": 0.25, "resolution": 32},
        "hparams": ["hparams/imagenette.yaml", "train.log_every_steps=1", "train.image_summary=false"],
        "timing": {"calibrate": False, "step_seconds": 0.05, "overhead_seconds": 15}}


def _write_spec(tmp_path: pathlib.Path, values: dict, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def _one_line_error(values: dict, tmp_path: pathlib.Path, *fragments: str) -> str:
    with pytest.raises(UserError) as caught:
        study.load_spec(_write_spec(tmp_path, values))
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------------------------------
# The spec


def test_presets_parse() -> None:
    assert {"smoke", "cpu", "gpu"} <= set(study.presets())
    for name in study.presets():
        spec = study.load_spec(name)
        assert spec.name == name and (spec.search or spec.curves or spec.equal_flops)
        assert all(os.path.isfile(h) for h in spec.hparams if "=" not in h)
    cpu = study.load_spec("cpu")
    assert cpu.baseline.width == 0.5 and cpu.baseline.resolution == 80 and cpu.budget_minutes == 55
    with pytest.raises(UserError, match="--data_dir"):
        cpu.data_settings()
    assert study.load_spec("cpu", data_dir="/photos/train").data_settings() == ("folder:/photos/train", None)
    gpu = study.load_spec("gpu")
    assert max(gpu.curves.multiples) == 16 and gpu.seeds == 3


def test_unknown_keys_are_one_line_errors_with_a_suggestion(tmp_path: pathlib.Path) -> None:
    _one_line_error({**TINY, "curves": {"multiple": [1, 2]}}, tmp_path, "'curves.multiple'", "curves.multiples")
    _one_line_error({**TINY, "seed": 2, "curves": {}}, tmp_path, "'seed'", "did you mean seeds?")
    _one_line_error({**TINY, "equal_flops": {"arms": ["widht"]}}, tmp_path, "'widht'", "did you mean width?")


IMPOSSIBLE = [
    ({"equal_flops": {"arms": [{"name": "mine", "kind": "compound", "alpha": 1.5, "beta": 1.2, "gamma": 1.2}]}},
     "not within 5% of 2"),
    ({"equal_flops": {"multiple": 0.5}}, "must be > 1"),
    ({"curves": {"multiples": [0.5, 2]}}, "must be >= 1"),
    ({}, "enables no part"),
    ({"seeds": 0, "curves": {}}, "must be >= 1"),
    ({"curves": {"seeds": 0}}, "'curves.seeds'"),
    ({"epochs": 2, "curves": {}}, "both epochs and steps"),
    ({"search": {"step": 0.3}}, "must divide 1"),
    ({"hparams": ["train.seed=3"], "curves": {}}, "set by the study"),
    ({"baseline": {"resolution": 30}, "curves": {}}, "multiple of 8"),
    ({"baseline": {"resolution": 81, "resolution_step": 2}, "curves": {}}, "multiple of 2"),
    ({"baseline": {"resolution": 80, "resolution_step": 0}, "curves": {}}, "resolution_step"),
    ({"budget_minutes": 0, "curves": {}}, "budget_minutes"),
]


def test_impossible_settings_are_one_line_errors(tmp_path: pathlib.Path) -> None:
    for change, fragment in IMPOSSIBLE:
        _one_line_error({**TINY, **change}, tmp_path, fragment)


# ------------------------------------------------------------------------------------------------
# The plan (the smoke preset: 14 arms, 7 trainings at 32 px)


@pytest.fixture(scope="module")
def smoke_plan() -> study.StudyPlan:
    return study.plan_study(study.load_spec("smoke"))


def test_equal_flops_arms_are_matched_or_reported(smoke_plan: study.StudyPlan) -> None:
    target = 2 * smoke_plan.baseline_counts.madds
    compared = [a for a in smoke_plan.arms if a.part in ("equal_flops", "search")]
    assert {a.rule for a in compared if a.part == "equal_flops"} == {
        "depth", "width", "resolution", "compound-paper", "compound-searched", "width-share-0.8"}
    matched = 0
    for arm in compared:
        assert arm.flops_gap == pytest.approx(arm.madds / target - 1)
        if abs(arm.flops_gap) <= scaling_rules.FLOPS_TOLERANCE:
            matched += 1
        else:
            assert "unmatched" in arm.note
            assert any(arm.rule in note for note in smoke_plan.notes)
    assert matched >= 2  # the resolution arm moves from 48 to 40 px (+2.2%)
    searched = [a for a in smoke_plan.arms if a.rule == "compound-searched"]
    assert searched and all(a.pending for a in searched)


def test_grid_points_satisfy_the_constraint(smoke_plan: study.StudyPlan) -> None:
    rules = {r.name: r for r in smoke_plan.search_rules}
    assert {"compound-paper", "width-share-0.8"} <= set(rules) and len(rules) == 5
    for arm in (a for a in smoke_plan.arms if a.part == "search"):
        rule = rules[arm.rule]
        assert min(rule.alpha, rule.beta, rule.gamma) >= 1
        assert abs(rule.alpha * rule.beta**2 * rule.gamma**2 / 2 - 1) <= 0.05
        assert sum(arm.shares) == pytest.approx(1.0) and arm.s == 2.0
    assert len({a.arm_id for a in smoke_plan.arms}) == len(smoke_plan.arms) == 14
    assert len(smoke_plan.runs()) == 7


def test_a_tiny_budget_trims_deterministically(smoke_plan: study.StudyPlan) -> None:
    spec = study.load_spec("smoke")
    tight = dataclasses.replace(spec, budget_minutes=0.1)
    first, second = study.plan_study(tight), study.plan_study(tight)
    assert first.trimmed == second.trimmed and first.arms == second.arms
    assert [t.split(":")[0] for t in first.trimmed] == ["curves multiple 4", "the curves part"]
    assert first.predicted_seconds < smoke_plan.predicted_seconds
    assert {a.part for a in first.arms} == {"search", "equal_flops"}  # equal-FLOPs arms are never dropped
    assert any("still over budget" in note for note in first.notes)
    assert "Trimmed to fit the budget: curves multiple 4" in "\n".join(first.describe())


# ------------------------------------------------------------------------------------------------
# The report from recorded arms (no training)


def _fake_arm(plan: study.StudyPlan, arm: study.Arm, directory: pathlib.Path, labels: np.ndarray) -> None:
    """Record a finished arm whose accuracy and step time grow with its cost (the stats are not rigged)."""
    rng = np.random.default_rng(int(arm.madds) % 10_000 + 7 * arm.seed)
    accuracy = min(0.9, 0.3 + 0.2 * arm.measured_madds_ratio)
    right = rng.random(labels.size) < accuracy
    predictions = np.where(right, labels, (labels + 1) % 10)
    directory.mkdir(parents=True)
    study.save_predictions(str(directory), labels, predictions)
    step = 0.01 * arm.activations / plan.baseline_counts.activations + 0.002 * rng.random()
    study.ArmResult(arm.arm_dir, arm.width_coefficient, arm.depth_coefficient, arm.resolution, arm.seed,
                    plan.train_steps, plan.batch_size, plan.dataset, plan.recipe, float(right.mean()), int(labels.size),
                    16 / step, step, 1.5, 3.0).save(str(directory))


def test_report_claims_and_figures_from_recorded_arms(smoke_plan: study.StudyPlan, tmp_path: pathlib.Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    labels = np.random.default_rng(0).integers(0, 10, smoke_plan.num_eval).astype(np.int32)
    for arm_dir, arms in smoke_plan.runs().items():
        _fake_arm(smoke_plan, arms[0], tmp_path / "arms" / arm_dir, labels)

    def no_training(*args, **kwargs):
        raise AssertionError("every arm is recorded; nothing should train")

    monkeypatch.setattr(app, "train", no_training)
    outcome = study.run_study(study.load_spec("smoke"), model_dir=str(tmp_path))
    assert outcome.trained == 0 and outcome.skipped == 7
    keys = [c.key for c in outcome.claims]
    assert keys == ["a", "b", "c", "c", "d"]
    for claim in outcome.claims:
        assert claim.verdict in study.VERDICTS and claim.verdict != "not run"
        assert claim.estimate is not None
    assert all(c.low <= c.estimate <= c.high for c in outcome.claims if c.low is not None)
    report = (tmp_path / "report.md").read_text()
    for key in "abcd":
        assert f"| ({key}) |" in report
    assert "not run" not in report.split("## Claims")[1].split("## FLOPs")[0]
    for name in study.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR", name
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width > 100 and height > 100
    assert f"{len(outcome.rows)} arms in 7 trainings" in outcome.report()
    searched = [a for a in outcome.plan.arms if a.rule == "compound-searched"]
    assert all(not a.pending and "best point" in a.note for a in searched)


# ------------------------------------------------------------------------------------------------
# A real run: one arm recorded before, one trained, killed, resumed and rerun


class _Killed(Exception):
    pass


def _files(directory: pathlib.Path) -> dict[str, int]:
    """Modification times of the files under a directory, TensorBoard logs aside."""
    return {str(f.relative_to(directory)): f.stat().st_mtime_ns for f in directory.rglob("*")
            if f.is_file() and "logs" not in f.parts}


@pytest.mark.slow  # a study run three times (~25 s)
def test_run_is_resumable_and_reproduces_its_results(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    spec = study.load_spec(_write_spec(tmp_path, {**TINY, "name": "tiny",
                                                  "curves": {"dimensions": ["width"], "multiples": [1, 2]}}))
    model_dir = tmp_path / "study"
    plan = study.plan_study(spec)
    finished, fresh = (arms[0] for arms in plan.runs().values())
    # The baseline arm was finished by an earlier run (recorded on the real hold-out labels).
    b = spec.baseline
    config = study.arm_config(spec, width=b.width, depth=b.depth, resolution=b.resolution, seed=0)
    source = app.load_source(config)
    config = hparams.resolve(config, num_classes=source.num_classes, num_train=source.num_train)
    _, labels = app.evaluation_arrays(config, source, plan.num_eval)
    _fake_arm(plan, finished, model_dir / "arms" / finished.arm_dir, labels)
    finished_files = _files(model_dir / "arms" / finished.arm_dir)

    calls: list[str] = []
    real_train = app.train

    def counting_train(config, **kwargs):
        calls.append(os.path.basename(kwargs["model_dir"]))
        return real_train(config, **kwargs)

    monkeypatch.setattr(app, "train", counting_train)

    def kill_after_second(progress: study.ArmProgress) -> None:
        if progress.index == 2:
            raise _Killed

    with pytest.raises(_Killed):  # killed after the 2nd arm, before the report
        study.run_study(spec, model_dir=str(model_dir), progress=kill_after_second)
    assert calls == [fresh.arm_dir] and not (model_dir / "report.md").exists()
    fresh_dir = model_dir / "arms" / fresh.arm_dir
    checkpoints = _files(fresh_dir / "checkpoints")
    (fresh_dir / study.ARM_RESULT_FILE).unlink()  # as if killed between training and recording the arm

    seen: list[study.ArmProgress] = []
    outcome = study.run_study(spec, model_dir=str(model_dir), progress=seen.append)
    assert calls == [fresh.arm_dir] * 2  # the unfinished arm resumed; the finished one was not trained again
    assert [(p.arm_dir, p.trained) for p in seen] == [(finished.arm_dir, False), (fresh.arm_dir, True)]
    assert _files(fresh_dir / "checkpoints") == checkpoints  # resumed at its last step: nothing retrained
    assert _files(model_dir / "arms" / finished.arm_dir) == finished_files
    assert outcome.trained == 1 and outcome.skipped == 1 and seen[-1].total == 2

    with (model_dir / "results.csv").open() as handle:
        reader = csv.reader(handle)
        assert tuple(next(reader)) == study.RESULT_COLUMNS
        rows = list(reader)
    assert len(rows) == 2 and {r[6] for r in rows} == {"done"}
    document = json.loads((model_dir / "results.json").read_text())
    assert [r["arm_id"] for r in document["rows"]] == ["curves/baseline/s1/seed0", "curves/width/s2/seed0"]
    row = document["rows"][1]
    assert 0 <= row["top1"] <= 1 and row["examples"] == 256 and row["latency_ms"] > 0
    assert row["images_per_second"] > 0 and row["madds"] == fresh.madds and row["activations"] > 0
    assert row["arm_dir"] == f"arms/{fresh.arm_dir}"
    labels, predictions = study.load_predictions(str(fresh_dir))
    assert labels.shape == predictions.shape == (256,)
    assert np.mean(labels == predictions) == pytest.approx(row["top1"])

    report = (model_dir / "report.md").read_text()
    for key in "abcd":
        assert f"| ({key}) |" in report
    assert report.count("not run") >= 4  # s=4 missing; equal-FLOPs and search off; 2 networks for (d)
    assert (model_dir / "accuracy_vs_madds.png").read_bytes().startswith(PNG_SIGNATURE)
    session = fresh_dir / "logs" / "study" / "curves.width.s2"
    events = b"".join(f.read_bytes() for f in session.iterdir())
    assert b"_hparams_/session_start_info" in events and b"study/top1" in events
    assert any(f.name.startswith("events.out") for f in (model_dir / "hparams").iterdir())

    saved = {name: (model_dir / name).read_bytes() for name in ("results.csv", "results.json", "report.md")}
    again = study.run_study(spec, model_dir=str(model_dir))
    assert len(calls) == 2 and again.trained == 0 and again.skipped == 2
    assert {name: (model_dir / name).read_bytes() for name in saved} == saved

    changed = spec.with_overrides(hparams=["train.base_learning_rate=0.05"])
    with pytest.raises(UserError, match="another recipe"):  # finished arms of another recipe are not mixed in
        study.run_study(changed, model_dir=str(model_dir))
    assert len(calls) == 2


# ------------------------------------------------------------------------------------------------
# The command line


def test_command_line_errors_are_one_line(tmp_path: pathlib.Path) -> None:
    """A missing file, bad YAML and an unknown key: one line on stderr, exit status 1, before TensorFlow starts."""
    cases = {"/nonexistent.yaml": "does not exist"}
    bad = (("name: x\ncurves: [1, 2\n", "is not valid YAML"),
           ("name: x\ncurves:\n  multiple: [1, 2]\n", "did you mean curves.multiples?"))
    for i, (text, fragment) in enumerate(bad):
        path = tmp_path / f"study{i}.yaml"
        path.write_text(text)
        cases[str(path)] = fragment
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TF_CPP_MIN_LOG_LEVEL")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    procs = {path: subprocess.Popen([sys.executable, str(REPO / "main.py"), "--mode=scaling_study", f"--study={path}",
                                     f"--model_dir={tmp_path / 'run'}"], cwd=str(REPO), env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path in cases}
    for path, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1, err
        assert lines[0].startswith("error: ") and cases[path] in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_the_command_line_defaults_to_runs_scaling_name(tmp_path: pathlib.Path) -> None:
    """Without --model_dir a study lives in runs/scaling-<name> under the working directory: arms recorded
    there beforehand are found (nothing trains) and the report is written beside them."""
    spec_path = _write_spec(tmp_path, {**TINY, "name": "mine", "curves": {"dimensions": ["width"], "multiples": [1, 2]}})
    plan = study.plan_study(study.load_spec(spec_path))
    default = tmp_path / "runs" / "scaling-mine"
    labels = np.random.default_rng(0).integers(0, 10, plan.num_eval).astype(np.int32)
    for arm_dir, arms in plan.runs().items():
        _fake_arm(plan, arms[0], default / "arms" / arm_dir, labels)
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"})
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=scaling_study", f"--study={spec_path}"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(0 trained now, 2 already done)" in proc.stdout, proc.stdout
    assert f"report:      {os.path.join('runs', 'scaling-mine', 'report.md')}" in proc.stdout, proc.stdout
    assert (default / "report.md").is_file() and (default / "results.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "spec.yaml"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["scaling-mine"]
