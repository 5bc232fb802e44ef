"""Decode once: datasets are cached as uint8 arrays in one .npz per dataset version."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from kfaclab.data.split import Split

CACHE_FORMAT = 1  # bump when the cached layout changes


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else $KFACLAB_CACHE, else ~/.cache/kfaclab."""
    root = cache_dir or os.environ.get("KFACLAB_CACHE") or Path.home() / ".cache" / "kfaclab"
    return Path(root).expanduser()


def fingerprint(path: Path) -> str:
    """Identity of a source: file contents for an archive, names/sizes/mtimes for a folder."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def cache_file(root: Path, key: str) -> Path:
    return root / f"{key}-v{CACHE_FORMAT}.npz"


def load(path: Path):
    """(train, test, classes) from a cache file, or None if there is none."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return (Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"]),
                tuple(str(c) for c in z["classes"]))


def store(path: Path, train: Split, test: Split, classes) -> None:
    """Write atomically: a crash never leaves a truncated cache that a later load would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, train_x=train.images, train_y=train.labels, test_x=test.images,
                     test_y=test.labels, classes=np.array(classes))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fingerprint_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
