"""`python -m kfaclab sweep --backend ray`: the same runs as Ray tasks, on a local Ray instance
or on a cluster (`--address`).

Same spec, same run ids, same files: each run is one Ray task that executes the experiment
template with papermill in a scratch folder on whichever node Ray picks, and sends back the
executed notebook and the run record; the driver (this process) writes them into the study
folder atomically, record last, and judges the outcome with the same `read_outcome` as the
local backend. So a task killed half-way, a lost node or a Ctrl-C of the driver leaves
nothing in the study folder that could count as done, and the next invocation resumes.

Resources: each task asks Ray for `cpus_per_run` CPUs and `gpus_per_run` GPUs; a fraction
(0.25) lets four small runs share one GPU. Ray sets CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS
for the task's process, and the task's kernel inherits both.

Kernels: a Ray worker process is reused for later CPU tasks, so it keeps its kernel warm
between runs (as the local workers do) and restarts it after a failure. Ray gives GPU tasks a
fresh process each (its default max_calls=1), and so a fresh kernel.

On a cluster, every node needs the same Python environment with kfaclab importable, and the
data where the spec says: relative data paths in a spec are made absolute (relative to the
study folder, as for local runs) before they travel, so nodes sharing that file system see
them; other nodes need the default locations or absolute paths that exist there.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from kfaclab.errors import UsageError
from kfaclab.interrupts import catch_interrupts, restore_signals
from kfaclab.sweep.lock import study_lock
from kfaclab.sweep.runner import Summary, check_study_writable, in_rounds
from kfaclab.sweep.spec import Run, Study
from kfaclab.sweep.state import clean_partials, plan_runs
from kfaclab.sweep.worker import notebook_parameters, read_outcome, template_path
from kfaclab.train.record import write_bytes_atomic

# Location parameters a spec may give relative to its folder (they do not enter run ids).
PATH_PARAMETERS = ("data_root", "data_archive", "cache_dir")

# This Ray worker process's warm kernel, kept between tasks, and its working directory.
_kernel = None
_scratch: Path | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--backend ray needs Ray: pip install ray "
                         "(it is in requirements-dev.txt), or use the local backend") from None
    return ray


def task_parameters(run: Run, directory: Path, threads: int | None) -> dict:
    params = notebook_parameters(run, threads)
    extra = dict(params["extra"])
    for key in PATH_PARAMETERS:
        value = extra.get(key)
        if value and not Path(value).expanduser().is_absolute():
            extra[key] = str((directory / Path(value).expanduser()).resolve())
    return {**params, "extra": extra}


def execute_in_scratch(job: dict) -> dict:
    """The body of one Ray task: execute the run in this worker process's scratch folder (its
    warm kernel's working directory), return the files it wrote, leave the folder empty."""
    global _kernel, _scratch
    from kfaclab.sweep.execute import Kernel, _engine, execute

    t0 = time.perf_counter()
    if _scratch is None or not _scratch.is_dir():
        _scratch = Path(tempfile.mkdtemp(prefix="kfaclab-ray-"))
        atexit.register(shutil.rmtree, _scratch, True)  # best effort: Ray may kill its workers
        if _kernel is not None:
            _kernel.stop()  # its working directory is gone
    if _kernel is None:
        _kernel = Kernel(job.get("kernel_name", "python3"))
    _empty(_scratch)
    try:
        notebook = _scratch / job["notebook_name"]
        code, error = execute({"template": job["template"], "notebook": str(notebook), "cwd": str(_scratch),
                               "parameters": job["parameters"]}, _kernel, _engine())
        if code != 0:
            _kernel.stop()  # a fresh kernel for this process's next run
        files = {p.name: p.read_bytes() for p in _scratch.iterdir() if p.is_file() and not p.name.startswith(".")}
        # the task's own time (kernel, papermill, run), not its time in Ray's queue
        return {"code": code, "error": error, "files": files, "seconds": time.perf_counter() - t0}
    finally:
        _empty(_scratch)


def _empty(folder: Path) -> None:
    for p in folder.iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def store_files(directory: Path, run: Run, files: dict) -> None:
    """The task's notebook, then its record (whose arrival marks the run done)."""
    record_name = f"{run.name}.json"
    for name in sorted(files, key=lambda n: n == record_name):
        if name in (f"{run.name}.ipynb", record_name):
            write_bytes_atomic(directory / name, files[name])


def sweep_ray(study: Study, address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float | None = None, runs_per_gpu: int = 1, threads: int | None = None,
              retry_failed: bool = False,
              only: str | None = None, limit: int | None = None, progress: bool = True,
              num_cpus: int | None = None) -> Summary:
    ray = import_ray()
    check_study_writable(study)
    with study_lock(study.directory):  # one sweep per study, whichever backend runs it
        return in_rounds(study, limit, lambda s: _sweep_ray(ray, s, address, cpus_per_run, gpus_per_run, runs_per_gpu,
                                                            threads, retry_failed, only, limit, progress, num_cpus))


def _sweep_ray(ray, study, address, cpus_per_run, gpus_per_run, runs_per_gpu, threads, retry_failed, only, limit,
               progress, num_cpus) -> Summary:
    clean_partials(study.directory)
    pending, done, failed = plan_runs(study, retry_failed, only, limit)
    summary = Summary(skipped_done=done, skipped_failed=failed)
    if not pending:
        return summary
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                     include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UsageError(f"cannot start or reach {where}: {str(e).splitlines()[0]}") from None
    if gpus_per_run is None:
        gpus_per_run = 1.0 / runs_per_gpu if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    threads = threads or max(1, int(cpus_per_run))
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(execute_in_scratch)
    refs = {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(pending), unit="run", disable=not progress, dynamic_ncols=True)
    previous = catch_interrupts()
    try:
        for run in pending:
            job = {"template": str(template_path()), "notebook_name": f"{run.name}.ipynb",
                   "parameters": task_parameters(run, study.directory, threads)}
            refs[remote.remote(job)] = (run, time.perf_counter())
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            run, submitted = refs[ready[0]]
            try:
                reply = ray.get(ready[0])
                code, error, wall = reply["code"], reply["error"], reply["seconds"]
                store_files(study.directory, run, reply["files"])
            except ray.exceptions.RayError as e:  # the task's worker died, its node was lost, ...
                code, error = 3, f"the Ray task failed: {type(e).__name__}: {str(e).strip().splitlines()[-1]}"
                wall = time.perf_counter() - submitted
            out = read_outcome(run, study.directory, code, error, wall)
            summary.outcomes.append(out)
            bar.update(1)
            bar.set_postfix(failed=summary.count("failed"), diverged=summary.count("diverged"))
    except KeyboardInterrupt:
        summary.interrupted = True
        for ref in refs:  # runs in flight stay pending: nothing of theirs reached the study folder
            ray.cancel(ref, force=True)
    finally:
        restore_signals(previous)
        bar.close()
        summary.wall_seconds = time.perf_counter() - t0
        if started_here:
            ray.shutdown()
    return summary
