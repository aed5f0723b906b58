"""Packaging: one importable namespace, no generic top-level names, and a wheel that runs anywhere."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CONFIG")}
    env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


def _python(code: str, cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=str(cwd), env=_clean_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_only_the_efficientnet_tf_namespace_is_importable(tmp_path: pathlib.Path) -> None:
    """Outside the repository the installed project offers efficientnet_tf.* and nothing generic."""
    for generic in ("data", "export", "hparams", "main"):
        proc = _python(f"import {generic}", tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (generic, proc.stdout, proc.stderr)
    proc = _python("import efficientnet_tf.data, efficientnet_tf.export, efficientnet_tf.hparams, "
                   "efficientnet_tf.app, efficientnet_tf.cli; print('ok')", tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_command_line_does_not_import_tensorflow_to_check_flags(tmp_path: pathlib.Path) -> None:
    """Importing the command line is cheap: TensorFlow starts only after the flags are checked."""
    proc = _python("import sys, efficientnet_tf.cli; print('tensorflow' in sys.modules)", tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A wheel built from the repository (no network: the virtualenv's setuptools builds it)."""
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy so that setuptools' build/ and egg-info never land in the checkout.
    source = out / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "runs", "out",
                                                                 "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("efficientnet_tf-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_wheel_holds_one_top_level_package_and_its_files(wheel: pathlib.Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"efficientnet_tf"}, top
    assert "efficientnet-tf = efficientnet_tf.cli:run" in entry_points
    for required in ("efficientnet_tf/hparams/defaults.yaml", "efficientnet_tf/hparams/imagenette.yaml",
                     "efficientnet_tf/hparams/datasets/imagenette_mini.yaml", "efficientnet_tf/data/pipeline.py",
                     "efficientnet_tf/data/sources/folder.py", "efficientnet_tf/export/formats/tflite_int8.py",
                     "efficientnet_tf/data/imagenette_mini/classes.tsv"):
        assert required in names, required
    photos = [n for n in names if n.startswith("efficientnet_tf/data/imagenette_mini/") and n.endswith(".jpg")]
    assert len(photos) == 1000


def test_wheel_runs_summary_from_a_directory_with_its_own_data_folder(wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Installed from the wheel, the command line works where a user's own `data/` package sits."""
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    work = tmp_path / "user_project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "__init__.py").write_text("raise ImportError('the user data package was imported')\n")
    (work / "hparams.py").write_text("raise ImportError('the user hparams module was imported')\n")
    env = {"PYTHONPATH": str(target)}
    where = _python("import efficientnet_tf, efficientnet_tf.data as d, efficientnet_tf.hparams as h; "
                    "print(efficientnet_tf.__file__); print(d.__file__); print(h.DEFAULTS_FILE)", work, **env)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout
    proc = subprocess.run([str(target / "bin" / "efficientnet-tf"), "--mode=summary", "--model=efficientnet_b0"],
                          cwd=str(work), env=_clean_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "efficientnet-b0       224" in proc.stdout, proc.stdout
    module = subprocess.run([sys.executable, "-m", "efficientnet_tf", "--help"], cwd=str(work),
                            env=_clean_env(**env), capture_output=True, text=True, timeout=300)
    assert "--mode" in module.stdout and "--hparams" in module.stdout, module.stdout + module.stderr[-3000:]
