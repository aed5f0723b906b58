"""data.augment_backend=keras_cv: keras-cv's RandAugment in the host pipeline (the `[keras-cv]` extra).

The tests that run keras-cv skip when the extra is not installed (CI installs it); the settings,
the refused combinations and the one-line error for a missing extra need no keras-cv.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import app, hparams, training
from efficientnet_tf.data import augment_keras_cv
from efficientnet_tf.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent
SIZE = 48
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.name=efficientnet-b0"
KERAS_CV = "data.augment=randaugment,data.augment_backend=keras_cv"


def _resolve(*overrides: str):
    return hparams.resolve(hparams.build_config([TINY, "train.batch_size=8", *overrides]), num_classes=2, num_train=16)


def test_backend_is_a_strict_choice_native_by_default():
    assert hparams.default_config().data.augment_backend == "native"
    assert hparams.build_config([KERAS_CV]).data.augment_backend == "keras_cv"
    with pytest.raises(UserError, match=r"takes one of native, keras_cv, got 'kerascv'; did you mean keras_cv\?"):
        hparams.build_config(["data.augment_backend=kerascv"])


@pytest.mark.parametrize("overrides, message", [
    ("data.augment=autoaugment", "runs RandAugment only; keras-cv has no 'autoaugment' policy"),
    ("data.augment_on_device=true", "HistogramFixedWidth) has no XLA kernel"),
    ("train.deterministic=true", "cannot give train.deterministic=true"),
    ("data.randaug_magnitude=17", "magnitudes from 0 to 10 (keras-cv's 0..1), got 17"),
    ("train.progressive.stages=2,train.progressive.randaug_magnitude_start=12", "got 12"),
])
def test_combinations_keras_cv_cannot_run_are_refused_in_one_line(overrides, message):
    _resolve(KERAS_CV)  # the supported combination resolves
    with pytest.raises(UserError, match=re.escape(message)) as error:
        _resolve(KERAS_CV, overrides)
    assert "\n" not in str(error.value)
    _resolve("data.augment_backend=native", overrides.replace("data.augment=autoaugment", "data.augment=none"))


def test_magnitude_mapping_and_the_layer_settings():
    assert augment_keras_cv.keras_cv_magnitude(10) == 1.0
    assert augment_keras_cv.keras_cv_magnitude(5) == 0.5
    with pytest.raises(UserError, match="from 0 to 10"):
        augment_keras_cv.keras_cv_magnitude(10.5)
    pytest.importorskip("keras_cv")
    layer = augment_keras_cv.randaugment_layer(3, 7, seed=1)
    assert (layer.augmentations_per_image, layer.magnitude, layer.magnitude_stddev, layer.rate) == (3, 0.7, 0.0, 1.0)
    assert tuple(layer.value_range) == (0, 255) and layer.geometric


def _one_photo_folder(root: pathlib.Path) -> str:
    """Two classes holding copies of one low-contrast picture (values 40..200, so that AutoContrast and
    every other keras-cv op changes it); with min_crop_area=1 each training image is it or its mirror."""
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    picture = np.stack([40 + 160 * cols / (SIZE - 1), 40 + 160 * rows / (SIZE - 1),
                        np.where((rows // 8 + cols // 8) % 2 == 0, 60, 180)], axis=-1)
    encoded = tf.io.encode_png(np.round(picture).astype(np.uint8))
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            tf.io.write_file(str(root / label / f"{i}.png"), encoded)
    return f"folder:{root}"


def _first_batch(dataset: str, *overrides: str) -> tuple[object, np.ndarray]:
    config = hparams.build_config([TINY, f"data.dataset={dataset},data.min_crop_area=1.0,data.holdout_fraction=0",
                                   f"model.image_size={SIZE},train.batch_size=8,train.train_steps=2",
                                   "train.steps_per_epoch=2,train.seed=3,train.log_every_steps=1",
                                   "train.image_summary=false", *overrides])
    source = app.load_source(config)
    config = hparams.resolve(config, num_classes=source.num_classes, num_train=source.num_train)
    train_fn = training.inputs.train_dataset_fn(config, source)
    images, _ = next(iter(train_fn(tf.distribute.InputContext(), config.derived.stages[0])))
    return (config, train_fn), images.numpy()


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_training_two_steps_with_keras_cv_augments_within_0_255(tmp_path):
    pytest.importorskip("keras_cv")
    dataset = _one_photo_folder(tmp_path / "photos")
    _, plain = _first_batch(dataset, "data.augment=none")
    inputs = np.unique(plain.reshape(len(plain), -1), axis=0)
    assert len(inputs) <= 2  # the picture and its mirror: what keras-cv receives
    (config, train_fn), augmented = _first_batch(dataset, KERAS_CV, "data.randaug_magnitude=10")

    assert augmented.shape == plain.shape and augmented.dtype == np.float32
    assert augmented.min() >= 0.0 and augmented.max() <= 255.0
    np.testing.assert_array_equal(augmented, np.round(augmented))
    for image in augmented.reshape(len(augmented), -1):
        assert min(float(np.abs(image - x).mean()) for x in inputs) > 1.0  # every image was augmented

    trainer = training.Trainer(config, training.create_strategy("default"), str(tmp_path / "run"),
                               train_dataset_fn=train_fn)
    assert trainer.train().step == 2


def test_a_missing_extra_is_one_line_on_the_command_line(tmp_path):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command line keeps TensorFlow quiet by itself
    env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    run = tmp_path / "run"
    argv = ["main.py", "--mode=train", "--dataset=synthetic", f"--model_dir={run}", "--train_steps=2",
            "--batch_size=8", f"--hparams={TINY},model.image_size=32,train.steps_per_epoch=2,{KERAS_CV}"]
    # sys.modules[name] = None makes `import keras_cv` raise ImportError, as when the extra is absent.
    script = (f"import sys; sys.modules['keras_cv'] = None; sys.argv = {argv!r}; "
              "from efficientnet_tf.cli import run; run()")
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=300)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0, output
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert "needs keras-cv" in output and "pip install -e '.[keras-cv]'" in output, output
    assert not run.exists()  # refused before the run directory was made
