"""Checks on the real Imagenette archive beside the project (skipped when it is absent)."""

from __future__ import annotations

import filecmp
import os
import tarfile
import time

import pytest

import data
from data import make_embedded

ARCHIVE = "imagenette2-224sq-train.tar"
B0_TRAIN_IMAGES_PER_SECOND = 7.0


@pytest.mark.slow
def test_autoaugment_pipeline_is_four_times_faster_than_b0_training(shared_data, tmp_path):
    with tarfile.open(shared_data / ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    src = data.get_source(f"folder:{tmp_path / 'imagenette2-224sq' / 'train'}", holdout_fraction=0.1)
    assert src.num_classes == 10 and src.num_train > 8000 and src.bad_files == []
    dataset = data.build_train_dataset(src, image_size=224, batch_size=32, augment="autoaugment", seed=0)
    iterator = iter(dataset)
    for _ in range(3):  # tracing and autotuning
        next(iterator)
    started = time.perf_counter()
    batches = 15
    for _ in range(batches):
        images, _ = next(iterator)
        assert images.shape == (32, 224, 224, 3)
    rate = batches * 32 / (time.perf_counter() - started)
    assert rate >= 4 * B0_TRAIN_IMAGES_PER_SECOND, f"{rate:.1f} images/s"


@pytest.mark.slow
def test_embedded_dataset_is_reproduced_by_its_build_script(shared_data, tmp_path):
    out = tmp_path / "imagenette_mini"
    count = make_embedded.build(
        str(shared_data / ARCHIVE), str(out), per_class=100, val_per_class=20, size=128, quality=85, seed=0
    )
    assert count == 1000
    committed = data.sources.embedded_root()
    for dirpath, _, filenames in os.walk(out):
        for filename in filenames:
            rebuilt = os.path.join(dirpath, filename)
            original = os.path.join(committed, os.path.relpath(rebuilt, out))
            assert filecmp.cmp(rebuilt, original, shallow=False), original
    committed_files = sum(len(f) for _, _, f in os.walk(committed))
    assert committed_files == sum(len(f) for _, _, f in os.walk(out))
