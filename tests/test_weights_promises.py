"""What the documentation promises about pretrained weights and fine-tuning, checked end to end with tiny models
and weights served from a local directory (never the internet):

- `--init_weights=advprop` records `model.normalization: advprop` in the run's config.yaml, and the
  exported SavedModel / TFLite apply the [-1, 1] normalisation to 0..255 pixels like the Keras model;
- a mirror is an http(s):// or file:// base or a plain local directory, given as `--weights_mirror` or
  $EFFICIENTNET_TF_WEIGHTS_MIRROR; a file missing from it is one line and a non-zero exit;
- `finetune.train_batch_norm=true` lets the unfrozen batch-norm layers update their moving statistics;
- a resumed fine-tune restarts in the phase of its step and ends with the uninterrupted run's weights;
- fine-tuning under two mirrored replicas goes through both phases like one replica on the same batch.

The slow cases run the real command line or fresh processes (logical CPU devices must be set up before
TensorFlow starts, so this file is also the worker script of the mirrored case).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import efficientnet_tf as et
from efficientnet_tf import app, hparams, run_model, training
from efficientnet_tf.data import synthetic_dataset_fn
from efficientnet_tf.prediction import load_predictor
from efficientnet_tf.models.normalization import normalization_of, set_normalization
from efficientnet_tf.models.weights import fetch, published
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.training import finetune
from efficientnet_tf.models.weights import load_pretrained

import test_faults as faults
import weights_helpers

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
TINY_KWARGS = dict(width_coefficient=0.25, depth_coefficient=0.25, resolution=32)
ADVPROP = published.TABLE[("efficientnet-b0", "advprop")]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    """A private weights cache and no mirror from the environment."""
    path = tmp_path / "cache"
    monkeypatch.setenv(published.CACHE_ENV, str(path))
    monkeypatch.delenv(published.MIRROR_ENV, raising=False)
    return path


def _place(root: pathlib.Path, url: str) -> pathlib.Path:
    """Where the official `url`'s file belongs below a mirror directory (parents created)."""
    dest = root.joinpath(*fetch.relative_path(url).split("/"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


@pytest.fixture
def advprop_mirror(tmp_path) -> pathlib.Path:
    """A mirror directory holding a tiny B0 with random weights as the tensorflow/tpu AdvProp tarball, at
    its official path. The head convolution's batch norm is damped so that the outputs of a fresh head do
    not saturate the softmax: a wrong input normalisation must show in the probabilities."""
    source = et.build_model("efficientnet-b0", normalization="advprop", **TINY_KWARGS)
    weights_helpers.randomize(source, 5)
    top_bn = source.get_layer("top_bn")
    gamma, beta, *stats = top_bn.get_weights()
    top_bn.set_weights([gamma * 0.01, beta * 0.0, *stats])
    root = tmp_path / "mirror"
    made = tmp_path / "made" / "efficientnet-b0.tar.gz"
    made.parent.mkdir()
    weights_helpers.reference_tarball(source, "efficientnet-b0", made, TINY_KWARGS["depth_coefficient"])
    _place(root, ADVPROP.file.url).write_bytes(made.read_bytes())
    return root


def _pixels(n: int = 4) -> np.ndarray:
    """n 32x32 RGB images of whole 0..255 pixel values (as a camera gives them), as float32."""
    return np.random.default_rng(3).integers(0, 256, (n, 32, 32, 3)).astype("float32")


def _one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _restored(run: pathlib.Path, built_with: str) -> keras.Model:
    """The run's latest checkpoint restored into a model built with the `built_with` input normalisation."""
    config = hparams.replace(RunDir(str(run)).read_config(), {"model.normalization": built_with})
    model = run_model.build_model_from_config(config, classifier_activation="softmax")
    run_model.restore_weights(model, RunDir(str(run)).checkpoint(None))
    return model


def _advprop_reference(run: pathlib.Path, pixels: np.ndarray) -> np.ndarray:
    """What the run's model gives on `pixels` with [-1, 1] inputs, checked to differ from what the same
    weights give behind ImageNet mean/std."""
    model = _restored(run, "advprop")
    want = model.predict(pixels, verbose=0)
    set_normalization(model, "imagenet")
    assert np.abs(want - model.predict(pixels, verbose=0)).max() > 1e-2
    return want


# --- 1. AdvProp: the run's config records the normalisation, what reads the run back applies it -------

@pytest.mark.slow  # a training run; the mirror and normalisation checks below stay fast
def test_advprop_run_records_normalization_and_the_run_predicts_with_it(advprop_mirror, tmp_path, monkeypatch):
    """app.train with --init_weights=advprop (from a plain directory as $EFFICIENTNET_TF_WEIGHTS_MIRROR):
    config.yaml and the import report say advprop; the run read back (as eval, export and predict read
    it) gives the [-1, 1] model's outputs on 0..255 pixels, and so does its checkpoint restored into a
    model built with ImageNet mean/std."""
    monkeypatch.setenv(published.MIRROR_ENV, str(advprop_mirror))
    run = tmp_path / "run"
    config = app.layered_config([TINY, "model.dropout_rate=0,train.image_summary=false,train.ema_decay=0"],
                                {"data.dataset": "synthetic", "train.batch_size": 4, "train.train_steps": 1})
    assert config.model.get("normalization") is None  # set by the weights name, not by the test
    hparams.set_value(config, "train.init_weights", "advprop", "--init_weights")
    app.train(config, model_dir=str(run), evaluate=False)

    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["model"]["normalization"] == "advprop"
    report = json.loads((run / "import_report.json").read_text())
    assert report["normalization"] == "advprop" and report["source"] == "advprop"  # --init_weights as given
    assert report["source_url"] == f"{advprop_mirror.as_uri()}/{fetch.relative_path(ADVPROP.file.url)}"
    pixels = _pixels()
    want = _advprop_reference(run, pixels)
    np.testing.assert_allclose(load_predictor(str(run)).predict_images(pixels), want, atol=1e-6)
    # The checkpoint carries it too: restored into a model built with ImageNet mean/std, [-1, 1] applies.
    carried = _restored(run, "imagenet")
    assert normalization_of(carried) == "advprop"
    np.testing.assert_allclose(carried.predict(pixels, verbose=0), want, atol=1e-6)


@pytest.mark.slow  # two command-line runs and a TFLite conversion
def test_advprop_on_the_command_line_then_export_applies_the_normalization(advprop_mirror, tmp_path):
    """main.py --init_weights=advprop --weights_mirror=file://..., then --mode=export: the SavedModel and the
    float TFLite file give the Keras model's [-1, 1] outputs on the same 0..255 pixels."""
    run = tmp_path / "run"
    trained = _main("--mode=train", "--dataset=synthetic", f"--model_dir={run}", "--train_steps=1", "--batch_size=4",
                    "--init_weights=advprop", f"--weights_mirror={advprop_mirror.as_uri()}", f"--hparams={TINY}",
                    "--hparams=model.dropout_rate=0,train.image_summary=false,train.ema_decay=0")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["normalization"] == "advprop"
    exported = _main("--mode=export", f"--model_dir={run}", "--export_formats=saved_model,tflite_float32",
                     "--export_eval_images=8", "--export_calibration_images=8")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((run / "export" / "export_report.json").read_text())["all_passed"]
    pixels = _pixels()
    want = _advprop_reference(run, pixels)
    saved = load_predictor(str(run / "export" / "saved_model")).predict_images(pixels)
    np.testing.assert_allclose(saved, want, atol=1e-5)
    lite = load_predictor(str(run / "export" / "model_float32.tflite")).predict_images(pixels)
    np.testing.assert_allclose(lite, want, atol=1e-4)


def _main(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """main.py with a private weights cache and no mirror but what `env_extra` or the flags give."""
    env = faults.env()
    env.pop(published.MIRROR_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=300)


# --- 2. Mirrors: file:// base, plain directory, argument or environment; a missing file ---------------

def _tiny_tarball(tmp_path: pathlib.Path) -> bytes:
    """A tarball holding a one-variable TF checkpoint: enough for fetching, not for a model."""
    folder = tmp_path / "tiny" / "efficientnet-b0"
    folder.mkdir(parents=True)
    tf.raw_ops.SaveV2(prefix=str(folder / "model.ckpt"), tensor_names=["v"], shape_and_slices=[""],
                      tensors=[tf.constant([1.0, 2.0])])
    archive = tmp_path / "tiny" / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="efficientnet-b0")
    return archive.read_bytes()


@pytest.mark.parametrize("form", ["file:// URL", "directory", "relative directory", "directory/"])
@pytest.mark.parametrize("given", ["argument", "environment"])
def test_file_url_and_local_directory_mirrors(tmp_path, monkeypatch, form, given):
    root = tmp_path / "mirror"
    _place(root, ADVPROP.file.url).write_bytes(_tiny_tarball(tmp_path))
    monkeypatch.chdir(tmp_path)
    base = {"file:// URL": root.as_uri(), "directory": str(root), "relative directory": "mirror",
            "directory/": f"{root}/"}[form]
    if given == "environment":
        monkeypatch.setenv(published.MIRROR_ENV, base)
        fetched = fetch.fetch_weights("advprop", "efficientnet-b0", cache_dir=tmp_path / "cache-here")
    else:
        fetched = fetch.fetch_weights("advprop", "efficientnet-b0", cache_dir=tmp_path / "cache-here",
                                           mirror=base)
    assert fetched.source_url == f"{root.as_uri()}/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz"
    assert fetched.cache_path == str(_place(tmp_path / "cache-here", ADVPROP.file.url))
    assert tf.train.load_checkpoint(fetched.path).get_tensor("v").tolist() == [1.0, 2.0]
    assert fetched.hash_status.startswith("unverified (no published hash), downloaded")


def test_a_file_missing_from_a_directory_mirror_is_one_line(tmp_path, cache):
    root = tmp_path / "empty-mirror"
    root.mkdir()
    model = et.build_model("efficientnet-b0", **TINY_KWARGS)
    with pytest.raises(et.UserError) as error:
        load_pretrained(model, "advprop", mirror=str(root))
    line = _one_line(error)
    assert f"{root.as_uri()}/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz" in line
    assert str(_place(cache, ADVPROP.file.url)) in line and "no published hash" in line
    assert not [p for p in cache.rglob("*") if p.is_file()]


@pytest.mark.slow  # two command-line runs
def test_a_file_missing_from_a_mirror_on_the_command_line_is_one_line_and_a_non_zero_exit(tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    wanted = f"{empty.as_uri()}/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz"
    for given in ("flag", "environment"):
        args = ["--mode=train", "--dataset=synthetic", f"--model_dir={tmp_path / given}", "--train_steps=1",
                "--batch_size=4", "--init_weights=advprop", f"--hparams={TINY}"]
        if given == "flag":
            proc = _main(*args, f"--weights_mirror={empty}")
        else:
            proc = _main(*args, env_extra={published.MIRROR_ENV: str(empty)})
        assert proc.returncode == 1, (given, proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = faults.error_lines(proc.stderr)
        assert line.startswith(f"error: cannot download {wanted} ("), line
        assert published.MIRROR_ENV in line and "no published hash" in line


# --- 3. finetune.train_batch_norm=true: unfrozen batch norm updates its statistics ------------------

def _config(*items: str, steps: int, batch: int = 4, per_epoch: int = 4, num_classes: int = 3):
    return hparams.resolve(hparams.build_config([
        TINY, "model.dropout_rate=0,model.drop_connect_rate=0",
        f"train.batch_size={batch},train.train_steps={steps},train.steps_per_epoch={per_epoch}",
        "train.image_summary=false,train.log_every_steps=1,train.ema_decay=0,train.warmup_epochs=0",
        "train.optimizer=adam,train.base_learning_rate=0.05,train.lr_schedule=constant", *items]),
        num_classes=num_classes, num_train=16)


def _values(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.value) for v in model.weights if "seed_generator" not in v.path}


def _trainer(config, model_dir: pathlib.Path, *, fresh: bool) -> training.Trainer:
    """A one-replica Trainer on fixed synthetic data; `fresh`: the same initial weights every time."""
    keras.backend.clear_session()
    if fresh:
        keras.utils.set_random_seed(7)
    return training.Trainer(config, training.create_strategy("default"), str(model_dir),
                            train_dataset_fn=synthetic_dataset_fn(32, 3, int(config.train.batch_size), seed=1))


def _moving(values: dict[str, np.ndarray], prefix: str) -> list[str]:
    return [p for p in values if p.startswith(prefix) and p.endswith(("moving_mean", "moving_variance"))]


def test_train_batch_norm_true_updates_statistics_of_unfrozen_units_only(tmp_path):
    """Two units unfrozen from the top (`top` and the last block) with batch norm training: their moving
    statistics move; those of the frozen units below stay."""
    trainer = _trainer(_config("finetune.unfreeze_blocks=2,finetune.train_batch_norm=true", steps=2),
                       tmp_path, fresh=True)
    units = [u.name for u in finetune.units_top_down(trainer.model)]
    before = _values(trainer.model)
    trainer.train()
    after = _values(trainer.model)
    for unit in units[:2]:
        moving = _moving(before, f"{unit}_")
        assert moving and all(not np.array_equal(before[p], after[p]) for p in moving), unit
    for unit in units[2:]:
        moving = _moving(before, f"{unit}_")
        assert moving and all(np.array_equal(before[p], after[p]) for p in moving), unit


# --- 4. A resumed fine-tune restarts in the phase of its step ---------------------------------------

def _unfrozen_log(model_dir: pathlib.Path) -> list[tuple[int, float]]:
    """(step, units) of every `finetune/unfrozen_units` TensorBoard scalar the runs in `model_dir` wrote."""
    found = []
    for path in sorted((model_dir / "logs" / "train").rglob("events.out.tfevents.*")):
        for record in tf.compat.v1.train.summary_iterator(str(path)):
            for value in record.summary.value:
                if value.tag == "finetune/unfrozen_units":
                    found.append((record.step, float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                                  else value.simple_value))
    return sorted(found)


def _backbone(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {p: v for p, v in values.items() if not p.startswith(("predictions/", "normalization/"))}


# Warm-up of 3 steps (0.75 of a 4-step epoch), then every unit with batch norm frozen.
FINETUNE = "finetune.freeze_epochs=0.75,finetune.train_batch_norm=false"


@pytest.mark.slow  # three short runs
def test_a_fine_tune_resumed_in_its_warm_up_stays_frozen_until_the_warm_up_ends(tmp_path):
    run = tmp_path / "run"
    first = _trainer(_config(FINETUNE, steps=2), run, fresh=True)
    initial = _values(first.model)
    first.train()
    stopped = _values(first.model)
    assert all(np.array_equal(v, stopped[p]) for p, v in _backbone(initial).items())

    resumed = _trainer(_config(FINETUNE, steps=4), run, fresh=False)
    resumed.train()
    final = _values(resumed.model)
    units = len(finetune.units_top_down(resumed.model))
    # The resumed run starts frozen at step 2 and unfreezes at step 3, as an uninterrupted run does.
    assert _unfrozen_log(run) == [(0, 0.0), (2, 0.0), (3, float(units))]
    assert not np.array_equal(final["stem_conv/kernel"], initial["stem_conv/kernel"])
    frozen_bn = [p for p in initial if p.endswith(("moving_mean", "moving_variance", "gamma", "beta"))]
    assert frozen_bn and all(np.array_equal(initial[p], final[p]) for p in frozen_bn)


@pytest.mark.slow  # four training runs
def test_a_fine_tune_stopped_in_and_after_its_warm_up_ends_with_the_uninterrupted_weights(tmp_path):
    uninterrupted = _trainer(_config(FINETUNE, steps=6), tmp_path / "uninterrupted", fresh=True)
    uninterrupted.train()
    expected = _values(uninterrupted.model)

    # Stopped at step 2 (in the warm-up), then at step 4 (after it): each piece is the same command with a
    # step limit, rerun in the same directory (a constant learning rate, so the limit changes nothing else).
    run = tmp_path / "run"
    for steps in (2, 4, 6):
        trainer = _trainer(_config(FINETUNE, steps=steps), run, fresh=steps == 2)
        trainer.train()
    actual = _values(trainer.model)
    units = len(finetune.units_top_down(trainer.model))
    assert _unfrozen_log(run) == [(0, 0.0), (2, 0.0), (3, float(units)), (4, float(units))]
    assert actual.keys() == expected.keys()
    for path in expected:
        np.testing.assert_array_equal(actual[path], expected[path], err_msg=path)


# --- 5. Fine-tuning under two mirrored replicas --------------------------------------------------------

MIRRORED_FINETUNE = "finetune.freeze_epochs=0.5,finetune.unfreeze_blocks=1,finetune.train_batch_norm=false"


@pytest.mark.slow  # a fresh process with two logical CPU devices, two training runs
def test_fine_tuning_under_two_mirrored_replicas_matches_one_replica(tmp_path):
    """Warm-up of 2 steps, then only the `top` unit unfreezes: under one replica and under two (each half
    of the same global batch of 8) the phases switch at the same step, every block, the stem and all
    batch-norm statistics keep their initial values, and the trained weights agree."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, cwd=str(REPO), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = {kind: np.load(tmp_path / f"{kind}.npz") for kind in ("one", "two")}
    logs = json.loads((tmp_path / "logs.json").read_text())
    assert logs["replicas"] == {"one": 1, "two": 2}
    assert logs["one"] == logs["two"] == [[0, 0.0], [2, 1.0]]
    for kind, arrays in result.items():
        changed = {n[len("final:"):] for n in arrays.files if n.startswith("final:")
                   and not np.array_equal(arrays[n], arrays["initial:" + n[len("final:"):]])}
        assert changed == {"top_conv/kernel", "predictions/kernel", "predictions/bias"}, (kind, sorted(changed))
    one, two = result["one"], result["two"]
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


def _mirrored_worker(out: pathlib.Path) -> None:
    """Fine-tune under one replica and under two logical CPU replicas; save initial and final weights."""
    mirrored = training.create_strategy("mirrored", cpu_devices=2)
    logs = {"replicas": {}}
    for kind, info in (("one", training.create_strategy("default")), ("two", mirrored)):
        keras.backend.clear_session()
        keras.utils.set_random_seed(7)
        trainer = training.Trainer(_config(MIRRORED_FINETUNE, steps=4, batch=8), info, str(out / kind),
                                   train_dataset_fn=synthetic_dataset_fn(32, 3, 8, seed=1))
        initial = {v.path: np.array(v.value.read_value()) for v in trainer.model.weights}
        trainer.train()
        final = {v.path: np.array(v.value.read_value()) for v in trainer.model.weights}
        arrays = {f"initial:{p}": a for p, a in initial.items() if "seed_generator" not in p}
        arrays.update({f"final:{p}": a for p, a in final.items() if "seed_generator" not in p})
        np.savez(out / f"{kind}.npz", **arrays)
        logs[kind] = _unfrozen_log(out / kind)
        logs["replicas"][kind] = info.num_replicas
    (out / "logs.json").write_text(json.dumps(logs))


if __name__ == "__main__":
    _mirrored_worker(pathlib.Path(sys.argv[1]))
