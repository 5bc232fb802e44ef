"""The harvest: as much of a study as fits before a deadline, packed into one archive.

Made for a borrowed GPU (one command, minutes long, whose results come back as a few files),
and usable on any machine: `python -m kfaclab harvest runs/gpu/study.yaml --out DIR
--deadline-s 480 --gpus 0 --runs-per-gpu 8` runs, in order,

  1. data: the study's dataset decoded once into the cache (the workers then load it in
     a fraction of a second);
  2. smoke: `kfaclab.device_checks` on the study's device, and two very short runs of the
     study (one per optimizer) through the same workers as the real runs, at most
     `smoke_limit_s` in all; if anything fails, the harvest stops there with a report;
  3. bench (when the study has none from this kind of device, or when asked): amortized step
     times of each optimizer at a few batch sizes (with peak GPU memory), and the aggregate
     throughput of N runs sharing the device (`kfaclab.sweep.throughput`);
  4. runs: the study's pending runs in the order that teaches most per minute
     (`teaching_order`), each started only when its predicted duration fits before the
     deadline (and, on a GPU, its predicted memory fits beside the runs in flight); at the
     deadline runs still in flight are interrupted and stay pending.

Every finished run (completed, diverged or failed with its error) is packed the moment it
ends: DIR/harvest-<study>.tar.gz is rewritten atomically with its record and notebook, so a
kill at any moment leaves an archive of whole runs. DIR also holds harvest-<study>-report.json
(phases, checks, predictions against actual times, what finished and what is left) and
bench-<study>.json: three files. Runs execute in a work folder outside DIR (`work`).
`python -m kfaclab harvest-merge ARCHIVE runs/<study>` (kfaclab.sweep.merge) validates the
archive and adds its runs to the study; a later harvest or sweep then skips them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kfaclab.errors import UsageError
from kfaclab.interrupts import catch_interrupts, restore_signals
from kfaclab.sweep.archive import now, pack
from kfaclab.sweep.bracket import load_grown
from kfaclab.sweep.estimate import Predictor
from kfaclab.sweep.harvest_bench import (
    bench_summary,
    release_device_memory,
    run_harvest_bench,
)
from kfaclab.sweep.harvest_order import teaching_order
from kfaclab.sweep.runner import worker_slots
from kfaclab.sweep.spec import Run, Study
from kfaclab.sweep.state import clean_partials, run_state
from kfaclab.sweep.worker import Worker, default_threads, execute_run
from kfaclab.train.record import check_writable_folder, write_atomic

FINISHED = ("completed", "diverged", "failed")
SAFETY = 1.2  # a run starts only if 1.2 x its predicted duration fits before the deadline
# At the deadline less INTERRUPT_LEAD_S the runs in flight are interrupted (they stay pending);
# one that has not returned by the deadline less KILL_LEAD_S (a loaded machine: its kernel's
# interrupt and shutdown took longer) has its worker killed, and the workers' exit is given only
# the time left before the deadline less EXIT_LEAD_S. The harvest so ends before its deadline by
# construction, however slow the machine (the archive already holds every finished run).
INTERRUPT_LEAD_S = 2.0
KILL_LEAD_S = 0.6
EXIT_LEAD_S = 0.3


@dataclass
class Options:
    out: Path
    deadline_s: float
    workers: int = 1
    gpus: list[str] | None = None
    runs_per_gpu: int = 1
    threads: int | None = None
    bench: str = "auto"  # auto (when the study has no bench from this device) | always | never
    bench_batch_sizes: tuple[int, ...] = (128, 512, 2048)
    bench_steps: int = 100  # amortized over this many steps (a multiple of K-FAC's T_inv)
    throughput_runs: tuple[int, ...] = (2, 4, 8)  # N runs sharing the device (the slot count is added)
    throughput_seconds: float = 5.0
    retry_failed: bool = False  # run again the study's runs that failed before (else they are skipped)
    smoke: bool = True
    smoke_iterations: int = 20
    smoke_limit_s: float = 60.0
    max_failures: int = 3  # this many failed runs in a row stop the harvest (a systematic fault)
    margin_s: float = 10.0  # kept free before the deadline: packing, the report, the process's exit
    memory_share: float = 0.85  # of the GPU's memory that runs in flight may plan to use
    work: Path | None = None
    progress: bool = True
    clock: object = time.monotonic


# ------------------------------------------------------------------------------ the harvest

@dataclass
class Harvest:
    study: Study
    opts: Options
    report: dict = field(default_factory=dict)
    finished: list = field(default_factory=list)  # (Run, status)

    def __post_init__(self):
        o = self.opts
        o.out = Path(o.out)
        self.started = o.clock()
        self.deadline_at = self.started + o.deadline_s
        self.archive = o.out / f"harvest-{self.study.name}.tar.gz"
        self.report_file = o.out / f"harvest-{self.study.name}-report.json"
        self.bench_file = o.out / f"bench-{self.study.name}.json"
        self.work = Path(o.work) if o.work else Path(tempfile.mkdtemp(prefix="kfaclab-harvest-"))
        self.stage = self.work / self.study.name
        self.slots = worker_slots(o.workers, o.gpus, o.runs_per_gpu)
        self.device = self.study.runs[0].config.device
        self.lock = threading.Lock()
        self.report = {"kind": "kfaclab.harvest-report", "study": self.study.name, "spec": str(self.study.path),
                       "started_at": now(), "deadline_s": o.deadline_s, "slots": len(self.slots),
                       "phases": {}, "status": "running"}

    # -------------------------------------------------------------------- helpers

    def elapsed(self) -> float:
        return self.opts.clock() - self.started

    def _phase(self, name, t0):
        self.report["phases"][name] = round(self.opts.clock() - t0, 2)

    def write_report(self):
        """The report, atomically; on a full $OUT the last one written stands (the harvest then
        stops: see the runs phase) and this says so once, instead of killing a runs thread."""
        try:
            write_atomic(self.report_file, self.report)
        except OSError as e:
            if getattr(self, "_report_unwritten", None) is None:
                self._report_unwritten = f"{e.strerror or e}"
                self.say(f"cannot write the report to {self.report_file} ({self._report_unwritten}); the last one "
                         "written stands")

    def say(self, text):
        if self.opts.progress:
            print(f"[harvest {self.elapsed():6.1f}s] {text}", flush=True)

    def environment(self) -> dict:
        from kfaclab.train.loop import resolve_device
        from kfaclab.train.record import environment

        return environment(resolve_device(self.device))

    # -------------------------------------------------------------------- phases

    def run(self) -> int:
        o = self.opts
        check_writable_folder(o.out, "the harvest", "give --out a writable folder")
        self.stage.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.study.path, self.stage / "study.yaml")
        clean_partials(self.stage)
        staged = load_grown(self.stage / "study.yaml")
        # Bracketing runs come after the spec's own, grown from records the stage has not got.
        if [r.run_id for r in staged.runs] != [r.run_id for r in self.study.runs[:len(staged.runs)]]:
            raise UsageError(f"{self.study.path}: the spec gives other runs when copied to {self.stage} "
                             "(relative paths in it?); use absolute paths in the spec")
        self.env = self.environment()
        self.report["environment"] = self.env
        self.write_report()
        self.workers = [Worker(o.threads or default_threads(len(self.slots)), gpu) for gpu in self.slots]
        previous = catch_interrupts()  # SIGTERM (timeouts, schedulers) stops it as Ctrl-C does
        try:
            t0 = o.clock()
            self.say(f"data: loading {self.study.runs[0].config.dataset}")
            self._load_data()
            self._phase("data", t0)
            if o.smoke:
                t0 = o.clock()
                ok = self.smoke()
                self._phase("smoke", t0)
                if not ok:
                    self.report["status"] = "smoke check failed"
                    self.write_report()
                    self.say(f"smoke check FAILED: see {self.report_file}")
                    return 1
            bench = self.bench()
            t0 = o.clock()
            self.harvest_runs(bench)
            self._phase("runs", t0)
        except KeyboardInterrupt:
            self.report["status"] = "interrupted (what finished before is in the archive)"
            self.report["finished_at"] = now()
            self.write_report()
            self.say("interrupted; the archive holds every run that finished")
            return 130
        finally:
            # Bounded by the deadline: a worker that does not exit in the time left is killed.
            for w in self.workers:
                w.close(grace=max(0.1, self.deadline_at - EXIT_LEAD_S - o.clock()))
            restore_signals(previous)
        stopped = self.report["runs"].get("stopped")
        self.report["status"] = f"stopped: {stopped}" if stopped else "finished"
        self.report["finished_at"] = now()
        self.write_report()
        return 1 if stopped else 0

    def _load_data(self):
        from kfaclab.train.loop import dataset_for

        dataset_for(self.study.runs[0].config)  # decoded once into the cache; workers read the cache

    def smoke(self) -> bool:
        """One short run per optimizer through the workers (their kernels start meanwhile) and the
        device checks here, within smoke_limit_s; True if all passed."""
        from kfaclab.device_checks import run_checks
        from kfaclab.train.loop import resolve_device

        o = self.opts
        limit_at = o.clock() + o.smoke_limit_s
        firsts = {}
        for r in self.study.runs:
            firsts.setdefault(r.config.optimizer, r)
        # In the study's work folder, so the workers' kernels stay warm for the real runs; their
        # names are no run of the study, so they are never packed.
        shorts = []
        for r in firsts.values():
            cfg = dataclasses.replace(r.config, budget="iterations", budget_value=float(o.smoke_iterations),
                                      min_evals=2, eval_batch_size=min(r.config.eval_batch_size, 1000))
            shorts.append(Run(f"smoke-{r.name}", cfg.run_id(), cfg, r.grid_point))
        stopping, outcomes = threading.Event(), []
        threads = self._start_all(shorts, self.stage, stopping, outcomes)
        device = str(resolve_device(self.device))
        checks = run_checks(device)
        self.report["smoke"] = {"device": device, "checks": [c.to_dict() for c in checks], "runs": []}
        for c in checks:
            self.say(f"check {c.name}: {'ok' if c.ok else 'FAILED'} (error {c.error:.2g} <= {c.tolerance:g}?) "
                     f"{c.detail}")
        self._with_watchdog(threads, stopping, limit_at)
        for out in outcomes:
            self.report["smoke"]["runs"].append({"name": out.run.name, "status": out.status,
                                                 "seconds": round(out.wall_seconds, 2), "error": out.error})
            self.say(f"smoke run {out.run.name}: {out.status} in {out.wall_seconds:.1f}s"
                     + (f": {out.error.strip().splitlines()[-1]}" if out.error else ""))
        late = o.clock() > limit_at
        if late:
            self.report["smoke"]["error"] = f"the smoke check took longer than {o.smoke_limit_s:g}s"
        ok = all(c.ok for c in checks) and len(outcomes) == len(shorts) and \
            all(out.status in ("completed", "diverged") for out in outcomes) and not late
        self.report["smoke"]["ok"] = ok
        self.write_report()
        return ok

    def _start_all(self, runs, directory, stopping, results) -> list[threading.Thread]:
        """Threads that execute `runs` on the workers, one worker each, appending to `results`."""
        queue = list(runs)

        def slot(worker):
            while not stopping.is_set():
                with self.lock:
                    if not queue:
                        return
                    run = queue.pop(0)
                out = execute_run(run, directory, worker, stopping)
                with self.lock:
                    results.append(out)

        threads = [threading.Thread(target=slot, args=(w,)) for w in self.workers]
        for t in threads:
            t.start()
        return threads

    def _with_watchdog(self, threads, stopping, limit_at, kill_at=None):
        """Wait for the threads; at limit_at, or on Ctrl-C / SIGTERM, interrupt the runs in flight
        (they stay pending) and wait for the threads to end (then re-raise the interrupt). At
        kill_at the workers of runs still in flight are killed (they stay pending too)."""
        killed = False
        try:
            while any(t.is_alive() for t in threads):
                now = self.opts.clock()
                if now >= limit_at and not stopping.is_set():
                    stopping.set()
                    self.say("deadline: interrupting the runs in flight (they stay pending)")
                    for w in self.workers:
                        w.interrupt()
                if kill_at is not None and now >= kill_at and not killed:
                    killed = True
                    self.say("deadline: killing the workers whose runs did not stop in time (they stay pending)")
                    for w in self.workers:
                        w.kill()
                for t in threads:
                    t.join(0.05)  # short: the kill must come well inside KILL_LEAD_S
        except KeyboardInterrupt:
            stopping.set()
            for w in self.workers:
                w.interrupt()
            for t in threads:
                t.join()
            raise

    # -------------------------------------------------------------------- bench

    def _existing_bench(self) -> dict | None:
        gpu = self.env.get("gpu") or self.env.get("cpu")
        for p in sorted((self.study.directory / "bench").glob("*.json"), reverse=True):
            try:
                b = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            env = b.get("environment", {})
            if (env.get("gpu") or env.get("cpu")) == gpu:
                return b
        return None

    def bench(self) -> dict | None:
        o = self.opts
        existing = self._existing_bench()
        if o.bench == "never" or (o.bench == "auto" and existing is not None):
            self.report["bench"] = {"ran": False, "from": "study folder" if existing else None}
            return existing
        t0 = o.clock()
        result = run_harvest_bench(self.study, o.bench_batch_sizes, o.bench_steps, self.slots,
                                   o.throughput_runs, o.throughput_seconds, self.say)
        result["environment"] = self.env
        release_device_memory()  # the bench's cached blocks belong to the runs now
        write_atomic(self.bench_file, result)
        self._phase("bench", t0)
        self.report["bench"] = {"ran": True, "file": self.bench_file.name, "summary": bench_summary(result)}
        self.write_report()
        return result

    # -------------------------------------------------------------------- runs

    def harvest_runs(self, bench):
        o = self.opts
        predict = Predictor(self.study, self._sharing(), bench)
        skip = ("done",) if o.retry_failed else ("done", "failed")
        # Settled in the study already: done (merged), or failed unless retried.
        settled = {r.name for r in self.study.runs if run_state(self.study.directory, r) in skip}
        staged_done = [r for r in self.study.runs if r.name not in settled and run_state(self.stage, r) != "pending"]
        staged = {r.name for r in staged_done}
        pending = [r for r in self.study.runs if r.name not in settled and r.name not in staged]
        for r in staged_done:  # finished in this work folder by an earlier harvest, not merged yet
            self.finished.append((r, _status(self.stage, r)))
        order = teaching_order(self.study, pending, predict)
        budget = self._memory_budget()
        in_flight: dict[str, float] = {}
        runs_report = {"settled_before": len(settled), "pending_at_start": len(pending),
                       "order": [r.name for r in order],
                       "finished": [], "interrupted": [], "predicted_total_s": round(sum(predict(r) for r in order), 1),
                       "memory_budget_bytes": budget}
        self.report["runs"] = runs_report
        self.say(f"runs: {len(settled)} done (or failed) before, {len(pending)} pending; predicted "
                 f"{runs_report['predicted_total_s']:.0f}s "
                 f"of work on {len(self.slots)} slot(s); {self.deadline_at - o.clock():.0f}s left")
        if self.finished:
            self._pack()
        stopping = threading.Event()
        wake = threading.Condition(self.lock)
        failures_in_a_row = [0]

        def pick():
            """The first run in order that fits in time (and memory); None: nothing will fit;
            'wait': something would fit once memory frees."""
            now = o.clock()
            waiting = False
            for i, r in enumerate(order):
                if now + predict(r) * SAFETY > self.deadline_at - o.margin_s:
                    continue
                if budget and sum(in_flight.values()) + predict.memory(r) > budget and in_flight:
                    waiting = True
                    continue
                return order.pop(i)
            return "wait" if waiting else None

        def slot(worker):
            while not stopping.is_set():
                with wake:
                    run = pick()
                    while run == "wait" and not stopping.is_set():
                        wake.wait(1.0)
                        run = pick()
                    if run is None or run == "wait":
                        return
                    in_flight[run.name] = predict.memory(run)
                    expected = predict(run)
                out = execute_run(run, self.stage, worker, stopping)
                with wake:
                    in_flight.pop(run.name, None)
                    entry = {"name": run.name, "status": out.status, "predicted_s": round(expected, 1),
                             "actual_s": round(out.wall_seconds, 1)}
                    failures_in_a_row[0] = failures_in_a_row[0] + 1 if out.status == "failed" else 0
                    if failures_in_a_row[0] >= o.max_failures and not stopping.is_set():
                        runs_report["stopped"] = f"{o.max_failures} runs in a row failed: a fault to fix, not a result"
                        self.say(f"stopping: {runs_report['stopped']}")
                        stopping.set()
                    if out.infrastructure:  # the machine stopped it: left for the next harvest, not failed
                        runs_report["interrupted"].append({**entry, "machine": out.infrastructure})
                        if out.infrastructure == "disk" and not stopping.is_set():
                            runs_report["stopped"] = "the disk is full: the runs made so far are in the archive"
                            self.say(f"stopping: {runs_report['stopped']}")
                            stopping.set()
                    elif out.status in FINISHED:
                        if out.status != "failed":
                            predict.observe(run, out.wall_seconds)
                        self.finished.append((run, out.status))
                        try:
                            self._pack()
                            runs_report["finished"].append(entry)
                        except OSError as e:  # $OUT is full: the last archive written stands
                            self.finished.pop()
                            runs_report["interrupted"].append({**entry, "machine": "disk"})
                            runs_report["stopped"] = (f"cannot write the archive ({e.strerror or e}); it holds the "
                                                      "runs before this one")
                            self.say(f"stopping: {runs_report['stopped']}")
                            stopping.set()
                    else:
                        runs_report["interrupted"].append(entry)
                    runs_report["left"] = len(order) + len(in_flight)
                    self.write_report()
                    wake.notify_all()
                self.say(f"{run.name}: {out.status} in {out.wall_seconds:.1f}s (predicted {expected:.1f}s)"
                         + (f": {out.error.strip().splitlines()[-1]}" if out.error else ""))

        threads = [threading.Thread(target=slot, args=(w,)) for w in self.workers]
        for t in threads:
            t.start()
        self._with_watchdog(threads, stopping, self.deadline_at - INTERRUPT_LEAD_S, self.deadline_at - KILL_LEAD_S)
        left = [r.name for r in order] + [e["name"] for e in runs_report["interrupted"]]
        runs_report["left"] = len(left)
        runs_report["left_names"] = left
        runs_report["correction"] = round(predict.correction(), 3)
        counts = {s: sum(st == s for _, st in self.finished) for s in FINISHED}
        self.say(f"finished {sum(counts.values())} run(s) ({', '.join(f'{n} {s}' for s, n in counts.items())}); "
                 f"{len(left)} left for the next harvest; archive: {self.archive}")

    def _sharing(self) -> int:
        """Runs that share one device: workers per GPU, or CPU workers."""
        if self.opts.gpus:
            return self.opts.runs_per_gpu
        return len(self.slots)

    def _memory_budget(self) -> float:
        import torch

        if not str(self.device).startswith("cuda") or not torch.cuda.is_available():
            return 0.0
        # Runs in flight are counted together whatever GPU they are on: conservative with several.
        return torch.cuda.get_device_properties(0).total_memory * self.opts.memory_share

    def _pack(self):
        pack(self.archive, self.study, self.stage, self.finished,
             self.bench_file if self.bench_file.exists() else None, self.env)


def _status(directory: Path, run: Run) -> str:
    try:
        return json.loads((directory / f"{run.name}.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "failed"


def harvest(spec: str | Path, opts: Options) -> int:
    study = load_grown(spec)
    return Harvest(study, opts).run()
