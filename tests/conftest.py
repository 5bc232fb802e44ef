import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kfaclab.data import default_cifar10_archive, load_dataset  # noqa: E402
from kfaclab.data.sources import make_synthetic  # noqa: E402
from kfaclab.data.split import Dataset  # noqa: E402


@pytest.fixture
def tiny_dataset():
    """A small synthetic dataset (fast enough for loop tests)."""
    train, test, classes = make_synthetic(n_train=512, n_test=200, size=8, contrast=30.0, seed=1)
    return Dataset("synthetic", train, test, classes, source="test")


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory):
    """The real CIFAR-10 JPEG archive, decoded once per test session into a fresh cache."""
    archive = default_cifar10_archive()
    if not archive.exists():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {archive}")
    cache = tmp_path_factory.mktemp("cache")
    return load_dataset("cifar10-jpeg", archive=archive, cache_dir=cache), archive, cache
