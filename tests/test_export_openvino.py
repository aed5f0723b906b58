"""OpenVINO IR export: written from the SavedModel, verified by the OpenVINO runtime within the float limits, a row
in the export report, and read by --mode=predict from the IR file or its directory with the class names inside."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

from efficientnet_tf import build_model, export, prediction
from efficientnet_tf.errors import UserError
from efficientnet_tf.export import registry

pytest.importorskip("openvino")

REPO = pathlib.Path(__file__).resolve().parent.parent
SIZE = 32
NAMES = ["tench", "golf ball", "church"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict, keras.Model, np.ndarray]:
    keras.utils.set_random_seed(5)
    model = build_model("efficientnet-b0", classes=len(NAMES), resolution=SIZE, width_coefficient=0.25,
                        depth_coefficient=0.25, classifier_activation="softmax")
    images = np.random.default_rng(1).uniform(0, 255, (12, SIZE, SIZE, 3)).astype(np.float32)
    export_dir = tmp_path_factory.mktemp("openvino_export")
    report = export.run_export(model, class_names=NAMES, image_size=SIZE, resize_method="bicubic",
                               export_dir=str(export_dir), formats=["openvino"], eval_images=images,
                               eval_labels=np.arange(12) % 3)
    return export_dir, report, model, images


def test_the_ir_is_verified_by_the_openvino_runtime_within_the_float_limit(exported) -> None:
    export_dir, report, model, images = exported
    row = next(r for r in report["artifacts"] if r["format"] == "openvino")
    assert row["passed"] and row["check"] == "max prob diff <= 0.0001" and row["max_prob_diff"] <= 1e-4
    assert row["runtime"].startswith("openvino ") and row["path"] == "openvino"
    # float32 arithmetic on every CPU: OpenVINO's default on CPUs with bfloat16 units (AMX) is bfloat16, which
    # moves a trained model's probabilities past the float limit (seen on an Intel Xeon with AMX).
    assert row["runtime"].endswith(", f32)"), row["runtime"]
    assert (export_dir / "openvino" / "model.xml").is_file() and (export_dir / "openvino" / "model.bin").is_file()
    assert "openvino" in export.format_report(report)
    weights = (export_dir / "openvino" / "model.bin").stat().st_size
    assert weights >= 0.9 * 4 * model.count_params() - 1e5  # float32 weights, not OpenVINO's float16 default


@pytest.mark.parametrize("artifact", ["openvino/model.xml", "openvino"])
def test_predict_reads_the_ir_file_or_its_directory_with_its_class_names(exported, artifact) -> None:
    export_dir, _, model, images = exported
    predictor = prediction.load_predictor(str(export_dir / artifact))
    assert predictor.class_names == NAMES and predictor.image_size == SIZE and predictor.resize_method == "bicubic"
    np.testing.assert_allclose(predictor.predict_images(images[:5]), model.predict(images[:5], verbose=0), atol=1e-4)
    os.remove(export_dir / "labels.txt")  # the names come from the IR itself, not the files beside it
    os.remove(export_dir / "export_info.json")
    assert prediction.load_predictor(str(export_dir / artifact)).class_names == NAMES
    (export_dir / "labels.txt").write_text("".join(f"{n}\n" for n in NAMES))
    (export_dir / "export_info.json").write_text(json.dumps({"class_names": NAMES}))


def test_a_missing_openvino_is_one_line(monkeypatch, exported) -> None:
    export_dir = exported[0]
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the [openvino] extra were not installed
    monkeypatch.setattr(registry.get("openvino").__class__, "missing_packages",
                        lambda fmt: ["openvino"] if fmt.name == "openvino" else [])
    with pytest.raises(UserError, match=r"openvino export format needs openvino: pip install -e '\.\[openvino\]'"):
        registry.check_installed(["openvino"])
    with pytest.raises(UserError, match=r"needs openvino") as raised:
        prediction.load_predictor(str(export_dir / "openvino" / "model.xml"))
    assert "\n" not in str(raised.value)


def test_the_command_line_lists_openvino_and_predicts_with_the_ir(exported, tmp_path) -> None:
    export_dir = exported[0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    help_text = subprocess.run([sys.executable, str(REPO / "main.py"), "--helpfull"], capture_output=True,
                               text=True, timeout=120, env=env).stdout
    assert "openvino" in help_text.split("--export_formats")[1].split("--")[0]
    image = tmp_path / "photo.png"
    import tensorflow as tf

    tf.io.write_file(str(image), tf.io.encode_png(tf.cast(exported[3][0], tf.uint8)))
    proc = subprocess.run([sys.executable, str(REPO / "main.py"), "--mode=predict",
                           f"--checkpoint={export_dir / 'openvino' / 'model.xml'}", f"--image={image}", "--top_k=1"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(name in proc.stdout for name in NAMES) and "Classified 1 image(s)" in proc.stdout
