"""Statistics and figures of the scaling study: paired bootstrap, saturation, time fits, PNG plots."""

from __future__ import annotations

import os

import numpy as np
import pytest

from efficientnet_tf.errors import UserError
from efficientnet_tf.study import plots as study_plots
from efficientnet_tf.study import scaling_rules
from efficientnet_tf.study import statistics as study_stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _correct(rate: float, seeds: int = 2, images: int = 2000, seed: int = 0) -> np.ndarray:
    """0/1 predictions with exactly `rate` correct per seed, at random images."""
    rng = np.random.default_rng(seed)
    out = np.zeros((seeds, images), dtype=np.int8)
    for k in range(seeds):
        out[k, rng.choice(images, int(round(rate * images)), replace=False)] = 1
    return out


def test_bootstrap_interval_covers_a_known_difference() -> None:
    a, b = _correct(0.8, seed=1), _correct(0.7, seed=2)
    result = study_stats.paired_bootstrap(a, b, num_samples=2000, seed=0)
    assert result.estimate == pytest.approx(10.0)
    assert result.low < 10.0 < result.high
    assert result.low > 0 and result.verdict == "holds"
    assert result.high - result.low < 6  # about ±1.4 points·1.96 for unpaired 2000 images
    reverse = study_stats.paired_bootstrap(b, a, num_samples=500, seed=3)
    assert reverse.verdict == "does not hold"


def test_identical_predictions_are_inconclusive() -> None:
    a = _correct(0.75)
    result = study_stats.paired_bootstrap(a, a.copy(), num_samples=500)
    assert result.estimate == 0 and result.interval == (0.0, 0.0)
    assert result.verdict == "inconclusive"
    assert study_stats.verdict((-0.3, 0.4)) == "inconclusive"


def test_bootstrap_is_reproducible_and_checks_its_inputs() -> None:
    a, b = _correct(0.6, seeds=1, images=300), _correct(0.55, seeds=1, images=300, seed=4)
    first = study_stats.paired_bootstrap(a[0], b[0], num_samples=300, seed=7)  # 1-D means one seed
    assert first == study_stats.paired_bootstrap(a, b, num_samples=300, seed=7)
    for args in ((a, b[:, :200]), (a * 2, b), (np.zeros((0, 3)), np.zeros((0, 3)))):
        with pytest.raises(UserError):
            study_stats.paired_bootstrap(*args, num_samples=300)


def test_saturation_of_a_diminishing_curve() -> None:
    s1, s2, s4 = _correct(0.60, seed=1), _correct(0.70, seed=2), _correct(0.72, seed=3)
    result = study_stats.saturation_test(s1, s2, s4, num_samples=1000)
    assert result.first_gain == pytest.approx(10.0) and result.second_gain == pytest.approx(2.0)
    assert result.difference.estimate == pytest.approx(8.0)
    assert result.difference.low < 8.0 < result.difference.high
    assert result.difference.verdict == "holds"


def test_time_fit_of_exactly_linear_data() -> None:
    madds = [1e8, 2e8, 4e8, 8e8]
    activations = [3e6, 3.5e6, 9e6, 7e6]
    times = [0.01 + 2e-11 * m for m in madds]
    fit = study_stats.fit_time(times, madds, activations)
    assert fit.madds.r2 == pytest.approx(1.0, abs=1e-9)
    assert fit.madds.slope == pytest.approx(2e-11) and fit.madds.intercept == pytest.approx(0.01)
    assert fit.activations.r2 < 0.9 and fit.better == "madds"
    assert study_stats.fit_time(times, activations, madds).better == "activations"
    with pytest.raises(UserError):
        study_stats.fit_time(times[:2], madds[:2], activations[:2])


def _check_png(plot: study_plots.PlotFile) -> None:
    from matplotlib import image

    data = plot.path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    pixels = image.imread(plot.path)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200
    assert pixels[..., :3].std() > 0.01  # not a blank canvas


def test_accuracy_vs_madds_plot(tmp_path) -> None:
    curves = {
        "depth": {"madds": [1e8, 2e8, 4e8], "accuracy": [70, 72, 73]},
        "width": {"madds": [1e8, 2e8, 4e8], "accuracy": [70, 72.5, 73.5], "low": [69, 71.5, 72], "high": [71, 73, 75]},
        "compound": {"madds": [1e8, 2.1e8, 4.2e8], "accuracy": [70, 73.5, 75]},
    }
    plot = study_plots.plot_accuracy_vs_madds(curves, tmp_path / "acc.png")
    _check_png(plot)
    assert plot.labels == ("depth", "width", "compound")
    assert str(plot.path) == str(tmp_path / "acc.png") == os.fspath(plot)


def test_search_grid_plot_marks_the_anchors(tmp_path) -> None:
    grid = scaling_rules.search_grid(0.1)
    points = [dict(zip(("share_depth", "share_width", "share_resolution"), rule.shares),
                   accuracy=70 + 5 * rule.shares[2]) for rule in grid]
    plot = study_plots.plot_search_grid(points, tmp_path / "sub" / "grid.png")
    _check_png(plot)
    assert plot.labels == ("grid", "paper (1.2, 1.1, 1.15)", "width share a=0.8")


def test_equal_flops_bars_plot(tmp_path) -> None:
    arms = {"compound": (75.0, 73.9, 76.1), "depth": (73.0, 71.8, 74.2), "resolution": (74.1, 73.0, 75.0)}
    plot = study_plots.plot_equal_flops_bars(arms, tmp_path / "bars.png")
    _check_png(plot)
    assert plot.labels == tuple(arms)
    with pytest.raises(UserError):
        study_plots.plot_equal_flops_bars({"bad": (1.0, 2.0, 3.0)}, tmp_path / "bad.png")


def test_time_fit_names_overlap_nothing_and_none_is_lost() -> None:
    """Fourteen networks, nine of them crowded at about the same cost (as in the cpu preset): every name sits
    beside its point clear of the others and of the legend, or is listed under the plots."""
    rng = np.random.default_rng(0)
    madds = [1e7, 1.7e7, 3.5e7, 3.6e7, 3.7e7] + list(2.05e7 + rng.normal(0, 2e5, 9))
    activations = [3e5, 5e5, 9e5, 6.5e5, 1.25e6] + list(6e5 + rng.normal(0, 5e4, 9))
    times = [0.09, 0.137, 0.26, 0.15, 0.21] + list(0.15 + rng.normal(0, 0.01, 9))
    names = [f"network-number-{i}@2" for i in range(len(madds))]
    figure, axes = study_plots.time_fits_figure(times, madds, activations, names=names)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    footnote = " ".join(t.get_text() for t in figure.texts)
    for ax in axes:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts]
        legend = ax.get_legend().get_window_extent(renderer)
        for i, (name, box) in enumerate(boxes):
            assert not box.overlaps(legend), name
            assert not [other for other, b in boxes[i + 1:] if box.overlaps(b)], name
        placed = {name for name, _ in boxes}
        assert all(name in placed or name in footnote for name in names)
    assert len(axes[0].texts) >= 7  # most names do find room


def test_time_fit_plot_reports_r2(tmp_path) -> None:
    madds, activations = [1e8, 2e8, 4e8, 8e8], [3e6, 3.5e6, 9e6, 7e6]
    times = [0.01 + 2e-11 * m for m in madds]
    plot = study_plots.plot_time_fits(times, madds, activations, tmp_path / "time.png", names=list("abcd"))
    _check_png(plot)
    fit = study_stats.fit_time(times, madds, activations)
    assert plot.labels == ("measured", "linear fit R²=1.000", "measured",
                           f"linear fit R²={fit.activations.r2:.3f}")
