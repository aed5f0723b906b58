"""The input-bound alarm: the share of step time spent waiting for the next batch, in the progress line and
TensorBoard, and one warning (with what to do) when it stays high; quiet when the pipeline keeps up."""

from __future__ import annotations

import logging
import pathlib
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from efficientnet_tf import hparams
from efficientnet_tf import training
from efficientnet_tf.errors import UserError
from efficientnet_tf.training import throughput

TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
BATCH, CLASSES, STEPS = 4, 3, 6
SLOW_BATCH_SECONDS = 0.4


@pytest.fixture(autouse=True)
def _op_determinism_off():
    """Op determinism is process state that an earlier test in this worker may have turned on (the meter
    then stays off by design); these tests measure, so they run with it off and put it back after."""
    was_on = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was_on:
        tf_config.enable_op_determinism()


def _trainer(model_dir: pathlib.Path, dataset_fn, *extra: str) -> training.Trainer:
    config = hparams.resolve(hparams.build_config([
        TINY, f"train.batch_size={BATCH},train.train_steps={STEPS},train.steps_per_epoch={STEPS}",
        "train.log_every_steps=1,train.image_summary=false,train.ema_decay=0", *extra]),
        num_classes=CLASSES, num_train=BATCH * STEPS)
    return training.Trainer(config, training.create_strategy("default"), str(model_dir), train_dataset_fn=dataset_fn)


def _batch() -> tuple[tf.Tensor, tf.Tensor]:
    images = tf.random.stateless_uniform([BATCH, 32, 32, 3], [1, 2], 0, 255)
    return images, tf.one_hot(tf.range(BATCH) % CLASSES, CLASSES)


def fast_dataset(context=None, stage=None) -> tf.data.Dataset:
    """A batch already in memory, prefetched: the step never waits."""
    return tf.data.Dataset.from_tensors(_batch()).repeat().prefetch(2)


def slow_dataset(context=None, stage=None) -> tf.data.Dataset:
    """Each batch takes SLOW_BATCH_SECONDS to produce (a host pipeline far slower than the tiny step)."""
    def slow(images, labels):
        images = tf.numpy_function(lambda x: (time.sleep(SLOW_BATCH_SECONDS), x)[1], [images], tf.float32)
        return tf.ensure_shape(images, [BATCH, 32, 32, 3]), labels

    return tf.data.Dataset.from_tensors(_batch()).repeat().map(slow)


def _train_scalars(model_dir: pathlib.Path, tag: str) -> list[float]:
    values = []
    for path in sorted((model_dir / "logs" / "train").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append(float(tf.make_ndarray(value.tensor)))
    return values


def _train(model_dir: pathlib.Path, dataset_fn, caplog: pytest.LogCaptureFixture, *extra: str):
    trainer = _trainer(model_dir, dataset_fn, *extra)
    # The absl logger's own level too: an earlier test in the process may have lowered absl's verbosity.
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="absl"):
        result = trainer.train()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Input-bound" in r.getMessage()]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    return result, warnings, progress


def test_slow_pipeline_sets_off_the_alarm_once(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    result, warnings, progress = _train(tmp_path, slow_dataset, caplog)
    assert result.step == STEPS
    fraction = result.train_metrics["input_wait_fraction"]
    assert fraction > 0.5, result.train_metrics  # the tiny step takes a small part of each 0.4 s batch
    assert len(warnings) == 1, warnings  # once, although every window is above the threshold
    assert "data.augment_on_device=true" in warnings[0] and "caching decoded images" in warnings[0]
    assert any("input wait" in line and "% of step time" in line for line in progress), progress
    logged = _train_scalars(tmp_path, "input_wait_fraction")
    # Every timed window is in TensorBoard; the first may find batches made during the tracing call.
    assert len(logged) == STEPS - 1 and min(logged[-3:]) > 0.5, logged


def test_fast_pipeline_stays_quiet(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    result, warnings, progress = _train(tmp_path, fast_dataset, caplog)
    assert result.step == STEPS
    threshold = hparams.default_config().train.input_wait_alarm  # the default alarm threshold
    assert "input_wait_fraction" in result.train_metrics, result.train_metrics
    assert warnings == []  # the alarm needs windows above the threshold in a row: one slow window is noise
    logged = _train_scalars(tmp_path, "input_wait_fraction")
    assert len(logged) == STEPS - 1, logged
    # A window on a shared machine can catch the scheduler (one took 0.21 of its step time in CI), so the
    # test asks what the alarm asks: no two windows in a row above the threshold, and a typical window
    # (the median) far below it. A meter that counted step time as waiting fails both.
    above = [value >= threshold for value in logged]
    assert not any(a and b for a, b in zip(above, above[1:])), logged
    assert sorted(logged)[len(logged) // 2] < threshold / 2, logged


def test_alarm_needs_consecutive_windows_above_the_threshold() -> None:
    alarm = throughput.InputBoundAlarm(0.2, windows=2)
    assert alarm.observe(None) is None  # an untimed window (tracing) does not count
    assert alarm.observe(0.5) is None
    assert alarm.observe(0.1) is None  # back under: the run starts again
    assert alarm.observe(0.3) is None
    message = alarm.observe(0.4)
    assert message and "30%, 40% of step time" in message and "above 20%" in message
    assert alarm.observe(0.9) is None  # once only
    assert throughput.InputBoundAlarm(None).observe(1.0) is None


def test_log_window_share_counts_timed_calls_only() -> None:
    window = throughput.LogWindow()
    window.add(8.0, 2.0, 4.0, steps=1, seconds=30.0, waited=29.0, timed=False)  # tracing call
    assert window.input_wait_fraction is None and "input_wait_fraction" not in window.metrics(4, 0.1)
    window.add(8.0, 2.0, 4.0, steps=2, seconds=1.0, waited=0.25, timed=True)
    metrics = window.metrics(4, 0.1)
    assert metrics["input_wait_fraction"] == pytest.approx(0.25)
    assert metrics["images_per_second"] == pytest.approx(8.0) and metrics["loss"] == pytest.approx(2.0)


@pytest.mark.parametrize("value, expected", [(0.2, 0.2), ("0.35", 0.35), (0, None), (None, None), ("off", None)])
def test_alarm_threshold_setting(value, expected) -> None:
    assert hparams.input_wait_alarm(value) == expected


@pytest.mark.parametrize("value", [1.5, -0.1, "often"])
def test_alarm_threshold_rejects_bad_values(value) -> None:
    with pytest.raises(UserError, match="train.input_wait_alarm"):
        hparams.input_wait_alarm(value)


def test_meter_times_the_wait_inside_a_compiled_loop() -> None:
    meter = throughput.InputWaitMeter()
    iterator = iter(slow_dataset())

    @tf.function
    def loop(steps):
        total = tf.constant(0.0)
        for _ in tf.range(steps):
            (images, _), timed = meter.next_batch(iterator)
            with tf.control_dependencies([timed]):
                total += tf.reduce_sum(images)
        return total

    loop(tf.constant(1))
    meter.take()
    began = time.monotonic()
    loop(tf.constant(3))
    wall = time.monotonic() - began
    waited = meter.take()
    assert 2 * SLOW_BATCH_SECONDS * 0.9 <= waited <= wall, (waited, wall)  # a batch may have been ready
    assert meter.take() == 0.0
    assert np.isfinite(waited)


def test_deterministic_runs_are_not_metered() -> None:
    """tf.timestamp fails under op determinism (train.deterministic): the meter then measures nothing and the
    window reports speed but no input-wait share."""
    meter = throughput.InputWaitMeter(enabled=False)

    @tf.function
    def loop():
        (images, _), timed = meter.next_batch(iter(fast_dataset()))
        with tf.control_dependencies([timed]):
            return tf.reduce_sum(images)

    graph = loop.get_concrete_function().graph
    assert not [op for op in graph.get_operations() if op.type == "Timestamp"]
    assert meter.take() is None
    window = throughput.LogWindow()
    window.add(8.0, 2.0, 4.0, steps=2, seconds=1.0, waited=meter.take(), timed=True)
    metrics = window.metrics(4, 0.1)
    assert "input_wait_fraction" not in metrics and metrics["images_per_second"] == pytest.approx(8.0)
