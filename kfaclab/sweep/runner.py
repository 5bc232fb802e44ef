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

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

from kfaclab import infrastructure
from kfaclab.interrupts import catch_interrupts, restore_signals  # noqa: F401 (harvest imports them here)
from kfaclab.errors import UsageError
from kfaclab.sweep.bracket import grow
from kfaclab.sweep.lock import study_lock
from kfaclab.sweep.spec import Run, RunList, Study
from kfaclab.train.record import check_writable_folder, read_record, write_atomic

TRAIN_SIZES = {"cifar10": 50000, "cifar10-jpeg": 50000, "svhn": 73257, "synthetic": 5000}
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


# ---------------------------------------------------------------------- state of a run

def run_state(directory: Path, run: Run, repair: bool = False) -> str:
    """done | failed | pending (never run, interrupted, or a malformed record). With `repair`,
    a malformed record (truncated, not a run record, wrong types or values: read_record) is
    moved aside, never deleted, with one line on stderr, so that the run is made again."""
    path = directory / f"{run.name}.json"
    record, problem = read_record(path)
    if problem is not None:
        if repair:
            set_aside(path, problem)
        return "pending"
    if record is not None and record.get("run_id") == run.run_id:
        status = record.get("status")
        if status in ("completed", "diverged"):
            # A run is done when its record and its notebook have both landed: a kill between
            # the two leaves only a partial notebook, which the next sweep removes, so the run
            # is made again rather than left without its notebook for good.
            return "done" if (directory / f"{run.name}.ipynb").exists() else "pending"
        if status == "failed" and not infrastructure.kind_of(record.get("error")):
            return "failed"
        return "pending"  # interrupted, or failed for the machine's sake: re-run
    marker = directory / f"{run.name}.failed.json"
    if marker.exists():
        try:
            machine = json.loads(marker.read_text()).get("infrastructure")
        except (OSError, ValueError, AttributeError):
            machine = None
        return "pending" if machine else "failed"
    return "pending"


def set_aside(path: Path, problem: str) -> Path:
    """Move a malformed record out of the way (kept for inspection) and say so in one line."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.malformed-{stamp}")
    os.replace(path, aside)
    print(f"kfaclab: {path} {problem}; moved it to {aside.name} and will run it again", file=sys.stderr)
    return aside


def malformed_records(study: Study) -> list[tuple[str, str]]:
    """(file name, problem) of each record of the study that is there but not a valid record."""
    out = []
    for run in study.runs:
        _, problem = read_record(study.directory / f"{run.name}.json")
        if problem is not None:
            out.append((f"{run.name}.json", problem))
    return out


# ---------------------------------------------------------------------- outcomes

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


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_done: int = 0
    skipped_failed: int = 0
    wall_seconds: float = 0.0
    interrupted: bool = False

    def merged(self, later: "Summary") -> "Summary":
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


# ---------------------------------------------------------------------- workers

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
            self.proc.kill()
            self.proc.wait()
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


# ---------------------------------------------------------------------- the sweep

def plan_runs(study: Study, retry_failed: bool, only: str | None = None, limit: int | None = None,
              repair: bool = True):
    """(runs to make, how many are done, how many failed). `repair`: malformed records are moved
    aside (run_state); a dry run passes False and changes nothing."""
    import fnmatch

    pending, done, failed = [], 0, 0
    for run in study.runs:
        if only and not fnmatch.fnmatchcase(run.name, only):
            continue
        state = run_state(study.directory, run, repair=repair)
        if state == "done":
            done += 1
        elif state == "failed" and not retry_failed:
            failed += 1
        else:
            pending.append(run)
    if limit is not None:
        pending = pending[:limit]
    return pending, done, failed


def worker_slots(workers: int, gpus: list[str] | None, runs_per_gpu: int) -> list[str | None]:
    if gpus:
        return [g for g in gpus for _ in range(runs_per_gpu)]
    return [None] * workers


def default_threads(n_workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // n_workers)


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
    _clean_partials(study.directory)
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


def _clean_partials(directory: Path) -> None:
    """Notebooks left half-written by a killed sweep: never results, removed before a sweep."""
    for p in directory.glob(".*.ipynb.partial"):
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------- dry run

def dry_run(study: Study, retry_failed: bool = False, only: str | None = None, limit: int | None = None) -> str:
    """What would run, and its cost: iterations, examples and, where the study already has
    finished runs, time at their measured seconds per example."""
    from kfaclab.train.budget import total_iterations

    if isinstance(study.runs, RunList) and not only:
        return _dry_run_large(study, retry_failed, limit)
    pending, done, failed = plan_runs(study, retry_failed, only, limit, repair=False)
    rates = _measured_rates(study)
    lines = [f"study {study.name}: {len(study.runs)} runs; {len(pending)} to run, {done} done, "
             f"{failed} failed (skipped{'' if retry_failed else '; --retry-failed re-runs them'})"]
    for name, problem in malformed_records(study):
        lines.append(f"  {name} {problem}: counted as to run (a sweep moves it aside first)")
    if study.bracket:
        lines.append(bracket_summary(study))
    totals = {"iterations": 0, "examples": 0}
    seconds, unknown = 0.0, 0
    for r in pending:
        c = r.config
        n_train = c.train_subset or TRAIN_SIZES.get(c.dataset)
        if n_train is None:
            unknown += 1
            lines.append(f"  {r.name}: iterations unknown (dataset size known only after loading)")
            continue
        iters = total_iterations(c.budget, c.budget_value, c.batch_size, n_train // c.batch_size, c.rule_b0, c.rule_e0)
        totals["iterations"] += iters
        totals["examples"] += iters * c.batch_size
        rate = rates.get((c.optimizer, c.model))
        if rate is not None:
            seconds += rate[0] * iters + rate[1] * iters * c.batch_size
        lines.append(f"  {r.name}: {iters} iterations, {iters * c.batch_size} examples")
    lines.append(f"total: {len(pending)} runs, {totals['iterations']} iterations, {totals['examples']} examples "
                 f"({totals['examples'] / max(1, _typical_train_size(study)):.0f} epochs of the training split)")
    from kfaclab.sweep.harvest import remaining_estimate

    # A study run by harvests has a bench of its device: the harvest's own model of what is
    # left (runs sharing the device) beats per-run seconds summed as if in one worker.
    harvested = remaining_estimate(study, pending)
    if harvested:
        lines.append(harvested)
    elif rates:
        missing = sorted({f"{r.config.optimizer} ({r.config.model})" for r in pending
                          if (r.config.optimizer, r.config.model) not in rates})
        lines.append(f"estimated time: {seconds / 60:.1f} min of training in one worker, from a cost model (seconds per "
                     f"iteration and per example) fitted to this study's finished runs, plus runner overhead per run"
                     + (f"; no estimate yet for {', '.join(missing)}" if missing else ""))
    elif study.throughput:
        tp = study.throughput
        epochs: dict = {}
        for r in pending:
            n_train = r.config.train_subset or TRAIN_SIZES.get(r.config.dataset)
            if n_train:
                c = r.config
                iters = total_iterations(c.budget, c.budget_value, c.batch_size, n_train // c.batch_size, c.rule_b0,
                                         c.rule_e0)
                epochs[c.optimizer] = epochs.get(c.optimizer, 0.0) + iters * c.batch_size / n_train
        known = {o: e for o, e in epochs.items() if o in tp["epochs_per_second"]}
        seconds = sum(e / tp["epochs_per_second"][o] for o, e in known.items())
        parts = ", ".join(f"{o} {e:,.0f} epochs at {tp['epochs_per_second'][o]:g}/s" for o, e in known.items())
        lines.append(f"estimated time: {seconds / 60:.1f} min on one device with {tp['runs_sharing']} runs sharing it "
                     f"({parts}), from the spec's throughput model ({tp['source'].split(':')[0]}), plus runner overhead"
                     + (f"; no figure for {', '.join(sorted(set(epochs) - set(known)))}" if set(epochs) - set(known)
                        else ""))
    else:
        lines.append("estimated time: unknown until some runs of this study have finished "
                     "(run a few with --limit N, then --dry-run again)")
    return "\n".join(lines)


def _dry_run_large(study: Study, retry_failed: bool, limit: int | None) -> str:
    """The dry run of a large spec (RunList) without making its runs: the study folder is listed
    once, a run is made only where a file has its name (to read its state), and the others are
    counted per (optimizer, batch size) from the spec, whose budget fixes their iterations. One
    line per (optimizer, batch size), not per run."""
    from kfaclab.sweep.spec import make_run, run_name_stem
    from kfaclab.train.budget import total_iterations

    runs: RunList = study.runs
    stems = {}
    for p in study.directory.glob("*.json"):
        name = p.name[:-len(".failed.json")] if p.name.endswith(".failed.json") else p.stem
        stems.setdefault(name.rsplit("-", 1)[0], []).append(name)
    groups: dict = {}  # (optimizer, batch size) -> [runs to make, iterations of one]
    done = failed = 0
    iterations_of: dict = {}
    made = 0
    for opt, point, b, seed in runs.keys():
        state = "pending"
        stem = run_name_stem(runs.recipe, opt, point, b, seed)
        if stem in stems:  # a file of that name: make the run to read its state
            run = make_run(runs.recipe, opt, point, b, seed)
            made += 1
            state = run_state(study.directory, run, repair=False)
        if state == "done":
            done += 1
            continue
        if state == "failed" and not retry_failed:
            failed += 1
            continue
        key = (opt, b, tuple((k, v) for k, v in point.items() if k in runs.config_axes))
        if key not in iterations_of:  # the budget depends on the batch size (and any config axis)
            c = make_run(runs.recipe, opt, point, b, seed).config
            made += 1
            n_train = c.train_subset or TRAIN_SIZES.get(c.dataset)
            iterations_of[key] = total_iterations(c.budget, c.budget_value, c.batch_size, n_train // c.batch_size,
                                                  c.rule_b0, c.rule_e0) if n_train else None
        g = groups.setdefault((opt, b), [0, 0])
        g[0] += 1
        g[1] += iterations_of[key] or 0
    pending = sum(g[0] for g in groups.values()) + len(runs.extra)
    if limit is not None:
        pending = min(pending, limit)
    lines = [f"study {study.name}: {len(runs):,} runs; {pending:,} to run, {done:,} done, {failed:,} failed "
             f"(skipped{'' if retry_failed else '; --retry-failed re-runs them'}); a large spec: runs are made as "
             f"they are reached ({made:,} made for this answer), one line per optimizer and batch size"]
    total_it = total_ex = 0
    for (opt, b), (n, iters) in sorted(groups.items()):
        lines.append(f"  {opt} batch {b}: {n:,} runs to run, {iters:,} iterations, {iters * b:,} examples")
        total_it += iters
        total_ex += iters * b
    lines.append(f"total: {pending:,} runs, {total_it:,} iterations, {total_ex:,} examples "
                 f"({total_ex / max(1, _typical_train_size(study)):,.0f} epochs of the training split)")
    return "\n".join(lines)


def bracket_summary(study: Study) -> str:
    """One line on what bracketing has done and may still add (kfaclab.sweep.bracket)."""
    cells = study.bracket_cells
    states = [c["state"] for c in cells.values()]
    grown = sum(bool(c["steps"]) for c in cells.values())
    added = len(study.runs) - sum(len(study.recipe["seeds"]) * _grid_size(study, o) for o in study.recipe["optimizers"])
    edges = [f"{o} b{b} ({', '.join(c['edges'])})" for (o, b), c in sorted(cells.items()) if c["state"] == "edge"]
    return (f"bracketing (at most {study.bracket['max_steps']} grid steps per side of an axis): "
            f"{states.count('bracketed')} of {len(cells)} cells bracketed, {states.count('running')} still running, "
            f"{grown} grown so far ({max(0, added)} runs added); a cell still running may grow by one grid step per "
            f"side after it finishes" + (f"; on an edge at the limit: {'; '.join(edges)}" if edges else ""))


def _grid_size(study: Study, opt: str) -> int:
    import math

    grid = study.recipe["optimizers"][opt]["grid"]
    return math.prod(len(v) for v in grid.values()) * len(study.recipe["batch_sizes"])


def _typical_train_size(study: Study) -> int:
    c = study.runs[0].config
    return c.train_subset or TRAIN_SIZES.get(c.dataset, 1)


def _measured_rates(study: Study) -> dict:
    """A cost model per (optimizer, model) from the study's finished records: seconds =
    a x iterations + b x examples (per-step work such as K-FAC's preconditioning, plus
    per-example work), fitted by non-negative least squares; with one batch size only, where
    the two cannot be told apart, seconds per example."""
    points: dict = {}
    for run in study.runs:
        rec, _ = read_record(study.directory / f"{run.name}.json")  # a malformed record gives no rate
        if not rec or rec.get("run_id") != run.run_id or rec.get("status") not in ("completed", "diverged"):
            continue
        f = rec["final"]
        points.setdefault((run.config.optimizer, run.config.model), []).append(
            (f["iteration"], f["examples"], f["seconds"] + f["eval_seconds"]))
    return {key: _fit_cost(p) for key, p in points.items()}


def _fit_cost(points) -> tuple[float, float]:
    import numpy as np

    x = np.array([(i, e) for i, e, _ in points], dtype=float)
    y = np.array([s for _, _, s in points], dtype=float)
    if len({round(e / max(i, 1)) for i, e, _ in points}) > 1:  # several batch sizes
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        if (coef >= 0).all():
            return float(coef[0]), float(coef[1])
        # one coefficient came out negative: the best fit with the other alone
        fits = [(float(np.sum((y - c * x[:, k]) ** 2)), k, c) for k in (0, 1)
                for c in [float(x[:, k] @ y / max(x[:, k] @ x[:, k], 1e-12))]]
        _, k, c = min(fits)
        return (c, 0.0) if k == 0 else (0.0, c)
    return 0.0, float(y.sum() / max(x[:, 1].sum(), 1.0))


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UsageError(f"--gpus must be GPU indices like 0,1,2, got '{text}'")
    return gpus
