"""Faults lose nothing: the real command line in subprocesses, interrupted, corrupted and doubled up.

Each case asserts the exit status, the one line the user sees and what was kept on disk:
SIGTERM mid-run (and a second signal while the checkpoint is written), truncated / deleted checkpoint
files, a second trainer on a running run's directory, a stale lock, a directory that turns read-only
and a disk that fills up (a file-size limit) in the middle of a run.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.errors import EXIT_PREEMPTED, UserError
from efficientnet_tf.rundir import checkpoint_problem
from efficientnet_tf.runlock import LOCK_FILE, RunLock

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
STEP_LINE = re.compile(r"\] step (\d+)/(\d+)")


def command(model_dir: pathlib.Path, steps: int, *, checkpoint_every: int = 1000, extra: tuple[str, ...] = ()) -> list[str]:
    """The same command for every run of a directory: tiny B0 on the embedded photos, seeded, deterministic,
    a log line every step (so that a test can tell which step is running)."""
    return [
        sys.executable, str(REPO / "main.py"), "--mode=train", f"--model_dir={model_dir}", f"--train_steps={steps}",
        "--batch_size=16", "--seed=3", "--deterministic", f"--hparams={TINY}",
        f"--hparams=train.checkpoint_every_steps={checkpoint_every},train.log_every_steps=1,train.keep_checkpoints=10",
        "--hparams=train.image_summary=false,data.augment=randaugment", *extra,
    ]


def env() -> dict[str, str]:
    values = dict(os.environ)
    values.pop("TF_CONFIG", None)
    values.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    return values


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=kwargs.pop("env", env()), cwd=str(REPO), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def error_lines(stderr: str) -> list[str]:
    """What the command line printed itself (not log records): its final one-line messages."""
    return [line for line in stderr.splitlines() if line and not re.match(r"^[IWEF]\d{4} ", line)
            and "absl::InitializeLog" not in line and not line.startswith(("WARNING: All log", "I0000", "E0000"))]


def weights(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "ema/", "optimizer/"))]
    return {n: reader.get_tensor(n) for n in names}


def step_of_checkpoint(prefix: str) -> int:
    return int(tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


class Trainer:
    """A training subprocess whose log is read line by line, so that a test can act at a given step."""

    def __init__(self, cmd: list[str], **popen):
        self.proc = subprocess.Popen(cmd, env=popen.pop("env", env()), cwd=str(REPO), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, **popen)
        self.lines: list[str] = []
        self.step = -1
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = STEP_LINE.search(line)
            if match:
                self.step = int(match.group(1))

    def wait_for_step(self, step: int, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while self.step < step:
            assert self.proc.poll() is None, "training ended early:\n" + "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
            time.sleep(0.005)
        return self.step

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, "\n".join(self.lines)


def preempted_step(stderr: str) -> tuple[int, str]:
    """(step, checkpoint) from the line a preempted run ends with, which must be its only own line."""
    (line,) = error_lines(stderr)
    match = re.fullmatch(r"stopped by (?:SIGTERM|SIGINT|a stop request on another worker) at step (\d+): "
                         r"checkpoint (\S+) saved; "
                         r"run the same command again to resume", line)
    assert match, line
    return int(match.group(1)), match.group(2)


# ------------------------------------------------------------------------------------------------
# Preemption


def sigterm_and_resume(tmp_path: pathlib.Path, total: int, target: int, reference: dict[str, np.ndarray]) -> None:
    """SIGTERM at step `target` of a run whose periodic checkpoints never come; the rerun resumes at that
    step (± the one in flight) and ends with the uninterrupted run's weights."""
    model_dir = tmp_path / f"sigterm-{target}"
    trainer = Trainer(command(model_dir, total))
    seen = trainer.wait_for_step(target)
    trainer.proc.send_signal(signal.SIGTERM)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "Traceback" not in log
    step, checkpoint = preempted_step(log)
    assert seen <= step <= seen + 5 and step < total, (seen, step)  # the log line trails the step
    assert checkpoint.endswith(f"ckpt-{step}") and checkpoint_problem(checkpoint) is None
    assert step_of_checkpoint(checkpoint) == step

    resumed = run(command(model_dir, total))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {checkpoint} at step {step}" in resumed.stderr
    final = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert final.endswith(f"ckpt-{total}")
    actual = weights(final)
    assert actual.keys() == reference.keys() and len(actual) > 100
    for name in reference:
        np.testing.assert_array_equal(actual[name], reference[name], err_msg=f"{name} (stopped at step {step})")


def uninterrupted(tmp_path: pathlib.Path, total: int) -> dict[str, np.ndarray]:
    model_dir = tmp_path / "uninterrupted"
    proc = run(command(model_dir, total))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return weights(str(model_dir / "checkpoints" / f"ckpt-{total}"))


@pytest.mark.slow  # the fast tier keeps the other resume checks; test_sigterm_at_ten_random_steps covers ten steps
def test_sigterm_saves_the_step_reached_and_the_rerun_ends_identical(tmp_path: pathlib.Path) -> None:
    total = 30
    sigterm_and_resume(tmp_path, total, random.Random().randint(4, total - 8), uninterrupted(tmp_path, total))


@pytest.mark.slow
def test_sigterm_at_ten_random_steps(tmp_path: pathlib.Path) -> None:
    total = 30
    reference = uninterrupted(tmp_path, total)
    for target in random.Random().sample(range(2, total - 4), 10):
        sigterm_and_resume(tmp_path, total, target, reference)


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_second_signal_while_the_checkpoint_is_written_corrupts_nothing(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "run"
    trainer = Trainer(command(model_dir, 200))
    trainer.wait_for_step(5)
    trainer.proc.send_signal(signal.SIGTERM)
    # The save starts after the step in flight: keep signalling through it.
    for _ in range(20):
        time.sleep(0.02)
        if trainer.proc.poll() is not None:
            break
        trainer.proc.send_signal(signal.SIGINT)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "already stopping" in log and "Traceback" not in log
    step, checkpoint = preempted_step(log)
    assert checkpoint_problem(checkpoint) is None and step_of_checkpoint(checkpoint) == step
    assert not (model_dir / LOCK_FILE).exists()


def test_signals_after_a_stop_are_ignored_for_a_grace_period_then_reach_the_old_handler(monkeypatch) -> None:
    from efficientnet_tf.training import preemption

    received: list[int] = []

    def old_handler(signum: int, _frame: object) -> None:
        received.append(signum)

    original = signal.signal(signal.SIGINT, old_handler)  # pytest workers may ignore SIGINT themselves
    try:
        preemption.reset()
        with preemption.handle_signals() as stop:
            signal.raise_signal(signal.SIGINT)  # handled before it returns
            assert stop.requested and stop.reason == "SIGINT"
        assert received == []
        # The command line is printing its line and exiting: a repeated Ctrl-C must not reach the old handler
        # (by default, KeyboardInterrupt and a death by signal instead of exit status 75).
        signal.raise_signal(signal.SIGINT)  # handled before it returns
        assert received == [] and signal.getsignal(signal.SIGINT) is not old_handler
        monkeypatch.setattr(preemption.time, "monotonic", lambda: float("inf"))  # the grace period is over
        signal.raise_signal(signal.SIGINT)  # handled before it returns
        assert received == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is old_handler
        preemption.reset()
        with preemption.handle_signals() as stop:  # without a stop the old handlers come straight back
            pass
        assert signal.getsignal(signal.SIGINT) is old_handler and not stop.requested
    finally:
        signal.signal(signal.SIGINT, original)
        preemption.reset()


def test_sigint_before_the_first_step_saves_nothing_and_says_so(tmp_path: pathlib.Path) -> None:
    trainer = Trainer(command(tmp_path / "run", 50))
    deadline = time.monotonic() + 120
    while not any("Training efficientnet-b0" in line for line in trainer.lines):
        assert trainer.proc.poll() is None and time.monotonic() < deadline, "\n".join(trainer.lines[-20:])
        time.sleep(0.005)
    trainer.proc.send_signal(signal.SIGINT)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    (line,) = error_lines(log)
    # The log line comes before the model is built: the signal lands during set-up, before any step.
    assert line == ("stopped by SIGINT at step 0: no checkpoint needed (nothing trained yet); "
                    "run the same command again to resume"), line
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not list(checkpoints.glob("ckpt-*")) and not (checkpoints / "checkpoint").exists()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------------
# Unreadable checkpoints


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A run with checkpoints at steps 4, 8 and 12."""
    model_dir = tmp_path_factory.mktemp("faults") / "base"
    proc = run(command(model_dir, 12, checkpoint_every=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


def copy_run(base: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "run"
    shutil.copytree(base, target)
    return target


def data_file(model_dir: pathlib.Path, step: int) -> pathlib.Path:
    (path,) = (model_dir / "checkpoints").glob(f"ckpt-{step}.data-*")
    return path


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(three_checkpoints, tmp_path) -> None:
    model_dir = copy_run(three_checkpoints, tmp_path)
    bad = data_file(model_dir, 12)
    original = bad.read_bytes()
    bad.write_bytes(original[: len(original) // 2])

    # eval uses the previous checkpoint and moves nothing
    evaluated = run([sys.executable, str(REPO / "main.py"), "--mode=eval", f"--model_dir={model_dir}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert bad.exists()
    warnings = [line for line in evaluated.stderr.splitlines() if "Unreadable checkpoint" in line]
    assert len(warnings) == 1 and "ckpt-12" in warnings[0] and "using ckpt-8" in warnings[0]

    resumed = run(command(model_dir, 16, checkpoint_every=4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warnings = [line for line in resumed.stderr.splitlines() if "Unreadable checkpoint" in line]
    assert len(warnings) == 1 and "ckpt-12" in warnings[0] and "using ckpt-8" in warnings[0], warnings
    assert f"Resumed from {model_dir}/checkpoints/ckpt-8 at step 8" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    final = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    assert final.endswith("ckpt-16") and step_of_checkpoint(final) == 16
    assert step_of_checkpoint(str(model_dir / "checkpoints" / "ckpt-12")) == 12  # a new, good ckpt-12
    # The truncated files were moved aside byte for byte, never deleted or overwritten.
    (kept,) = (model_dir / "checkpoints" / "unreadable").glob("*/" + bad.name)
    assert kept.read_bytes() == original[: len(original) // 2]
    assert (kept.parent / "ckpt-12.index").exists()


def test_checkpoints_are_listed_once_whatever_the_paths_look_like(tmp_path, monkeypatch, caplog) -> None:
    """A relative --model_dir, and a state file that spells the paths absolute: each checkpoint once, newest
    first, and no unreadable-checkpoint warning when all are fine."""
    from efficientnet_tf.rundir import RunDir, checkpoint_candidates

    monkeypatch.chdir(tmp_path)
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), "run/checkpoints", max_to_keep=5,
                                         checkpoint_name="ckpt")
    for value in (4, 8, 12):
        step.assign(value)
        manager.save(checkpoint_number=value)
    expected = [f"run/checkpoints/ckpt-{n}" for n in (12, 8, 4)]
    assert checkpoint_candidates("run/checkpoints") == expected
    tf.compat.v1.train.update_checkpoint_state("run/checkpoints", str(tmp_path / expected[0]),
                                               [str(tmp_path / p) for p in reversed(expected)])
    assert checkpoint_candidates("run/checkpoints") == expected
    assert RunDir("run").readable_checkpoint(quarantine=True) == expected[0]
    assert "Unreadable" not in caplog.text and not (tmp_path / "run" / "checkpoints" / "unreadable").exists()


@pytest.mark.parametrize("damage", [pytest.param("data file deleted", marks=pytest.mark.slow),
                                    pytest.param("index deleted", marks=pytest.mark.slow),
                                    pytest.param("state file deleted", marks=pytest.mark.slow)])
def test_deleted_checkpoint_files_fall_back_or_resume(three_checkpoints, tmp_path, damage: str) -> None:
    model_dir = copy_run(three_checkpoints, tmp_path)
    ckpt = model_dir / "checkpoints"
    if damage == "data file deleted":
        data_file(model_dir, 12).unlink()
        expected = 8
    elif damage == "index deleted":
        (ckpt / "ckpt-12.index").unlink()
        expected = 8
    else:
        (ckpt / "checkpoint").unlink()
        expected = 12  # the files themselves are intact: found without the state file
    resumed = run(command(model_dir, 16, checkpoint_every=4))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {ckpt}/ckpt-{expected} at step {expected}" in resumed.stderr
    assert step_of_checkpoint(tf.train.latest_checkpoint(str(ckpt))) == 16


def test_no_readable_checkpoint_is_one_line_naming_the_directory(three_checkpoints, tmp_path) -> None:
    model_dir = copy_run(three_checkpoints, tmp_path)
    for step in (4, 8, 12):
        path = data_file(model_dir, step)
        path.write_bytes(path.read_bytes()[:100])
    for cmd in (command(model_dir, 16, checkpoint_every=4),
                [sys.executable, str(REPO / "main.py"), "--mode=export", f"--model_dir={model_dir}"]):
        proc = run(cmd)
        assert proc.returncode == 1
        (line,) = error_lines(proc.stderr)
        assert line.startswith(f"error: no readable checkpoint in {model_dir}/checkpoints: ckpt-12: "), line
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-12.index", "ckpt-4.index", "ckpt-8.index"]


# ------------------------------------------------------------------------------------------------
# One writer per run directory


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_second_trainer_is_refused_while_the_first_runs(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "run"
    first = Trainer(command(model_dir, 400, checkpoint_every=5))
    first.wait_for_step(2)
    began = time.monotonic()
    second = run(command(model_dir, 400, checkpoint_every=5))
    took = time.monotonic() - began
    assert first.proc.poll() is None, "the first trainer was disturbed"
    assert second.returncode == 1 and took < 60
    (line,) = error_lines(second.stderr)
    assert re.fullmatch(rf"error: {re.escape(str(model_dir))} is in use by a training run \(pid {first.proc.pid} on "
                        rf"host {re.escape(socket.gethostname())}, started [^)]+\); wait for it to end or use another "
                        r"--model_dir", line), line
    first.proc.send_signal(signal.SIGTERM)
    code, log = first.finish()
    assert code == EXIT_PREEMPTED, log[-2000:]
    step, _ = preempted_step(log)
    assert not (model_dir / LOCK_FILE).exists()
    # The first run's files were not touched by the refused one; the same command now resumes.
    again = run(command(model_dir, step + 2, checkpoint_every=5))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"at step {step}" in again.stderr


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(model_dir: pathlib.Path, **holder) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
              "start_ticks": None, **holder}
    (model_dir / LOCK_FILE).write_text(json.dumps(record))


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path: pathlib.Path) -> None:
    model_dir = tmp_path / "run"
    write_lock(model_dir, pid=dead_pid())
    proc = run(command(model_dir, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Taking over the run lock" in proc.stderr and "no longer runs" in proc.stderr
    assert not (model_dir / LOCK_FILE).exists()


def test_lock_rules(tmp_path: pathlib.Path) -> None:
    """In-process: a live holder on this host refuses; one on another host refuses with how to clear it;
    a recycled pid (same pid, other start time) and an unreadable old lock are taken over; release
    removes only our own lock."""
    live = subprocess.Popen(["sleep", "30"])
    try:
        write_lock(tmp_path / "a", pid=live.pid)
        with pytest.raises(UserError, match=rf"in use by a training run \(pid {live.pid} on host"):
            RunLock.acquire(str(tmp_path / "a"))
        write_lock(tmp_path / "b", pid=live.pid, start_ticks=1)  # same pid, another process's start time
        RunLock.acquire(str(tmp_path / "b")).release()
    finally:
        live.kill()
        live.wait()
    write_lock(tmp_path / "c", host="elsewhere.example", pid=12345)
    with pytest.raises(UserError, match=r"host elsewhere\.example.*if that process is gone, delete .*\.lock\)$"):
        RunLock.acquire(str(tmp_path / "c"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / LOCK_FILE).write_text("")
    old = time.time() - 60
    os.utime(tmp_path / "d" / LOCK_FILE, (old, old))
    lock = RunLock.acquire(str(tmp_path / "d"))
    assert json.loads((tmp_path / "d" / LOCK_FILE).read_text())["pid"] == os.getpid()
    write_lock(tmp_path / "d", pid=dead_pid())  # someone else's lock now: release leaves it
    lock.release()
    assert (tmp_path / "d" / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------------
# Storage failing mid-run


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_directory_that_turns_read_only_mid_run(tmp_path: pathlib.Path) -> None:
    """The run directory is remounted read-only under the running trainer (a bind mount, as a disk
    remounted read-only after an error): one line naming the failed write and the intact last checkpoint."""
    model_dir = tmp_path / "run"
    # The checkpoints folder: the event files elsewhere stay open for writing, and Linux refuses to remount a
    # mount read-only while a file on it is open for writing.
    mounted = model_dir / "checkpoints"
    mounted.mkdir(parents=True)
    if shutil.which("mount") is None or _mount("--bind", str(mounted), str(mounted)).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root and mount privileges)")
    try:
        trainer = Trainer(command(model_dir, 400, checkpoint_every=4))
        trainer.wait_for_step(6)
        for _ in range(50):  # a save in progress holds files open: try again a moment later
            remount = _mount("-o", "remount,ro,bind", str(mounted))
            if remount.returncode == 0:
                break
            time.sleep(0.01)
        else:
            trainer.proc.kill()
            trainer.finish()
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        code, log = trainer.finish()
    finally:
        if subprocess.run(["umount", str(mounted)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mounted)], capture_output=True)
    assert code == 1, log[-3000:]
    assert "Traceback" not in log
    (line,) = error_lines(log)
    match = re.fullmatch(r"error: cannot write a checkpoint at step (\d+) into \S+/checkpoints: .*[Rr]ead-only file "
                         r"system.*; the last good checkpoint is (\S+/ckpt-(\d+)) \(.*\)", line)
    assert match, line
    failed, last_good, good_step = int(match.group(1)), match.group(2), int(match.group(3))
    assert failed % 4 == 0 and good_step == failed - 4 and failed > 6
    assert checkpoint_problem(last_good) is None and step_of_checkpoint(last_good) == good_step


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_a_full_disk_mid_run(tmp_path: pathlib.Path) -> None:
    """A file-size limit lowered on the running trainer (prlimit) makes every further write fail as a full
    disk does: the run ends with one line and its last checkpoint intact."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("no prlimit on this platform")
    model_dir = tmp_path / "run"
    trainer = Trainer(command(model_dir, 400, checkpoint_every=4))
    trainer.wait_for_step(6)
    try:
        resource.prlimit(trainer.proc.pid, resource.RLIMIT_FSIZE, (1, 1))
    except (PermissionError, OSError) as error:
        trainer.proc.kill()
        pytest.skip(f"cannot lower the trainer's file-size limit: {error}")
    code, log = trainer.finish()
    assert code == 1, log[-3000:]
    assert "Traceback" not in log
    (line,) = error_lines(log)
    match = re.fullmatch(r"error: cannot write .*: .*; the last good checkpoint is (\S+/ckpt-(\d+)) \(.*\)", line)
    assert match, line
    assert checkpoint_problem(match.group(1)) is None and step_of_checkpoint(match.group(1)) == int(match.group(2)) >= 4


@pytest.mark.slow  # two worker processes
def test_multi_worker_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path: pathlib.Path) -> None:
    """SIGTERM reaches one worker of two (a preempted VM): the vote rides on the step's all-reduce, so both
    save at the same step and exit 75; the same command on both then resumes from it."""
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]}
    for s in sockets:
        s.close()
    model_dir = tmp_path / "run"

    def worker_env(index: int) -> dict[str, str]:
        values = env()
        values["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        return values

    workers = [Trainer(command(model_dir, 400), env=worker_env(i)) for i in range(2)]
    workers[0].wait_for_step(5)  # the chief logs the steps
    workers[1].proc.send_signal(signal.SIGTERM)
    results = [w.finish(timeout=180) for w in workers]
    assert [code for code, _ in results] == [EXIT_PREEMPTED, EXIT_PREEMPTED], [log[-2000:] for _, log in results]
    stops = [preempted_step(log) for _, log in results]
    assert "SIGTERM" in error_lines(results[1][1])[0] and "another worker" in error_lines(results[0][1])[0]
    ((step, _),) = set(stops)  # the same step and the same checkpoint on both
    chief_checkpoint = model_dir / "checkpoints" / f"ckpt-{step}"
    assert checkpoint_problem(str(chief_checkpoint)) is None and step_of_checkpoint(str(chief_checkpoint)) == step
    assert not (model_dir / LOCK_FILE).exists()
    rerun = [subprocess.Popen(command(model_dir, step + 3), env=worker_env(i), cwd=str(REPO),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=240)[1] for p in rerun]
    assert [p.returncode for p in rerun] == [0, 0], [o[-2000:] for o in outputs]
    assert f"at step {step}" in outputs[0]
    assert step_of_checkpoint(tf.train.latest_checkpoint(str(model_dir / "checkpoints"))) == step + 3
