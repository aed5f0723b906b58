"""Files of an export directory: their names, JSON documents, sizes, and labels.txt (efficientnet_tf.rundir's)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from efficientnet_tf.rundir import LABELS_FILE, read_labels_file, write_labels_file  # noqa: F401 - the one labels.txt reader/writer

EXPORT_INFO_FILE = "export_info.json"
REPORT_FILE = "export_report.json"


def write_json(path: str, value: dict) -> None:
    """Write a JSON document (indented, UTF-8)."""
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str) -> dict | None:
    """Read a JSON document, or None if the file does not exist."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as handle:
        return json.loads(handle.read())


def path_size(path: str) -> int:
    """Size in bytes of a file, or of all files under a directory."""
    if not tf.io.gfile.isdir(path):
        return int(tf.io.gfile.stat(path).length)
    total = 0
    for root, _, files in tf.io.gfile.walk(path):
        total += sum(int(tf.io.gfile.stat(os.path.join(root, f)).length) for f in files)
    return total
