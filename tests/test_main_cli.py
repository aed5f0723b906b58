"""main.py as a user meets it: wrong input gives one line and a non-zero exit; train then eval works."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = "model.width_coefficient=0.25,model.depth_coefficient=0.25,model.image_size=32"


def _main(*args: str, cwd: pathlib.Path = REPO, timeout: float = 300, prefix: tuple[str, ...] = ()
          ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update({"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)})
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # main.py must keep TensorFlow quiet by itself
    return subprocess.run([*prefix, sys.executable, str(REPO / "main.py"), *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


def _without_file_permission_override() -> tuple[str, ...]:
    """A command prefix under which file permissions bind: as root, drop the capabilities that bypass them
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the child's bounding set; nothing for other users."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    output = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{output}"
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_flag_value() -> None:
    line = _assert_one_line_error(_main("--mode=fly"), "--mode=fly", "train_and_eval")
    assert _main("--mode=fly").returncode == 2 and line


def test_unknown_flag_suggests_the_right_one() -> None:
    _assert_one_line_error(_main("--modle=efficientnet-b0"), "modle", "Did you mean", "model")


def test_stray_positional_argument() -> None:
    _assert_one_line_error(_main("train"), "unexpected argument")


def test_unknown_hparams_key_with_suggestion() -> None:
    _assert_one_line_error(_main("--hparams=train.batch_sise=64"), "unknown hparams key 'train.batch_sise'",
                           "did you mean train.batch_size?")


def test_unknown_model_name_lists_valid_names() -> None:
    _assert_one_line_error(_main("--model=efficientnet-b99"), "efficientnet-b99", "efficientnet-b0",
                           "efficientnet-lite0")


def test_missing_data_dir(tmp_path: pathlib.Path) -> None:
    _assert_one_line_error(_main(f"--data_dir={tmp_path / 'nowhere'}"), "does not exist", "--data_dir")
    _assert_one_line_error(_main(f"--dataset=folder:{tmp_path / 'nowhere'}"), "does not exist")


def test_unreadable_data_dir(tmp_path: pathlib.Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        # The folder dataset reads the same directory: without the check the run fails fast elsewhere (or
        # trains), never with this line.
        proc = _main(f"--dataset=folder:{locked}", f"--data_dir={locked}", f"--model_dir={tmp_path / 'run'}",
                     "--hparams=train.train_steps=1", prefix=_without_file_permission_override(), timeout=180)
        _assert_one_line_error(proc, "not readable")
        assert proc.returncode == 1
    finally:
        locked.chmod(0o755)


def test_data_dir_that_is_a_file(tmp_path: pathlib.Path) -> None:
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    _assert_one_line_error(_main(f"--data_dir={plain}"), "is not a directory")


def test_unreachable_tpu() -> None:
    address = f"grpc://127.0.0.1:{_closed_port()}"
    _assert_one_line_error(_main(f"--tpu={address}"), "cannot reach the TPU", address)


def test_batch_not_divisible_by_replicas() -> None:
    _assert_one_line_error(_main("--cpu_devices=2", "--batch_size=7"), "--batch_size=7",
                           "across 2 replicas", "multiple of 2")


def test_unwritable_model_dir(tmp_path: pathlib.Path) -> None:
    plain = tmp_path / "file.txt"
    plain.write_text("x")
    _assert_one_line_error(_main(f"--model_dir={plain / 'run'}", "--dataset=synthetic"), "cannot write to --model_dir")


def test_eval_without_a_training_run(tmp_path: pathlib.Path) -> None:
    _assert_one_line_error(_main("--mode=eval", f"--model_dir={tmp_path}"), "no config.yaml")


@pytest.mark.slow  # moved from the fast tier to keep it under 10 minutes; CI runs the slow tier
def test_train_eval_resume_and_model_mismatch(tmp_path: pathlib.Path) -> None:
    """No --model_dir: the run goes to runs/<model>-<dataset> under the working directory, and eval finds it there;
    checkpoints every step, the last train.keep_checkpoints kept; the eval loss is the cross-entropy alone."""
    run = tmp_path / "runs" / "efficientnet-b0-synthetic"
    args = ["--mode=train_and_eval", "--dataset=synthetic", "--train_steps=4", "--batch_size=8", f"--hparams={TINY}",
            "--hparams=train.steps_per_epoch=2,train.checkpoint_every_steps=1,train.keep_checkpoints=2",
            "--hparams=train.weight_decay=1e-3"]
    trained = _main(*args, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Trained efficientnet-b0 on synthetic to step 4" in trained.stdout
    assert f"--model_dir={os.path.join('runs', 'efficientnet-b0-synthetic')}" in trained.stdout
    assert "tensorboard --logdir" in trained.stdout and "--mode=export" in trained.stdout
    assert (run / "config.yaml").exists() and (run / "labels.txt").read_text().count("\n") == 10
    first = json.loads((run / "eval_results.json").read_text())
    assert first["step"] == 4
    # Four checkpoints written (one per step), the newest two kept.
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index")) == ["ckpt-3.index", "ckpt-4.index"]
    _assert_eval_loss_is_the_cross_entropy_alone(run, first["loss"])

    again = _main(*args, cwd=tmp_path)  # same command: nothing left to do, exits cleanly
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resumed from" in again.stderr and "step 4" in again.stdout

    best = json.loads((run / "checkpoints" / "best" / "best.json").read_text())
    # Evals at steps 2 and 4; the best is the first eval with the highest top-1, with that eval's numbers.
    history = [json.loads(line) for line in (run / "eval_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    winner = max(history, key=lambda h: (h["top1"], -h["step"]))
    assert best["step"] == winner["step"] and best["top1"] == pytest.approx(winner["top1"])
    assert best["loss"] == pytest.approx(winner["loss"])
    assert (run / "checkpoints" / "best" / f"{best['checkpoint']}.index").exists()
    # --mode=eval without --model_dir: the default directory of these flags.
    evaluated = _main("--mode=eval", "--dataset=synthetic", "--checkpoint=best", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"at step {best['step']} " in evaluated.stdout and f"top-1 {100 * best['top1']:.2f}%" in evaluated.stdout
    assert json.loads((run / "eval_results.json").read_text())["top1"] == pytest.approx(best["top1"])

    model_dir = f"--model_dir={run}"
    _assert_one_line_error(_main(*args[:-3], model_dir, "--hparams=model.width_coefficient=0.5,"
                                                        "model.depth_coefficient=0.25,model.image_size=32"),
                           "model.width_coefficient=0.25", "--model_dir")
    _assert_one_line_error(_main("--mode=eval", model_dir, "--checkpoint=/no/such/ckpt"), "does not exist")


def _assert_eval_loss_is_the_cross_entropy_alone(run: pathlib.Path, loss: float) -> None:
    """The logged eval loss against the mean cross-entropy of the latest checkpoint's averaged weights on the
    held-out images, computed here; this run's weight decay term is large enough to show if it were added."""
    import keras
    import numpy as np
    import tensorflow as tf

    from efficientnet_tf import app, run_model
    from efficientnet_tf.training import inputs

    model, config, _ = run_model.restore_for_inference(str(run), classifier_activation=None)
    eval_fn = inputs.eval_dataset_fn(config, app.load_source(config))
    labels, logits = [], []
    for images, batch_labels in eval_fn(tf.distribute.InputContext()):
        logits.append(np.asarray(model(images, training=False)))
        labels.append(np.asarray(batch_labels))
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    log_probs = np.asarray(tf.nn.log_softmax(logits.astype(np.float64)))
    cross_entropy = float(-np.mean(log_probs[np.arange(len(labels)), labels]))
    decayed = [v for layer in model.layers if not isinstance(layer, keras.layers.BatchNormalization)
               for v in layer.trainable_weights]
    l2 = sum(float(np.sum(np.square(np.asarray(v.value, np.float64)))) / 2 for v in decayed)
    assert loss == pytest.approx(cross_entropy, rel=1e-4)
    assert 1e-3 * l2 > 100 * 1e-4 * cross_entropy, (cross_entropy, l2)


def test_summary_of_one_compound_scaled_model() -> None:
    """--mode=summary --model=efficientnet-phi1.5: one row, resolution 224·1.15^1.5 rounded to 8."""
    proc = _main("--mode=summary", "--model=efficientnet-phi1.5")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("efficientnet-")]
    assert len(rows) == 1
    name, res, width, depth = rows[0][:4]
    assert (name, res, width, depth) == ("efficientnet-phi1.5", "280", "1.15", "1.31")
    _assert_one_line_error(_main("--mode=summary", "--model=efficientnet-b9"), "unknown model 'efficientnet-b9'")


def test_help_lists_every_flag() -> None:
    """--help shows the command's flags although they are defined in efficientnet_tf/cli.py."""
    proc = _main("--help")
    for flag in ("--mode", "--model", "--dataset", "--hparams", "--model_dir", "--init_weights", "--checkpoint"):
        assert flag in proc.stdout, (flag, proc.stdout[-2000:])
    # --model's help names both families, V2 included.
    help_text = " ".join(proc.stdout.split())
    assert "efficientnet-b0 ... b8" in help_text and "efficientnetv2-b0 ... b3, -s, -m, -l, -xl" in help_text
