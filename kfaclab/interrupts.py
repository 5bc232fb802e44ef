"""SIGTERM stops work as Ctrl-C does.

`timeout`, schedulers and cluster managers stop a process with SIGTERM, whose default is to
die at once: a training run would lose its partial record, a sweep its bookkeeping. While
`catch_interrupts()` is in force, SIGTERM and SIGINT both raise KeyboardInterrupt in the main
thread, so the same handlers that save work on Ctrl-C save it on SIGTERM.
"""

from __future__ import annotations

import signal
import threading


def catch_interrupts() -> dict:
    """SIGTERM and SIGINT both raise KeyboardInterrupt (main thread only), even where a shell
    started the process with SIGINT ignored (a background job of a script). Returns the
    previous handlers for `restore_signals`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
