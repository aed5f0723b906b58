"""Pieces of the training recipe: schedules, optimizer, EMA, weight decay, strategy helpers, summaries."""

from __future__ import annotations

import io
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import hparams
from efficientnet_tf import build_model, training
from efficientnet_tf.errors import UserError
from efficientnet_tf.training import schedules, strategy
from efficientnet_tf.training import step as train_step
from efficientnet_tf.data import synthetic_dataset_fn
from efficientnet_tf import run_model
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training.checkpoints import CheckpointKeeper


def _reference_config(steps_per_epoch: int = 100, total_steps: int = 35000, **train_overrides):
    """The reference recipe resolved for ImageNet with `steps_per_epoch` and `total_steps`."""
    layered = hparams.build_config([], {"data.dataset": "imagenet"})
    for key, value in {**train_overrides, "steps_per_epoch": steps_per_epoch, "train_steps": total_steps}.items():
        layered.train[key] = value
    return hparams.resolve(layered, num_classes=1000, num_train=steps_per_epoch * layered.train.batch_size)


def test_reference_schedule_warmup_then_staircase_decay() -> None:
    steps_per_epoch = 100
    config = _reference_config(steps_per_epoch, 350 * steps_per_epoch, batch_size=2048)
    schedule = training.build_schedule(config)
    peak = 0.016 * 2048 / 256
    assert hparams.peak_learning_rate(0.016, 2048) == pytest.approx(0.128)
    assert float(schedule(0)) == 0.0
    assert float(schedule(250)) == pytest.approx(peak * 250 / 500)  # linear warmup over 5 epochs
    # After warmup: peak x 0.97^floor(step / 240), decay counted from step 0 as in the reference.
    for step in (500, 719, 720, 5000, 34999):
        expected = peak * 0.97 ** math.floor(step / 240)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step
    smooth = training.build_schedule(_reference_config(100, 35000, batch_size=2048, lr_staircase=False))
    assert float(smooth(600)) == pytest.approx(peak * 0.97 ** (600 / 240), rel=1e-6)


def test_cosine_and_constant_schedules() -> None:
    config = _reference_config(10, 110, batch_size=256, lr_schedule="cosine", warmup_epochs=1.0, min_learning_rate=1e-4)
    schedule = training.build_schedule(config)
    assert float(schedule(5)) == pytest.approx(0.016 * 0.5)
    assert float(schedule(10)) == pytest.approx(0.016)
    assert float(schedule(60)) == pytest.approx(1e-4 + 0.5 * (0.016 - 1e-4))
    assert float(schedule(110)) == pytest.approx(1e-4)
    assert float(schedule(200)) == pytest.approx(1e-4)  # and stays there
    one_step = training.WarmupDecay(0.1, kind="constant", warmup_steps=1)  # warm-up of a single step: 0, then peak
    assert [float(one_step(s)) for s in (0, 1, 5)] == pytest.approx([0.0, 0.1, 0.1])
    # One step after a 10-step warm-up: that step is the end of the decay.
    short = training.build_schedule(_reference_config(10, 11, batch_size=256, lr_schedule="cosine", warmup_epochs=1.0,
                                                      min_learning_rate=1e-4))
    assert float(short(10)) == pytest.approx(0.016) and float(short(11)) == pytest.approx(1e-4)
    constant = training.build_schedule(_reference_config(10, 100, batch_size=256, lr_schedule="constant",
                                                         warmup_epochs=0.0))
    assert [float(constant(s)) for s in (0, 50, 99)] == pytest.approx([0.016] * 3)
    with pytest.raises(UserError, match="unknown lr_schedule"):
        training.WarmupDecay(0.1, kind="linear")


def test_optimizer_is_the_reference_rmsprop() -> None:
    config = _reference_config()
    optimizer = training.build_optimizer(config.train, 0.1)
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert (optimizer.rho, optimizer.momentum, optimizer.epsilon) == (0.9, 0.9, 1e-3)
    scaled = training.build_optimizer(config.train, 0.1, loss_scaling=True)
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
    config = hparams.replace(config, {"train.optimizer": "adamw"})
    assert isinstance(training.build_optimizer(config.train, 0.1), keras.optimizers.AdamW)
    config = hparams.replace(config, {"train.optimizer": "lamb"})
    with pytest.raises(UserError, match="unknown optimizer"):
        training.build_optimizer(config.train, 0.1)


def _tiny_model() -> keras.Model:
    return build_model("efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25, input_shape=(32, 32, 3),
                       classes=3, classifier_activation=None)


def test_ema_averages_weights_and_batch_norm_statistics_with_the_ramp() -> None:
    model = _tiny_model()
    averaged = training.averaged_variables(model)
    paths = [v.path for v in averaged]
    assert any(p.endswith("moving_mean") for p in paths) and any(p.endswith("moving_variance") for p in paths)
    assert len(averaged) == len(model.trainable_variables) + sum(
        2 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert not any("seed_generator" in p or "normalization/" in p for p in paths)

    ema = training.ExponentialMovingAverage(averaged, decay=0.9999)
    assert float(ema.decay_at(0)) == pytest.approx(0.1)
    assert float(ema.decay_at(90)) == pytest.approx(91 / 100)
    assert float(ema.decay_at(10**6)) == pytest.approx(0.9999)

    before = [np.array(v.value) for v in averaged]
    for v in averaged:
        v.assign(v.value + 1.0)
    ema.update(tf.constant(0, tf.int64))  # decay 0.1: shadow moves 90% of the way
    for shadow, old in zip(ema.shadows, before):
        np.testing.assert_allclose(shadow.numpy(), old + 0.9, rtol=1e-5, atol=1e-5)
    ema.swap()
    np.testing.assert_allclose(np.array(averaged[0].value), before[0] + 0.9, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ema.shadows[0].numpy(), before[0] + 1.0, rtol=1e-5, atol=1e-5)
    ema.swap()
    np.testing.assert_allclose(np.array(averaged[0].value), before[0] + 1.0, rtol=1e-5, atol=1e-5)


def test_weight_decay_skips_batch_norm_only() -> None:
    model = _tiny_model()
    decayed = train_step.decayed_variables(model)
    names = [v.path for v in decayed]
    assert not any("_bn/" in n or n.startswith("stem_bn") for n in names)
    assert any(n.endswith("kernel") for n in names) and any("predictions/bias" in n for n in names)
    bn_params = sum(len(l.trainable_variables) for l in model.layers
                    if isinstance(l, keras.layers.BatchNormalization))
    assert len(decayed) == len(model.trainable_variables) - bn_params


def test_training_step_loss_is_label_smoothed_cross_entropy_plus_l2(tmp_path) -> None:
    """The first step's reported loss equals a hand computation on the same batch."""
    config = hparams.resolve(
        hparams.build_config(["model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32",
                              "model.dropout_rate=0,model.drop_connect_rate=0",
                              "train.batch_size=4,train.train_steps=1,train.steps_per_epoch=1,train.image_summary=false"]),
        num_classes=3, num_train=4,
    )
    info = training.create_strategy("default")
    data_fn = synthetic_dataset_fn(32, 3, 4, seed=9)
    trainer = training.Trainer(config, info, str(tmp_path), train_dataset_fn=data_fn)
    images, labels = next(iter(data_fn(tf.distribute.InputContext())))
    logits = trainer.model(images, training=True)
    expected_ce = keras.losses.categorical_crossentropy(labels, logits, from_logits=True, label_smoothing=0.1)
    batch_norm = {id(v) for layer in trainer.model.layers if isinstance(layer, keras.layers.BatchNormalization)
                  for v in layer.trainable_variables}
    l2 = sum(float(tf.reduce_sum(tf.square(v.value))) / 2
             for v in trainer.model.trainable_variables if id(v) not in batch_norm)
    expected = float(tf.reduce_mean(expected_ce)) + float(config.train.weight_decay) * l2
    assert float(config.train.weight_decay) > 0
    result = trainer.train()
    assert result.step == 1
    assert result.train_metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_batch_size_must_split_across_replicas() -> None:
    info = training.StrategyInfo(tf.distribute.get_strategy(), "mirrored", "GPU", num_replicas=8)
    assert training.check_batch_size(256, info) == 32
    with pytest.raises(UserError, match=r"--batch_size=100 does not split evenly across 8 replicas; use a "
                                        r"multiple of 8, e.g. 96"):
        training.check_batch_size(100, info)
    with pytest.raises(UserError):
        training.check_batch_size(4, info)


def test_precision_and_xla_follow_the_device() -> None:
    assert hparams.precision_policy("auto", "TPU") == "mixed_bfloat16"
    assert hparams.precision_policy("auto", "GPU") == "mixed_float16"
    assert hparams.precision_policy("auto", "CPU") == "float32"
    assert hparams.precision_policy("mixed_float16", "CPU") == "mixed_float16"
    with pytest.raises(UserError):
        hparams.precision_policy("float8", "CPU")
    assert hparams.use_xla("auto", "CPU") is False
    assert hparams.use_xla("auto", "GPU") is True and hparams.use_xla("auto", "TPU") is True
    assert hparams.use_xla("true", "CPU") is True and hparams.use_xla(False, "GPU") is False


def test_strategy_argument_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="needs --tpu"):
        training.create_strategy("tpu")
    with pytest.raises(UserError, match="has 0 GPU"):
        training.create_strategy("auto", num_gpus=2)
    with pytest.raises(UserError, match="needs TF_CONFIG"):
        training.create_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not valid JSON"):
        training.create_strategy("auto")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(UserError, match="cannot reach the TPU at grpc://127.0.0.1:1"):
        training.create_strategy("auto", tpu="grpc://127.0.0.1:1")
    assert training.create_strategy("auto").kind == "default"


def test_image_grid_and_progress_lines() -> None:
    images = np.random.default_rng(0).uniform(0, 255, size=(10, 8, 6, 3)).astype(np.float32)
    grid = training.image_grid(images)
    assert grid.shape == (1, 3 * 8, 4 * 6, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[0, 8:16, 0:6], np.round(images[4]).astype(np.uint8))
    assert training.image_grid(images, max_images=4).shape == (1, 16, 12, 3)

    stream = io.StringIO()
    progress = training.Progress(100, 0, log_every=10, stream=stream)
    assert not progress.is_tty
    progress.update(10, 0.1, {"loss": 1.0, "top1": 0.5})
    assert stream.getvalue() == ""  # not a terminal: log lines, not a bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = training.Progress(100, 0, log_every=10, stream=terminal)
    bar.update(10, 0.1, {"loss": 1.0, "top1": 0.5, "learning_rate": 0.01})
    bar.update(50, 0.5, {"loss": 0.9, "top1": 0.6, "images_per_second": 12.0})
    text = terminal.getvalue()
    assert "\r[" in text and "50/100" in text and "ETA" in text and "12.0 img/s" in text


def test_profile_steps_parsing() -> None:
    assert hparams.parse_profile_steps("10,20") == (10, 20)
    assert hparams.parse_profile_steps(None) is None
    for bad in ("20,10", "x", "1,2,3"):
        with pytest.raises(UserError):
            hparams.parse_profile_steps(bad)


def test_strategy_names_match_the_command_line() -> None:
    from efficientnet_tf import cli

    assert cli.STRATEGIES == strategy.STRATEGY_KINDS
    assert set(schedules.OPTIMIZERS) >= {"rmsprop"}


@pytest.mark.slow  # two training runs; tests/test_finetune.py keeps fast fine-tuning checks
def test_init_weights_fine_tunes_with_a_new_class_count(tmp_path) -> None:
    """--init_weights loads the body of a 5-class .keras model into a 3-class run; resuming ignores it."""
    source = build_model("efficientnet-b0", width_coefficient=0.25, depth_coefficient=0.25,
                         input_shape=(32, 32, 3), classes=5)
    weights_file = str(tmp_path / "source.keras")
    source.save(weights_file)
    config = hparams.resolve(
        hparams.build_config(["model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32",
                              "train.batch_size=4,train.train_steps=2,train.steps_per_epoch=2,train.image_summary=false",
                              "train.ema_decay=0.99"], {"train.init_weights": weights_file}),
        num_classes=3, num_train=8,
    )
    info = training.create_strategy("default")
    data_fn = synthetic_dataset_fn(32, 3, 4, seed=4)
    run_dir = str(tmp_path / "run")
    trainer = training.Trainer(config, info, run_dir, train_dataset_fn=data_fn)
    stem = np.array(source.get_layer("stem_conv").kernel.value)
    np.testing.assert_array_equal(np.array(trainer.model.get_layer("stem_conv").kernel.value), stem)
    index = [i for i, v in enumerate(training.averaged_variables(trainer.model))
             if v is trainer.model.get_layer("stem_conv").kernel][0]
    np.testing.assert_array_equal(trainer.ema.shadows[index].numpy(), stem)  # the average starts there too
    assert trainer.model.get_layer("predictions").kernel.shape[-1] == 3
    trainer.train()
    config = hparams.replace(config, {"train.train_steps": 3})
    resumed = training.Trainer(config, info, run_dir, train_dataset_fn=data_fn)
    resumed.train()
    trained = tf.train.load_checkpoint(tf.train.latest_checkpoint(run_dir + "/checkpoints"))
    assert int(trained.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 3
    assert not np.array_equal(np.array(resumed.model.get_layer("stem_conv").kernel.value), stem)


def test_short_run_model_options() -> None:
    config = hparams.resolve(
        hparams.build_config(["model.width_coefficient=0.5,model.depth_coefficient=0.5,model.image_size=32",
                              "model.batch_norm_momentum=0.9,model.zero_init_residual=true"]),
        num_classes=3, num_train=64,
    )
    model = run_model.build_model_from_config(config)
    norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and all(l.momentum == 0.9 for l in norms)
    residual = [l.name[: -len("add")] for l in model.layers if l.name.endswith("add")]
    assert residual, "a 0.5-depth B0 still has identity-skip blocks"
    for block in residual:
        assert not np.any(np.array(model.get_layer(block + "project_bn").gamma.value))
    assert np.all(np.array(model.get_layer("stem_bn").gamma.value) == 1.0)


def test_best_checkpoint_follows_the_highest_top1_and_keeps_the_first_of_a_tie(tmp_path) -> None:
    """Evals at steps 1..5 with top-1 0.25, 0.75, 0.5, 0.75, 0.625: the best is step 2 (the first 0.75), also as
    `--checkpoint=best` resolves it; rolling checkpoints are the newest ones."""
    step = tf.Variable(0, dtype=tf.int64)
    best = tf.Variable(-1.0, dtype=tf.float32)
    weight = tf.Variable(0.0)
    keeper = CheckpointKeeper(tf.train.Checkpoint(step=step, best_top1=best, weight=weight), str(tmp_path),
                              keep=2, step=step, best_top1=best)
    saved = []
    for index, top1 in enumerate([0.25, 0.75, 0.5, 0.75, 0.625], start=1):  # exact in float32
        step.assign(index)
        weight.assign(float(index))
        keeper.save()
        saved.append(keeper.maybe_save_best({"top1": top1}))
    assert saved == [True, True, False, False, False]
    run = RunDir(str(tmp_path))
    assert run.checkpoint("best").endswith("ckpt-2") and run.checkpoint().endswith("ckpt-5")
    restored = tf.Variable(0.0)
    tf.train.Checkpoint(weight=restored).read(run.checkpoint("best")).expect_partial()
    assert float(restored.numpy()) == 2.0 and keeper.best_top1 == 0.75
