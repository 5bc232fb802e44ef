import os
import shutil
import sys
import tempfile
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


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory):
    """The smoke preset executed once per session (2 workers, real papermill), in a copy."""
    import shutil

    from kfaclab.sweep import load_study
    from kfaclab.sweep.runner import sweep

    d = tmp_path_factory.mktemp("studies") / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    summary = sweep(load_study(d / "study.yaml"), workers=2, progress=False)
    assert summary.count("failed") == 0, summary.table()
    return d


def pytest_configure(config):
    # Computed results (kfaclab.computed) kept for this session only, in a folder of its own that
    # the book build and other subprocesses inherit: tests start from nothing, as CI does, and
    # leave the user's cache alone.
    if "KFACLAB_COMPUTED_CACHE" not in os.environ:
        config._kfaclab_computed = tempfile.mkdtemp(prefix="kfaclab-computed-tests-")
        os.environ["KFACLAB_COMPUTED_CACHE"] = config._kfaclab_computed
    config.addinivalue_line("markers", "browser: builds the book and drives headless Chromium "
                                       "(skip with -m 'not browser')")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skips without one; `pytest -m gpu` runs "
                                       "only these, as the GPU window's smoke check does)")


def pytest_unconfigure(config):
    # The session's own cache folder goes with the session (one made by the caller stays).
    folder = getattr(config, "_kfaclab_computed", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
