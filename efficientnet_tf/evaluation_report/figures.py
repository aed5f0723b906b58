"""PNG figures of an evaluation: confusion matrix, reliability diagram, highest-loss image grid.

Drawn on bare matplotlib Figures with the Agg canvas (no pyplot state, no global backend switch).
Each function writes the PNG and returns a `Picture`: the path, the class indices it shows (so
tests and callers can check what was drawn) and the pixels (for TensorBoard's images tab).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

from efficientnet_tf.evaluation_report.records import Calibration, TopLoss, most_confused_classes

# Above this many classes the confusion matrix shows only the MOST_CONFUSED classes with the most errors.
MAX_MATRIX_CLASSES = 100
MOST_CONFUSED = 40
DPI = 100
# TensorBoard copies are scaled so that their longer side stays under this many pixels.
SUMMARY_MAX_PIXELS = 1600


@dataclasses.dataclass
class Picture:
    """A written figure: its PNG path, the classes it shows and its RGB pixels [H, W, 3] (uint8)."""

    path: str
    classes: tuple[int, ...]
    pixels: np.ndarray

    def __fspath__(self) -> str:
        return self.path


def _figure(width: float, height: float):
    # matplotlib is imported on first use: only evaluations that draw pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str, classes: Sequence[int]) -> Picture:
    """Render once; the PNG and a TensorBoard copy (longer side at most SUMMARY_MAX_PIXELS) from the same pixels."""
    from PIL import Image  # with matplotlib, only drawing needs it

    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    image = Image.fromarray(pixels)
    image.save(path, format="PNG", compress_level=3)
    scale = SUMMARY_MAX_PIXELS / max(image.size)
    if scale < 1:
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                             Image.Resampling.BOX)
        pixels = np.asarray(image)
    return Picture(path, tuple(int(c) for c in classes), pixels)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def confusion_matrix_png(matrix: np.ndarray, class_names: Sequence[str], path: str, *, title: str = "") -> Picture:
    """Row-normalised colours, counts written in the non-empty cells, class names on both axes.

    Up to MAX_MATRIX_CLASSES classes are all drawn (the figure grows with the class count so that
    every cell stays legible); above that, the MOST_CONFUSED classes with the most errors.
    """
    matrix = np.asarray(matrix, np.int64)
    num = matrix.shape[0]
    shown = np.arange(num) if num <= MAX_MATRIX_CLASSES else most_confused_classes(matrix, MOST_CONFUSED)
    sub = matrix[np.ix_(shown, shown)]
    support = matrix.sum(axis=1)[shown].astype(np.float64)
    rows = np.divide(sub, support[:, None], out=np.zeros(sub.shape, np.float64), where=support[:, None] > 0)
    n = len(shown)
    cell = 0.55 if n <= 12 else 0.4 if n <= 40 else 0.25  # inches per class
    margin = 1.7  # inches for the class names (left, bottom) and the title / colour bar
    side = max(4.0, n * cell)
    figure = _figure(side + margin + 1.3, side + margin + 0.6)
    width, height = figure.get_size_inches()
    axes = figure.add_axes((margin / width, margin / height, side / width, side / height))
    image = axes.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    bar = figure.add_axes(((margin + side + 0.2) / width, margin / height, 0.2 / width, side / height))
    figure.colorbar(image, cax=bar, label="fraction of the true class")
    labels = [_short(class_names[i]) for i in shown]
    tick_font = 9 if n <= 20 else 7 if n <= 50 else 5.5
    axes.set_xticks(range(n), labels, rotation=90, fontsize=tick_font)
    axes.set_yticks(range(n), labels, fontsize=tick_font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    count_font = 9 if n <= 12 else 6.5 if n <= 40 else 5
    for r in range(n):
        for c in range(n):
            if sub[r, c]:
                axes.text(c, r, str(sub[r, c]), ha="center", va="center", fontsize=count_font,
                          color="white" if rows[r, c] > 0.5 else "black")
    heading = title or "Confusion matrix"
    if n < num:
        heading += f" ({n} most confused of {num} classes)"
    axes.set_title(heading + " — colour: row-normalised, numbers: counts", fontsize=10, loc="left")
    return _save(figure, path, shown)


def reliability_figure(calib: Calibration, *, title: str = ""):
    """The reliability diagram as a matplotlib Figure: per bin, a bar up to its accuracy and a red mark at its
    mean confidence (with the diagonal), and below it how many examples each bin holds."""
    figure = _figure(6.0, 7.0)
    top = figure.add_axes((0.12, 0.36, 0.83, 0.56))
    bottom = figure.add_axes((0.12, 0.08, 0.83, 0.2), sharex=top)
    edges = calib.edges
    width = np.diff(edges)
    filled = calib.counts > 0
    top.bar(edges[:-1][filled], calib.accuracy[filled], width=width[filled], align="edge", color="#4878d0",
            edgecolor="black", linewidth=0.5, label="accuracy in the bin")
    # Each bin's mean confidence as a mark across the bin: the gap from the bar's top to the mark is the
    # miscalibration, over the bar (over-confident) or inside it (under-confident), and reads either way.
    top.hlines(calib.confidence[filled], edges[:-1][filled], edges[1:][filled], colors="firebrick", linewidth=2.5,
               label="mean confidence in the bin")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title or 'Reliability diagram'} — ECE {100 * calib.ece:.2f}%", fontsize=10)
    bottom.bar(edges[:-1], calib.counts, width=width, align="edge", color="grey", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("top-1 confidence")
    bottom.set_ylabel("examples")
    return figure


def reliability_png(calib: Calibration, path: str, *, title: str = "") -> Picture:
    """The reliability diagram (`reliability_figure`) written as a PNG."""
    return _save(reliability_figure(calib, title=title), path, ())


def overlay(image: np.ndarray, heatmap: np.ndarray | None, alpha: float = 0.45) -> np.ndarray:
    """The image (0..255) with a 0..1 heat map of the same height and width blended in (jet colours)."""
    image = np.clip(np.asarray(image, np.float32), 0, 255) / 255.0
    if heatmap is None:
        return image
    from matplotlib import colormaps  # only drawing needs it

    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]
    return np.clip((1 - alpha) * image + alpha * colours, 0.0, 1.0)


# The highest-loss grid, in inches: each cell is a title band of three 8-point lines over a square image.
TILE_WIDTH = 3.0
TILE_IMAGE = 2.7
TILE_TITLE = 0.6
TILE_GAP = 0.15
GRID_HEADING = 0.5


def top_losses_figure(examples: Sequence[TopLoss], class_names: Sequence[str], *,
                      heatmaps: Sequence[np.ndarray] | None = None, title: str = ""):
    """The highest-loss grid as a matplotlib Figure: under a title band per image, true class, predicted class
    with its probability, and the loss.

    Every cell gets a fixed band for its three title lines above its image, so that no title is drawn over
    the image of the row above, whatever the class names and the number of rows.
    """
    count = len(examples)
    cols = max(1, min(4, count))
    rows = max(1, math.ceil(count / cols))
    row_height = TILE_TITLE + TILE_IMAGE + TILE_GAP
    width, height = cols * TILE_WIDTH, rows * row_height + GRID_HEADING
    figure = _figure(width, height)
    for i, example in enumerate(examples):
        row, col = divmod(i, cols)
        left = col * TILE_WIDTH + (TILE_WIDTH - TILE_IMAGE) / 2
        bottom = height - GRID_HEADING - (row + 1) * row_height + TILE_GAP
        axes = figure.add_axes((left / width, bottom / height, TILE_IMAGE / width, TILE_IMAGE / height))
        axes.imshow(overlay(example.image, heatmaps[i] if heatmaps is not None else None))
        axes.set_xticks([])
        axes.set_yticks([])
        colour = "black" if example.label == example.predicted else "firebrick"
        axes.set_title(f"true: {_short(class_names[example.label], 22)}\n"
                       f"pred: {_short(class_names[example.predicted], 22)} ({example.probability:.2f})\n"
                       f"loss {example.loss:.2f}", fontsize=8, pad=4, color=colour)
    figure.suptitle(title or ("Highest-loss images" + (" with Grad-CAM" if heatmaps is not None else "")),
                    fontsize=11, y=1 - 0.15 / height, va="top")
    return figure


def top_losses_png(examples: Sequence[TopLoss], class_names: Sequence[str], path: str, *,
                   heatmaps: Sequence[np.ndarray] | None = None, title: str = "") -> Picture:
    """A grid of the highest-loss images (`top_losses_figure`) written as a PNG."""
    figure = top_losses_figure(examples, class_names, heatmaps=heatmaps, title=title)
    return _save(figure, path, sorted({e.label for e in examples} | {e.predicted for e in examples}))
