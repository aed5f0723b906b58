"""The one training loop under MirroredStrategy (two logical CPUs) and MultiWorkerMirroredStrategy
(two local worker processes): a tiny model trains a few steps and every replica ends with the same
weights, batch-norm statistics and moving averages.

Each case runs in fresh processes (this file is also the worker script), because logical devices
and collective ops must be set up before TensorFlow starts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 3
IMAGE_SIZE = 32
BATCH = 8
NUM_CLASSES = 4


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra)
    return env


def _run_worker(kind: str, out: pathlib.Path, model_dir: pathlib.Path, env: dict[str, str],
                model: str = "efficientnet-b0") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, kind, str(out), str(model_dir), model],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO),
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"worker timed out:\n{output[-3000:]}")
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{output[-4000:]}"
    return output


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
@pytest.mark.parametrize("model", ["efficientnet-b0", "efficientnetv2-s"])  # V2-S: fused blocks with residuals
def test_mirrored_two_cpu_replicas_agree(tmp_path: pathlib.Path, model: str) -> None:
    out = tmp_path / "mirrored.json"
    _finish(_run_worker("mirrored", out, tmp_path / "run", _env(), model))
    report = json.loads(out.read_text())
    assert report["num_replicas"] == 2
    assert report["step"] == STEPS
    # Replicas saw different halves of each batch, yet hold identical values afterwards.
    assert report["max_replica_difference"] == 0.0, report["worst_variable"]
    assert report["bn_stats_checked"] > 0 and report["ema_checked"] > 0
    assert report["weights_moved"] > 1e-6  # it did train
    assert os.path.exists(tmp_path / "run" / "checkpoints" / f"ckpt-{STEPS}.index")


@pytest.mark.slow  # two worker processes; the fast tier keeps the mirrored two-replica check
def test_multi_worker_two_processes_agree(tmp_path: pathlib.Path) -> None:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(_run_worker("multi_worker", tmp_path / f"worker{index}.npz", tmp_path / "run",
                                 _env(TF_CONFIG=tf_config)))
    outputs = [_finish(p) for p in procs]
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in range(2))
    assert sorted(first.files) == sorted(second.files) and len(first.files) > 10
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name], err_msg=f"{name} differs between workers")
    assert float(first["__step__"]) == STEPS
    assert float(first["__moved__"]) > 1e-6, outputs[0][-2000:]
    # Only the chief writes checkpoints into the model directory; the other worker's scratch is gone.
    run = tmp_path / "run" / "checkpoints"
    assert (run / f"ckpt-{STEPS}.index").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".worker")]


# ---------------------------------------------------------------------------------------------
# Worker side (runs in a subprocess).


def _tiny_config(model: str = "efficientnet-b0"):
    from efficientnet_tf import hparams

    config = hparams.build_config([f"model.name={model}",
        f"model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size={IMAGE_SIZE}",
        f"train.batch_size={BATCH},train.train_steps={STEPS},train.steps_per_epoch={STEPS}",
        "train.warmup_epochs=0,train.base_learning_rate=0.5,train.log_every_steps=1,train.image_summary=false",
        "train.ema_decay=0.9,train.seed=1",
    ])
    return hparams.resolve(config, num_classes=NUM_CLASSES, num_train=BATCH * STEPS)


def _worker(kind: str, out: str, model_dir: str, model: str) -> None:
    import keras
    import tensorflow as tf

    from efficientnet_tf import training
    from efficientnet_tf.data import synthetic_dataset_fn
    from efficientnet_tf.training.step import batch_norm_statistics

    keras.utils.set_random_seed(1)
    info = training.create_strategy(kind, cpu_devices=2 if kind == "mirrored" else 1)
    config = _tiny_config(model)
    trainer = training.Trainer(
        config, info, model_dir,
        train_dataset_fn=synthetic_dataset_fn(IMAGE_SIZE, NUM_CLASSES, BATCH, seed=3),
    )
    initial = [np.array(v.value.read_value()) for v in trainer.model.trainable_variables]
    result = trainer.train()
    moved = max(float(np.abs(np.array(v.value.read_value()) - a).max())
                for v, a in zip(trainer.model.trainable_variables, initial))
    if kind == "mirrored":
        bn_ids = {id(v) for v in batch_norm_statistics(trainer.model)}
        worst, worst_name, bn_checked, ema_checked = 0.0, "", 0, 0
        named = [(v.path, v.value) for v in trainer.model.variables]
        named += [(f"ema/{i}", s) for i, s in enumerate(trainer.ema.shadows)]
        named += [("global_step", trainer.step)]
        for name, variable in named:
            parts = [np.array(t) for t in variable.values]
            assert len(parts) == 2, name
            diff = float(np.abs(parts[0].astype(np.float64) - parts[1].astype(np.float64)).max())
            if diff > worst:
                worst, worst_name = diff, name
        bn_checked = len(bn_ids)
        ema_checked = len(trainer.ema.shadows)
        with open(out, "w") as handle:
            json.dump({"num_replicas": info.num_replicas, "step": result.step, "max_replica_difference": worst,
                       "worst_variable": worst_name, "bn_stats_checked": bn_checked, "ema_checked": ema_checked,
                       "weights_moved": moved}, handle)
    else:
        arrays = {f"v{i}_{v.path.replace('/', '_')}": np.array(v.value.read_value())
                  for i, v in enumerate(trainer.model.variables)}
        arrays.update({f"ema{i}": np.array(s.read_value()) for i, s in enumerate(trainer.ema.shadows)})
        arrays["__step__"] = np.array(result.step)
        arrays["__moved__"] = np.array(moved)
        assert tf.distribute.has_strategy() is False
        np.savez(out, **arrays)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _worker(*sys.argv[1:5])
