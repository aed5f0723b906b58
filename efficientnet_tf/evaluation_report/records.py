"""Per-example evaluation records and the figures computed from them: the confusion matrix,
per-class recall / precision / F1, the most-confused pairs, calibration (reliability bins and
the expected calibration error) and the highest-loss examples.

Everything here is plain NumPy on the host; the evaluation step only hands over, per example, the
label, the predicted class, its probability and the loss, and per batch its highest-loss images.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

CALIBRATION_BINS = 15
TOP_LOSS_IMAGES = 16


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] (int64); every example lands in exactly one cell."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    predictions = np.asarray(predictions, np.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.size} labels but {predictions.size} predictions")
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {name} lies outside 0..{num_classes - 1}")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_metrics(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Per class: support (true examples), predicted count, recall, precision and F1.

    recall = TP / support: the share of the class's own images classified as it (what "accuracy on this
    class" usually means); precision = TP / predicted: the share of the images classified as the class
    that really are it; F1 = their harmonic mean. NaN where a denominator is 0.
    """
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        # 2PR / (P + R) = 2TP / (support + predicted): defined whenever the class occurs at all.
        f1 = np.where(support + predicted > 0, 2 * tp / (support + predicted), np.nan)
    return {"support": support.astype(np.int64), "predicted": predicted.astype(np.int64), "recall": recall,
            "precision": precision, "f1": f1}


def most_confused_pairs(matrix: np.ndarray, k: int = 10) -> list[tuple[int, int, int, float]]:
    """Up to `k` off-diagonal cells, largest count first: (true class, predicted class, count,
    fraction of the true class's examples)."""
    matrix = np.asarray(matrix)
    off = matrix.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[: int(k)]
    support = matrix.sum(axis=1)
    pairs = []
    for flat in order:
        true, pred = divmod(int(flat), matrix.shape[1])
        count = int(off[true, pred])
        if count == 0:
            break
        pairs.append((true, pred, count, count / support[true]))
    return pairs


def most_confused_classes(matrix: np.ndarray, k: int) -> np.ndarray:
    """Indices (sorted) of the `k` classes involved in the most errors, as true or as predicted class."""
    off = np.asarray(matrix, np.int64).copy()
    np.fill_diagonal(off, 0)
    errors = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-errors, kind="stable")[: int(k)])


@dataclasses.dataclass
class Calibration:
    """Reliability bins over the top-1 confidence: per bin the examples, mean confidence and accuracy."""

    edges: np.ndarray  # [bins + 1]
    counts: np.ndarray  # [bins]
    confidence: np.ndarray  # [bins], NaN for empty bins
    accuracy: np.ndarray  # [bins], NaN for empty bins
    ece: float  # expected calibration error: sum over bins of count/N * |accuracy - confidence|


def calibration(confidences: np.ndarray, correct: np.ndarray, num_bins: int = CALIBRATION_BINS) -> Calibration:
    """Equal-width confidence bins on [0, 1] (the last one closed) and the expected calibration error."""
    confidences = np.asarray(confidences, np.float64).reshape(-1)
    correct = np.asarray(correct, np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, int(num_bins) + 1)
    index = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    sum_conf = np.bincount(index, weights=confidences, minlength=num_bins)
    sum_correct = np.bincount(index, weights=correct, minlength=num_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.where(counts > 0, sum_conf / counts, np.nan)
        mean_acc = np.where(counts > 0, sum_correct / counts, np.nan)
    total = counts.sum()
    ece = float(np.sum(np.abs(sum_correct - sum_conf)) / total) if total else float("nan")
    return Calibration(edges, counts, mean_conf, mean_acc, ece)


@dataclasses.dataclass
class TopLoss:
    """One of the highest-loss examples."""

    loss: float
    label: int
    predicted: int
    probability: float  # of the predicted class
    true_probability: float
    image: np.ndarray  # float 0..255 [H, W, 3], as the model saw it


class EvalRecords:
    """Collects per-example results over an evaluation pass, and keeps the `keep` highest-loss images."""

    def __init__(self, num_classes: int, keep: int = TOP_LOSS_IMAGES):
        self.num_classes = int(num_classes)
        self.keep = int(keep)
        self._labels: list[np.ndarray] = []
        self._predicted: list[np.ndarray] = []
        self._confidence: list[np.ndarray] = []
        self._losses: list[np.ndarray] = []
        self._heap: list[tuple[float, int, TopLoss]] = []  # min-heap on loss
        self._counter = 0

    def add(self, labels: np.ndarray, probabilities: np.ndarray, losses: np.ndarray) -> None:
        """Per-example results of a batch: int labels [B], class probabilities [B, C], losses [B]."""
        probabilities = np.asarray(probabilities)
        self._labels.append(np.asarray(labels, np.int64).reshape(-1))
        self._predicted.append(np.argmax(probabilities, axis=-1).astype(np.int64))
        self._confidence.append(np.max(probabilities, axis=-1).astype(np.float64))
        self._losses.append(np.asarray(losses, np.float64).reshape(-1))

    def add_candidates(self, images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                       losses: np.ndarray) -> None:
        """Candidate highest-loss examples (a batch's top few): kept when among the `keep` worst so far."""
        for image, label, probs, loss in zip(images, labels, probabilities, losses):
            predicted = int(np.argmax(probs))
            entry = TopLoss(float(loss), int(label), predicted, float(probs[predicted]), float(probs[int(label)]),
                            np.asarray(image, np.float32))
            self._counter += 1
            item = (entry.loss, -self._counter, entry)  # earlier examples win ties
            if len(self._heap) < self.keep:
                heapq.heappush(self._heap, item)
            elif item[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, item)

    @property
    def count(self) -> int:
        return int(sum(len(x) for x in self._labels))

    def labels(self) -> np.ndarray:
        return np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)

    def predictions(self) -> np.ndarray:
        return np.concatenate(self._predicted) if self._predicted else np.zeros(0, np.int64)

    def confidences(self) -> np.ndarray:
        return np.concatenate(self._confidence) if self._confidence else np.zeros(0)

    def losses(self) -> np.ndarray:
        return np.concatenate(self._losses) if self._losses else np.zeros(0)

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels(), self.predictions(), self.num_classes)

    def calibration(self, num_bins: int = CALIBRATION_BINS) -> Calibration:
        return calibration(self.confidences(), self.labels() == self.predictions(), num_bins)

    def top_losses(self) -> list[TopLoss]:
        """The kept highest-loss examples, worst first."""
        return [entry for _, _, entry in sorted(self._heap, key=lambda item: item[:2], reverse=True)]
