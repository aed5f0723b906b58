"""A run directory (`--model_dir`): every file name in it, and the one reader and writer of each file.

    run = RunDir("runs/efficientnet-b0-imagenette_mini")
    run.write_config(config); config = run.read_config()       # config.yaml (strict, today's keys)
    run.write_labels(names);  names = run.read_labels()         # labels.txt, one class per line
    run.checkpoint("latest" | "best" | prefix | directory)      # a checkpoint prefix, or a UserError

Layout:
    config.yaml            the resolved configuration of the run
    labels.txt             class names in label order
    checkpoints/ckpt-N.*   rolling checkpoints (the last train.keep_checkpoints)
    checkpoints/best/      the best checkpoint by eval top-1, with best.json
    checkpoints/unreadable/  checkpoints that could not be read back, moved aside (never deleted)
    .lock                  held by the training process (efficientnet_tf.runlock)
    logs/train, logs/eval  TensorBoard event files
    eval_results.json      the latest evaluation; eval_history.jsonl: every evaluation
    export/                artifacts of --mode=export (default export directory)
Paths may be local or on any filesystem TensorFlow reads (gs://...).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from efficientnet_tf.errors import UserError, first_line
from efficientnet_tf.hparams import RunConfig, load_config_file, to_yaml

CONFIG_FILE = "config.yaml"
IMPORT_REPORT_FILE = "import_report.json"  # what --init_weights loaded, skipped, re-initialised
LABELS_FILE = "labels.txt"
CHECKPOINTS_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
UNREADABLE_SUBDIR = "unreadable"
BEST_RECORD = "best.json"
LOGS_SUBDIR = "logs"
EVAL_RESULTS_FILE = "eval_results.json"
EVAL_HISTORY_FILE = "eval_history.jsonl"
EXPORT_SUBDIR = "export"


def write_labels_file(path: str, class_names: Sequence[str]) -> str:
    """Write class names one per line (line i is class i); the one writer of every labels.txt."""
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(f"{name}\n" for name in class_names))
    return path


def read_labels_file(path: str) -> list[str] | None:
    """Class names from a labels.txt (trailing blank lines ignored), or None when there is none."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as handle:
        lines = [line.rstrip("\r") for line in handle.read().split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def step_of(path: str) -> int:
    """The step number in a checkpoint prefix such as .../ckpt-1200 (-1 when it has none)."""
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def glob_escape(path: str) -> str:
    """`path` with glob metacharacters escaped (for tf.io.gfile.glob)."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def checkpoint_candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, newest step first: those the state file lists (even if their
    files are gone) and every `*.index` beside them (even if the state file is gone or damaged)."""
    prefixes: set[str] = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state is not None:
            # TensorFlow has already joined relative entries to `directory`.
            prefixes.update(p for p in (*state.all_model_checkpoint_paths, state.model_checkpoint_path) if p)
    except (tf.errors.OpError, ValueError) as error:  # a damaged state file: fall back on the index files
        logging.warning("Checkpoint state file in %s is unreadable (%s); listing the checkpoint files instead",
                        directory, first_line(error))
    try:
        prefixes.update(path[: -len(".index")] for path in tf.io.gfile.glob(os.path.join(glob_escape(directory),
                                                                                        "*.index")))
    except tf.errors.OpError:
        pass
    unique: dict[str, str] = {}  # one entry per file, however the state file spelt its path
    for prefix in sorted(prefixes, key=lambda p: (not p.startswith(directory), p)):
        unique.setdefault(prefix if "://" in prefix else os.path.realpath(prefix), prefix)
    return sorted(unique.values(), key=lambda p: (step_of(p), p), reverse=True)


def checkpoint_problem(prefix: str) -> str | None:
    """Why checkpoint `prefix` cannot be read back (a missing file, a truncated or corrupt one), or None
    when every tensor in it reads (and passes its checksum)."""
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{os.path.basename(prefix)}.index is missing"
    try:
        dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
        names = sorted(dtypes)
        for i in range(0, len(names), 64):  # read back (and checksum) every tensor, iterator state included
            chunk = names[i : i + 64]
            tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=chunk, shape_and_slices=[""] * len(chunk),
                                 dtypes=[dtypes[n] for n in chunk])
    except Exception as error:  # noqa: BLE001 - the reader raises OpErrors, ValueError and IndexError alike
        text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", first_line(error))
        return text[:200]
    return None


class RunDir:
    """The files of one training run."""

    def __init__(self, path: str):
        self.path = str(path)

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def config_path(self) -> str:
        """config.yaml: the resolved configuration."""
        return self._join(CONFIG_FILE)

    @property
    def labels_path(self) -> str:
        """labels.txt: class names in label order."""
        return self._join(LABELS_FILE)

    @property
    def import_report_path(self) -> str:
        """import_report.json: what --init_weights loaded, skipped and re-initialised."""
        return self._join(IMPORT_REPORT_FILE)

    @property
    def checkpoints_dir(self) -> str:
        """Where the rolling checkpoints live."""
        return self._join(CHECKPOINTS_SUBDIR)

    @property
    def best_dir(self) -> str:
        """Where the best-by-top-1 checkpoint lives."""
        return self._join(CHECKPOINTS_SUBDIR, BEST_SUBDIR)

    @property
    def best_record_path(self) -> str:
        """best.json: step and metrics of the best checkpoint."""
        return os.path.join(self.best_dir, BEST_RECORD)

    @property
    def logs_dir(self) -> str:
        """The TensorBoard --logdir of the run."""
        return self._join(LOGS_SUBDIR)

    @property
    def eval_results_path(self) -> str:
        """eval_results.json: the latest evaluation."""
        return self._join(EVAL_RESULTS_FILE)

    @property
    def eval_history_path(self) -> str:
        """eval_history.jsonl: one JSON line per evaluation."""
        return self._join(EVAL_HISTORY_FILE)

    @property
    def export_dir(self) -> str:
        """The default directory of exported artifacts."""
        return self._join(EXPORT_SUBDIR)

    def exists(self) -> bool:
        """Whether the directory exists."""
        return tf.io.gfile.isdir(self.path)

    def has_config(self) -> bool:
        """Whether a training run has written its config here."""
        return tf.io.gfile.exists(self.config_path)

    # -- config.yaml ------------------------------------------------------------------------------

    def write_text(self, name: str, text: str) -> str:
        """Write a small text file (e.g. import_report.json) into the run directory; returns its path."""
        tf.io.gfile.makedirs(self.path)
        path = self._join(name)
        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)
        return path

    def write_import_report(self, source: str, report: dict[str, Any]) -> str:
        """Write import_report.json: the --init_weights value as given (`source`) and the import report's fields."""
        return self.write_text(IMPORT_REPORT_FILE, json.dumps({"source": str(source), **report}, indent=2,
                                                               default=str) + "\n")

    def write_config(self, config: RunConfig) -> str:
        """Write the resolved config atomically (temporary file, then rename)."""
        tmp = self.config_path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as handle:
            handle.write("# Resolved configuration of this run; eval, export and predict read it back.\n")
            handle.write(to_yaml(config))
        tf.io.gfile.rename(tmp, self.config_path, overwrite=True)
        return self.config_path

    def read_config(self) -> RunConfig:
        """The run's config, checked key by key against today's defaults (an unknown key is a UserError)."""
        if not self.has_config():
            raise UserError(f"no {CONFIG_FILE} in {self.path}; is it the --model_dir of a training run?")
        return load_config_file(self.config_path)

    # -- labels.txt -------------------------------------------------------------------------------

    def write_labels(self, class_names: Sequence[str]) -> str:
        """Write labels.txt."""
        return write_labels_file(self.labels_path, class_names)

    def read_labels(self) -> list[str] | None:
        """The run's class names, or None when it has none."""
        return read_labels_file(self.labels_path)

    # -- checkpoints ------------------------------------------------------------------------------

    def latest_checkpoint(self) -> str | None:
        """The newest rolling checkpoint prefix (by step, whether or not it is readable), or None."""
        candidates = checkpoint_candidates(self.checkpoints_dir)
        return candidates[0] if candidates else None

    def readable_checkpoint(self, *, quarantine: bool = False) -> str | None:
        """The newest rolling checkpoint that reads back whole, or None when the run has none.

        Unreadable newer ones (truncated or missing files: a full disk, an interrupted copy) are named
        in a warning and never deleted; with `quarantine` (the training process, which will save over
        their names) they are moved to checkpoints/unreadable/<time>/ and dropped from the state file.
        When checkpoints exist but none is readable: a one-line UserError naming the directory.
        """
        candidates = checkpoint_candidates(self.checkpoints_dir)
        bad: list[tuple[str, str]] = []
        for prefix in candidates:
            problem = checkpoint_problem(prefix)
            if problem is None:
                if bad:
                    logging.warning("Unreadable checkpoint(s) %s; using %s instead%s",
                                    "; ".join(f"{p} ({why})" for p, why in bad), os.path.basename(prefix),
                                    f" (moved to {self.unreadable_dir})" if quarantine else "")
                    if quarantine:
                        self._quarantine([p for p, _ in bad], prefix)
                return prefix
            bad.append((prefix, problem))
        if bad:
            raise UserError(f"no readable checkpoint in {self.checkpoints_dir}: "
                            + "; ".join(f"{os.path.basename(p)}: {why}" for p, why in bad[:3])
                            + ("; ..." if len(bad) > 3 else "")
                            + " (move them away to start afresh)")
        return None

    @property
    def unreadable_dir(self) -> str:
        """Where training moves unreadable checkpoints so that new ones cannot overwrite them."""
        return self._join(CHECKPOINTS_SUBDIR, UNREADABLE_SUBDIR)

    def _quarantine(self, prefixes: Sequence[str], good: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = os.path.join(self.unreadable_dir, stamp)
        tf.io.gfile.makedirs(target)
        for prefix in prefixes:
            for path in tf.io.gfile.glob(glob_escape(prefix) + ".*"):
                tf.io.gfile.rename(path, os.path.join(target, os.path.basename(path)), overwrite=True)
        keep = [p for p in checkpoint_candidates(self.checkpoints_dir) if step_of(p) <= step_of(good)]
        tf.compat.v1.train.update_checkpoint_state(self.checkpoints_dir, good,
                                                   all_model_checkpoint_paths=sorted(keep, key=step_of))

    def checkpoint(self, which: str | None = None) -> str:
        """A checkpoint prefix: `latest` (default), `best`, a prefix or a directory; a UserError if none."""
        if which in (None, "", "latest"):
            path = self.readable_checkpoint()
            if path is None:
                raise UserError(f"no checkpoint in {self.checkpoints_dir}; train into this --model_dir first")
            return path
        if which == "best":
            path = tf.train.latest_checkpoint(self.best_dir)
            if path is None:
                raise UserError(f"no best checkpoint in {self.best_dir}; it is written by train_and_eval")
            return path
        if tf.io.gfile.isdir(which):
            path = tf.train.latest_checkpoint(which)
            if path is None:
                raise UserError(f"no checkpoint in directory {which}")
            return path
        if not tf.io.gfile.exists(which + ".index"):
            raise UserError(f"checkpoint {which} does not exist (no {os.path.basename(which)}.index)")
        return which

    def write_best_record(self, step: int, checkpoint: str, metrics: dict[str, float]) -> str:
        """Record which checkpoint is the best and its metrics."""
        record = {"step": int(step), "checkpoint": os.path.basename(checkpoint)}
        record.update({k: float(v) for k, v in metrics.items()})
        with tf.io.gfile.GFile(self.best_record_path, "w") as handle:
            json.dump(record, handle, indent=2)
        return self.best_record_path

    # -- evaluation results -----------------------------------------------------------------------

    def write_eval_results(self, step: int, metrics: dict[str, float], checkpoint: str | None = None) -> str:
        """Write eval_results.json (the latest) and append the same record to eval_history.jsonl."""
        record: dict[str, Any] = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        if checkpoint:
            record["checkpoint"] = checkpoint
        with tf.io.gfile.GFile(self.eval_results_path, "w") as handle:
            json.dump(record, handle, indent=2)
        history = self.read_eval_history()
        with tf.io.gfile.GFile(self.eval_history_path, "w") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in [*history, record]))
        return self.eval_results_path

    def read_eval_history(self) -> list[dict[str, Any]]:
        """Every evaluation recorded so far, oldest first."""
        if not tf.io.gfile.exists(self.eval_history_path):
            return []
        with tf.io.gfile.GFile(self.eval_history_path) as handle:
            return [json.loads(line) for line in handle.read().splitlines() if line.strip()]

    # -- writability ------------------------------------------------------------------------------

    def ensure_writable(self, what: str = "--model_dir") -> None:
        """Create the directory if needed and prove it writable, or raise a one-line UserError."""
        try:
            tf.io.gfile.makedirs(self.path)
            probe = self._join(f".write-test-{os.getpid()}")
            with tf.io.gfile.GFile(probe, "w") as handle:
                handle.write("ok")
            tf.io.gfile.remove(probe)
        except (OSError, tf.errors.OpError) as error:
            reason = getattr(error, "strerror", None) or first_line(error)
            raise UserError(f"cannot write to {what} {self.path}: {reason}; choose a writable directory") from None
