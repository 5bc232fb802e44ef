"""Decode once: datasets are cached as uint8 arrays in one .npz per dataset version."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from kfaclab.atomic import atomic_file
from kfaclab.data.split import Split

CACHE_FORMAT = 2  # bump when the cached layout changes (2: records its source's fingerprint)


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


def load(path: Path, fingerprint: str | None = None):
    """(train, test, classes) from a cache file, or None if there is none, or if it is corrupt or
    was made from another source (its recorded fingerprint differs): then a one-line warning
    goes to stderr, the file is moved aside (never trusted, never silently deleted) and the
    caller rebuilds it."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            recorded = str(z["source_fingerprint"]) if "source_fingerprint" in z.files else None
            if fingerprint is not None and recorded != fingerprint:
                problem = f"was made from another source ({recorded or 'unrecorded'}, now {fingerprint})"
            else:
                out = (Split(z["train_x"], z["train_y"]), Split(z["test_x"], z["test_y"]),
                       tuple(str(c) for c in z["classes"]))
                if len(out[0].images) != len(out[0].labels) or len(out[1].images) != len(out[1].labels):
                    raise ValueError("images and labels differ in number")
                return out
    except Exception as e:  # noqa: BLE001 - a cache that cannot be read whole is rebuilt, whatever broke it
        problem = f"is corrupt ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
    aside = path.with_name(f"{path.name}.bad-{os.getpid()}")
    os.replace(path, aside)
    print(f"kfaclab: cache file {path} {problem}; moved it to {aside.name} and rebuilding", file=sys.stderr)
    return None


def store(path: Path, train: Split, test: Split, classes, fingerprint: str = "") -> None:
    """Write atomically: a crash never leaves a truncated cache that a later load would trust.
    The source's fingerprint is recorded, so a cache is used only for the source it was made of."""
    with atomic_file(path) as f:
        np.savez(f, train_x=train.images, train_y=train.labels, test_x=test.images,
                 test_y=test.labels, classes=np.array(classes), source_fingerprint=np.array(fingerprint))


def fingerprint_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
