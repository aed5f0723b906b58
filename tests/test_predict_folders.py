"""--mode=predict over files, folders and globs: streamed rows, skipped bad files, output formats,
interruption, Grad-CAM overlays and the artifact dispatch."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf.errors import UserError
from efficientnet_tf import prediction as predictions
from efficientnet_tf.export.files import write_labels_file
from efficientnet_tf.export.images import preprocess_batch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE = 32
CLASSES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory) -> str:
    """A tiny softmax classifier saved as .keras with its labels.txt."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x), name="tiny")
    folder = tmp_path_factory.mktemp("model")
    model.save(folder / "tiny.keras")
    write_labels_file(str(folder / "labels.txt"), CLASSES)
    return str(folder / "tiny.keras")


def _jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


@pytest.fixture
def photo_folder(tmp_path):
    """Four good images in nested folders (JPEG and PNG), a corrupt JPEG, a text file and a hidden file."""
    root = tmp_path / "photos"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "one.jpg").write_bytes(_jpeg(1))
    (root / "a" / "deeper" / "two.jpg").write_bytes(_jpeg(2, (30, 60)))
    (root / "b" / "three.png").write_bytes(tf.io.encode_png(np.full((20, 20, 3), 90, np.uint8)).numpy())
    (root / "b" / "four.jpeg").write_bytes(_jpeg(4))
    (root / "b" / "corrupt.jpg").write_bytes(_jpeg(5)[:60])  # a JPEG cut off in its header
    (root / "notes.txt").write_text("not an image\n")
    (root / ".hidden.jpg").write_bytes(b"skipped: hidden")
    # The walk order: a folder's files (sorted), then its subfolders (sorted).
    good = [root / "a" / "one.jpg", root / "a" / "deeper" / "two.jpg", root / "b" / "four.jpeg",
            root / "b" / "three.png"]
    return root, [str(p) for p in good], [str(root / "b" / "corrupt.jpg"), str(root / "notes.txt")]


def test_folder_rows_match_the_model_and_bad_files_are_listed(keras_file, photo_folder, tmp_path, caplog):
    root, good, bad = photo_folder
    output = tmp_path / "out" / "predictions.jsonl"
    with caplog.at_level("WARNING"):
        run = predictions.predict_files(keras_file, [str(root)], top_k=2, output=str(output), batch_size=3,
                                        progress=False)
    assert [r.path for r in run.rows] == good
    assert sorted(run.bad_files) == sorted(bad)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "skipped" in r.getMessage()]
    assert len(warnings) == 1 and all(b in warnings[0] for b in bad) and warnings[0].startswith("2 file(s)")
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["path"] for line in lines] == good
    model = keras.saving.load_model(keras_file)
    images = preprocess_batch([open(p, "rb").read() for p in good], SIZE, "bicubic")
    expected = model.predict(images, verbose=0)
    for line, probs in zip(lines, expected):
        order = np.argsort(-probs)[:2]
        assert line["top_k_ids"] == order.tolist()
        assert line["top_k_classes"] == [CLASSES[i] for i in order]
        np.testing.assert_allclose(line["top_k_probabilities"], probs[order], atol=1e-5)


def test_globs_files_and_csv(keras_file, photo_folder, tmp_path):
    root, good, _ = photo_folder
    output = tmp_path / "rows.csv"
    run = predictions.predict_files(keras_file, [str(root / "**" / "*.jp*g"), good[-1], good[0]], top_k=5,
                                    output=str(output), progress=False)
    # Glob matches in sorted order, then the PNG; a path given twice is classified once.
    assert [r.path for r in run.rows] == [good[1], good[0], good[2], good[3]]
    assert run.bad_files == [str(root / "b" / "corrupt.jpg")]
    with open(output, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["path"] + [f"top{r}_{f}" for r in (1, 2, 3) for f in ("id", "class", "probability")]
    assert [row[0] for row in table[1:]] == [r.path for r in run.rows]
    assert sum(float(row[3 + 3 * k]) for row in table[1:2] for k in range(3)) == pytest.approx(1.0, abs=1e-4)


def test_inputs_that_are_one_line_errors(keras_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for inputs, fragment in (([str(empty)], "holds no files"), ([str(tmp_path / "missing.jpg")], "does not exist"),
                             ([str(tmp_path / "*.png")], "no file matches"), ([], "no images")):
        with pytest.raises(UserError, match=fragment) as excinfo:
            predictions.predict_files(keras_file, inputs, progress=False)
        assert "\n" not in str(excinfo.value)
    image = tmp_path / "x.jpg"
    image.write_bytes(_jpeg(0))
    with pytest.raises(UserError, match=".csv or a .jsonl"):
        predictions.predict_files(keras_file, [str(image)], output=str(tmp_path / "rows.txt"), progress=False)


class _Interrupting:
    """A predictor whose second batch is interrupted by Ctrl-C."""

    kind, keras_model, class_names, image_size, resize_method = "test model", None, CLASSES, SIZE, "bilinear"

    def __init__(self):
        self.calls = 0

    def predict_images(self, images):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return np.tile([[0.2, 0.5, 0.3]], (len(images), 1))


def test_ctrl_c_leaves_a_valid_partial_file(photo_folder, tmp_path):
    root, good, _ = photo_folder
    output = tmp_path / "partial.csv"
    with pytest.raises(UserError, match=r"interrupted after 2 of 6 images; .*partial.csv holds their rows"):
        predictions.predict_files("unused", [str(root)], output=str(output), batch_size=2, progress=False,
                                  predictor=_Interrupting())
    with open(output, newline="") as handle:
        table = list(csv.reader(handle))
    assert [row[0] for row in table[1:]] == good[:2]
    assert all(len(row) == len(table[0]) for row in table) and table[1][2] == "green"


def test_explain_writes_overlays_or_says_why_not(keras_file, photo_folder, tmp_path, caplog):
    root, good, _ = photo_folder
    run = predictions.predict_files(keras_file, [str(root)], explain_dir=str(tmp_path / "cams"), progress=False)
    written = sorted(os.listdir(tmp_path / "cams"))
    assert written == ["000001_one.png", "000002_two.png", "000004_four.png", "000005_three.png"]
    assert run.explain_dir == str(tmp_path / "cams")
    # Each overlay is its own image with the Grad-CAM of its top-1 class blended in, computed here by hand.
    model = keras.saving.load_model(keras_file)
    images = preprocess_batch([open(p, "rb").read() for p in good], SIZE, "bicubic")
    expected = _hand_overlays(model, images)
    for index, name in enumerate(written):  # the walk's order: one, two, four, three
        overlay = tf.io.decode_png(tf.io.read_file(str(tmp_path / "cams" / name))).numpy()
        assert overlay.shape == (SIZE, SIZE, 3)
        difference = np.abs(overlay / 255.0 - expected[index])
        assert difference.max() <= 4 / 255, (name, float(difference.max()))
        others = [float(np.abs(overlay / 255.0 - e).max()) for i, e in enumerate(expected) if i != index]
        assert min(others) > 0.05, (name, others)  # the overlays tell the images apart
    with caplog.at_level("WARNING"):
        other = predictions.predict_files("unused", good[:1], explain_dir=str(tmp_path / "none"), progress=False,
                                          predictor=_FixedPredictor())
    lines = [r.getMessage() for r in caplog.records if "Grad-CAM" in r.getMessage()]
    assert len(lines) == 1 and "TFLite model" in lines[0] and "\n" not in lines[0]
    assert other.explain_dir is None and not (tmp_path / "none").exists()


def _hand_overlays(model: keras.Model, images: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grad-CAM by hand: the last convolution's channels weighted by the spatial mean of the gradient of
    log p(top-1), ReLU, bilinear upsampling, scaled to a peak of 1; blended into the image with jet colours."""
    from matplotlib import colormaps

    conv = next(layer for layer in reversed(model.layers) if isinstance(layer, keras.layers.Conv2D))
    head = model.layers[model.layers.index(conv) + 1:]
    images = tf.constant(images)
    features = keras.Model(model.inputs, conv.output)(images)
    with tf.GradientTape() as tape:
        tape.watch(features)
        outputs = features
        for layer in head:
            outputs = layer(outputs)
        top = tf.argmax(outputs, -1)
        score = tf.math.log(tf.gather(outputs, top, batch_dims=1))
    weights = tf.reduce_mean(tape.gradient(score, features), axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, -1))[..., None]
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    cam /= np.maximum(cam.max(axis=(1, 2), keepdims=True), 1e-12)
    colours = colormaps["jet"](cam)[..., :3]
    return np.clip((1 - alpha) * np.asarray(images) / 255.0 + alpha * colours, 0.0, 1.0)


class _FixedPredictor(_Interrupting):
    kind = "TFLite model"

    def predict_images(self, images):
        return np.tile([[0.2, 0.5, 0.3]], (len(images), 1))


def test_onnx_paths_go_to_onnx_runtime(monkeypatch, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if ONNX Runtime were not installed
    with pytest.raises(UserError, match=r"onnx\]") as excinfo:
        predictions.load_predictor(str(model))
    assert "\n" not in str(excinfo.value)
    monkeypatch.undo()
    pytest.importorskip("onnxruntime")
    with pytest.raises(UserError, match="cannot load ONNX model"):  # reached ONNX Runtime itself
        predictions.load_predictor(str(model))


def _main(*args: str, cwd: pathlib.Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=str(cwd))


def test_command_line_folder_with_bad_files_exits_zero(keras_file, photo_folder, tmp_path):
    """Without --output: one block per image on stdout, and --explain's overlays in predict_gradcam/ under the
    working directory."""
    root, good, bad = photo_folder
    done = _main("--mode=predict", f"--checkpoint={keras_file}", f"--image={root}", "--top_k=1", "--explain",
                 "--verbosity=-1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stdout.splitlines() if line in good] == good
    warnings = [line for line in done.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and all(b in warnings[0] for b in bad)
    assert "Classified 4 image(s)" in done.stdout and "2 unreadable file(s) skipped" in done.stdout
    assert "Grad-CAM overlays: predict_gradcam" in done.stdout
    assert sorted(os.listdir(tmp_path / "predict_gradcam")) == [
        "000001_one.png", "000002_two.png", "000004_four.png", "000005_three.png"]
