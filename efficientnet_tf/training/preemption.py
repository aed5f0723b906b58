"""Stop requests for preemptible training: SIGTERM / SIGINT, and Google Compute Engine maintenance events.

    with preemption.handle_signals() as stop:
        ... run steps ...; if stop.requested: save a checkpoint and raise Preempted

A signal only sets a flag: the step in flight finishes, the training loop saves a checkpoint of exactly
that step and ends with `Preempted` (the command line turns it into one line and exit status 75). Signals
that arrive while the checkpoint is written are noted and ignored, so a second Ctrl-C or a scheduler's
repeated SIGTERM cannot cut a save in half. Under several workers the flag is summed across workers by
the all-reduce the loop already does after each step, so every worker stops at the same step.

On Cloud TPU VMs and GCE instances, a thread can also watch the metadata server's maintenance event
(`instance/maintenance-event` becoming TERMINATE_ON_HOST_MAINTENANCE, or `instance/preempted` TRUE),
which announces a host's shutdown before any signal: `train.preemption_watch: gce` (or `auto`, which
turns it on for TPU strategies when the metadata server answers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from absl import logging

from efficientnet_tf.errors import (
    EXIT_PREEMPTED,  # noqa: F401 - re-exported for efficientnet_tf.training
    UserError,
)

METADATA_URL_ENV = "EFFICIENTNET_TF_GCE_METADATA_URL"  # tests point it at a local server
STOPPING_GRACE_SECONDS = 30.0  # after a stop, repeated signals are ignored this long
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/"


class Preempted(Exception):
    """Training stopped on a signal or maintenance event after saving a checkpoint of its last step."""

    def __init__(self, step: int, checkpoint: str | None, reason: str):
        self.step, self.checkpoint, self.reason = step, checkpoint, reason
        where = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint needed (nothing trained yet)"
        super().__init__(f"stopped by {reason} at step {step}: {where}; run the same command again to resume")


class StopRequest:
    """A flag set by SIGTERM / SIGINT (or a maintenance event) and read by the training loop."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signals = 0
        self._previous: dict[int, object] = {}
        self._depth = 0
        self._watcher: threading.Thread | None = None
        self._done = threading.Event()

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        """Ask the training loop to stop after its current step (first reason wins)."""
        if self.reason is None:
            self.reason = reason

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        # Handlers run in the main thread between bytecodes; logging's handler lock is re-entrant there.
        if self.reason is None:
            self.reason = name
            logging.warning("%s received: finishing the current step and saving a checkpoint, then stopping", name)
        else:
            logging.warning("%s received again: already stopping; the checkpoint is being written, please wait", name)

    def install(self) -> bool:
        """Handle SIGTERM and SIGINT (main thread only); False when signals cannot be handled here.

        Nested calls set the handlers again: TensorFlow's coordination service (MultiWorkerMirroredStrategy)
        installs a C++ SIGTERM handler of its own when the strategy is created, behind Python's back.
        """
        self._depth += 1
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.signal(signum, self._on_signal)
            self._previous.setdefault(signum, previous)
        return True

    def uninstall(self) -> None:
        """Put back the previous handlers once the outermost user is done.

        After a stop the process is on its way out (the command line prints its line and exits 75): signals
        that keep coming for a grace period are still noted and ignored, so a scheduler's repeated SIGTERM
        cannot turn a clean stop into a death by signal; later ones reach the previous handlers again.
        """
        self._depth = max(0, self._depth - 1)
        if self._depth:
            return
        previous_handlers = dict(self._previous)
        self._previous.clear()
        self._done.set()
        self._watcher = None
        if not self.requested or threading.current_thread() is not threading.main_thread():
            for signum, previous in previous_handlers.items():
                signal.signal(signum, previous)  # type: ignore[arg-type]
            return
        until = time.monotonic() + STOPPING_GRACE_SECONDS

        def stopping(signum: int, frame: object) -> None:
            if time.monotonic() < until:
                logging.warning("%s received again: already stopped, exiting", signal.Signals(signum).name)
                return
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)  # type: ignore[arg-type]
            handler = previous_handlers.get(signum)
            if callable(handler):
                handler(signum, frame)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(signum)

        for signum in previous_handlers:
            signal.signal(signum, stopping)

    def watch_maintenance_events(self, base_url: str | None = None, poll_seconds: float = 5.0) -> bool:
        """Poll the GCE metadata server in a thread; False (nothing started) when it does not answer."""
        base = base_url or os.environ.get(METADATA_URL_ENV) or METADATA_URL
        if _metadata(base, "maintenance-event") is None:
            return False
        if self._watcher is not None:
            return True
        self._done.clear()

        def watch() -> None:
            while not self._done.wait(poll_seconds):
                event = _metadata(base, "maintenance-event")
                if event == "TERMINATE_ON_HOST_MAINTENANCE":
                    self.request("a host maintenance event")
                elif (_metadata(base, "preempted") or "").upper() == "TRUE":
                    self.request("preemption of this VM")
                if self.requested:
                    logging.warning("%s: finishing the current step and saving a checkpoint, then stopping",
                                    self.reason)
                    return

        self._watcher = threading.Thread(target=watch, name="maintenance-event-watcher", daemon=True)
        self._watcher.start()
        logging.info("Watching %s for maintenance events", base)
        return True


def _metadata(base: str, key: str) -> str | None:
    request = urllib.request.Request(base.rstrip("/") + "/" + key, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.read().decode("utf-8", "replace").strip()
    except (urllib.error.URLError, OSError, ValueError):
        return None


_CURRENT = StopRequest()


def current() -> StopRequest:
    """The process's stop request (one per process: signals are per process)."""
    return _CURRENT


@contextlib.contextmanager
def handle_signals() -> Iterator[StopRequest]:
    """SIGTERM / SIGINT set the process's stop request inside this block (nested blocks share it)."""
    stop = current()
    stop.install()
    try:
        yield stop
    finally:
        stop.uninstall()


def reset() -> None:
    """Forget an earlier request (a new training in the same process, e.g. the next arm of a study)."""
    global _CURRENT
    if _CURRENT._depth == 0:
        _CURRENT = StopRequest()


def watch_maintenance(stop: StopRequest, setting: str, strategy_kind: str) -> None:
    """train.preemption_watch: also stop on GCE maintenance events (gce; auto on a TPU when the metadata
    server answers; none)."""
    watch = str(setting).lower()
    if watch not in ("auto", "gce", "none"):
        raise UserError(f"train.preemption_watch must be auto, gce or none, got {setting!r}")
    if watch == "gce" or (watch == "auto" and strategy_kind == "tpu"):
        if not stop.watch_maintenance_events() and watch == "gce":
            logging.warning("train.preemption_watch=gce: the GCE metadata server does not answer; "
                            "stopping on SIGTERM / SIGINT only")
