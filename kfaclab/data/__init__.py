"""Datasets -> uint8 arrays (decoded once, cached) -> device-resident batches.

Names: `cifar10`, `svhn` (torchvision), `cifar10-jpeg` (the offline JPEG q75 copy),
`imagefolder:PATH` (a folder or tar.gz in ImageFolder layout) and `synthetic`.
Nothing else in kfaclab touches image files.
"""

from __future__ import annotations

import os
from pathlib import Path

from kfaclab.data import cache, integrity, sources
from kfaclab.data.loader import DeviceLoader
from kfaclab.data.split import Dataset, Split
from kfaclab.errors import DataUnavailable, UsageError

DATASETS = ("cifar10", "svhn", "cifar10-jpeg", "imagefolder:PATH", "synthetic")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

__all__ = ["DATASETS", "Dataset", "DeviceLoader", "Split", "default_cifar10_archive", "load_dataset"]


def default_cifar10_archive() -> Path:
    """$KFACLAB_CIFAR10_JPEG, else `../shared/data/cifar10-jpeg.tar.gz` beside the checkout."""
    env = os.environ.get("KFACLAB_CIFAR10_JPEG")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_dataset(name: str, *, data_root=None, archive=None, cache_dir=None, download: bool = True) -> Dataset:
    """Load a dataset by name (see DATASETS), decoding only on the first call per cache folder."""
    if name == "synthetic":
        train, test, classes = sources.make_synthetic()
        return Dataset(name, train, test, classes, source="synthetic(seed=0)")
    if name in ("cifar10", "svhn"):
        root = Path(data_root).expanduser() if data_root else cache.cache_root(cache_dir) / "torchvision"
        path = cache.cache_file(cache.cache_root(cache_dir), f"{name}-{cache.fingerprint_text(str(root.resolve()))}")

        def decode():
            train, test, classes = sources.load_torchvision(name, root, download)
            integrity.check_counts(name, root, train, test, classes)  # before it is cached
            return train, test, classes

        return _cached(name, path, str(root), decode, fingerprint=cache.fingerprint(root) if root.exists() else "")
    if name == "cifar10-jpeg":
        path = Path(archive).expanduser() if archive else default_cifar10_archive()
        if not path.exists():
            raise DataUnavailable(f"CIFAR-10 JPEG archive not found at {path}; pass --data-archive "
                                  "PATH/cifar10-jpeg.tar.gz (or --dataset cifar10 --data-root DIR when online)")
        digest = integrity.sha256(path)
        integrity.check_cifar10_jpeg(path, digest)  # the shipped file, byte for byte

        def decode():
            train, test, classes = sources.read_imagefolder(path)
            if classes != CIFAR10_CLASSES:
                raise UsageError(f"{path} does not hold CIFAR-10's classes (found {list(classes)}); "
                                 "use --dataset imagefolder:PATH for other data")
            integrity.check_counts("cifar10", path, train, test, classes)
            return train, test, classes

        key = f"{name}-{digest[:16]}"
        return _cached(name, cache.cache_file(cache.cache_root(cache_dir), key), str(path), decode,
                       fingerprint=digest[:16])
    if name.startswith("imagefolder:") and len(name) > len("imagefolder:"):
        return _imagefolder(name, Path(name.split(":", 1)[1]).expanduser(), cache_dir)
    raise UsageError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")


def _imagefolder(name: str, path: Path, cache_dir) -> Dataset:
    if not path.exists():
        raise DataUnavailable(f"image folder or archive '{path}' does not exist; give an existing path")
    fingerprint = cache.fingerprint(path)
    key = f"{name.split(':')[0]}-{fingerprint}"
    return _cached(name, cache.cache_file(cache.cache_root(cache_dir), key), str(path),
                   lambda: sources.read_imagefolder(path), fingerprint=fingerprint)


def _cached(name: str, path: Path, source: str, decode, fingerprint: str) -> Dataset:
    """The cache file if it holds this source (same fingerprint) and reads whole; else decode,
    check and store. A corrupt or stale cache is reported in one line and rebuilt."""
    hit = cache.load(path, fingerprint)
    if hit is not None:
        return Dataset(name, *hit, source=source, from_cache=True)
    train, test, classes = decode()
    cache.store(path, train, test, classes, fingerprint)
    return Dataset(name, train, test, classes, source=source, from_cache=False)
