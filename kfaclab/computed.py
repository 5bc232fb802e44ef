"""Computed results kept on disk between processes, keyed by everything they are computed from.

A book build runs every chapter in a kernel of its own, and most chapters load the same studies
(`kfaclab.results.load_results`: thousands of records, each validated) and the same NQM prediction.
Computed once and kept here, they are read back by the next chapter (or test, or build) in a
fraction of the time. Nothing stale can come back: an entry's key is a sha256 over

- the source of every module of the kfaclab package (any change to the code that computes it)
  and the versions of Python, numpy, pandas and scipy,
- what is computed and its arguments, and
- the bytes of every input file (for a study: its spec and every JSON file in its folder).

An entry carries a sha256 of its own payload and is checked when read; an entry that is torn,
corrupt or of another version is computed again and replaced. Where the folder cannot be written
the value is computed and returned as if there were no cache. Entries are written atomically, and
writing one removes the older entries of the same slot (the same study or the same function), so
the folder holds one entry per slot.

The folder: $KFACLAB_COMPUTED_CACHE, else `computed/` in $KFACLAB_CACHE (the decoded-data cache),
else ~/.cache/kfaclab/computed. KFACLAB_COMPUTED_CACHE=off computes everything every time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from kfaclab.atomic import atomic_file

T = TypeVar("T")

ENV = "KFACLAB_COMPUTED_CACHE"
MAGIC = b"kfaclab-computed-1\n"


def folder() -> Path | None:
    """The cache folder, or None when switched off."""
    chosen = os.environ.get(ENV)
    if chosen is not None and chosen.strip().lower() in ("off", "0", "no", "false", ""):
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("KFACLAB_CACHE") or Path.home() / ".cache" / "kfaclab"
    return Path(base) / "computed"


@functools.cache
def code_fingerprint() -> str:
    """sha256 over the source of every module of the package (path and bytes) and the versions of
    Python and of the libraries a kept value is made of (pandas frames, numpy arrays): computed
    values are only reused by exactly the code that computed them."""
    import sys
    from importlib import metadata

    root = Path(__file__).resolve().parent
    h = hashlib.sha256(sys.version.encode() + b"\0")
    for lib in ("numpy", "pandas", "scipy"):
        try:
            h.update(f"{lib}={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none\0".encode())
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> str:
    """sha256 over the names and bytes of `paths` (a path that cannot be read counts as missing,
    distinct from an empty file)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode() + b"\0")
        try:
            data = p.read_bytes()
        except OSError:
            h.update(b"\1missing\0")
            continue
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _slot_name(slot: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", slot)[:80] + "-" + hashlib.sha256(slot.encode()).hexdigest()[:8]


def cached(slot: str, inputs: str, compute: Callable[[], T]) -> T:
    """compute(), or the value an earlier compute() of the same slot, inputs and code returned.

    `slot` names what is computed (one entry is kept per slot); `inputs` is a fingerprint of
    everything else it reads (its arguments, `files_fingerprint` of its files)."""
    where = folder()
    if where is None:
        return compute()
    key = hashlib.sha256(f"{code_fingerprint()}\0{slot}\0{inputs}".encode()).hexdigest()
    name = _slot_name(slot)
    path = where / f"{name}-{key[:32]}.pkl"
    value = _read(path)
    if value is not None:
        return value[0]
    value = compute()
    _write(path, value, where, name)
    return value


def _read(path: Path):
    """(value,) from an intact entry, else None (missing, torn, corrupt, another version)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(data) < head or not data.startswith(MAGIC):
        return None
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC):head]:
        return None
    try:
        return (pickle.loads(payload),)
    except Exception:  # an entry written by other code that still matched: compute again
        return None


def _write(path: Path, value, where: Path, name: str) -> None:
    try:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return  # not picklable: nothing is kept, the value is still right
    try:
        with atomic_file(path) as f:
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
        for old in where.glob(f"{name}-*.pkl"):
            if old != path and re.fullmatch(r"[0-9a-f]{32}", old.name[len(name) + 1:-len(".pkl")]):
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a folder that cannot be written: the cache is off, the value is still right
