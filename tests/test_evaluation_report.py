"""Evaluation results: confusion matrix, per-class figures, calibration, the report's files and pictures,
and the per-example details of the evaluation step."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.text import Text
from PIL import Image

from efficientnet_tf import evaluation_report
from efficientnet_tf.evaluation_report import figures as plots
from efficientnet_tf.training import evaluation

# A tiny labelled set: 3 classes, 9 images, predictions chosen by hand.
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 0, 1, 1, 1, 2, 2, 0, 0])
# Counted by hand: rows true class, columns predicted class.
HAND_MATRIX = np.array([[2, 1, 0],
                        [0, 2, 1],
                        [2, 0, 1]])


def _probabilities(predicted: np.ndarray, num_classes: int, confidence: float = 0.8) -> np.ndarray:
    probs = np.full((len(predicted), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


def test_confusion_matrix_matches_a_hand_count():
    matrix = evaluation_report.confusion_matrix(LABELS, PREDICTED, 3)
    np.testing.assert_array_equal(matrix, HAND_MATRIX)
    assert matrix.sum() == len(LABELS)
    records = evaluation_report.EvalRecords(3)
    records.add(LABELS[:4], _probabilities(PREDICTED[:4], 3), np.ones(4))
    records.add(LABELS[4:], _probabilities(PREDICTED[4:], 3), np.ones(5))
    np.testing.assert_array_equal(records.confusion(), HAND_MATRIX)
    with pytest.raises(ValueError):
        evaluation_report.confusion_matrix([0, 3], [0, 1], 3)


def test_per_class_figures_match_a_hand_computation():
    figures = evaluation_report.per_class_metrics(HAND_MATRIX)
    # class 0: TP 2, predicted 4 (2 + 0 + 2), support 3; FP 2, FN 1 -> TN 9 - 2 - 2 - 1 = 4
    # class 1: TP 2, predicted 3, support 3; FP 1, FN 1 -> TN 5
    # class 2: TP 1, predicted 2, support 3; FP 1, FN 2 -> TN 5
    np.testing.assert_allclose(figures["precision"], [2 / 4, 2 / 3, 1 / 2])
    np.testing.assert_allclose(figures["recall"], [2 / 3, 2 / 3, 1 / 3])
    np.testing.assert_allclose(figures["f1"], [2 * 2 / (3 + 4), 2 * 2 / (3 + 3), 2 * 1 / (3 + 2)])
    np.testing.assert_array_equal(figures["support"], [3, 3, 3])
    assert "accuracy" not in figures  # one-vs-rest accuracy reads as a per-class accuracy it is not
    pairs = evaluation_report.most_confused_pairs(HAND_MATRIX, 2)
    assert pairs[0] == (2, 0, 2, pytest.approx(2 / 3))
    assert [p[:3] for p in pairs] == [(2, 0, 2), (0, 1, 1)]
    empty = evaluation_report.per_class_metrics(np.array([[1, 0], [0, 0]]))
    assert np.isnan(empty["precision"][1]) and np.isnan(empty["recall"][1]) and np.isnan(empty["f1"][1])
    never_predicted = evaluation_report.per_class_metrics(np.array([[1, 0], [2, 0]]))
    assert np.isnan(never_predicted["precision"][1]) and never_predicted["recall"][1] == 0
    assert never_predicted["f1"][1] == 0


def test_ece_of_calibrated_predictions_is_about_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.3, 1.0, 200_000)
    correct = rng.uniform(size=confidence.size) < confidence  # right exactly as often as it claims
    calibrated = evaluation_report.calibration(confidence, correct)
    assert calibrated.ece < 0.01
    assert calibrated.counts.sum() == confidence.size
    np.testing.assert_allclose(calibrated.accuracy[calibrated.counts > 1000],
                               calibrated.confidence[calibrated.counts > 1000], atol=0.02)
    overconfident = evaluation_report.calibration(np.clip(confidence + 0.2, 0, 1), correct)
    assert overconfident.ece > 0.1


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def _drawn_figures(monkeypatch) -> list:
    """Every matplotlib figure the plots render, to read back their titles and tick labels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    drawn, draw = [], FigureCanvasAgg.draw

    def recording_draw(canvas):
        drawn.append(canvas.figure)
        return draw(canvas)

    monkeypatch.setattr(FigureCanvasAgg, "draw", recording_draw)
    return drawn


@pytest.mark.parametrize("num_classes", [10, 100, 130])
def test_confusion_matrix_png_shows_the_expected_classes(tmp_path, monkeypatch, num_classes):
    """Up to 100 classes all are drawn; above, the 40 with the most errors, planted here by hand (every other
    class is always right), and the title says how many of how many are shown."""
    rng = np.random.default_rng(num_classes)
    matrix = np.diag(rng.integers(5, 20, num_classes))
    confused = np.sort(rng.choice(num_classes, size=min(plots.MOST_CONFUSED, num_classes), replace=False))
    for true, predicted in zip(confused, np.roll(confused, 1)):  # a ring of errors among the planted classes
        matrix[true, predicted] += int(rng.integers(1, 4))
    names = [f"c{i:03d}" for i in range(num_classes)]
    drawn = _drawn_figures(monkeypatch)
    picture = plots.confusion_matrix_png(matrix, names, str(tmp_path / "cm.png"))
    width, height = _png_size(picture.path)
    shown = np.arange(num_classes) if num_classes <= 100 else confused
    np.testing.assert_array_equal(picture.classes, shown)
    (figure,) = drawn
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == [names[i] for i in shown]
    assert [t.get_text() for t in axes.get_xticklabels()] == [names[i] for i in shown]
    title = axes.get_title(loc="left")
    assert title.startswith("Confusion matrix")
    assert ("(40 most confused of 130 classes)" in title) == (num_classes > 100), title
    # Each class keeps a legible cell: at least 20 pixels per row at 100 classes.
    assert height >= 20 * min(len(shown), 100) and width >= height
    assert picture.pixels.ndim == 3 and max(picture.pixels.shape[:2]) <= plots.SUMMARY_MAX_PIXELS + 1


def test_report_files_table_and_tensorboard_images(tmp_path, caplog):
    names = ["tench", "church", "parachute"]
    records = evaluation_report.EvalRecords(3, keep=4)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (len(LABELS), 24, 24, 3)).astype(np.float32)
    probs = _probabilities(PREDICTED, 3)
    losses = -np.log(probs[np.arange(len(LABELS)), LABELS])
    records.add(LABELS, probs, losses)
    records.add_candidates(images, LABELS, probs, losses)
    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    # absl's own logger level is process state another test may have raised (the command line sets WARNING).
    with caplog.at_level("INFO"), caplog.at_level("INFO", logger="absl"):
        report = evaluation_report.write_report(records, names, str(tmp_path / "report"), step=7,
                                      heatmaps=[np.zeros((24, 24))] * 4, writer=writer)
    writer.close()
    directory = tmp_path / "report"
    with open(directory / "per_class.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["class_id", "class", "support", "predicted", "recall", "precision", "f1"]
    assert [r["class"] for r in rows] == names
    assert float(rows[0]["f1"]) == pytest.approx(4 / 7)
    assert float(rows[0]["precision"]) == pytest.approx(0.5) and float(rows[2]["recall"]) == pytest.approx(1 / 3)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["examples"] == 9 and summary["most_confused"][0]["true"] == "parachute"
    for name in ("confusion_matrix", "reliability", "top_losses", "top_losses_gradcam"):
        _png_size(directory / f"{name}.png")
        assert report.pictures[name].path == str(directory / f"{name}.png")
    # The highest-loss grid holds the 4 worst images (every mistake has the same loss here) and their classes.
    worst = records.top_losses()
    assert len(worst) == 4 and all(e.label != e.predicted for e in worst)
    assert set(report.pictures["top_losses"].classes) == {0, 1, 2}
    assert "tench" in caplog.text and "precision" in caplog.text and "parachute -> tench 2x" in caplog.text
    assert evaluation_report.writer.COLUMNS_NOTE in caplog.text  # each column says what it is
    assert caplog.text.count("\nparachute ") == 1  # the table's row
    tags = set()
    for event_file in (tmp_path / "logs").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags |= {value.tag for value in event.summary.value}
    assert {"eval/confusion_matrix", "eval/reliability", "eval/top_losses"} <= tags


def test_report_without_the_table_logs_one_summary_line(tmp_path, caplog):
    """Evaluations before a run's last one log one line each; the files are written all the same."""
    records = evaluation_report.EvalRecords(3, keep=2)
    probs = _probabilities(PREDICTED, 3)
    records.add(LABELS, probs, -np.log(probs[np.arange(len(LABELS)), LABELS]))
    with caplog.at_level("INFO"), caplog.at_level("INFO", logger="absl"):
        evaluation_report.write_report(records, ["tench", "church", "parachute"], str(tmp_path), step=3, log_table=False)
    messages = [r.getMessage() for r in caplog.records if "step 3" in r.getMessage()]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    # Lowest recall first (parachute 1 of 3), then the most-confused pair.
    assert "lowest recall: parachute 33.3%, tench 66.7%, church 66.7%" in messages[0]
    assert "most confused: parachute -> tench 2x" in messages[0]
    assert (tmp_path / "per_class.csv").exists() and (tmp_path / "summary.json").exists()


def test_top_losses_titles_overlap_no_image_and_no_other_title():
    """Each image's three title lines sit in their own band: none is drawn over an image or another title."""
    rng = np.random.default_rng(3)
    names = [f"a rather long class name {i}" for i in range(10)]
    examples = [evaluation_report.TopLoss(5.0 - i / 10, i % 10, (i + 1) % 10, 0.9, 0.01,
                                rng.uniform(0, 255, (48, 48, 3)).astype(np.float32)) for i in range(16)]
    figure = plots.top_losses_figure(examples, names)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    images = [axes.get_window_extent(renderer) for axes in figure.axes]
    titles = [axes.title.get_window_extent(renderer) for axes in figure.axes]
    heading = [text for text in figure.findobj(Text) if text.get_text() == "Highest-loss images"]
    assert len(heading) == 1
    heading = heading[0].get_window_extent(renderer)
    assert len(images) == len(titles) == 16
    for i, title in enumerate(titles):
        assert not any(title.overlaps(image) for image in images), f"title {i} is drawn over an image"
        assert not any(title.overlaps(other) for j, other in enumerate(titles) if j != i), f"title {i}"
        assert not title.overlaps(heading) and figure.bbox.contains(title.x0, title.y0)
        assert figure.bbox.contains(title.x1, title.y1), f"title {i} is cut off"


def test_reliability_marks_each_bins_mean_confidence_beside_its_accuracy():
    """Bars up to each bin's accuracy and a mark at its mean confidence, so that the gap reads whichever is higher."""
    rng = np.random.default_rng(4)
    confidence = rng.uniform(0.2, 1.0, 2000)
    correct = rng.uniform(size=confidence.size) < np.clip(confidence + 0.15, 0, 1)  # under-confident
    calib = evaluation_report.calibration(confidence, correct)
    figure = plots.reliability_figure(calib)
    top = figure.axes[0]
    filled = calib.counts > 0
    heights = [patch.get_height() for patch in top.patches]
    np.testing.assert_allclose(heights, calib.accuracy[filled])
    marks = [c for c in top.collections if c.get_label() == "mean confidence in the bin"]
    assert len(marks) == 1
    segments = marks[0].get_segments()
    np.testing.assert_allclose([seg[0][1] for seg in segments], calib.confidence[filled])
    np.testing.assert_allclose([(seg[0][0], seg[1][0]) for seg in segments],
                               np.stack([calib.edges[:-1], calib.edges[1:]], axis=1)[filled])


def test_eval_step_details_feed_the_records():
    """The evaluation step's per-example outputs give the same confusion matrix as the model itself."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(x))
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (50, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 4, 50).astype(np.int32)
    strategy = tf.distribute.get_strategy()
    eval_batch = evaluation.make_eval_batch_fn(strategy, model, 4, details=3)
    records = evaluation_report.EvalRecords(4, keep=5)
    metrics = evaluation.evaluate_model(
        strategy, eval_batch, lambda context: tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), records)
    logits = model(images).numpy()
    expected = evaluation_report.confusion_matrix(labels, logits.argmax(-1), 4)
    np.testing.assert_array_equal(records.confusion(), expected)
    assert records.count == 50 and metrics["examples"] == 50
    assert metrics["top1"] == pytest.approx(np.trace(expected) / 50)
    losses = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy()
    worst = records.top_losses()
    np.testing.assert_allclose([e.loss for e in worst], np.sort(losses)[::-1][:5], rtol=1e-5)
    np.testing.assert_allclose(worst[0].image, images[int(np.argmax(losses))])
