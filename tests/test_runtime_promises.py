"""Runtime promises of the documentation: TensorBoard files that cannot be written cost only the logs; a GCE
maintenance event or preemption notice stops training like SIGTERM does; on-device augmentation resumes
exactly; a stop writes out TensorBoard's buffered events before `train` returns."""

from __future__ import annotations

import http.server
import logging
import os
import pathlib
import random
import re
import resource
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from efficientnet_tf import hparams, training
from efficientnet_tf.errors import EXIT_PREEMPTED
from efficientnet_tf.rundir import checkpoint_problem
from efficientnet_tf.training import preemption
from efficientnet_tf.training.summaries import Summaries

from test_faults import TINY, Trainer, command, env, error_lines, run, step_of_checkpoint, weights

TB_WARNING = "cannot be written"
CREATE_FILE_WRITER = tf.summary.create_file_writer


def scalar_steps(logdir: pathlib.Path, tag: str) -> list[int]:
    steps = []
    for directory in {p.parent for p in logdir.rglob("events.out.tfevents.*")}:
        accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["tensors"]:
            steps += [e.step for e in accumulator.Tensors(tag)]
    return sorted(steps)


# ------------------------------------------------------------------------------------------------
# TensorBoard files that cannot be written cost only the logs


class _FailingWriter:
    """A summary writer whose flushes fail from the third on, as on a disk that has just filled up."""

    flushes = 0

    def __init__(self, logdir: str, **kwargs: object) -> None:
        self.real = CREATE_FILE_WRITER(logdir, **kwargs)

    def as_default(self, step: int | None = None):
        return self.real.as_default(step=step)

    def flush(self) -> None:
        _FailingWriter.flushes += 1
        if _FailingWriter.flushes > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        self.real.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.real.close()


def _tiny_config(steps: int, *extra: str):
    return hparams.resolve(hparams.build_config([
        TINY, f"train.batch_size=4,train.train_steps={steps},train.steps_per_epoch=60,train.log_every_steps=1",
        "train.checkpoint_every_steps=1000,train.image_summary=false", *extra]), num_classes=3, num_train=240)


def _constant_batches(signal_at: int | None = None):
    """The same 4 images for ever (the input position does not matter); SIGTERM to this process at a batch."""
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]

    def batches():
        for index in range(10**6):
            if index == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)  # handled by the trainer's handler, in the main thread
            yield images, labels

    def dataset_fn(_context, _stage=None):
        return tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((4, 32, 32, 3), tf.float32), tf.TensorSpec((4, 3), tf.float32)))

    return dataset_fn


def test_tensorboard_writes_failing_in_process_cost_only_the_logs(tmp_path: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_FailingWriter, "flushes", 0)
    monkeypatch.setattr(tf.summary, "create_file_writer", _FailingWriter)
    trainer = training.Trainer(_tiny_config(8), training.create_strategy("default"), str(tmp_path / "run"),
                               train_dataset_fn=_constant_batches())
    preemption.reset()
    with caplog.at_level(logging.WARNING):
        result = trainer.train()
    assert result.step == 8 and _FailingWriter.flushes >= 3
    warnings = [r.getMessage() for r in caplog.records if TB_WARNING in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings
    final = tmp_path / "run" / "checkpoints" / "ckpt-8"
    assert checkpoint_problem(str(final)) is None and step_of_checkpoint(str(final)) == 8


@pytest.mark.slow  # the command line version of the check above: about 20 s on 2 CPU cores
def test_tensorboard_writes_failing_mid_run_cost_only_the_logs(tmp_path: pathlib.Path) -> None:
    """A full disk for a moment (the trainer's file-size limit lowered, then put back before the final
    checkpoint): the event file's next append fails; one warning, training goes on and ends with status 0."""
    model_dir = tmp_path / "run"
    total = 40  # no checkpoint before the last step (checkpoint_every 1000, 50 steps an epoch)
    trainer = Trainer(command(model_dir, total))
    trainer.wait_for_step(3)
    try:
        old = resource.prlimit(trainer.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(trainer.proc.pid, resource.RLIMIT_FSIZE, (1, old[1]))
    except (PermissionError, OSError) as error:
        trainer.proc.kill()
        trainer.finish()
        pytest.skip(f"cannot lower the trainer's file-size limit: {error}")
    deadline = time.monotonic() + 60
    while not any(TB_WARNING in line for line in trainer.lines):
        if trainer.proc.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    try:
        resource.prlimit(trainer.proc.pid, resource.RLIMIT_FSIZE, old)  # the disk has room again
    except ProcessLookupError:
        pass  # the trainer has ended already: its exit status says how
    code, log = trainer.finish()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log and error_lines(log) == [], log[-3000:]
    warnings = [line for line in log.splitlines() if TB_WARNING in line]
    assert len(warnings) == 1 and "TensorBoard logs in" in warnings[0], warnings
    assert "training goes on without them" in warnings[0]
    final = model_dir / "checkpoints" / f"ckpt-{total}"
    assert checkpoint_problem(str(final)) is None and step_of_checkpoint(str(final)) == total
    logged = scalar_steps(model_dir / "logs", "loss")
    assert logged and max(logged) < total  # what the failed writes lost: the logs after the failure


def test_a_logs_folder_that_cannot_be_created_costs_only_the_logs(tmp_path: pathlib.Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train").write_text("a file where the train logs folder should be")
    with caplog.at_level(logging.WARNING):
        summaries = Summaries(str(tmp_path))
        summaries.scalars(1, {"loss": 1.0})
        summaries.close()
    assert not summaries.enabled
    warnings = [r.getMessage() for r in caplog.records if TB_WARNING in r.getMessage()]
    assert len(warnings) == 1 and "training goes on without them" in warnings[0], warnings


# ------------------------------------------------------------------------------------------------
# The GCE maintenance-event watcher, against a metadata server on the loopback interface


class _MetadataServer:
    """Answers /computeMetadata/v1/instance/{maintenance-event,preempted} as GCE does: only to requests
    that carry `Metadata-Flavor: Google` (403 otherwise)."""

    def __init__(self) -> None:
        self.values = {"maintenance-event": "NONE", "preempted": "FALSE"}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                flavor = self.headers.get("Metadata-Flavor")
                server.requests.append((self.path, flavor))
                key = self.path.rsplit("/", 1)[-1]
                if flavor != "Google" or not self.path.startswith("/computeMetadata/v1/instance/") or (
                        key not in server.values):
                    self.send_response(403 if flavor != "Google" else 404)
                    self.end_headers()
                    return
                body = server.values[key].encode()
                self.send_response(200)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/computeMetadata/v1/instance/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _MetadataServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests to the loopback server go straight to it, whatever proxy the environment names."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("key, value, reason", [
    ("maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE", "a host maintenance event"),
    ("preempted", "TRUE", "preemption of this VM"),
])
def test_the_watcher_requests_a_stop_on_a_maintenance_event_or_preemption(key: str, value: str, reason: str,
                                                                         no_proxy: None) -> None:
    with _MetadataServer() as server:
        stop = preemption.StopRequest()
        try:
            assert stop.watch_maintenance_events(server.url, poll_seconds=0.02)
            time.sleep(0.2)  # several polls answered NONE / FALSE: nothing happens
            assert not stop.requested
            server.values[key] = value
            assert _wait_for(lambda: stop.requested, 10), server.requests[-5:]
            assert stop.reason == reason
        finally:
            stop.uninstall()  # ends the watcher thread
        assert {flavor for _, flavor in server.requests} == {"Google"}
        assert {path.rsplit("/", 1)[-1] for path, _ in server.requests} == {"maintenance-event", "preempted"}


def test_the_watcher_does_not_start_without_a_metadata_server(no_proxy: None) -> None:
    with _MetadataServer() as server:
        url = server.url
    stop = preemption.StopRequest()
    assert not stop.watch_maintenance_events(url, poll_seconds=0.02)  # the server is gone: nothing answers
    with _MetadataServer() as server:
        assert not preemption.StopRequest().watch_maintenance_events(server.url.replace("instance", "project"))


@pytest.mark.slow  # a training subprocess and the watcher's 5 s poll: about 25 s on 2 CPU cores
def test_a_maintenance_event_stops_training_with_a_checkpoint_and_status_75(tmp_path: pathlib.Path,
                                                                           no_proxy: None) -> None:
    model_dir = tmp_path / "run"
    with _MetadataServer() as server:
        values = {**env(), preemption.METADATA_URL_ENV: server.url}  # env() copies os.environ as no_proxy left it
        trainer = Trainer(command(model_dir, 5000, extra=("--hparams=train.preemption_watch=gce",)), env=values)
        trainer.wait_for_step(3)
        server.values["maintenance-event"] = "TERMINATE_ON_HOST_MAINTENANCE"
        try:
            code, log = trainer.finish(timeout=60)  # the watcher polls every 5 s
        except subprocess.TimeoutExpired:
            trainer.proc.kill()
            trainer.finish()
            pytest.fail("training went on for 60 s after the maintenance event:\n" + "\n".join(trainer.lines[-20:]))
    assert code == EXIT_PREEMPTED, log[-3000:]
    assert "Traceback" not in log
    (line,) = error_lines(log)
    match = re.fullmatch(r"stopped by a host maintenance event at step (\d+): checkpoint (\S+) saved; "
                         r"run the same command again to resume", line)
    assert match, line
    step, checkpoint = int(match.group(1)), match.group(2)
    assert 3 < step < 5000 and checkpoint == str(model_dir / "checkpoints" / f"ckpt-{step}")
    assert checkpoint_problem(checkpoint) is None and step_of_checkpoint(checkpoint) == step
    assert any("Watching" in line and server.url in line for line in log.splitlines())


# ------------------------------------------------------------------------------------------------
# On-device augmentation resumes exactly


ON_DEVICE = ("--hparams=data.augment_on_device=true,data.mixup_alpha=0.2,data.cutmix_alpha=1.0",)


@pytest.mark.slow  # three training processes, about a minute on 2 CPU cores
def test_augment_on_device_stopped_and_resumed_ends_identical(tmp_path: pathlib.Path) -> None:
    total = 30
    reference_run = run(command(tmp_path / "uninterrupted", total, extra=ON_DEVICE))
    assert reference_run.returncode == 0, reference_run.stderr[-3000:]
    reference = weights(str(tmp_path / "uninterrupted" / "checkpoints" / f"ckpt-{total}"))

    model_dir = tmp_path / "stopped"
    trainer = Trainer(command(model_dir, total, extra=ON_DEVICE))
    trainer.wait_for_step(random.Random().randint(4, total - 10))
    trainer.proc.send_signal(signal.SIGTERM)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    (line,) = error_lines(log)
    step = int(re.search(r"at step (\d+):", line).group(1))
    assert step < total, line
    resumed = run(command(model_dir, total, extra=ON_DEVICE))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stderr
    actual = weights(str(model_dir / "checkpoints" / f"ckpt-{total}"))
    assert actual.keys() == reference.keys() and len(actual) > 100
    for name in reference:
        np.testing.assert_array_equal(actual[name], reference[name], err_msg=f"{name} (stopped at step {step})")


# ------------------------------------------------------------------------------------------------
# A stop writes out TensorBoard's buffered events


def _flush_only_on_close(logdir: str, **kwargs: object) -> tf.summary.SummaryWriter:
    """A summary writer that keeps its events buffered until `close`: it never flushes on its own (huge
    queue, no timer), and its `flush` (which `Summaries` calls after each write and tf.summary calls when
    an `as_default()` block ends) does nothing."""
    writer = CREATE_FILE_WRITER(logdir, max_queue=10**6, flush_millis=10**9)
    writer.flush = lambda: None
    return writer


def test_a_stop_request_writes_out_buffered_tensorboard_events_and_the_profile(tmp_path: pathlib.Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write already flushes its writer (`Summaries` after each write, tf.summary when an
    `as_default()` block ends), so the event files alone cannot tell whether a stop closes the writers;
    with writers that keep everything buffered, only the close on stop writes the scalars of every step
    before `train` raises Preempted. A profiler trace still running at the stop (steps 2 to 1000 asked for) is
    written out by the same close."""
    monkeypatch.setattr(tf.summary, "create_file_writer", _flush_only_on_close)
    trainer = training.Trainer(_tiny_config(60, "train.profile_steps=2,1000"), training.create_strategy("default"),
                               str(tmp_path / "run"), train_dataset_fn=_constant_batches(signal_at=12))
    preemption.reset()
    try:
        with pytest.raises(preemption.Preempted) as stopped:
            trainer.train()
    finally:
        preemption.reset()
    step = stopped.value.step
    assert 2 <= step < 60 and stopped.value.reason == "SIGTERM"
    assert scalar_steps(tmp_path / "run" / "logs", "loss") == list(range(1, step + 1))
    assert list((tmp_path / "run" / "logs" / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))
