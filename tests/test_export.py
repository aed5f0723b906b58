"""Exporters: SavedModel and TFLite fidelity against Keras, the verification report, prediction, errors."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import build_model, export, prediction
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import files, mediapipe_check, registry
from efficientnet_tf.export.formats import litert, saved_model
from efficientnet_tf.export.formats.onnx import OnnxModel
from efficientnet_tf.export.images import preprocess_batch
from efficientnet_tf.export.verify import acceptance
from efficientnet_tf.export.formats.base import compare

import pipeline_defaults as defaults

SIZE = 64
CLASSES = ["red", "green", "blue"]
RESIZE = "bilinear"  # lite variants resize bilinearly
TRAIN_PER_CLASS = 40
EVAL_PER_CLASS = 20


def _encoded_images(rng: np.random.Generator, n: int, cls: int, png_every: int = 0) -> list[bytes]:
    """Noisy photos of assorted sizes whose dominant colour channel is the class."""
    out = []
    for i in range(n):
        height, width = (int(v) for v in rng.integers(70, 120, 2))
        pixels = rng.uniform(0, 90, (height, width, 3))
        pixels[..., cls] += 140
        image = tf.constant(pixels.clip(0, 255).astype(np.uint8))
        as_png = png_every and i % png_every == 0
        out.append((tf.io.encode_png(image) if as_png else tf.io.encode_jpeg(image, quality=90)).numpy())
    return out


@pytest.fixture(scope="module")
def dataset() -> dict:
    """Generated train / eval images as encoded bytes and as eval-preprocessed float arrays."""
    rng = np.random.default_rng(7)
    train = [(b, c) for c in range(len(CLASSES)) for b in _encoded_images(rng, TRAIN_PER_CLASS, c)]
    evaluation = [(b, c) for c in range(len(CLASSES)) for b in _encoded_images(rng, EVAL_PER_CLASS, c, png_every=5)]
    train_bytes, eval_bytes = [b for b, _ in train], [b for b, _ in evaluation]
    return {
        "train_images": preprocess_batch(train_bytes, SIZE, RESIZE),
        "train_labels": np.array([c for _, c in train]),
        "eval_bytes": eval_bytes,
        "eval_images": preprocess_batch(eval_bytes, SIZE, RESIZE),
        "eval_labels": np.array([c for _, c in evaluation]),
    }


@pytest.fixture(scope="module")
def trained(dataset) -> keras.Model:
    """A tiny EfficientNet-lite trained for a few epochs on the generated images."""
    keras.utils.set_random_seed(0)
    model = build_model(
        "efficientnet-lite0", classes=len(CLASSES), resolution=SIZE, width_coefficient=0.25, depth_coefficient=0.25
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # so that a few dozen steps settle the moving statistics
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(dataset["train_images"], dataset["train_labels"], epochs=8, batch_size=16, shuffle=True, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(trained, dataset, tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """Every format exported and verified once for the module."""
    export_dir = tmp_path_factory.mktemp("export")
    report = export.run_export(
        trained,
        class_names=CLASSES,
        image_size=SIZE,
        resize_method=RESIZE,
        export_dir=str(export_dir),
        representative_images=dataset["train_images"][::2],
        eval_images=dataset["eval_images"],
        eval_labels=dataset["eval_labels"],
        eval_jpeg_bytes=dataset["eval_bytes"],
    )
    return export_dir, report


def _keras_probs(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(tf.constant(images), training=False), np.float64)


def _row(report: dict, fmt: str) -> dict:
    return next(r for r in report["artifacts"] if r["format"] == fmt)


def test_trained_model_is_confident_enough_to_compare(trained, dataset):
    """Agreement checks below mean something only if the model has learned the classes."""
    probs = _keras_probs(trained, dataset["eval_images"])
    assert np.mean(np.argmax(probs, -1) == dataset["eval_labels"]) >= 0.8


def test_saved_model_in_fresh_process_matches_keras(exported, trained, dataset, tmp_path):
    export_dir, _ = exported
    saved_model = export_dir / "saved_model"
    images = dataset["eval_bytes"][:12]  # JPEGs and PNGs
    for i, data in enumerate(images):
        (tmp_path / f"{i:02d}.img").write_bytes(data)
    script = textwrap.dedent(
        """
        import glob, json, sys
        import numpy as np, tensorflow as tf
        from tensorflow.python.tools import saved_model_utils
        model_dir, image_dir, out = sys.argv[1:]
        files = sorted(glob.glob(image_dir + "/*.img"))
        loaded = tf.saved_model.load(model_dir)
        result = loaded.signatures["serving_default"](image_bytes=tf.constant([open(f, "rb").read() for f in files]))
        arrays = {k: v.numpy() for k, v in result.items()}
        arrays["top_k_names"] = np.char.decode(arrays["top_k_names"].astype(bytes), "utf-8")  # no object arrays
        np.savez(out, **arrays)
        meta = saved_model_utils.get_meta_graph_def(model_dir, "serve")
        sigs = {name: {"method": s.method_name,
                       "inputs": {k: [tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim]]
                                  for k, v in s.inputs.items()},
                       "outputs": sorted(s.outputs)}
                for name, s in meta.signature_def.items() if not name.startswith("__")}  # skip the init op
        print("SIGNATURES" + json.dumps(sigs))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = tmp_path / "result.npz"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(saved_model), str(tmp_path), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out, allow_pickle=False) as npz:
        probs, top_ids, top_names = npz["probabilities"], npz["top_k_ids"], npz["top_k_names"]
    expected = _keras_probs(trained, preprocess_batch(images, SIZE, RESIZE))
    assert probs.shape == (len(images), len(CLASSES))
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(top_ids[:, 0], np.argmax(expected, -1))
    assert top_names[:, 0].tolist() == [CLASSES[i] for i in np.argmax(expected, -1)]

    signatures = json.loads(proc.stdout.split("SIGNATURES", 1)[1])
    assert set(signatures) == {"serving_default", "serving_images"}
    assert signatures["serving_default"]["inputs"] == {"image_bytes": ["string", [-1]]}
    assert signatures["serving_images"]["inputs"] == {"images": ["float32", [-1, SIZE, SIZE, 3]]}
    for signature in signatures.values():
        assert signature["method"] == "tensorflow/serving/predict"
        assert signature["outputs"] == ["probabilities", "top_k_ids", "top_k_names", "top_k_probabilities"]


def test_saved_model_image_signature_and_embedded_names(exported, trained, dataset):
    export_dir, report = exported
    predictor = saved_model.SavedModelPredictor(str(export_dir / "saved_model"))
    assert predictor.class_names == CLASSES
    assert (predictor.image_size, predictor.resize_method) == (SIZE, RESIZE)
    probs = predictor.predict_images(dataset["eval_images"])
    np.testing.assert_allclose(probs, _keras_probs(trained, dataset["eval_images"]), rtol=0, atol=1e-5)
    assert _row(report, "saved_model")["passed"] and _row(report, "saved_model_bytes")["passed"]


def test_tflite_float32_matches_keras(exported, trained, dataset):
    export_dir, report = exported
    runner = litert.TFLiteModel(str(export_dir / "model_float32.tflite"))
    assert runner.input_dtype == np.float32 and runner.image_size == SIZE
    probs, seconds = runner.predict(dataset["eval_images"])
    np.testing.assert_allclose(probs, _keras_probs(trained, dataset["eval_images"]), rtol=0, atol=1e-4)
    assert len(seconds) == len(probs) and min(seconds) > 0
    assert _row(report, "tflite_float32")["max_prob_diff"] <= 1e-4


def test_float16_and_dynamic_range_keep_top1(exported):
    export_dir, report = exported
    float32_size = os.path.getsize(export_dir / "model_float32.tflite")
    for fmt, max_ratio in (("tflite_float16", 0.6), ("tflite_dynamic", 0.5)):
        row = _row(report, fmt)
        assert row["top1_agreement"] >= 0.99, row
        assert row["passed"]
        assert row["size_bytes"] < max_ratio * float32_size  # the weights really are smaller


def test_acceptance_limits_per_format():
    """Float files are judged by their probabilities or agreement, 8-bit-weight files by accuracy."""
    def row(fmt, agreement, accuracy=None, **extra):
        return {"format": fmt, "top1_agreement": agreement, "accuracy": accuracy, "max_prob_diff": 0.05, **extra}

    # float16 is a float file: a 2% top-1 change fails it whatever the accuracy.
    assert acceptance(row("tflite_float16", 0.98, 0.91), 0.91) == (False, "top-1 agreement >= 99%")
    assert acceptance(row("tflite_float16", 0.995, 0.91), 0.91)[0]
    assert acceptance(row("tflite_float32", 1.0), None) == (False, "max prob diff <= 0.0001")
    # 8-bit weights (dynamic-range and int8, LiteRT and MediaPipe): flips of near-ties are allowed as
    # long as accuracy on the labelled images stays within 1.5 points of Keras.
    for fmt in ("tflite_dynamic", "tflite_int8"):
        assert acceptance(row(fmt, 0.98, 0.905), 0.91) == (True, "accuracy drop <= 1.5 points")
        assert not acceptance(row(fmt, 0.98, 0.89), 0.91)[0]
        assert acceptance(row(fmt, 0.96), None) == (True, "top-1 agreement >= 95%")  # no labels
        assert not acceptance(row(fmt, 0.94), None)[0]
        names = {"class_names_from_metadata": True}
        assert acceptance(row("mediapipe:" + fmt, 0.98, 0.905, reference_accuracy=0.91, **names), None)[0]
        assert not acceptance(row("mediapipe:" + fmt, 0.98, 0.89, reference_accuracy=0.91, **names), 0.95)[0]
        assert acceptance(row("mediapipe:" + fmt, 1.0, 0.91, reference_accuracy=0.91), 0.91) == (
            False, "class names read back from the metadata")
    assert acceptance(row("mediapipe:tflite_float32", 0.98, 0.91, class_names_from_metadata=True), 0.91)[1] == (
        "top-1 agreement >= 99%")
    assert acceptance({**row("tflite_int8", 1.0, 0.91), "error": "boom"}, 0.91) == (False, "loads and runs")
    # Each limit is inclusive: a file exactly at it passes (a drop of 1.5 points in floating point included).
    assert acceptance({**row("tflite_float32", 1.0), "max_prob_diff": 1e-4}, None)[0]
    assert acceptance(row("tflite_float16", 0.99, 0.91), 0.91)[0]
    assert acceptance(row("tflite_int8", 0.9, 0.485), 0.5)[0]  # 0.5 - 0.485 = 0.015000000000000013
    assert acceptance(row("tflite_int8", 0.95), None)[0]


def test_compare_counts_flips_their_margins_probability_differences_and_accuracy():
    """Worked by hand: four images of three classes; the artifact changes image 2's top-1 (a near-tie) and
    moves probabilities by at most 0.15."""
    reference = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.45, 0.4, 0.15], [0.2, 0.2, 0.6]])
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.35, 0.5, 0.15], [0.2, 0.15, 0.65]])
    result = compare(reference, probs, np.array([0, 1, 1, 0]))
    assert result["top1_agreement"] == pytest.approx(0.75) and result["top1_flips"] == 1
    assert result["max_flip_margin"] == pytest.approx(0.05)  # 0.45 - 0.4, the near-tie that flipped
    assert result["max_prob_diff"] == pytest.approx(0.1) and result["mean_prob_diff"] == pytest.approx(0.5 / 12)
    assert result["accuracy"] == pytest.approx(0.75)  # images 0, 1 and 2 right
    assert compare(reference, probs, np.array([0, 1]))["accuracy"] is None  # labels that do not pair up
    pairs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    two = compare(pairs, pairs[:, ::-1], None)  # two classes, every top-1 swapped
    assert two["top1_agreement"] == 0.0 and two["max_flip_margin"] == pytest.approx(0.6)
    one = compare(np.ones((3, 1)), np.ones((3, 1)), None)  # a single class: nothing can flip
    assert one["top1_agreement"] == 1.0 and one["max_flip_margin"] is None


def test_a_failing_int8_row_says_why_and_what_to_use_instead():
    def report(int8_accuracy, passed):
        int8 = {"format": "tflite_int8", "accuracy": int8_accuracy, "passed": passed, "check": "accuracy drop",
                "integer_only": True, "input_type": "uint8", "output_type": "uint8", "float_tensors": 0}
        return {"model": "efficientnet_b0", "artifacts": [{"format": "keras", "accuracy": 0.43}, int8]}

    failing = export.format_report(report(0.35, False)).splitlines()
    advice = [line for line in failing if "misses its limit" in line]
    assert len(advice) == 1 and "(8.0 points below Keras)" in advice[0], failing
    assert "model_dynamic.tflite" in advice[0] and "--export_calibration_images" in advice[0]
    assert not any("misses its limit" in line for line in export.format_report(report(0.425, True)).splitlines())


def test_int8_is_fully_integer_and_agrees(exported, dataset):
    export_dir, report = exported
    runner = litert.TFLiteModel(str(export_dir / "model_int8.tflite"))
    # uint8 in and out by default: what cameras, Android and MediaPipe hand a model.
    assert runner.input_dtype == np.uint8 and runner.output_dtype == np.uint8
    assert runner.input_quantization == (1.0, 0)  # a pixel value is its own input value
    assert "float32" not in runner.tensor_types()  # no float islands left in the graph
    row = _row(report, "tflite_int8")
    assert row["integer_only"] is True and row["float_tensors"] == 0
    assert row["input_type"] == "uint8" and row["input_quantization"] == [1.0, 0.0]
    assert row["output_quantization"][0] > 0
    assert row["top1_agreement"] >= 0.9, row
    keras_accuracy = _row(report, "keras")["accuracy"]
    assert row["accuracy"] >= keras_accuracy - 0.05, row
    assert runner.metadata["calibration_images"] == len(dataset["train_images"][::2])
    assert runner.metadata["io_type"] == "uint8"
    assert "every tensor integer" in export.format_report(report)


def test_int8_with_int8_io(trained, dataset, tmp_path):
    report = export.run_export(
        trained,
        class_names=CLASSES,
        image_size=SIZE,
        resize_method=RESIZE,
        export_dir=str(tmp_path),
        formats=("tflite_int8",),
        representative_images=dataset["train_images"][::4],
        eval_images=dataset["eval_images"],
        eval_labels=dataset["eval_labels"],
        int8_io="int8",
    )
    runner = litert.TFLiteModel(str(tmp_path / "model_int8.tflite"))
    assert runner.input_dtype == np.int8 and runner.output_dtype == np.int8
    assert runner.input_quantization == (1.0, -128)  # 0..255 pixels map exactly onto int8
    assert runner.metadata["io_type"] == "int8"
    assert _row(report, "tflite_int8")["top1_agreement"] >= 0.9
    assert [r["format"] for r in report["artifacts"] if ":" not in r["format"]] == ["keras", "tflite_int8"]
    assert not (tmp_path / "saved_model").exists()


def test_report_is_written_as_json_and_table(exported, dataset):
    export_dir, report = exported
    on_disk = json.loads((export_dir / "export_report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    formats = [r["format"] for r in report["artifacts"]]
    installed = registry.default_formats()  # every format whose extra is installed (saved_model and tflite always)
    tflite = registry.GROUPS["tflite"]
    mediapipe_rows = [f"mediapipe:{f}" for f in tflite] if mediapipe_check.available() else []
    assert {"saved_model", *tflite} <= set(installed)
    assert formats == ["keras", "saved_model", "saved_model_bytes", *installed[1:], *mediapipe_rows]
    assert report["num_eval_images"] == len(dataset["eval_images"]) and report["eval_set"] == "the eval set"
    for row in report["artifacts"][1:]:
        assert row["size_bytes"] == files.path_size(str(export_dir / row["path"])) > 0
        assert row["latency_ms"] > 0
        assert 0.0 <= row["top1_agreement"] <= 1.0
        assert row["top1_flips"] == round((1 - row["top1_agreement"]) * report["num_eval_images"])
        assert (row["max_flip_margin"] is None) == (row["top1_flips"] == 0)
    for row in report["artifacts"]:
        if row["format"] != "saved_model_bytes":
            assert row["accuracy"] is not None
    assert _row(report, "tflite_float32")["runtime"] == "litert (2 threads)"
    table = export.format_report(report)
    lines = table.splitlines()
    assert len(lines) >= 3 + len(formats)
    assert "top-1 agree" in lines[1] and "ms/image" in lines[1]
    for fmt, line in zip(formats, lines[3:]):
        assert line.startswith(fmt)
    info = json.loads((export_dir / "export_info.json").read_text())
    assert info["class_names"] == CLASSES and info["resize_method"] == RESIZE and info["image_size"] == SIZE
    assert (export_dir / "labels.txt").read_text().splitlines() == CLASSES


def test_predict_from_every_artifact(exported, trained, dataset, tmp_path):
    export_dir, _ = exported
    picks = [0, EVAL_PER_CLASS + 1, 2 * EVAL_PER_CLASS + 2]  # one image per class
    paths = []
    for i in picks:
        path = tmp_path / f"image_{i}.jpg"
        path.write_bytes(dataset["eval_bytes"][i])
        paths.append(str(path))
    expected = _keras_probs(trained, dataset["eval_images"][picks])

    lonely = tmp_path / "lonely"  # a .tflite without its sidecar files: names come from its metadata
    lonely.mkdir()
    shutil.copy(export_dir / "model_float32.tflite", lonely / "model.tflite")
    keras_dir = tmp_path / "keras"
    keras_dir.mkdir()
    trained.save(keras_dir / "model.keras")
    files.write_labels_file(str(keras_dir / "labels.txt"), CLASSES)

    sources = {
        "saved_model": (export_dir / "saved_model", 1e-5),
        "export_dir": (export_dir, 1e-5),
        "tflite_float32": (lonely / "model.tflite", 1e-4),
        "tflite_int8": (export_dir / "model_int8.tflite", None),
        "keras": (keras_dir / "model.keras", 1e-5),
    }
    for name, (source, atol) in sources.items():
        results = prediction.run_predict(str(source), paths, top_k=5)
        assert len(results) == len(paths), name
        for result, probs in zip(results, expected):
            assert len(result) == len(CLASSES)  # top-5 capped at the class count
            assert {n for n, _ in result} == set(CLASSES)
            scores = [p for _, p in result]
            assert scores == sorted(scores, reverse=True)
            assert sum(scores) == pytest.approx(1.0, abs=0.02)
            if atol is not None:
                assert result[0][0] == CLASSES[int(np.argmax(probs))], name
                got = np.array([dict(result)[c] for c in CLASSES])
                np.testing.assert_allclose(got, probs, rtol=0, atol=atol, err_msg=name)
    top1 = prediction.run_predict(str(export_dir / "saved_model"), paths, top_k=1)
    assert all(len(r) == 1 for r in top1)
    renamed = prediction.run_predict(str(lonely / "model.tflite"), paths[:1], class_names=["a", "b", "c"])
    assert {n for n, _ in renamed[0]} == {"a", "b", "c"}
    text = prediction.format_predictions(paths, top1)
    assert paths[0] in text and f"1. {top1[0][0][0]}" in text


def test_predict_from_training_run_goes_through_the_trainer_seam(trained, dataset, tmp_path, monkeypatch):
    """A model_dir that is not a SavedModel is restored by efficientnet_tf.run_model.restore_for_inference."""
    from efficientnet_tf import prediction as predict_module

    calls = []

    def restore_for_inference(model_dir, checkpoint=None):
        calls.append((model_dir, checkpoint))
        config = type("Config", (), {"data": type("DataConfig", (), {"resize_method": RESIZE})()})()
        return trained, config, CLASSES

    monkeypatch.setattr(predict_module, "restore_for_inference", restore_for_inference)
    image = tmp_path / "image.jpg"
    image.write_bytes(dataset["eval_bytes"][1])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = prediction.run_predict(str(run_dir), [str(image)], top_k=2)
    assert calls == [(str(run_dir), None)]
    prediction.run_predict(str(run_dir), [str(image)], top_k=2, checkpoint="best")
    assert calls[-1] == (str(run_dir), "best")
    expected = _keras_probs(trained, dataset["eval_images"][1:2])[0]
    assert result[0][0] == (CLASSES[int(np.argmax(expected))], pytest.approx(float(expected.max()), abs=1e-5))
    assert len(result[0]) == 2


def _one_line_user_error(excinfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_predict_errors_are_one_clear_line(exported, tmp_path):
    export_dir, _ = exported
    good = tmp_path / "good.jpg"
    good.write_bytes(tf.io.encode_jpeg(tf.zeros([40, 40, 3], tf.uint8)).numpy())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    model = str(export_dir / "saved_model")

    # An unreadable file among good ones is skipped (and listed in a warning); nothing readable is an error.
    assert len(prediction.run_predict(model, [str(good), str(broken)])) == 1
    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(model, [str(broken)])
    assert "broken.jpg" in _one_line_user_error(excinfo) and "read as an image" in str(excinfo.value)
    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(model, [str(tmp_path / "missing.jpg")])
    assert "missing.jpg" in _one_line_user_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(str(tmp_path / "no_such_model"), [str(good)])
    assert "no_such_model" in _one_line_user_error(excinfo)
    with pytest.raises(UserError):
        prediction.run_predict(model, [])
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(str(tmp_path / "weights.h5"), [str(good)])
    _one_line_user_error(excinfo)
    empty_dir = tmp_path / "empty_model_dir"  # neither a SavedModel nor a training run
    empty_dir.mkdir()
    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(str(empty_dir), [str(good)])
    _one_line_user_error(excinfo)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"class_names": ["a", "b"]}, "3 classes but 2 class names"),
        ({"image_size": 96}, "takes 64x64"),
        ({"formats": ("saved_model", "tflite_int4")}, "unknown export format"),
        ({"resize_method": "cubic-ish"}, "resize_method"),
        ({"int8_io": "int16"}, "int8_io"),
        ({"formats": ("tflite_int8",)}, "representative images"),
        ({"eval_images": np.zeros((2, 32, 32, 3), np.float32)}, "eval_images"),
        ({"eval_jpeg_bytes": [b"not an image"]}, "cannot decode"),
        ({"class_names": ["a", "b\nc", "d"]}, "spans lines"),
    ],
)
def test_export_rejects_mismatched_inputs_before_writing(trained, tmp_path, overrides, fragment):
    kwargs = {
        "class_names": CLASSES,
        "image_size": SIZE,
        "resize_method": RESIZE,
        "export_dir": str(tmp_path / "out"),
        "formats": ("saved_model",),
        **overrides,
    }
    with pytest.raises(UserError) as excinfo:
        export.run_export(trained, **kwargs)
    assert fragment in _one_line_user_error(excinfo)
    assert not (tmp_path / "out").exists()


def test_keras_files_load_in_safe_mode(tmp_path):
    """A .keras file carrying Python bytecode (a lambda) is refused, and the code never runs."""
    marker = tmp_path / "code_ran"
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Lambda(lambda t, path: (open(path, "w").close(), t)[1], arguments={"path": str(marker)})(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    path = tmp_path / "untrusted.keras"
    keras.Model(inputs, outputs).save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once
    image = tmp_path / "image.png"
    image.write_bytes(tf.io.encode_png(tf.zeros([SIZE, SIZE, 3], tf.uint8)).numpy())

    with pytest.raises(UserError) as excinfo:
        prediction.run_predict(str(path), [str(image)])
    assert "safe mode" in _one_line_user_error(excinfo)
    assert not marker.exists()

    def named_function(t):
        return t

    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(named_function)(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(x)).save(tmp_path / "unknown.keras")
    with pytest.raises(UserError) as excinfo:
        prediction.load_keras_file(str(tmp_path / "unknown.keras"))
    assert "not registered" in _one_line_user_error(excinfo)


@pytest.mark.slow  # a second model converted to every format; kept out of the fast tier for time
def test_logits_model_exports_probabilities(tmp_path):
    """A B0 (swish, squeeze-excite) with a logits head: every artifact outputs softmax probabilities."""
    model = build_model(
        "efficientnet-b0", classes=4, resolution=32, width_coefficient=0.25, depth_coefficient=0.25,
        classifier_activation=None,
    )  # fmt: skip
    images = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    report = export.run_export(
        model,
        class_names=None,  # a dataset without names: placeholders
        image_size=32,
        resize_method="bicubic",
        export_dir=str(tmp_path),
        formats=("saved_model", "tflite_float32"),
        eval_images=images,
    )
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    predictor = saved_model.SavedModelPredictor(str(tmp_path / "saved_model"))
    assert predictor.class_names == ["class_0", "class_1", "class_2", "class_3"]
    probs = predictor.predict_images(images)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    lite, _ = litert.TFLiteModel(str(tmp_path / "model_float32.tflite")).predict(images)
    np.testing.assert_allclose(lite, expected, rtol=0, atol=1e-4)
    assert report["all_passed"] and report["eval_set"] == "the eval set"
    assert all(r["accuracy"] is None for r in report["artifacts"])


@pytest.mark.slow
def test_int8_lite0_keeps_imagenette_accuracy(tmp_path):
    """A half-width lite0 trained on the embedded Imagenette: int8 within 1.5 points of float.

    200 val images measure an accuracy change only to about sqrt(flips)/200, so the allowance is 1.5
    points plus two standard errors of the paired difference; `benchmarks/export.py` makes the
    947-image check on the shared archive.
    """
    from efficientnet_tf import data

    src = defaults.get_source("imagenette_mini")
    size, method = 96, "bilinear"
    keras.utils.set_random_seed(0)
    model = build_model(
        "efficientnet-lite0", classes=src.num_classes, resolution=size, width_coefficient=0.5, depth_coefficient=0.5
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # moving statistics that settle within a short run
    steps = 24 * (src.num_train // 32)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=2e-3, warmup_steps=steps // 20)
    model.compile(keras.optimizers.Adam(schedule), keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    train = defaults.train_dataset(src, image_size=size, batch_size=32, resize_method=method, augment="none", seed=0)
    model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
    batches = list(defaults.eval_dataset(src, image_size=size, batch_size=50, resize_method=method))
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    report = export.run_export(
        model,
        class_names=src.class_names,
        image_size=size,
        resize_method=method,
        export_dir=str(tmp_path),
        formats=("tflite_float32", "tflite_int8"),
        representative_images=data.sample_images(src, 200, size, method).numpy(),
        eval_images=images,
        eval_labels=labels,
    )
    float_accuracy = _row(report, "keras")["accuracy"]
    print(export.format_report(report))
    assert float_accuracy >= 0.2  # twice chance (10 %), so the comparison means something
    assert _row(report, "tflite_float32")["max_prob_diff"] <= 1e-4
    int8 = _row(report, "tflite_int8")
    allowance = 0.015 + 2 * np.sqrt(int8["top1_flips"]) / len(labels)
    assert int8["accuracy"] >= float_accuracy - allowance, export.format_report(report)


def test_exporter_does_not_import_training():
    """The exporter and predictor restore runs through run_model; the training package stays unloaded."""
    code = ("import sys, efficientnet_tf.export.exporter, efficientnet_tf.prediction, efficientnet_tf.run_model; "
            "print(sorted(m for m in sys.modules if m.startswith('efficientnet_tf.training')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_every_tflite_file_runs_in_mediapipe_with_names_from_its_metadata(exported):
    """The real client: MediaPipe Tasks' ImageClassifier loads each file and names the classes."""
    pytest.importorskip("mediapipe")
    _, report = exported
    for fmt in registry.GROUPS["tflite"]:
        row = _row(report, f"mediapipe:{fmt}")
        assert row.get("error") is None, row
        assert row["class_names_from_metadata"] is True, row
        assert row["passed"], row
        assert row["latency_ms"] > 0
    assert _row(report, "mediapipe:tflite_float32")["top1_agreement"] >= 0.99
    assert report["mediapipe"] and not report["mediapipe"].startswith("not installed")


def test_onnx_matches_keras_and_names_its_classes(exported, trained, dataset):
    pytest.importorskip("onnxruntime")
    export_dir, report = exported
    row = _row(report, "onnx")
    assert row["passed"] and row["max_prob_diff"] <= 1e-4, row
    runner = OnnxModel(str(export_dir / "model.onnx"))
    assert runner.class_names == CLASSES and runner.image_size == SIZE
    probs, _ = runner.predict(dataset["eval_images"][:7], batch_size=4)  # batch is dynamic
    np.testing.assert_allclose(probs, _keras_probs(trained, dataset["eval_images"][:7]), atol=1e-4)
