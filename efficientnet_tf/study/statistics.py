"""Statistics for the scaling study: paired bootstrap of accuracy differences, saturation, time-vs-cost fits.

Per-image correctness arrays have shape [seeds, images]: the same hold-out images for every arm,
and seed k of one arm paired with seed k of another. Accuracies and differences are in points (%).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from efficientnet_tf.errors import UserError

CONFIDENCE = 0.95
_CHUNK = 256  # bootstrap samples drawn at once, to bound memory on large hold-out sets


def verdict(interval: tuple[float, float]) -> str:
    """"holds" when the interval is above 0, "does not hold" when below, "inconclusive" when it covers 0."""
    low, high = interval
    if low > 0:
        return "holds"
    if high < 0:
        return "does not hold"
    return "inconclusive"


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """A statistic in accuracy points with its bootstrap percentile interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    num_samples: int

    @property
    def interval(self) -> tuple[float, float]:
        """(low, high) of the percentile interval."""
        return self.low, self.high

    @property
    def verdict(self) -> str:
        """`verdict` of the interval."""
        return verdict(self.interval)


@dataclasses.dataclass(frozen=True)
class SaturationResult:
    """Diminishing returns along one dimension at s = 1, 2, 4: first gain vs second gain."""

    first_gain: float  # acc(2) − acc(1), points
    second_gain: float  # acc(4) − acc(2), points
    difference: BootstrapResult  # first − second; "holds" means the curve saturates


def _as_correct(values: object, label: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise UserError(f"{label} must be a non-empty 0/1 array of shape [seeds, images], got shape {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise UserError(f"{label} must hold only 0 and 1 (per-image correctness)")
    return array.astype(np.float64)


def _bootstrap_contrast(arrays: Sequence[np.ndarray], weights: Sequence[float], num_samples: int, seed: int,
                        confidence: float) -> BootstrapResult:
    """Bootstrap Σ weight_i · accuracy_i, resampling images (and seeds, when more than one) jointly for all arms."""
    if num_samples < 100:
        raise UserError(f"num_samples must be >= 100 for a percentile interval, got {num_samples}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be in (0, 1), got {confidence}")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"paired arms need the same [seeds, images] shape, got {sorted(shapes)}")
    contrast = sum(w * a for w, a in zip(weights, arrays))  # [seeds, images]
    num_seeds, num_images = contrast.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(num_samples)
    for start in range(0, num_samples, _CHUNK):
        size = min(_CHUNK, num_samples - start)
        # Resampling with replacement is the same as multinomial counts per index.
        image_counts = rng.multinomial(num_images, np.full(num_images, 1 / num_images), size=size)
        if num_seeds > 1:
            seed_counts = rng.multinomial(num_seeds, np.full(num_seeds, 1 / num_seeds), size=size)
        else:
            seed_counts = np.ones((size, 1))
        stats[start:start + size] = np.einsum("bs,sn,bn->b", seed_counts, contrast, image_counts)
    stats *= 100.0 / (num_seeds * num_images)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail])
    return BootstrapResult(float(100 * contrast.mean()), float(low), float(high), confidence, num_samples)


def paired_bootstrap(correct_a: object, correct_b: object, *, num_samples: int = 2000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> BootstrapResult:
    """Accuracy of a minus accuracy of b in points, with a paired bootstrap interval over images and seeds."""
    a, b = _as_correct(correct_a, "correct_a"), _as_correct(correct_b, "correct_b")
    return _bootstrap_contrast([a, b], [1.0, -1.0], num_samples, seed, confidence)


def saturation_test(correct_s1: object, correct_s2: object, correct_s4: object, *, num_samples: int = 2000,
                    seed: int = 0, confidence: float = CONFIDENCE) -> SaturationResult:
    """Whether the gain from s = 2 to 4 is smaller than from 1 to 2 along one dimension (paired bootstrap)."""
    arrays = [_as_correct(c, f"correct at s={s}") for c, s in ((correct_s1, 1), (correct_s2, 2), (correct_s4, 4))]
    acc1, acc2, acc4 = (100 * a.mean() for a in arrays)
    # first − second = (acc2 − acc1) − (acc4 − acc2) = −acc1 + 2·acc2 − acc4
    diff = _bootstrap_contrast(arrays, [-1.0, 2.0, -1.0], num_samples, seed, confidence)
    return SaturationResult(float(acc2 - acc1), float(acc4 - acc2), diff)


@dataclasses.dataclass(frozen=True)
class LinearFit:
    """Least-squares line y = slope·x + intercept and its coefficient of determination."""

    slope: float
    intercept: float
    r2: float

    def predict(self, x: Sequence[float] | np.ndarray) -> np.ndarray:
        """The fitted values at x."""
        return self.slope * np.asarray(x, dtype=np.float64) + self.intercept


@dataclasses.dataclass(frozen=True)
class TimeFit:
    """Step time fitted against MAdds and against activations."""

    madds: LinearFit
    activations: LinearFit

    @property
    def better(self) -> str:
        """Which predicts step time better by R²: "madds", "activations" or "tie"."""
        if abs(self.madds.r2 - self.activations.r2) < 1e-9:
            return "tie"
        return "madds" if self.madds.r2 > self.activations.r2 else "activations"


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least-squares line through (x, y) with R² = 1 − SS_res / SS_tot."""
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise UserError(f"x and y must be 1-D and of equal length, got shapes {xs.shape} and {ys.shape}")
    if xs.size < 3:
        raise UserError(f"a line with a meaningful R² needs at least 3 points, got {xs.size}")
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        raise UserError("x and y must each vary to fit a line")
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = ys - (slope * xs + intercept)
    r2 = 1.0 - float(residual @ residual) / float(((ys - ys.mean()) ** 2).sum())
    return LinearFit(float(slope), float(intercept), r2)


def fit_time(step_times: Sequence[float], madds: Sequence[float], activations: Sequence[float]) -> TimeFit:
    """Linear fits of measured step time against MAdds and against activations (one entry per network)."""
    return TimeFit(linear_fit(madds, step_times), linear_fit(activations, step_times))
