"""A training run, exported and used for prediction through the real command line: train_and_eval, then
--mode=export (every artifact passes its checks, the run's labels read back), then --mode=predict from
the run (latest and --checkpoint=best), from the SavedModel and the .tflite passed as --checkpoint, and
from the run again after its newest checkpoint was cut in half (falls back to the previous one).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"
PREDICTION = re.compile(r"^\s+(\d+)\. (.+?)\s+(\d\.\d{4})$")


def run_main(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)})
    return subprocess.run([sys.executable, str(REPO / "main.py"), *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in _without_ignored_exceptions(proc.stderr), proc.stderr[-4000:]
    return proc


def _without_ignored_exceptions(text: str) -> str:
    """The text less Python's "Exception ignored in: ..." reports (a finaliser failing at interpreter exit,
    after the command has done its work): the header, the traceback and the exception line."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.startswith("Exception ignored in"):
            skipping = True
            continue
        if skipping:
            if line.startswith(("Traceback", " ")):
                continue
            skipping = False
            continue  # the exception's own line ends the report
        kept.append(line)
    return "\n".join(kept)


def predictions(stdout: str, images: list[str]) -> dict[str, dict[str, float]]:
    """{image: {class: probability}} from predict's printed blocks."""
    result: dict[str, dict[str, float]] = {}
    current = None
    for line in stdout.splitlines():
        if line.strip() in images:
            current = result.setdefault(line.strip(), {})
            continue
        match = PREDICTION.match(line)
        if match and current is not None:
            current[match.group(2).strip()] = float(match.group(3))
    assert sorted(result) == sorted(images), stdout
    return result


COLOURS = ("blue", "green", "red")  # sorted, as the folder source orders classes


def photo(rng: np.random.Generator, channel: int) -> bytes:
    """A noisy JPEG whose dominant colour channel is `channel` (0 red, 1 green, 2 blue)."""
    pixels = rng.uniform(0, 90, (int(rng.integers(40, 64)), int(rng.integers(40, 64)), 3))
    pixels[..., channel] += 140
    return tf.io.encode_jpeg(tf.constant(pixels.clip(0, 255).astype(np.uint8)), quality=90).numpy()


def coloured_photos(root: pathlib.Path) -> pathlib.Path:
    """train/ and val/ folders of three colour classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("val", 15)):
        for name in COLOURS:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                (folder / f"{index}.jpg").write_bytes(photo(rng, ("red", "green", "blue").index(name)))
    return root


@pytest.mark.slow  # a training run, a full export with its TFLite conversions and five predictions (~2 min)
def test_run_export_and_predict_through_the_command_line(tmp_path: pathlib.Path) -> None:
    run = tmp_path / "run"
    photos = coloured_photos(tmp_path / "photos")
    # A model that learns the colours in 100 steps: past near-ties, so quantised artifacts meet their limits.
    ok(run_main("--mode=train_and_eval", f"--dataset=folder:{photos}", f"--model_dir={run}", "--train_steps=100",
              "--batch_size=16", "--seed=2", f"--hparams={TINY}", "--hparams=data.augment=none",
              "--hparams=train.steps_per_epoch=100,train.checkpoint_every_steps=50,train.image_summary=false"))
    labels = (run / "labels.txt").read_text().splitlines()
    assert labels == list(COLOURS)
    best = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    assert best["step"] == 100  # one eval, at the end: best and latest are the same weights

    exported = ok(run_main("--mode=export", f"--model_dir={run}", "--export_calibration_images=32",
                         "--export_eval_images=64"))
    export_dir = run / "export"
    report = json.loads((export_dir / "export_report.json").read_text())
    rows = {row["format"]: row for row in report["artifacts"]}
    assert {"saved_model", "tflite_float32", "tflite_int8"} <= set(rows), sorted(rows)
    failed = {name: row.get("check") for name, row in rows.items() if not row.get("passed", False)}
    assert report["all_passed"] is True and not failed, failed
    assert report["num_classes"] == len(labels)
    assert "FAIL" not in exported.stdout and str(export_dir) in exported.stdout
    assert (export_dir / "labels.txt").read_text().splitlines() == labels  # the run's labels, read back

    images = []
    for index in range(2):
        path = tmp_path / f"image{index}.jpg"
        path.write_bytes(photo(np.random.default_rng(100 + index), index))
        images.append(str(path))
    image_flags = [f"--image={image}" for image in images]

    outputs = {
        "latest": run_main("--mode=predict", f"--model_dir={run}", *image_flags),
        "best": run_main("--mode=predict", f"--model_dir={run}", "--checkpoint=best", *image_flags),
        "saved_model": run_main("--mode=predict", f"--checkpoint={export_dir / rows['saved_model']['path']}",
                             *image_flags),
        "tflite_float32": run_main("--mode=predict", f"--checkpoint={export_dir / rows['tflite_float32']['path']}",
                                *image_flags),
    }
    parsed = {name: predictions(ok(proc).stdout, images) for name, proc in outputs.items()}
    reference = parsed["latest"]
    for image in images:
        assert set(reference[image]) == set(labels)  # top-5 capped at the three classes
        assert 0.0 < sum(reference[image].values()) <= 1.0 + 1e-3
    for name, result in parsed.items():
        for image in images:
            assert list(result[image]) == list(reference[image]), (name, image, result[image], reference[image])
            for label, probability in reference[image].items():
                assert result[image][label] == pytest.approx(probability, abs=2e-4), (name, image, label)

    # The newest checkpoint cut in half: predict (and export) fall back to the previous readable one.
    (data,) = (run / "checkpoints").glob("ckpt-100.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    fallback = ok(run_main("--mode=predict", f"--model_dir={run}", *image_flags))
    warnings = [line for line in fallback.stderr.splitlines() if "Unreadable checkpoint" in line]
    assert len(warnings) == 1 and "ckpt-100" in warnings[0] and "ckpt-50" in warnings[0], fallback.stderr[-3000:]
    assert predictions(fallback.stdout, images) != reference  # other weights: step 50's
    assert data.exists()  # predict moves nothing
