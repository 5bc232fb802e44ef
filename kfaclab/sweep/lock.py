"""One sweep per study at a time.

Two sweeps started on the same study folder would both see a run as pending and both make it.
A sweep (or a merge of harvested runs) holds an exclusive `flock` on `<study>/.kfaclab.lock`
while it works. The operating system releases the lock when the process ends, however it ends
(a kill -9 included), so a stale lock never blocks the next sweep; the file itself stays, with
the pid and start time of its last holder, for the message a second sweep prints.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from kfaclab.errors import UsageError

LOCK_NAME = ".kfaclab.lock"


@contextmanager
def study_lock(directory: str | os.PathLike, what: str = "sweep"):
    """Hold the study's lock for the duration of the block, or fail at once in one line."""
    path = Path(directory) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise UsageError(f"{directory} is in use by {holder}; wait for it to finish (or stop it) and run this "
                             "again: two sweeps on one study would make the same runs twice") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"a {what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
