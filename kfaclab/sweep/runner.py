"""`python -m kfaclab sweep`: a study's runs, executed as papermill notebooks, resumably.

State lives in the study folder only, one pair of files per run:
  <run>.json          the run record, written atomically by kfaclab.train: the run is done when
                      it holds this run's id and status completed or diverged;
  <run>.ipynb         the executed notebook (renamed into place when execution ends);
  <run>.failed.json   written by the sweep when a run failed without a record of its own
                      (kernel died, papermill failed), with the error's last lines.
So a re-run skips what is done, retries failed runs only when asked (--retry-failed), and
re-runs interrupted ones; a kill at any moment leaves nothing that counts as done but is not.

This module is the local backend: one worker process (`kfaclab.sweep.execute`) per slot, each
with a warm kernel that runs its runs one after another. Workers get CPU threads so that
together they do not oversubscribe the cores, and with --gpus one GPU each through
CUDA_VISIBLE_DEVICES (several workers may share a GPU). `ray_backend` runs the same runs as
Ray tasks; both judge what a run left with `read_outcome`.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from kfaclab import infrastructure
from kfaclab.errors import UsageError
from kfaclab.interrupts import catch_interrupts, restore_signals
from kfaclab.sweep.bracket import grow
from kfaclab.sweep.lock import study_lock
from kfaclab.sweep.spec import RunList, Study
from kfaclab.sweep.state import clean_partials, plan_runs, run_state
from kfaclab.sweep.worker import Outcome, Worker, default_threads, execute_run
from kfaclab.train.record import check_writable_folder


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_done: int = 0
    skipped_failed: int = 0
    wall_seconds: float = 0.0
    interrupted: bool = False

    def merged(self, later: Summary) -> Summary:
        """This round's summary followed by a later round's over the same study (bracketing)."""
        return Summary(self.outcomes + later.outcomes, self.skipped_done, self.skipped_failed,
                       self.wall_seconds + later.wall_seconds, later.interrupted)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def overhead(self) -> dict | None:
        timed = [o for o in self.outcomes if o.run_seconds is not None]
        if not timed:
            return None
        wall = sum(o.wall_seconds for o in timed)
        inside = sum(o.run_seconds for o in timed)
        return {"runs": len(timed), "per_run_s": (wall - inside) / len(timed), "share": (wall - inside) / wall,
                "wall_s": wall}

    def table(self) -> str:
        rows = [("done", self.count("completed")), ("diverged", self.count("diverged")),
                ("failed", self.count("failed")), ("interrupted", self.count("interrupted")),
                ("skipped (already done)", self.skipped_done), ("skipped (failed before)", self.skipped_failed)]
        lines = [f"{name:<26}{n:>6}" for name, n in rows]
        lines.append(f"{'time':<26}{self.wall_seconds:>9.1f} s")
        o = self.overhead
        if o:
            lines.append(f"{'runner overhead':<26}{o['per_run_s']:>9.2f} s per run ({100 * o['share']:.1f}% of run "
                         f"wall time; papermill, kernel start, imports, data and model set-up)")
        for out in self.outcomes:
            if out.status == "failed":
                first = (out.error or "").strip().splitlines()[-1:] or [""]
                machine = f" (the machine: {out.infrastructure}; not marked failed, the next sweep runs it)" \
                    if out.infrastructure else ""
                lines.append(f"failed: {out.run.name}: {first[0]}{machine}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- the sweep


def worker_slots(workers: int, gpus: list[str] | None, runs_per_gpu: int) -> list[str | None]:
    if gpus:
        return [g for g in gpus for _ in range(runs_per_gpu)]
    return [None] * workers


def sweep(study: Study, workers: int = 1, gpus: list[str] | None = None, runs_per_gpu: int = 1,
          threads: int | None = None, retry_failed: bool = False, only: str | None = None, limit: int | None = None,
          progress: bool = True, kernel_per_run: bool = False) -> Summary:
    check_study_writable(study)
    with study_lock(study.directory):  # a second sweep of this study fails at once
        return in_rounds(study, limit, lambda s: _sweep(s, workers, gpus, runs_per_gpu, threads, retry_failed, only,
                                                        limit, progress, kernel_per_run))


def in_rounds(study: Study, limit: int | None, one_round) -> Summary:
    """`one_round(study)` (a sweep of the study's pending runs), then, for a study that brackets
    (kfaclab.sweep.bracket), again over the runs its finished grids grew, round after round,
    until every grid brackets its optimum or has reached the spec's limit. With --limit, one
    round only: the limit counts runs, and a later sweep goes on."""
    summary = one_round(study)
    while study.bracket and not summary.interrupted and limit is None:
        grown = grow(study)
        if len(grown.runs) == len(study.runs):
            break
        study = grown
        summary = summary.merged(one_round(study))
    return summary


def _sweep(study: Study, workers, gpus, runs_per_gpu, threads, retry_failed, only, limit, progress,
           kernel_per_run) -> Summary:
    clean_partials(study.directory)
    tally = {"done": 0, "failed": 0}
    if isinstance(study.runs, RunList):  # a large spec: its runs are made as the sweep reaches them
        pending = _pending_as_made(study, retry_failed, only, limit, tally)
        total = None
    else:
        pending, tally["done"], tally["failed"] = plan_runs(study, retry_failed, only, limit)
        total = len(pending)
        pending = iter(pending)
    slots = worker_slots(workers, gpus, runs_per_gpu)
    threads = threads or default_threads(len(slots))
    summary = Summary()
    free: queue.Queue = queue.Queue()
    pool_workers = [Worker(threads, gpu, kernel_per_run) for gpu in slots]
    for w in pool_workers:
        free.put(w)
    stopping = threading.Event()

    def job(run):
        if stopping.is_set():
            return None
        w = free.get()
        try:
            return execute_run(run, study.directory, w, stopping)
        finally:
            free.put(w)

    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="run", disable=not progress, dynamic_ncols=True)
    previous = catch_interrupts()
    pool = ThreadPoolExecutor(max_workers=len(slots))
    futures, counted, in_flight = [], set(), set()
    disk_full = None

    def feed() -> None:
        """Hand the pool the next pending run: it holds a few more than it has workers, never the
        whole plan, so a sweep of a million runs starts its first at once."""
        run = None if stopping.is_set() else next(pending, None)
        if run is not None:
            fut = pool.submit(job, run)
            futures.append(fut)
            in_flight.add(fut)

    try:
        for _ in range(2 * len(slots)):
            feed()
        while in_flight:
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for fut in finished:
                in_flight.discard(fut)
                counted.add(fut)
                if fut.cancelled():  # not started: the sweep is stopping (a full disk)
                    continue
                out = fut.result()
                if out is None:
                    continue
                summary.outcomes.append(out)
                bar.update(1)
                bar.set_postfix(failed=summary.count("failed"), diverged=summary.count("diverged"))
                if out.infrastructure == "disk" and disk_full is None:
                    disk_full = out  # no new run onto a full disk; the ones in flight end as they can
                    stopping.set()
                    for f in in_flight:
                        f.cancel()
                feed()
    except KeyboardInterrupt:
        summary.interrupted = True
        stopping.set()
        for f in futures:
            f.cancel()
        for w in pool_workers:  # their kernels shut down; runs in flight stay pending
            w.interrupt()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:  # runs that were in flight when interrupted end up in the summary too
            if fut not in counted and fut.done() and not fut.cancelled() and fut.exception() is None \
                    and fut.result() is not None:
                summary.outcomes.append(fut.result())
        for w in pool_workers:
            w.close()
        bar.close()
        restore_signals(previous)
        summary.wall_seconds = time.perf_counter() - t0
        summary.skipped_done, summary.skipped_failed = tally["done"], tally["failed"]
    if disk_full is not None:
        done = summary.count("completed") + summary.count("diverged")
        raise UsageError(f"the disk holding {study.directory} is full (run {disk_full.run.name}: "
                         f"{_disk_words(disk_full.error)}); the sweep stopped after {done} runs finished. Free space "
                         "and run it again: finished runs are kept, and the stopped ones are not marked failed")
    return summary


def _pending_as_made(study: Study, retry_failed: bool, only, limit, tally: dict):
    """plan_runs for a large spec (RunList), one run at a time: each run is made, and its state
    read, only when the sweep is ready for it; `tally` counts the runs passed over."""
    import fnmatch

    given = 0
    for run in study.runs:
        if limit is not None and given >= limit:
            return
        if only and not fnmatch.fnmatchcase(run.name, only):
            continue
        state = run_state(study.directory, run, repair=True)
        if state == "done":
            tally["done"] += 1
        elif state == "failed" and not retry_failed:
            tally["failed"] += 1
        else:
            given += 1
            yield run


def _disk_words(error: str | None) -> str:
    for w in infrastructure.DISK_WORDS:
        if error and w in error:
            return w
    return "a write failed"


def check_study_writable(study: Study) -> None:
    """Before any run: the study folder takes new files (records, notebooks), else one line."""
    check_writable_folder(study.directory, "run records",
                          "make the study folder writable, or copy its study.yaml to a writable folder")


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UsageError(f"--gpus must be GPU indices like 0,1,2, got '{text}'")
    return gpus
