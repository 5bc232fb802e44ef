"""Stopping a worker at a deadline (kfaclab.sweep.worker, the harvest's watchdog): a run that
ignores its interrupt is killed with its kernel, and the watchdog interrupts first and kills
only what did not stop, so a harvest ends before its deadline however slow the machine."""

import os
import signal
import threading
import time
from pathlib import Path

import nbformat

from kfaclab.sweep import harvest as hv
from kfaclab.sweep.worker import Worker


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sleeping_job(tmp_path: Path) -> dict:
    """A notebook that sleeps for ten minutes: a run in flight."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell("x = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import time, pathlib\npathlib.Path('started').touch()\n"
                                                  "time.sleep(600)")]
    template = tmp_path / "sleeping.ipynb"
    nbformat.write(nb, template)
    return {"template": str(template), "notebook": str(tmp_path / "out.ipynb"), "cwd": str(tmp_path),
            "parameters": {"x": 1}}


def running(worker: Worker, tmp_path: Path):
    """Start the sleeping job on the worker in a thread; return the thread, its result and the
    kernel's pid once the cell runs."""
    result = {}
    t = threading.Thread(target=lambda: result.update(out=worker.execute(sleeping_job(tmp_path))))
    t.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and t.is_alive(), f"the notebook never started: {result}"
        time.sleep(0.1)
    kernels = children(worker.proc.pid)
    assert kernels, "the worker runs its kernel as a child process"
    return t, result, kernels


def gone_within(pids, seconds) -> bool:
    end = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def killed_at_once(worker: Worker, t: threading.Thread, result: dict, status: str):
    """Kill the worker; its run must return within 2 s as a dead worker with `status`."""
    t0 = time.monotonic()
    worker.kill(grace=0.2)
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 2
    code, error = result["out"]
    assert code == 3 and status in error, error


def test_a_killed_worker_takes_its_kernel_with_it_and_the_run_returns_at_once(tmp_path):
    worker = Worker(threads=1, gpu=None)
    t, result, kernels = running(worker, tmp_path)
    # exit status 1: its SIGTERM handler ran (killing the kernel first), not the SIGKILL fallback
    killed_at_once(worker, t, result, "exit status 1)")
    assert gone_within(kernels, 0.5), "the kernel outlived its killed worker"
    worker.close()


def test_a_frozen_worker_ignores_its_interrupt_and_is_still_killed_in_time(tmp_path):
    # SIGSTOP stands for a machine so loaded that the worker does not get to run: neither the
    # interrupt nor SIGTERM is handled, and the SIGKILL fallback must end it.
    worker = Worker(threads=1, gpu=None)
    t, result, kernels = running(worker, tmp_path)
    os.kill(worker.proc.pid, signal.SIGSTOP)
    worker.interrupt()
    time.sleep(1.0)
    assert t.is_alive(), "a frozen worker cannot act on its interrupt"
    killed_at_once(worker, t, result, "exit status -9)")
    # Its kernel (a session of its own) notices that its parent is gone and exits by itself.
    assert gone_within(kernels, 10), "the kernel of a SIGKILLed worker lingered"
    worker.close()


def test_kill_on_a_worker_that_never_started_or_already_exited_does_nothing():
    w = Worker(threads=1, gpu=None)
    w.kill()  # never started
    w._start()
    w.proc.stdin.close()
    w.proc.wait(60)
    w.kill()  # already gone
    w.close()


class FakeWorker:
    def __init__(self, stops_on_interrupt: bool):
        self.stops_on_interrupt = stops_on_interrupt
        self.done = threading.Event()
        self.events = []

    def interrupt(self):
        self.events.append("interrupt")
        if self.stops_on_interrupt:
            self.done.set()

    def kill(self):
        self.events.append("kill")
        self.done.set()


class NearTheDeadline:
    """Real time, started `lead` seconds before the deadline: the test lasts about `lead` s."""
    def __init__(self, deadline: float, lead: float):
        self.t0 = time.monotonic() - (deadline - lead)

    def __call__(self):
        return time.monotonic() - self.t0


def watchdog(workers, deadline_s):
    clock = NearTheDeadline(deadline_s, lead=hv.INTERRUPT_LEAD_S + 0.5)
    h = hv.Harvest.__new__(hv.Harvest)
    h.opts = hv.Options(out=Path("."), deadline_s=deadline_s, progress=False, clock=clock)
    h.workers = workers
    threads = [threading.Thread(target=w.done.wait) for w in workers]
    for t in threads:
        t.start()
    stopping = threading.Event()
    h._with_watchdog(threads, stopping, deadline_s - hv.INTERRUPT_LEAD_S, deadline_s - hv.KILL_LEAD_S)
    return clock(), stopping


def test_the_watchdog_interrupts_first_and_kills_only_when_a_run_did_not_stop_before_the_deadline():
    # Both stop when interrupted: nothing is killed, and they stop 2 s early.
    polite = [FakeWorker(True), FakeWorker(True)]
    ended, stopping = watchdog(polite, deadline_s=20.0)
    assert stopping.is_set() and all(w.events == ["interrupt"] for w in polite)
    assert 20.0 - hv.INTERRUPT_LEAD_S <= ended < 20.0 - hv.KILL_LEAD_S
    # One ignores its interrupt: it is killed before the deadline, and the watchdog returns then.
    mixed = [FakeWorker(True), FakeWorker(False)]
    ended, _ = watchdog(mixed, deadline_s=20.0)
    assert mixed[1].events == ["interrupt", "kill"]
    assert 20.0 - hv.KILL_LEAD_S <= ended < 20.0
