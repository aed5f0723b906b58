"""Progressive learning: stages of growing image size and regularisation, resumable mid-stage, any strategy."""

from __future__ import annotations

import pathlib
import re
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from efficientnet_tf import app, hparams, training
from efficientnet_tf.errors import EXIT_PREEMPTED, UserError
from efficientnet_tf.hparams import Stage
from efficientnet_tf.training import inputs
from efficientnet_tf.training.phases import next_stage_change, stage_at

from test_faults import Trainer, command, preempted_step, run, weights

STAGES = ("--hparams=train.progressive.stages=3,train.progressive.image_size_start=16,"
          "train.progressive.image_size_step=16,train.progressive.randaug_magnitude_start=2,"
          "train.progressive.dropout_rate_start=0.3,model.dropout_rate=0.1,model.image_size=48")


def _stages(overrides: str, total: int = 900) -> tuple[Stage, ...] | None:
    """The resolved training stages of a config (None when it trains in one stage)."""
    config = hparams.resolve(hparams.build_config([overrides, f"train.train_steps={total}"]), num_classes=10,
                             num_train=8000)
    return config.derived.stages if config.derived.progressive else None


def test_stages_grow_linearly_from_the_start_values_to_the_runs_own() -> None:
    stages = _stages("model.image_size=224,model.dropout_rate=0.3,data.randaug_magnitude=15,"
                     "data.mixup_alpha=0.2,train.progressive.stages=4,train.progressive.image_size_start=128,"
                     "train.progressive.dropout_rate_start=0.1")
    sizes = [s.image_size for s in stages]
    assert sizes == [128, 160, 192, 224]
    assert [s.randaug_magnitude for s in stages] == pytest.approx([5, 25 / 3, 35 / 3, 15])
    assert [s.mixup_alpha for s in stages] == pytest.approx([0, 0.2 / 3, 0.4 / 3, 0.2])
    assert [s.dropout_rate for s in stages] == pytest.approx([0.1, 0.1 + 0.2 / 3, 0.1 + 0.4 / 3, 0.3])
    assert [(s.start_step, s.end_step) for s in stages] == [(0, 225), (225, 450), (450, 675), (675, 900)]
    assert stage_at(stages, 0).index == 0 and stage_at(stages, 224).index == 0 and stage_at(stages, 225).index == 1
    assert stage_at(stages, 899).index == 3 and stage_at(stages, 900).index == 3
    assert next_stage_change(stages, 0) == 225 and next_stage_change(stages, 700) is None
    half = _stages("model.image_size=224,train.progressive.stages=2")
    assert [s.image_size for s in half] == [112, 224]  # image_size_start null: half the final size
    assert _stages("train.progressive.stages=0") is None
    below = _stages("model.image_size=160,train.progressive.stages=3,train.progressive.image_size_end=128")
    assert [s.image_size for s in below] == [64, 96, 128]  # trains up to 128 px, evaluates at 160


@pytest.mark.parametrize("overrides,message", [
    ("train.progressive.stages=1", "must be 0 (off) or at least 2"),
    ("model.image_size=64,train.progressive.stages=2,train.progressive.image_size_start=96",
     "image_size_start must be between 1 and the last stage's size"),
    ("train.progressive.stages=2,train.progressive.dropout_rate_start=1.5", "dropout_rate_start must be >= 0"),
    ("train.progressive.stages=2,train.progressive.image_size_step=0", "image_size_step must be at least 1"),
    ("model.image_size=128,train.progressive.stages=2,train.progressive.image_size_end=160",
     "image_size_end must be between 1 and model.image_size"),
])
def test_bad_settings_are_one_line_errors(overrides: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        _stages(overrides)


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
@pytest.mark.parametrize("signal_after, first, last, stage", [
    (13, 13, 19, 2),  # mid-stage
    (19, 20, 29, 3),  # on an idle machine the stop lands on step 20, the first of stage 3: the checkpoint must
                      # hold the new stage's input position, not the old one's (it did not)
])
def test_a_progressive_run_stopped_mid_stage_resumes_to_the_same_weights(
        tmp_path: pathlib.Path, signal_after: int, first: int, last: int, stage: int) -> None:
    """Three stages (16, 32, 48 px) over 30 steps; SIGTERM in a stage or at its start; the rerun resumes in that
    stage with its input position and ends with the uninterrupted run's weights. Evaluation is at 48 px."""
    total = 30
    reference_dir = tmp_path / "uninterrupted"
    full = run(command(reference_dir, total, extra=(STAGES, "--mode=train_and_eval")))
    assert full.returncode == 0, full.stderr[-3000:]
    switches = re.findall(r"Progressive learning: stage (\d) of 3 \(steps (\d+)-(\d+)\): (\d+) px", full.stderr)
    assert [(int(i), int(a), int(b), int(px)) for i, a, b, px in switches] == [
        (1, 0, 10, 16), (2, 10, 20, 32), (3, 20, 30, 48)]
    assert re.search(r"Eval at step 30: top-1 [\d.]+%.*\((\d+) images\)", full.stderr)
    reference = weights(str(reference_dir / "checkpoints" / f"ckpt-{total}"))

    model_dir = tmp_path / "interrupted"
    trainer = Trainer(command(model_dir, total, extra=(STAGES,)))
    trainer.wait_for_step(signal_after)
    trainer.proc.send_signal(signal.SIGTERM)
    code, log = trainer.finish()
    assert code == EXIT_PREEMPTED, log[-3000:]
    step, _ = preempted_step(log)
    assert first <= step <= last, step
    resumed = run(command(model_dir, total, extra=(STAGES,)))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stderr
    assert f"Progressive learning: stage {stage} of 3" in resumed.stderr  # entered at the step it resumes from
    actual = weights(tf.train.latest_checkpoint(str(model_dir / "checkpoints")))
    for name in reference:
        np.testing.assert_array_equal(actual[name], reference[name], err_msg=name)


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_progressive_under_two_mirrored_replicas_with_augmentation_on_the_device(tmp_path: pathlib.Path) -> None:
    proc = run(command(tmp_path / "run", 12, extra=(STAGES, "--cpu_devices=2", "--mode=train_and_eval",
                                                   "--hparams=data.augment_on_device=true")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("Progressive learning: stage") == 3
    assert "Eval at step 12" in proc.stderr


def _any_size_model() -> keras.Model:
    """Convolution, batch norm and dropout on images of any size: traced in seconds."""
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.3, name="top_dropout")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="predictions")(x))


def test_each_stage_writes_its_settings_as_progressive_scalars(tmp_path: pathlib.Path) -> None:
    """The README's `progressive/*` TensorBoard scalars: at the first step of each stage, that stage's image size,
    RandAugment magnitude, mixup, cutmix and dropout (written out here by hand for two stages over four steps)."""
    config = hparams.resolve(app.layered_config([
        "model.image_size=32,model.dropout_rate=0.3,data.augment=randaugment,data.randaug_magnitude=10",
        "data.mixup_alpha=0.2,train.batch_size=4,train.train_steps=4,train.steps_per_epoch=4,train.image_summary=false",
        "train.progressive.stages=2,train.progressive.image_size_start=16,train.progressive.randaug_magnitude_start=2",
        "train.progressive.dropout_rate_start=0.1,train.log_every_steps=1",
    ], {"data.dataset": "synthetic"}), num_classes=10, num_train=1280)
    train_fn = inputs.train_dataset_fn(config, app.load_source(config))
    trainer = training.Trainer(config, training.create_strategy("default"), str(tmp_path), train_dataset_fn=train_fn,
                               build_model_fn=_any_size_model)
    assert trainer.train().step == 4
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "logs" / "train"), size_guidance={"tensors": 0})
    accumulator.Reload()
    written = {tag: [(e.step, round(float(tf.make_ndarray(e.tensor_proto)), 6)) for e in accumulator.Tensors(tag)]
               for tag in accumulator.Tags()["tensors"] if tag.startswith("progressive/")}
    assert written == {
        "progressive/image_size": [(0, 16.0), (2, 32.0)],
        "progressive/randaug_magnitude": [(0, 2.0), (2, 10.0)],
        "progressive/mixup_alpha": [(0, 0.0), (2, 0.2)],
        "progressive/cutmix_alpha": [(0, 0.0), (2, 0.0)],
        "progressive/dropout_rate": [(0, 0.1), (2, 0.3)],
    }
