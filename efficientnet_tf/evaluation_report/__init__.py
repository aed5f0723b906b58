"""The evaluation report people look at: confusion matrix, per-class figures, calibration, highest-loss
images (per-example records and the NumPy figures in `records`, the PNGs in `figures`, the per-checkpoint
report's files in `writer`)."""

from efficientnet_tf.evaluation_report.records import (
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
from efficientnet_tf.evaluation_report.writer import EvalReport, report_dir, write_report

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
