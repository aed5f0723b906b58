"""PNG figures for the scaling study, drawn with matplotlib's Agg canvas (imported on first use).

Every function takes plain data and a path, writes the PNG and returns a `PlotFile`: the path
(usable wherever a path is) and the legend labels of the series drawn, so callers and tests can
check what the figure shows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

from efficientnet_tf.errors import UserError
from efficientnet_tf.study import scaling_rules
from efficientnet_tf.study.statistics import fit_time

DPI = 100
Series = Mapping[str, Sequence[float]]


@dataclasses.dataclass(frozen=True)
class PlotFile:
    """A written figure: its path and the labels of its series, in drawing order."""

    path: pathlib.Path
    labels: tuple[str, ...]

    def __fspath__(self) -> str:
        return os.fspath(self.path)


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.8):
    # matplotlib is imported on first use: only a study that draws pays for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on its own Agg canvas: no pyplot state, no global backend switch.
    figure = Figure(figsize=(width * ncols, height), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return figure, axes


def _save(figure, axes, path: str | os.PathLike, *, layout: bool = True) -> PlotFile:
    """Write the PNG (with a legend on each axes that has labels); `layout=False` keeps a layout already made."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels: list[str] = []
    for ax in axes:
        _, ax_labels = ax.get_legend_handles_labels()
        if ax_labels and ax.get_legend() is None:
            ax.legend(fontsize="small")
        labels += ax_labels
    if layout:
        figure.tight_layout()
    figure.savefig(out, format="png")
    return PlotFile(out, tuple(labels))


def _column(series: Series, key: str, name: str) -> list[float]:
    if key not in series:
        raise UserError(f"series {name!r} lacks {key!r}")
    return [float(v) for v in series[key]]


def plot_accuracy_vs_madds(curves: Mapping[str, Series], path: str | os.PathLike, *, compound: str = "compound",
                           title: str = "Accuracy vs multiply-adds") -> PlotFile:
    """One line per scaling rule ({name: {"madds", "accuracy", optional "low", "high"}}), log-x, compound in bold."""
    figure, axes = _figure()
    ax = axes[0]
    for name, series in curves.items():
        madds, acc = _column(series, "madds", name), _column(series, "accuracy", name)
        if len(madds) != len(acc) or not madds:
            raise UserError(f"series {name!r}: madds and accuracy must be non-empty and of equal length")
        style = dict(color="black", linewidth=2.5, marker="*", markersize=10, zorder=3) if name == compound \
            else dict(linewidth=1.5, marker="o")
        ax.plot(madds, acc, label=name, **style)
        if "low" in series and "high" in series:
            low, high = _column(series, "low", name), _column(series, "high", name)
            ax.errorbar(madds, acc, yerr=[[a - lo for a, lo in zip(acc, low)], [hi - a for a, hi in zip(acc, high)]],
                        fmt="none", ecolor=ax.lines[-1].get_color(), capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("hold-out top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return _save(figure, axes, path)


def _ternary_xy(share_d: float, share_w: float, share_r: float) -> tuple[float, float]:
    # Vertices: depth (0, 0), width (1, 0), resolution (1/2, √3/2).
    return share_w + share_r / 2, share_r * math.sqrt(3) / 2


def plot_search_grid(points: Sequence[Mapping[str, float]], path: str | os.PathLike, *,
                     marked: Mapping[str, Sequence[float]] | None = None, metric: str = "accuracy",
                     title: str = "φ = 1 search over log-FLOPs shares") -> PlotFile:
    """Ternary plot of grid points ({"share_depth", "share_width", "share_resolution", metric}) coloured by metric.

    `marked` names special points by their (depth, width, resolution) shares; by default the paper's
    (1.2, 1.1, 1.15) and the width-share point a = 0.8.
    """
    if not points:
        raise UserError("the search grid plot needs at least one point")
    if marked is None:
        marked = {"paper (1.2, 1.1, 1.15)": scaling_rules.paper_compound().shares,
                  "width share a=0.8": scaling_rules.width_share(0.8).shares}
    figure, axes = _figure(width=6.4, height=5.6)
    ax = axes[0]
    h = math.sqrt(3) / 2
    ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], color="grey", linewidth=1)
    xy = [_ternary_xy(p["share_depth"], p["share_width"], p["share_resolution"]) for p in points]
    values = [float(p[metric]) for p in points] if all(metric in p for p in points) else None
    scatter = ax.scatter([x for x, _ in xy], [y for _, y in xy], c=values, cmap="viridis", s=60,
                         label="grid", zorder=2, **({} if values else {"color": "tab:blue"}))
    if values:
        figure.colorbar(scatter, ax=ax, label="hold-out top-1 (%)" if metric == "accuracy" else metric)
    for (label, shares), marker in zip(marked.items(), ("*", "D", "s", "^", "v", "P")):
        x, y = _ternary_xy(*shares)
        ax.scatter([x], [y], marker=marker, s=220, facecolors="none", edgecolors="red", linewidths=2, label=label,
                   zorder=3)
    for text, (x, y), align in (("depth", (0, 0), "right"), ("width", (1, 0), "left"),
                                ("resolution", (0.5, h), "center")):
        ax.annotate(text, (x, y), xytext=(0, 8 if y else -14), textcoords="offset points", ha=align)
    ax.set_xlim(-0.12, 1.12)
    ax.set_ylim(-0.1, h + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title)
    return _save(figure, axes, path)


def plot_equal_flops_bars(arms: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                          ylabel: str = "top-1 accuracy (%)", title: str = "Arms at equal FLOPs",
                          zoom: bool = True) -> PlotFile:
    """One bar per arm ({name: (value, low, high)}) with its 95% interval; `zoom` fits the y axis to the intervals."""
    if not arms:
        raise UserError("the bar plot needs at least one arm")
    figure, axes = _figure()
    ax = axes[0]
    colors = [f"C{i % 10}" for i in range(len(arms))]
    for i, ((name, triple), color) in enumerate(zip(arms.items(), colors)):
        if len(triple) != 3:
            raise UserError(f"arm {name!r} needs (value, low, high), got {tuple(triple)}")
        value, low, high = (float(v) for v in triple)
        if not low <= value <= high:
            raise UserError(f"arm {name!r}: value {value} lies outside its interval [{low}, {high}]")
        ax.bar([i], [value], color=color, label=name)
        ax.errorbar([i], [value], yerr=[[value - low], [high - value]], fmt="none", ecolor="black", capsize=6)
    ax.set_xticks(range(len(arms)), list(arms), rotation=20)
    if zoom:
        # Accuracies of the arms differ by points, invisible on a 0-100 axis.
        lows, highs = [float(t[1]) for t in arms.values()], [float(t[2]) for t in arms.values()]
        pad = 0.25 * ((max(highs) - min(lows)) or 1.0)
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
    low_y, high_y = ax.get_ylim()
    if low_y < 0 < high_y:
        ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + " (bars: 95% interval)")
    return _save(figure, axes, path)


# Offsets (in points) tried in turn for the name of a point in the time-fit plot: the first that keeps
# the name clear of the other names, the points and the legend, inside the axes, is used.
LABEL_OFFSETS = ((4, 4), (4, -11), (-4, 4), (-4, -11), (10, 14), (10, -20), (-10, 14), (-10, -20), (16, -3),
                 (-16, -3))


def _label_points(figure, ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str]) -> list[str]:
    """Write each point's name beside it where there is room; return the names that found none."""
    from matplotlib.transforms import Bbox  # with matplotlib, only drawing needs it

    renderer = figure.canvas.get_renderer()
    pixels = ax.transData.transform(list(zip(xs, ys)))
    taken = [Bbox.from_bounds(px - 4, py - 4, 8, 8) for px, py in pixels]  # the markers
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    frame = ax.get_window_extent(renderer)
    crowded = []
    for name, x, y in zip(names, xs, ys):
        for dx, dy in LABEL_OFFSETS:
            text = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize="x-small",
                               ha="left" if dx > 0 else "right")
            box = text.get_window_extent(renderer)
            inside = frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            text.remove()
        else:
            crowded.append(name)
    return crowded


def time_fits_figure(step_times: Sequence[float], madds: Sequence[float], activations: Sequence[float], *,
                     names: Sequence[str] | None = None, time_unit: str = "s"):
    """The time-fit figure (see `plot_time_fits`) and its two axes, laid out and labelled."""
    fit = fit_time(step_times, madds, activations)
    figure, axes = _figure(ncols=2, width=5.6)
    for ax, xs, line, xlabel in ((axes[0], madds, fit.madds, "multiply-adds per image"),
                                 (axes[1], activations, fit.activations, "activations per image")):
        ax.scatter(xs, step_times, label="measured", zorder=3)
        lo, hi = min(xs), max(xs)
        ax.plot([lo, hi], list(line.predict([lo, hi])), color="red", label=f"linear fit R²={line.r2:.3f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"step time ({time_unit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    figure.suptitle(f"Training step time against multiply-adds and against activations "
                    f"(better predictor: {fit.better})", fontsize="medium")
    # Names go beside their points only where they stay legible; the rest are listed under the plots.
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    crowded: list[str] = []
    for ax, xs in ((axes[0], madds), (axes[1], activations)):
        crowded += _label_points(figure, ax, xs, step_times, names or ())
    if crowded:
        listed = ", ".join(dict.fromkeys(crowded))
        figure.text(0.01, 0.01, f"Not named beside their points in one of the plots (no room): {listed}", fontsize="x-small",
                    wrap=True)
    return figure, axes


def plot_time_fits(step_times: Sequence[float], madds: Sequence[float], activations: Sequence[float],
                   path: str | os.PathLike, *, names: Sequence[str] | None = None,
                   time_unit: str = "s") -> PlotFile:
    """Step time against MAdds (left) and activations (right), each with its least-squares line and R²,
    and each point named where its name fits."""
    figure, axes = time_fits_figure(step_times, madds, activations, names=names, time_unit=time_unit)
    return _save(figure, axes, path, layout=False)
