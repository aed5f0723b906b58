"""`--mode=export` through the command line, each outcome a user can meet, read back with the programs that
load the files (LiteRT, MediaPipe's metadata schema, the onnx package), not with the exporter's own code:

- `--checkpoint=best` where the best checkpoint is not the latest: the files hold the best one's weights;
- `--export_int8_io=int8`, `--export_license`, `--export_author` and the ONNX opset;
- a row that misses its limit: FAIL in the table, the file still written, exit status 0, `all_passed` false;
- a format whose conversion fails: exit status 1 with one line, the other formats still written and verified.

A limit miss is forced by running the command line's entry point (what main.py runs) with the float32
format's limit (its module in the format registry) set to a value no file can meet; a conversion failure by
a stand-in `tf2onnx` on PYTHONPATH that fails as the real one does on an op it cannot convert. Slow tier:
two trainings and three exports with their TFLite and ONNX conversions take a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_export_from_run import coloured_photos

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
# The command line's entry point with the TFLite float32 limit set below zero: every file misses it.
FORCED_MISS = textwrap.dedent("""
    import sys
    from efficientnet_tf.export.formats import base, litert, tflite_float32 as f32
    f32.FORMAT = litert.tflite_format("tflite_float32", f32.FORMAT.summary, f32.configure, base.max_prob_diff(-1.0),
                                      mediapipe=base.min_agreement(0.99))
    from efficientnet_tf.cli import run
    sys.argv[0] = "main.py"
    run()
""")
# tf2onnx's command line as it ends on an op it cannot convert.
FAILING_TF2ONNX = 'import sys\nsys.stderr.write("ValueError: tf2onnx cannot convert this graph (stand-in)\\n")\nsys.exit(1)\n'


def _command(*args: str, program: tuple[str, ...] = (str(REPO / "main.py"),), pythonpath: str = "",
             timeout: float = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(REPO)) if p)})
    return subprocess.run([sys.executable, *program, *args], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A run whose best checkpoint (the eval at step 20) is older than its latest (step 40, trained on without
    evaluation)."""
    root = tmp_path_factory.mktemp("export-command")
    photos = coloured_photos(root / "photos")
    model_dir = root / "run"
    common = [f"--dataset=folder:{photos}", f"--model_dir={model_dir}", "--batch_size=16", "--seed=2",
              f"--hparams={TINY}", "--hparams=data.augment=none",
              "--hparams=train.steps_per_epoch=20,train.checkpoint_every_steps=20,train.image_summary=false"]
    _ok(_command("--mode=train_and_eval", "--train_steps=20", *common))
    _ok(_command("--mode=train", "--train_steps=40", *common))
    best = json.loads((model_dir / "checkpoints" / "best" / "best.json").read_text())
    assert best["step"] == 20
    return model_dir


def _rows(export_dir: pathlib.Path) -> tuple[dict, dict[str, dict]]:
    report = json.loads((export_dir / "export_report.json").read_text())
    return report, {row["format"]: row for row in report["artifacts"]}


def _restored(model_dir: pathlib.Path, checkpoint: str):
    from efficientnet_tf import run_model

    model, _, _ = run_model.restore_for_inference(str(model_dir), checkpoint)
    return model


def test_best_checkpoint_int8_io_metadata_opset_and_a_limit_miss(run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tf2onnx")
    onnx = pytest.importorskip("onnx")
    schema = pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")
    from ai_edge_litert.interpreter import Interpreter

    from efficientnet_tf.export import metadata

    export_dir = tmp_path / "export"
    author = "Jane Doe <jane@example.org>"
    proc = _command("--mode=export", f"--model_dir={run}", "--checkpoint=best", f"--export_dir={export_dir}",
                    "--export_formats=tflite_float32,tflite_int8,onnx", "--export_int8_io=int8",
                    "--export_license=MIT", f"--export_author={author}", "--export_calibration_images=16",
                    "--export_eval_images=30", program=("-c", FORCED_MISS))
    # The miss: FAIL on its row, the file kept, exit status 0 and all_passed false.
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report, rows = _rows(export_dir)
    assert report["all_passed"] is False and rows["tflite_float32"]["passed"] is False
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("tflite_float32 ")]
    assert line.rstrip().endswith("FAIL (max prob diff <= -1)"), line
    assert (export_dir / "model_float32.tflite").is_file() and (export_dir / "model.onnx").is_file()
    assert {"tflite_int8", "onnx"} <= set(rows) and not report["failed_formats"]

    # --export_int8_io=int8: int8 in and out, as LiteRT reads the file.
    interpreter = Interpreter(model_path=str(export_dir / "model_int8.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    # Licence, author, name and version (the best checkpoint) through the published metadata schema.
    for name in ("model_float32.tflite", "model_int8.tflite"):
        raw = metadata.read_buffer_entry((export_dir / name).read_bytes(), metadata.METADATA_NAME)
        root = schema.ModelMetadata.GetRootAs(raw, 0)
        assert (root.License(), root.Author()) == (b"MIT", author.encode()), name
        assert root.Name() == b"efficientnet-b0" and root.Version() == b"ckpt-20", name
    # The ONNX file's opset, as the onnx package reads it.
    opsets = {entry.domain: entry.version for entry in onnx.load(str(export_dir / "model.onnx")).opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == 17, opsets

    # The files hold the best checkpoint's weights, not the latest's.
    images = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
    tflite = Interpreter(model_path=str(export_dir / "model_float32.tflite"))
    tflite.resize_tensor_input(tflite.get_input_details()[0]["index"], list(images.shape))
    tflite.allocate_tensors()
    tflite.set_tensor(tflite.get_input_details()[0]["index"], images)
    tflite.invoke()
    exported = tflite.get_tensor(tflite.get_output_details()[0]["index"])
    best = np.asarray(_restored(run, "best")(images, training=False))
    latest = np.asarray(_restored(run, "latest")(images, training=False))
    assert np.abs(exported - best).max() <= 1e-4
    assert np.abs(exported - latest).max() > 1e-3


def test_a_failed_conversion_exits_1_and_keeps_the_other_formats(run: pathlib.Path, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    stand_in = tmp_path / "stand_in" / "tf2onnx"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("")
    (stand_in / "convert.py").write_text(FAILING_TF2ONNX)
    export_dir = tmp_path / "export"
    proc = _command("--mode=export", f"--model_dir={run}", f"--export_dir={export_dir}",
                    "--export_formats=saved_model,tflite_float32,onnx", "--export_calibration_images=8",
                    "--export_eval_images=20", pythonpath=str(stand_in.parent))
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: onnx could not be written (see the lines above); the other formats are in {export_dir}"]
    assert "ONNX conversion failed: ValueError: tf2onnx cannot convert this graph (stand-in)" in proc.stderr
    report, rows = _rows(export_dir)
    assert report["failed_formats"] == ["onnx"] and report["all_passed"] is False
    assert rows["onnx"]["passed"] is False and "stand-in" in rows["onnx"]["error"]
    assert rows["saved_model"]["passed"] and rows["tflite_float32"]["passed"]  # written and verified
    assert (export_dir / "model_float32.tflite").is_file() and (export_dir / "saved_model" / "saved_model.pb").is_file()
    assert not (export_dir / "model.onnx").exists()
