"""Shared test setup: quiet TensorFlow, a deterministic seed, and the optional shared data."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from a fixed seed and a clean Keras name scope."""
    import keras

    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The optional real-photo archives beside the project; tests using them skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("shared data directory not present")
    return SHARED_DATA
