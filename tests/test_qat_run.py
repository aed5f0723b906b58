"""Quantisation-aware training as a run of the application: a trained run as --init_weights (its model and
data settings, its best checkpoint), the QAT phase's freezes, resume, and the export of the QAT run to a
full-integer .tflite whose report also holds the float model it started from."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from efficientnet_tf import app, hparams, run_model
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import exporter, mediapipe_check
from efficientnet_tf.export.formats.litert import TFLiteModel
from efficientnet_tf.models import quantize
from efficientnet_tf.rundir import RunDir

import test_export_from_run as from_run
from test_train_resume import train_stopped_at

REPO = pathlib.Path(__file__).resolve().parent.parent
QAT_YAML = str(REPO / "hparams" / "qat.yaml")
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
SHORT = "train.image_summary=false,train.log_every_steps=5,train.checkpoint_every_steps=10,train.seed=2"


@pytest.fixture(scope="module")
def float_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A float run that learned three colours (evaluated, so it has a best checkpoint), and its photos."""
    root = tmp_path_factory.mktemp("qat_run")
    photos = from_run.coloured_photos(root / "photos")
    layered = app.layered_config([TINY, "data.augment=none", SHORT,
                                  "train.batch_size=16,train.steps_per_epoch=30,train.train_steps=60"],
                                 {"data.dataset": f"folder:{photos}"})
    app.train(layered, model_dir=str(root / "float"))
    return root / "float", photos


def _qat_layered(start: pathlib.Path, *extra: str, flags: dict | None = None):
    return app.layered_config([QAT_YAML, SHORT, "train.batch_size=16,train.steps_per_epoch=10,train.train_steps=20",
                               *extra], {"train.init_weights": str(start), **(flags or {})})


@pytest.mark.slow  # two training runs and a conversion (~4 min on 2 cores)
def test_qat_run_takes_the_start_run_trains_its_phase_and_exports_an_integer_file(float_run, tmp_path):
    start, _ = float_run
    outcome = app.train(_qat_layered(start), model_dir=str(tmp_path / "qat"))
    config = outcome.config
    # The start run's model and data settings: its 32 px tiny B0 on its photo folder, not the defaults.
    start_config = RunDir(str(start)).read_config()
    assert (config.model.name, config.model.image_size, config.model.width_coefficient, config.data.dataset) == \
        (start_config.model.name, 32, 0.25, start_config.data.dataset)
    assert config.qat.enabled and config.export.formats == ("tflite_int8",)
    assert (config.derived.qat_freeze_batch_norm_step, config.derived.qat_freeze_ranges_step) == (5, 10)
    model, restored, _ = run_model.restore_for_inference(str(tmp_path / "qat"))
    state = quantize.quantization_state(model)
    assert quantize.is_quantized(model) and restored.qat.enabled
    # Both freezes happened during training and are in the checkpoint; every range was observed.
    assert state["batch_norms_frozen"] == state["batch_norms"] > 0 and state["ranges_frozen"] == state["ranges"]
    assert quantize.unobserved_ranges(model) == []

    export_config = app.run_config(str(tmp_path / "qat"), ["export.eval_images=45"])
    report = app.export(export_config, str(tmp_path / "qat")).report
    rows = {row["format"]: row for row in report["artifacts"]}
    assert report["quantization"] == "quantization-aware training"
    int8 = rows["tflite_int8"]
    assert int8["integer_only"] and int8["input_type"] == "uint8" and int8["passed"], int8
    assert int8["top1_agreement"] >= 0.95  # the file computes what the fake-quant model simulated
    float_row = rows["keras float start"]
    assert float_row["accuracy"] is not None and abs(float_row["accuracy"] - int8["accuracy"]) <= 0.1, rows
    # How often the int8 file decides as the float model it was trained from, in the row and the printed report.
    assert 0.5 <= int8["start_agreement"] <= 1.0, int8
    assert f"decides as the float model it was trained from (keras float start) on {int8['start_agreement'] * 100:.2f}%" \
        in exporter.format_report(report)
    info = json.loads((tmp_path / "qat" / "export" / "export_info.json").read_text())
    assert list(info["artifacts"]) == ["tflite_int8"]
    if mediapipe_check.available():
        mediapipe = rows["mediapipe:tflite_int8"]
        assert mediapipe["class_names_from_metadata"] and mediapipe["passed"], mediapipe
        path = str(tmp_path / "qat" / "export" / int8["path"])
        pixels = np.random.default_rng(3).uniform(0, 255, (8, 32, 32, 3)).astype(np.uint8)
        litert, _ = TFLiteModel(path).predict(pixels.astype(np.float32))
        scores, names, _ = mediapipe_check.classify_isolated(path, pixels, 3)
        np.testing.assert_array_equal(np.argmax(scores, -1), np.argmax(litert, -1))


def test_qat_refuses_in_one_line_without_a_start_or_from_a_run_of_another_model(tmp_path):
    photos = from_run.coloured_photos(tmp_path / "photos")
    with pytest.raises(UserError, match="fine-tunes a trained model") as raised:
        app.train(app.layered_config([QAT_YAML, TINY], {"data.dataset": f"folder:{photos}"}),
                  model_dir=str(tmp_path / "nothing"))
    assert "\n" not in str(raised.value) and not (tmp_path / "nothing" / "config.yaml").exists()
    start = tmp_path / "b0"
    start.mkdir()
    RunDir(str(start)).write_config(hparams.resolve(app.layered_config([TINY]), num_classes=3, num_train=120))
    with pytest.raises(UserError, match=r"is a run of efficientnet-b0, but this command sets efficientnet-lite0"):
        _qat_layered(start, flags={"model.name": "efficientnet-lite0"})


@pytest.mark.slow  # two QAT trainings of 8 steps, one stopped and resumed (~1 min)
def test_a_stopped_qat_run_resumes_to_the_uninterrupted_weights_ranges_and_freezes(tmp_path):
    """QAT state lives in variables: a stop between the batch-norm freeze (step 2) and the range freeze (step 5)
    resumes to exactly what an uninterrupted run ends with, ranges and freeze flags included."""
    import keras
    import tensorflow as tf

    from efficientnet_tf import training
    from efficientnet_tf.training import inputs

    total = 8
    config = hparams.resolve(app.layered_config([
        TINY, "data.augment=none,qat.enabled=true,qat.freeze_batch_norm_epochs=0.25,qat.freeze_ranges_epochs=0.625",
        f"train.batch_size=8,train.train_steps={total},train.steps_per_epoch={total},train.ema_decay=0.9",
        "train.checkpoint_every_steps=1000,train.log_every_steps=1000,train.image_summary=false",
        "train.seed=5,train.deterministic=true,train.optimizer=adamw,train.warmup_epochs=0",
    ]), num_classes=10, num_train=800)
    assert (config.derived.qat_freeze_batch_norm_step, config.derived.qat_freeze_ranges_step) == (2, 5)
    train_fn = inputs.train_dataset_fn(config, app.load_source(config))

    def trainer(model_dir) -> training.Trainer:
        keras.utils.set_random_seed(5)
        return training.Trainer(config, training.create_strategy("default"), str(model_dir), train_dataset_fn=train_fn)

    reference = trainer(tmp_path / "uninterrupted").train()
    stopped = train_stopped_at(trainer(tmp_path / "interrupted"), 3)
    assert 3 <= stopped.step < 5  # between the two freezes
    resumed = trainer(tmp_path / "interrupted")
    result = resumed.train()
    assert result.step == total
    state = quantize.quantization_state(resumed.model)
    assert state["batch_norms_frozen"] == state["batch_norms"] and state["ranges_frozen"] == state["ranges"] > 0
    read = lambda prefix: {n: tf.train.load_checkpoint(prefix).get_tensor(n)  # noqa: E731
                           for n in tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
                           if n.startswith(("model", "ema", "optimizer"))}
    expected, actual = read(reference.checkpoint), read(result.checkpoint)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.mark.slow  # two trainers and a traced step (~1 min on 2 cores; the fast tier is near its 10 minutes)
@pytest.mark.parametrize("share,temperature", [("1", "1"), ("0.5", "1"), ("0.5", "3")])
def test_distillation_trains_towards_the_float_start_and_counts_top1_against_the_labels(tmp_path, share, temperature):
    """qat.distill: the first step's loss is the cross-entropy from the target (the float start's
    probabilities, unsmoothed, mixed with the smoothed labels by the share) to the
    quantisation-aware model's logits, computed here by hand; at qat.distill_temperature T the
    distilled share compares both models' logits divided by T, scaled by T^2. Top-1 still counts
    the labels."""
    import tensorflow as tf

    from efficientnet_tf import training

    plain = "model.dropout_rate=0,model.drop_connect_rate=0,data.augment=none,train.image_summary=false"
    one_step = "train.batch_size=8,train.train_steps=1,train.steps_per_epoch=1,train.weight_decay=0"
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 8)]

    def batches(context=None, stage=None):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    start = tmp_path / "float"
    float_config = hparams.resolve(hparams.build_config([TINY, plain, one_step]), num_classes=3, num_train=8)
    training.Trainer(float_config, training.create_strategy("default"), str(start), train_dataset_fn=batches).train()
    RunDir(str(start)).write_config(float_config)

    config = hparams.resolve(hparams.build_config([
        TINY, plain, one_step, f"qat.enabled=true,qat.distill={share},qat.distill_temperature={temperature},train.label_smoothing=0.1",
        "qat.freeze_batch_norm_epochs=null,qat.freeze_ranges_epochs=null",  # nothing frozen at step 0
        f"train.init_weights={start},train.optimizer=adamw,train.warmup_epochs=0"]), num_classes=3, num_train=8)
    trainer = training.Trainer(config, training.create_strategy("default"), str(tmp_path / "qat"),
                               train_dataset_fn=batches)
    teacher = run_model.float_start_model(config)
    statistics = [np.array(v.value) for v in trainer.model.non_trainable_variables]
    weight, t = float(share), float(temperature)
    smoothed = labels * 0.9 + 0.1 / 3
    taught = tf.nn.softmax(teacher(images, training=False) / t, -1)
    logits = trainer.model(images, training=True)
    distilled = float(-tf.reduce_mean(
        weight * t**2 * tf.reduce_sum(taught * tf.nn.log_softmax(logits / t), -1)
        + (1 - weight) * tf.reduce_sum(smoothed * tf.nn.log_softmax(logits), -1)))
    towards_labels = float(-tf.reduce_mean(tf.reduce_sum(smoothed * tf.nn.log_softmax(logits), -1)))
    for variable, value in zip(trainer.model.non_trainable_variables, statistics):
        variable.assign(value)  # undo the ranges and batch statistics the hand forward pass observed
    assert abs(distilled - towards_labels) > 0.05 * towards_labels  # the two targets are told apart

    result = trainer.train()
    assert result.train_metrics["loss"] == pytest.approx(distilled, rel=1e-4)
    top1 = float(np.mean(np.argmax(np.asarray(logits), -1) == np.argmax(labels, -1)))
    assert result.train_metrics["top1"] == pytest.approx(top1)


def test_distillation_needs_a_start_run_and_quantisation_aware_training(tmp_path):
    with pytest.raises(UserError, match="qat.distill is part of quantisation-aware training"):
        hparams.resolve(hparams.build_config([TINY, "qat.distill=1"]), num_classes=3, num_train=800)
    for bad in ("1.5", "-0.1"):
        with pytest.raises(UserError, match="qat.distill is the start model's share of the training target"):
            hparams.resolve(hparams.build_config([TINY, f"qat.enabled=true,qat.distill={bad}"]), num_classes=3,
                            num_train=800)
    for bad in ("0", "-2"):
        with pytest.raises(UserError, match="qat.distill_temperature divides the logits, so it must be positive"):
            hparams.resolve(hparams.build_config([TINY, f"qat.enabled=true,qat.distill=1,qat.distill_temperature={bad}"]),
                            num_classes=3, num_train=800)
    photos = from_run.coloured_photos(tmp_path / "photos")
    weights = tmp_path / "weights.weights.h5"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="qat.distill learns from the trained run") as raised:
        app.train(app.layered_config([QAT_YAML, TINY, "qat.distill=1"],
                                     {"data.dataset": f"folder:{photos}", "train.init_weights": str(weights)}),
                  model_dir=str(tmp_path / "qat"))
    assert "\n" not in str(raised.value) and not (tmp_path / "qat" / "config.yaml").exists()
