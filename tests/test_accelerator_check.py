"""benchmarks/accelerator_check.py --quick: every part of the GPU check runs at toy size on the CPU, so the
script works the day a GPU runs its full form."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow  # about 100 s of CPU: CI runs it in the slow tier
def test_accelerator_check_quick_runs_every_part(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "check.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accelerator_check.py"), "--quick",
                           "--out", str(out)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    machine = result["hardware"]
    assert machine["cpu_cores"] >= 1 and machine["cpu_model"] and machine["tensorflow"] and machine["keras"]
    assert machine["gpus"] == []
    assert [(c["precision"], c["xla"]) for c in result["throughput"]] == [("float32", False), ("mixed_float16", False)]
    for cell in result["throughput"]:
        assert cell["ours_images_per_second"] > 0 and cell["keras_images_per_second"] > 0 and cell["ratio"] > 0
        assert len(cell["windows"]["ours"]) == len(cell["windows"]["keras"]) == 2
    assert [c["augment"] for c in result["input"]] == ["autoaugment on the host", "autoaugment on the device"]
    for cell in result["input"]:
        assert cell["host_pipeline_images_per_second"] > 0 and cell["training_images_per_second"] > 0
        assert 0.0 <= cell["input_wait_fraction"] <= 1.0
    run = result["training"]
    assert run["steps"] == 12 and run["export_passed"] and run["first_window_loss"] > 0
    assert "saved_model" in [a["format"] for a in run["artifacts"]]
    # One table: hardware line, throughput rows, input rows, the training line.
    assert proc.stdout.count("| throughput |") == 2 and proc.stdout.count("| input |") == 2
    assert "Hardware: CPU" in proc.stdout and "training: 12 steps" in proc.stdout
