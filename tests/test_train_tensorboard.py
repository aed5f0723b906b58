"""A short training run writes the TensorBoard scalars, image grid, hparams and profile it promises,
plus eval results that `--mode=eval`-style evaluation of the same checkpoint reproduces."""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from efficientnet_tf import hparams
from efficientnet_tf import training
from efficientnet_tf.data import synthetic_dataset_fn
from efficientnet_tf import run_model
from efficientnet_tf.rundir import RunDir

TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"


def _events(directory: pathlib.Path) -> event_accumulator.EventAccumulator:
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={"images": 0, "scalars": 0,
                                                                                  "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(accumulator: event_accumulator.EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    """Scalars written with tf.summary.scalar (stored as tensors in TF2 event files)."""
    values = {}
    for tag in accumulator.Tags()["tensors"]:
        events = accumulator.Tensors(tag)
        if events and events[0].tensor_proto.dtype == tf.float32.as_datatype_enum and not events[0].tensor_proto.tensor_shape.dim:
            values[tag] = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events]
    return values


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    model_dir = tmp_path_factory.mktemp("tb")
    config = hparams.resolve(
        hparams.build_config([TINY, "train.batch_size=8,train.train_steps=6,train.steps_per_epoch=3,train.ema_decay=0.99",
                              "train.log_every_steps=2,train.checkpoint_every_steps=3,train.profile_steps=3,4"]),
        num_classes=4, num_train=24,
    )
    info = training.create_strategy("default")
    train_fn = synthetic_dataset_fn(32, 4, 8, seed=2)
    eval_fn = synthetic_dataset_fn(32, 4, 8, seed=2, eval=True, eval_examples=40)
    trainer = training.Trainer(config, info, str(model_dir), train_dataset_fn=train_fn, eval_dataset_fn=eval_fn)
    # What the run logs (absl's logger level is process state another test may have raised).
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        result = trainer.train(eval_every_epochs=1)
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    return {"dir": model_dir, "result": result, "config": config, "info": info, "eval_fn": eval_fn, "log": messages}


def test_train_scalars_images_and_hparams(run: dict) -> None:
    train = _events(run["dir"] / "logs" / "train")
    scalars = _scalars(train)
    for tag in ("loss", "top1", "learning_rate", "images_per_second", "step_time_seconds"):
        assert tag in scalars, f"missing train scalar {tag}: {sorted(scalars)}"
    assert [step for step, _ in scalars["loss"]] == [2, 4, 6]
    assert all(np.isfinite(v) and v > 0 for _, v in scalars["loss"])
    assert all(0.0 <= v <= 1.0 for _, v in scalars["top1"])
    assert all(v > 0 for _, v in scalars["images_per_second"])
    # The logged rate is the one the optimizer used for the last step of each window.
    schedule = training.build_schedule(run["config"])
    for step, rate in scalars["learning_rate"]:
        assert rate == pytest.approx(float(schedule(step - 1)))
    images = [tag for tag in train.Tags()["tensors"] if "augmented_images" in tag]
    assert images, train.Tags()
    grid = train.Tensors(images[0])[0]
    width, height = (int(x) for x in tf.make_ndarray(grid.tensor_proto)[:2])
    assert (width, height) == (3 * 32, 3 * 32)  # 8 images -> a 3 x 3 grid of 32 px tiles
    tags = set(train.Tags()["tensors"])
    assert "_hparams_/session_start_info" in tags
    assert "config" in tags


def test_eval_scalars_and_results_file(run: dict) -> None:
    evaluation = _scalars(_events(run["dir"] / "logs" / "eval"))
    for tag in ("loss", "top1", "top5"):
        assert tag in evaluation, f"missing eval scalar {tag}: {sorted(evaluation)}"
        assert [step for step, _ in evaluation[tag]] == [3, 6]
    record = json.loads((run["dir"] / "eval_results.json").read_text())
    assert record["step"] == 6 and record["examples"] == 40
    assert record["top1"] == pytest.approx(run["result"].eval_metrics["top1"])
    history = (run["dir"] / "eval_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [3, 6]
    best = json.loads((run["dir"] / "checkpoints" / "best" / "best.json").read_text())
    assert best["top1"] == pytest.approx(max(json.loads(line)["top1"] for line in history))
    # Each evaluation's report (efficientnet_tf.evaluation_report) and its pictures in the images tab.
    for step in (3, 6):
        summary = json.loads((run["dir"] / "evaluation" / f"step-{step}" / "summary.json").read_text())
        assert summary["examples"] == 40 and "confusion_matrix.png" in summary["files"]
    pictures = _events(run["dir"] / "logs" / "eval").Tags()["tensors"]
    assert {"eval/confusion_matrix", "eval/reliability", "eval/top_losses"} <= set(pictures), pictures
    # The per-class table is logged once, at the last evaluation; the one before gets one summary line.
    tables = [m for m in run["log"] if m.startswith("Per-class results")]
    assert len(tables) == 1 and tables[0].startswith("Per-class results at step 6"), tables
    assert sum(m.startswith("Evaluation report at step 3") for m in run["log"]) == 1


def test_profiler_trace_written(run: dict) -> None:
    """train.profile_steps=3,4: one trace, in TensorBoard's profile plugin folder, of training steps (the train
    loop's function with forward and backward kernels), not of evaluation or an empty session."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the trace's format, shipped with TensorFlow

    sessions = list((run["dir"] / "logs" / "train" / "plugins" / "profile").iterdir())
    assert len(sessions) == 1, sessions
    (trace,) = sessions[0].glob("*.xplane.pb")
    space = xplane_pb2.XSpace()
    space.ParseFromString(trace.read_bytes())
    names = {metadata.name for plane in space.planes for metadata in plane.event_metadata.values()}
    assert any("train_loop" in name for name in names), sorted(names)[:50]
    for kernel in ("FusedBatchNormV3", "FusedBatchNormGradV3", "Conv2DBackpropFilter"):
        assert any(kernel in name for name in names), (kernel, sorted(names)[:80])


def test_evaluating_the_checkpoint_again_gives_the_same_numbers(run: dict) -> None:
    again = training.evaluate_checkpoints(run["config"], run["info"], str(run["dir"]), run["eval_fn"])
    assert again["step"] == 6
    for key in ("top1", "top5", "loss"):
        assert again[key] == pytest.approx(run["result"].eval_metrics[key], abs=1e-5)


def test_restore_for_inference_uses_the_moving_average(run: dict) -> None:
    RunDir(str(run["dir"])).write_labels(["a", "b", "c", "d"])
    RunDir(str(run["dir"])).write_config(run["config"])
    model, config, names = run_model.restore_for_inference(str(run["dir"]))
    assert names == ["a", "b", "c", "d"] and int(config.model.num_classes) == 4
    reader = tf.train.load_checkpoint(str(run["dir"] / "checkpoints" / "ckpt-6"))
    kernel = model.get_layer("predictions").kernel
    index = [i for i, v in enumerate(training.averaged_variables(model)) if v is kernel][0]
    shadow = reader.get_tensor(f"ema/shadows/{index}/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(np.asarray(kernel.value), shadow)
    probabilities = model(np.zeros([2, 32, 32, 3], np.float32)).numpy()
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
