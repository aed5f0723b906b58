"""What a study records: one arm directory's result (arm_result.json) and hold-out predictions
(predictions.npz), per-image correctness across arms, and results.csv / results.json.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from efficientnet_tf.errors import UserError
from efficientnet_tf.study.plan import Arm
from efficientnet_tf.study.writing import write_bytes, write_text

ARM_RESULT_FILE = "arm_result.json"
TRAIN_RESULT_FILE = "train_result.json"
PREDICTIONS_FILE = "predictions.npz"
RESULTS_CSV, RESULTS_JSON, REPORT_FILE = "results.csv", "results.json", "report.md"

RESULT_COLUMNS = (
    "arm_id", "part", "rule", "s", "seed", "arm_dir", "status", "d", "w", "r", "width_coefficient",
    "depth_coefficient", "resolution", "share_depth", "share_width", "share_resolution", "madds", "params",
    "activations", "predicted_madds_ratio", "measured_madds_ratio", "flops_gap", "matched_from", "flag",
    "predicted_seconds", "top1", "examples", "images_per_second", "step_time_seconds", "latency_ms",
    "train_seconds", "note",
)


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
        write_text(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")
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
    write_bytes(path, buffer.getvalue())
    return path


def load_predictions(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted classes) of an arm directory."""
    with np.load(os.path.join(directory, PREDICTIONS_FILE)) as data:
        return data["labels"], data["predictions"]


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def result_rows(arms: Sequence[Arm], results: Mapping[str, ArmResult]) -> list[dict[str, Any]]:
    """One row (RESULT_COLUMNS) per arm, in plan order; measured columns are None until its arm directory is done."""
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
    write_text(csv_path, text.getvalue())
    document = {"study": study_name, "columns": list(RESULT_COLUMNS),
                "rows": [{c: row[c] for c in RESULT_COLUMNS} for row in rows]}
    write_text(json_path, json.dumps(document, indent=1) + "\n")
    return csv_path, json_path


class Correctness:
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


def best_search_point(search: Sequence[Arm], correct: Correctness) -> tuple[str, dict[str, float]]:
    """The grid point with the highest mean top-1 on the selection half (even-indexed images); ties: grid order."""
    scores: dict[str, float] = {}
    for rule in dict.fromkeys(a.rule for a in search):
        stacked = correct.stack([a for a in search if a.rule == rule])
        scores[rule] = float(stacked[:, 0::2].mean())
    best = max(scores, key=lambda name: (scores[name], -list(scores).index(name)))
    return best, scores

