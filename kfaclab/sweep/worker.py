"""One run executed: its notebook's parameters, the worker process that runs it, and its outcome.

A Worker runs a study's parameterized notebook (papermill, through kfaclab.sweep.execute) in a
fresh process, so a crash, a kill or an out-of-memory in one run cannot take the sweep down;
read_outcome turns what the process left (record, exit code) into an Outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kfaclab import infrastructure
from kfaclab.sweep.spec import Run
from kfaclab.train.record import read_record, write_atomic

NAMED_PARAMETERS = ("dataset", "model", "optimizer", "hparams", "batch_size", "budget", "budget_value", "targets",
                    "seed", "device")


def template_path() -> Path:
    return Path(str(resources.files("kfaclab") / "templates" / "experiment.ipynb"))


def notebook_parameters(run: Run, threads: int | None) -> dict:
    d = run.config.to_dict()
    params = {k: d.pop(k) for k in NAMED_PARAMETERS}
    d.pop("output")
    return {**params, "output": f"{run.name}.json", "extra": d, "threads": threads, "progress": False,
            "run_name": run.name}


@dataclass
class Outcome:
    run: Run
    status: str  # completed | diverged | failed | interrupted
    wall_seconds: float
    run_seconds: float | None = None  # training + evaluation inside the run (from its record)
    error: str | None = None
    # disk | memory | killed where the machine, not the run, made it fail (kfaclab.infrastructure):
    # such a run is not marked as failed for good, and a full disk stops the sweep.
    infrastructure: str | None = None


class Worker:
    """A `kfaclab.sweep.execute` process (one kernel) serving one slot: its CPU threads and,
    with --gpus, its GPU through CUDA_VISIBLE_DEVICES, which the kernel inherits."""

    def __init__(self, threads: int | None, gpu: str | None, kernel_per_run: bool = False):
        self.threads, self.gpu, self.kernel_per_run = threads, gpu, kernel_per_run
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile("w+")

    def _start(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        if self.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        env["KFACLAB_SWEEP_PID"] = str(os.getpid())  # the worker exits (and kills its kernel) when this process dies
        args = [sys.executable, "-m", "kfaclab.sweep.execute"] + (["--kernel-per-run"] if self.kernel_per_run else [])
        # A session of its own: a terminal's Ctrl-C reaches the sweep only, which first marks
        # the runs in flight as interrupted (not failed) and then stops the workers. A worker
        # exits by itself if the sweep dies (see execute.py), so a killed sweep leaves no
        # orphan that could race the next one.
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, start_new_session=True)

    def execute(self, job: dict) -> tuple[int, str | None]:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:  # the worker died (killed, out of memory): restart it for the next run
            status = self.proc.wait()
            self.proc = None
            return 3, f"the worker process died (exit status {status}): {self._log_tail()}"
        reply = json.loads(line)
        return reply["code"], reply["error"]

    def _log_tail(self) -> str:
        self.log.seek(0)
        return " | ".join(self.log.read().strip().splitlines()[-3:])

    def kill(self, grace: float = 0.2):
        """Stop the worker now, whatever it is doing: SIGTERM (it kills its kernel and exits,
        see execute.py), then SIGKILL after `grace`. The run in flight returns at once as a dead
        worker; a harvest does this when an interrupted run has not returned by its deadline."""
        proc = self.proc  # the slot's thread may drop it meanwhile (it sees the worker die)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self, grace: float = 10.0):
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def interrupt(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)


def execute_run(run: Run, directory: Path, worker: Worker, stopping: threading.Event | None = None) -> Outcome:
    """Execute one run on a worker and read back what it left."""
    notebook = directory / f"{run.name}.ipynb"
    job = {"template": str(template_path()), "notebook": str(notebook), "cwd": str(directory),
           "parameters": notebook_parameters(run, worker.threads)}
    t0 = time.perf_counter()
    code, error = worker.execute(job)
    return read_outcome(run, directory, code, error, time.perf_counter() - t0, stopping)


def read_outcome(run: Run, directory: Path, code: int, error: str | None, wall: float,
                 stopping: threading.Event | None = None) -> Outcome:
    """What an executed run left in the study folder: its outcome, and a `.failed.json` marker
    (with the error's last lines) where it failed without a failed record of its own.
    Shared by every backend, so that they agree on what counts as done."""
    failed_marker = directory / f"{run.name}.failed.json"
    record, problem = read_record(directory / f"{run.name}.json")
    if problem is not None:
        error = error or f"the run left a record that {problem}"
    if record is not None and record.get("run_id") != run.run_id:
        record = None  # a stale file of another config under the same name
    if (stopping is not None and stopping.is_set()) or (record is not None and record.get("status") == "interrupted"):
        return Outcome(run, "interrupted", wall)
    if record is not None and record.get("status") in ("completed", "diverged") and code == 0:
        failed_marker.unlink(missing_ok=True)
        inside = record["final"]["seconds"] + record["final"]["eval_seconds"]
        return Outcome(run, record["status"], wall, inside)
    if error is None and record is None and code == 0:
        error = f"the run ended without error but left no record {run.name}.json (with id {run.run_id}) in {directory}"
    error = error or (record or {}).get("error") or f"exit code {code}"
    error = "\n".join(error.strip().splitlines()[-12:])
    machine = infrastructure.kind_of(error)  # the machine stopped it (disk, memory, a kill): not sticky
    if record is None or record.get("status") != "failed" or machine:
        try:
            write_atomic(failed_marker, {"run_id": run.run_id, "name": run.name, "code": code, "error": error,
                                         "config": run.config.to_dict(), "infrastructure": machine})
        except OSError as e:
            if not infrastructure.is_disk_error(e):
                raise
            machine = "disk"  # not even the marker fits: the run stays pending, the sweep stops
    return Outcome(run, "failed", wall, error=error, infrastructure=machine)


def default_threads(n_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_workers)
