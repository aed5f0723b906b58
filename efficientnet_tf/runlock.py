"""One writer per run directory: a lock file in `model_dir` held by the training process.

    lock = RunLock.acquire("runs/b0")      # UserError naming the holder when another training runs
    ...
    lock.release()                          # also done at exit

The lock is `model_dir/.lock`, a small JSON record of its holder: host, pid, the process's start time
(so that a recycled pid is not mistaken for the holder) and when training started. A second training
on the same directory refuses to start. A lock whose holder no longer runs on this host (killed with
-9, a crashed machine that came back) is taken over with a warning. A lock held from another host
cannot be checked from here: the message says how to clear it if that host's process is gone.

On local filesystems the lock is created atomically (O_CREAT | O_EXCL). Object stores (gs://) have no
atomic create-if-absent through tf.io.gfile: there the lock is advisory (checked, then written), which
catches a second job started later but not two started in the same second.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import os
import socket
import sys
import time
from typing import Any

import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line

LOCK_FILE = ".lock"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether `pid` runs on this host (and, when known, is the same process that started at start_ticks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    if start_ticks is not None:
        now = process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was recycled
    return True


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock."""

    host: str
    pid: int
    started: str
    start_ticks: int | None = None
    command: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, started {self.started}"

    @classmethod
    def me(cls) -> Holder:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, process_start_ticks(os.getpid()),
                   " ".join(sys.argv)[:500])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), str(data.get("started", "?")),
                       data.get("start_ticks"), str(data.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None


class RunLock:
    """The lock of one run directory, held by this process until `release`."""

    def __init__(self, model_dir: str, holder: Holder):
        self.model_dir = str(model_dir)
        self.path = os.path.join(self.model_dir, LOCK_FILE)
        self.holder = holder
        self._held = True
        atexit.register(self.release)

    @classmethod
    def acquire(cls, model_dir: str) -> RunLock:
        """Take the lock of `model_dir` (created if needed), or raise a one-line UserError naming the holder."""
        path = os.path.join(str(model_dir), LOCK_FILE)
        me = Holder.me()
        record = json.dumps(dataclasses.asdict(me), indent=2) + "\n"
        for _ in range(20):
            if _try_create(path, record):
                return cls(model_dir, me)
            holder = _read_holder(path)
            if holder is None:
                if not tf.io.gfile.exists(path):
                    continue  # released between our attempt and the read: try again
                if _age_seconds(path) < 5:
                    time.sleep(0.25)  # another process created it and is writing its record
                    continue
                logging.warning("Run lock %s is unreadable; taking it over", path)
            elif holder.pid == me.pid and holder.host == me.host:
                pass  # our own lock (a second Trainer in this process): take it again
            elif holder.host != me.host:
                raise UserError(f"{model_dir} is in use by a training run ({holder.describe()}); wait for it to end "
                                f"or use another --model_dir (if that process is gone, delete {path})")
            elif process_alive(holder.pid, holder.start_ticks):
                raise UserError(f"{model_dir} is in use by a training run ({holder.describe()}); wait for it to end "
                                "or use another --model_dir")
            else:
                logging.warning("Taking over the run lock of %s: its holder (%s) no longer runs", model_dir,
                                holder.describe())
            _remove(path)
        raise UserError(f"cannot take the run lock {path}: another process keeps creating it")

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if not self._held:
            return
        self._held = False
        try:
            holder = _read_holder(self.path)
            if holder is not None and (holder.pid, holder.host) == (self.holder.pid, self.holder.host):
                _remove(self.path)
        except (OSError, tf.errors.OpError) as error:  # a read-only or vanished directory: nothing to do
            logging.warning("Could not remove the run lock %s: %s", self.path, first_line(error))

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _try_create(path: str, record: str) -> bool:
    """Create the lock file with `record` unless it exists; True when created."""
    directory = os.path.dirname(path)
    try:
        tf.io.gfile.makedirs(directory)
    except (OSError, tf.errors.OpError) as error:
        raise UserError(f"cannot write to --model_dir {directory}: {first_line(error)}; choose a writable "
                        "directory") from None
    if _is_local(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        try:
            fd = os.open(local, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            raise UserError(f"cannot write to --model_dir {directory}: {error.strerror}; choose a writable "
                            "directory") from None
        with os.fdopen(fd, "w") as handle:
            handle.write(record)
        return True
    if tf.io.gfile.exists(path):  # object stores: advisory
        return False
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(record)
    return True


def _read_holder(path: str) -> Holder | None:
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            return Holder.parse(handle.read())
    except tf.errors.NotFoundError:
        return None


def _age_seconds(path: str) -> float:
    try:
        return time.time() - tf.io.gfile.stat(path).mtime_nsec / 1e9
    except tf.errors.OpError:
        return float("inf")


def _remove(path: str) -> None:
    try:
        tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
        pass
