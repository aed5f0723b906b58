"""The accelerator code paths, run on the CPU with tiny models: mixed_float16 (dynamic loss scaling, a skipped
overflowing step, float32 evaluation and export of its checkpoint), mixed_bfloat16, XLA with on-device
augmentation and its equality with the plain step, XLA under MirroredStrategy (two logical CPUs, in a fresh
process), and TPU strategy selection with a stub resolver.

The XLA cases train a small convolutional model (convolution, batch norm, dropout, float32 head): XLA on the
CPU needs about a minute to compile even the tiniest EfficientNet, which the slow tier covers.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import app, hparams, run_model, training
from efficientnet_tf.data import synthetic_dataset_fn
from efficientnet_tf.errors import UserError
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training.step import batch_norm_statistics
from efficientnet_tf.training import strategy as strategy_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
SIZE, BATCH, CLASSES = 32, 8, 4


@contextlib.contextmanager
def precision(policy: str):
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _config(*overrides: str, steps: int = 3):
    config = hparams.build_config([
        TINY, f"train.batch_size={BATCH},train.train_steps={steps},train.steps_per_epoch={steps}",
        "train.log_every_steps=1,train.image_summary=false,train.ema_decay=0.9", *overrides])
    return hparams.resolve(config, num_classes=CLASSES, num_train=BATCH * steps)


def small_model() -> keras.Model:
    """Convolution, batch norm, dropout and a float32 head: what the step does to EfficientNet, compiled fast."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(0.0, name="top_dropout")(x)
    outputs = keras.layers.Dense(CLASSES, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs)


def _weights(variables) -> list[np.ndarray]:
    return [np.array(v.value.read_value() if isinstance(v, keras.Variable) else v.read_value()) for v in variables]


# ---------------------------------------------------------------------------------------------
# mixed_float16


def test_mixed_float16_scales_the_loss_and_skips_an_overflowing_step(tmp_path: pathlib.Path) -> None:
    with precision("mixed_float16"):
        # No warmup: the learning rate follows the optimizer's own step count, which skipped steps do not advance.
        trainer = training.Trainer(_config("train.warmup_epochs=0"), training.create_strategy("default"), str(tmp_path),
                                   train_dataset_fn=synthetic_dataset_fn(SIZE, CLASSES, BATCH, seed=4))
        optimizer = trainer.optimizer
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        convolutions = [l for l in trainer.model.layers if isinstance(l, keras.layers.Conv2D)]
        assert convolutions and all(l.compute_dtype == "float16" for l in convolutions)  # really mixed
        assert trainer.model.get_layer("predictions").compute_dtype == "float32"
        images = tf.zeros([2, SIZE, SIZE, 3])
        assert trainer.model(images, training=False).dtype == tf.float32  # float32 logits, no cast needed

        trainer.time_steps(1, warmup_steps=0)  # an ordinary first step at the initial scale, 2 ** 15
        assert float(optimizer.dynamic_scale.numpy()) in (2.0 ** 15, 2.0 ** 14)  # halved if it overflowed
        trainable = trainer.model.trainable_variables
        before, bn_before = _weights(trainable), _weights(batch_norm_statistics(trainer.model))

        # Force an overflow: a loss scale so large that the float16 gradients become infinite.
        optimizer.dynamic_scale.assign(2.0 ** 40)
        trainer.time_steps(1, warmup_steps=0)
        assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 39  # the scale moved down
        for old, new in zip(before, _weights(trainable)):
            np.testing.assert_array_equal(old, new)  # the step was skipped
        bn_after = _weights(batch_norm_statistics(trainer.model))
        assert all(np.isfinite(v).all() for v in bn_after + _weights(trainer.ema.shadows))
        assert any(not np.array_equal(a, b) for a, b in zip(bn_before, bn_after))  # the forward pass ran
        assert int(trainer.step.numpy()) == 2

        optimizer.dynamic_scale.assign(2.0 ** 8)
        trainer.time_steps(1, warmup_steps=0)  # a scale in range: the step applies
        after = _weights(trainable)
        assert all(np.isfinite(v).all() for v in after)
        assert max(float(np.abs(a - b).max()) for a, b in zip(before, after)) > 0


@pytest.mark.slow  # a run, eval and export per policy; the loss-scaling test below stays fast
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_checkpoint_evaluates_and_exports_in_float32(tmp_path: pathlib.Path, policy: str) -> None:
    """Trains in mixed precision and evaluates; the checkpoint then restores into the float32 model that export
    builds and evaluates in float32 with the same top-1 (within float16 tolerance). The mixed_float16 run is
    also exported in the same process, the mixed policy still set: float32 artifacts that agree with Keras."""
    config = app.layered_config(
        [TINY, "train.steps_per_epoch=3,train.image_summary=false,data.augment=none,eval.batch_size=16"],
        {"data.dataset": "synthetic", "train.batch_size": BATCH, "train.train_steps": 3,
         "runtime.mixed_precision": policy})
    try:
        trained = app.train(config, model_dir=str(tmp_path))
        assert keras.mixed_precision.global_policy().name == policy
        float_config = app.run_config(str(tmp_path), ["runtime.mixed_precision=float32"])
        exported = None
        if policy == "mixed_float16":  # the export code does not depend on the training precision
            exported = app.export(app.run_config(str(tmp_path), ["runtime.mixed_precision=float32",
                                                                 "export.formats=saved_model",
                                                                 "export.calibration_images=4,export.eval_images=16"]),
                                  str(tmp_path))
        evaluated = app.evaluate(float_config, str(tmp_path))
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed = trained.result.eval_metrics
    examples = mixed["examples"]
    assert evaluated.metrics["examples"] == examples
    # Near-ties of an untrained model flip: at most 2 images in float16, 4% in bfloat16 (8 significant bits).
    assert abs(evaluated.metrics["top1"] - mixed["top1"]) <= (0.04 if policy == "mixed_bfloat16" else 2 / examples)
    assert evaluated.metrics["loss"] == pytest.approx(mixed["loss"], rel=0.02 if policy == "mixed_bfloat16" else 2e-3)
    model = run_model.build_model_from_config(float_config, classifier_activation="softmax")  # as export builds it
    run_model.restore_weights(model, RunDir(str(tmp_path)).checkpoint(None))
    assert {v.dtype for v in model.variables if "float" in v.dtype} == {"float32"} and model.compute_dtype == "float32"
    if exported is None:
        return
    artifacts = {a["format"]: a for a in exported.report["artifacts"]}
    assert artifacts["saved_model"]["passed"] and artifacts["saved_model"]["top1_agreement"] == 1.0, artifacts
    served = tf.saved_model.load(os.path.join(exported.export_dir, "saved_model"))
    signature = served.signatures["serving_images"]
    floating = [spec for spec in signature.structured_outputs.values() if spec.dtype.is_floating]
    assert floating and all(spec.dtype == tf.float32 for spec in floating), signature.structured_outputs
    outputs = signature(images=tf.zeros([1, SIZE, SIZE, 3], tf.float32))
    assert outputs["probabilities"].dtype == tf.float32
    graph = signature.graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    half = [n.name for n in nodes if any(a.type == tf.float16.as_datatype_enum for a in n.attr.values())]
    assert len(nodes) > 100 and not half, half[:5]  # computes in float32 throughout


# ---------------------------------------------------------------------------------------------
# XLA on one device


def _small_trainer(model_dir: pathlib.Path, jit: bool, *overrides: str, info=None):
    config = _config(f"runtime.jit_compile={str(jit).lower()}", "model.dropout_rate=0,model.drop_connect_rate=0",
                     *overrides)
    return training.Trainer(config, info or training.create_strategy("default"), str(model_dir),
                            build_model_fn=small_model, train_dataset_fn=synthetic_dataset_fn(SIZE, CLASSES, BATCH, seed=5))


def test_xla_step_equals_the_plain_step(tmp_path: pathlib.Path) -> None:
    results = {}
    for jit in (False, True):
        keras.utils.set_random_seed(7)  # the same initial weights for both
        trainer = _small_trainer(tmp_path / str(jit), jit, "data.augment_on_device=false")
        assert trainer.config.runtime.jit_compile is jit
        initial = _weights(trainer.model.variables)
        trainer.time_steps(2, warmup_steps=0)
        results[jit] = (initial, _weights(trainer.model.variables), _weights(trainer.ema.shadows))
    (plain_initial, plain, plain_ema), (xla_initial, xla, xla_ema) = results[False], results[True]
    for a, b in zip(plain_initial, xla_initial):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in zip(plain_initial, plain)) > 1e-4  # it trained
    for a, b in zip(plain + plain_ema, xla + xla_ema):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_xla_trains_with_device_augmentation_mixup_and_cutmix(tmp_path: pathlib.Path) -> None:
    """AutoAugment, mixup and cutmix compiled into the step: the same seed gives the same weights bit for bit
    (the random streams come from the seed, the step and the replica), and they change what the step learns
    (against the compiled step without them, from the same weights). XLA draws other random numbers than the
    plain step, so the two are not compared here."""
    augmented = ("data.augment_on_device=true", "data.augment=autoaugment", "data.mixup_alpha=0.2,data.cutmix_alpha=1.0")
    runs = {}
    for name, overrides in (("first", augmented), ("again", augmented), ("plain", ("data.augment_on_device=false",))):
        keras.utils.set_random_seed(7)
        trainer = _small_trainer(tmp_path / name, True, *overrides, "train.seed=3")
        assert trainer.config.runtime.jit_compile
        before = _weights(trainer.model.trainable_variables)
        result = trainer.train()
        assert result.step == 3 and np.isfinite(result.train_metrics["loss"])
        runs[name] = (before, _weights(trainer.model.trainable_variables))
    (start, first), (_, again), (plain_start, plain) = runs["first"], runs["again"], runs["plain"]
    for a, b in zip(start, plain_start):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in zip(start, first)) > 1e-3  # it trained
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - b).max()) for a, b in zip(first, plain)) > 1e-3  # the augmentation changed it


# ---------------------------------------------------------------------------------------------
# XLA under MirroredStrategy (two logical CPUs: a fresh process, since devices are set before TF starts)


@pytest.mark.slow  # a fresh process compiling with XLA on two logical CPUs (~20 s)
def test_xla_under_mirrored_strategy_trains_and_replicas_agree(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "report.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, __file__, "mirrored_xla", str(out), str(tmp_path / "run")], env=env,
                          cwd=str(REPO), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert report["num_replicas"] == 2 and report["jit_compile"] and report["step"] == 3
    assert report["policy"] == "mixed_float16"
    assert report["max_replica_difference"] == 0.0, report
    assert report["weights_moved"] > 0


def _mirrored_xla_worker(out: str, model_dir: str) -> None:
    keras.utils.set_random_seed(1)
    info = training.create_strategy("mirrored", cpu_devices=2)
    keras.mixed_precision.set_global_policy("mixed_float16")
    trainer = _small_trainer(pathlib.Path(model_dir), True, "data.augment_on_device=true,data.augment=none",
                             "data.mixup_alpha=0.2", info=info)  # mixup in the compiled step, per replica
    assert trainer.info.num_replicas == info.num_replicas == 2
    before = [np.array(v.values[0]) for v in (x.value for x in trainer.model.trainable_variables)]
    result = trainer.train()
    worst = 0.0
    variables = [v.value for v in trainer.model.variables] + list(trainer.ema.shadows)
    for variable in variables:
        first, second = (np.array(t, np.float64) for t in variable.values)
        worst = max(worst, float(np.abs(first - second).max()))
    moved = max(float(np.abs(np.array(v.value.values[0]) - b).max())
                for v, b in zip(trainer.model.trainable_variables, before))
    pathlib.Path(out).write_text(json.dumps({
        "num_replicas": info.num_replicas, "jit_compile": trainer.config.runtime.jit_compile, "step": result.step,
        "policy": keras.mixed_precision.global_policy().name, "max_replica_difference": worst,
        "weights_moved": moved}))


@pytest.mark.slow  # XLA compiles the tiny EfficientNet for about a minute on the CPU
def test_command_line_mirrored_xla_mixed_float16_trains(tmp_path: pathlib.Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--mode=train", "--dataset=synthetic", f"--model_dir={tmp_path}",
         "--train_steps=2", "--batch_size=8", "--mixed_precision=mixed_float16", "--cpu_devices=2",
         f"--hparams={TINY},train.steps_per_epoch=2,runtime.jit_compile=true,data.augment=none"],
        env=env, cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "to step 2" in proc.stdout


# ---------------------------------------------------------------------------------------------
# TPU strategy selection


class _StubResolver:
    calls: list[str] = []

    def __init__(self, tpu: str):
        if tpu == "broken":
            raise ValueError("Could not lookup TPU metadata\nsecond line")
        self.tpu = tpu
        _StubResolver.calls.append(f"resolve {tpu}")


class _StubTPUStrategy:
    num_replicas_in_sync = 8

    def __init__(self, resolver: _StubResolver):
        self.resolver = resolver


@pytest.fixture
def stub_tpu(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    _StubResolver.calls = []
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _StubResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster",
                        lambda resolver: _StubResolver.calls.append(f"connect {resolver.tpu}"))
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                        lambda resolver: _StubResolver.calls.append(f"initialize {resolver.tpu}"))
    monkeypatch.setattr(tf.distribute, "TPUStrategy", _StubTPUStrategy)
    return _StubResolver.calls


def test_tpu_strategy_selection_with_a_stub_resolver(stub_tpu: list[str]) -> None:
    info = training.create_strategy("auto", tpu="my-tpu")
    assert isinstance(info.strategy, _StubTPUStrategy) and info.strategy.resolver.tpu == "my-tpu"
    assert (info.kind, info.device_type, info.num_replicas, info.is_chief) == ("tpu", "TPU", 8, True)
    assert stub_tpu == ["resolve my-tpu", "connect my-tpu", "initialize my-tpu"]
    # What the TPU path then uses: bfloat16, XLA, 1000 steps per call, batches split over 8 cores.
    assert hparams.precision_policy("auto", info.device_type) == "mixed_bfloat16"
    assert hparams.use_xla("auto", info.device_type) is True
    assert hparams.DEFAULT_STEPS_PER_LOOP[info.device_type] == 1000
    assert training.check_batch_size(1024, info) == 128
    with pytest.raises(UserError, match="multiple of 8"):
        training.check_batch_size(1020, info)

    stub_tpu.clear()
    local = training.create_strategy("tpu", tpu="local")
    assert local.kind == "tpu" and stub_tpu == ["resolve local", "initialize local"]  # no cluster to connect to


def test_tpu_failures_are_one_line(stub_tpu: list[str]) -> None:
    with pytest.raises(UserError) as error:
        training.create_strategy("auto", tpu="broken")
    assert str(error.value) == "cannot use the TPU 'broken': Could not lookup TPU metadata"
    with pytest.raises(UserError, match="needs --tpu"):
        training.create_strategy("tpu")
    with pytest.raises(UserError, match="drop one of them"):
        training.create_strategy("mirrored", tpu="my-tpu")


def test_replica_step_is_pinned_to_its_device_only_under_mirrored_strategies() -> None:
    def step() -> tf.Tensor:
        return tf.constant(1.0)

    for kind, pinned in (("default", False), ("one_device", False), ("tpu", False), ("mirrored", True),
                         ("multi_worker", True)):
        info = training.StrategyInfo(tf.distribute.get_strategy(), kind, "CPU", 1)
        compiled = strategy_lib.compile_replica_step(step, info)
        assert isinstance(compiled, type(tf.function(step))) is not pinned, kind


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1] == "mirrored_xla":
        _mirrored_xla_worker(sys.argv[2], sys.argv[3])
