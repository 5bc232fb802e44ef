"""Atomic file writes: a reader (or a resuming sweep) sees the old file or the whole new one,
never a torn one; a failed write leaves nothing behind and raises its own error."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike):
    """Yields a binary file to write; on leaving the block it is fsynced and renamed over
    `path`. If anything fails, the temp file is removed and the write's own error is raised (a
    failure while cleaning up never replaces it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the error to report is the write's, raised below
        raise
