"""Failures of the machine, not of a run: a full disk, no memory, a kernel or worker killed, a
kernel that did not start in time.

A run that fails by itself (a bad configuration, a bug it hits) fails again when repeated, so
the sweep records it and skips it until asked (--retry-failed). A run stopped by the machine
would succeed once the machine is fixed: the sweep must neither mark it as failed for good nor
go on starting runs onto a full disk. These helpers tell the two apart, from an exception or
from the last lines of an error a worker reported.
"""

from __future__ import annotations

import errno

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
# What such failures say in an error's text (a traceback relayed by a kernel, papermill or Ray).
DISK_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "[Errno 28]",
              "[Errno 122]", "[Errno 30]")
MEMORY_WORDS = ("MemoryError", "out of memory", "Cannot allocate memory", "[Errno 12]")
DEATH_WORDS = ("the kernel died", "the worker process died", "DeadKernelError", "Kernel died before replying")
# A kernel that did not answer in its start-up time (jupyter_client's wait_for_ready): a machine so
# loaded that importing torch took minutes, not a run that fails again when repeated.
START_WORDS = ("Kernel didn't respond",)


def is_disk_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_ERRNOS


def kind_of(error: str | None) -> str | None:
    """'disk', 'memory', 'killed' or 'start' (the kernel did not start in time) where an error's
    text says the machine stopped the run; None where the run failed by itself."""
    if not error:
        return None
    if any(w in error for w in DISK_WORDS):
        return "disk"
    if any(w in error for w in DEATH_WORDS):  # a death says "out of memory, or killed": its cause is unknown
        return "killed"
    if any(w in error for w in MEMORY_WORDS):
        return "memory"
    if any(w in error for w in START_WORDS):
        return "start"
    return None
