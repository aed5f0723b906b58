"""Checks on the real Imagenette archive beside the project (skipped when it is absent).

The input pipeline's speed is measured by benchmarks/input_pipeline.py, not here."""

from __future__ import annotations

import filecmp
import os

import pytest

from efficientnet_tf import data
from efficientnet_tf.data import make_embedded

ARCHIVE = "imagenette2-224sq-train.tar"


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
