"""Evaluation results people look at: confusion matrix, per-class figures, calibration, highest-loss
images (NumPy in `metrics`, PNGs in `plots`, the per-checkpoint report in `report`)."""

from efficientnet_tf.results.metrics import (
    TOP_LOSS_IMAGES,
    Calibration,
    EvalRecords,
    TopLoss,
    calibration,
    confusion_matrix,
    most_confused_classes,
    most_confused_pairs,
    per_class_metrics,
)
from efficientnet_tf.results.report import EvalReport, report_dir, write_report

__all__ = [
    "TOP_LOSS_IMAGES",
    "Calibration",
    "EvalRecords",
    "EvalReport",
    "TopLoss",
    "calibration",
    "confusion_matrix",
    "most_confused_classes",
    "most_confused_pairs",
    "per_class_metrics",
    "report_dir",
    "write_report",
]
