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
import hashlib
import io
import json
import math
import shutil
import statistics
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kfaclab.errors import UsageError
from kfaclab.sweep.runner import (TRAIN_SIZES, Worker, _clean_partials, catch_interrupts, default_threads,
                                  execute_run, restore_signals, run_state, worker_slots)
from kfaclab.sweep.bracket import load_grown
from kfaclab.sweep.spec import Run, Study
from kfaclab.train.record import check_writable_folder, write_atomic, write_bytes_atomic

ARCHIVE_KIND = "kfaclab.harvest"
ARCHIVE_VERSION = 1
FINISHED = ("completed", "diverged", "failed")
SAFETY = 1.2  # a run starts only if 1.2 x its predicted duration fits before the deadline
STEP_OVERHEAD_S = 3.0  # per run before any measurement: papermill, set-up, evaluations
CONTEXT_BYTES = 1.0e9  # a process's CUDA context and allocator slack, beside its run's own peak


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


# ------------------------------------------------------------------------------ ordering

def grid_rank(study: Study) -> dict[str, float]:
    """Each run's distance from the centre of its optimizer's grid (0 = the centre), with every
    axis scaled to [0, 1] by its position in the spec's list of values. Best configurations of
    a well-centred grid lie near its middle, so the centre is the one configuration to run first."""
    axes: dict[str, dict[str, list]] = {}
    for r in study.runs:
        label = _label(r)
        for k, v in r.grid_point.items():
            values = axes.setdefault(label, {}).setdefault(k, [])
            if v not in values:
                values.append(v)
    rank = {}
    for r in study.runs:
        dist = 0.0
        for k, v in r.grid_point.items():
            values = axes[_label(r)][k]
            dist += abs(values.index(v) - (len(values) - 1) / 2) / max(len(values) - 1, 1)
        rank[r.name] = dist
    return rank


def teaching_order(study: Study, runs: list[Run], predict) -> list[Run]:
    """What to run first: the runs of the spec's `harvest_first` optimizers before any other's
    (the comparison the study is for finishes first: a verdict waits for every run of the
    optimizers it compares); within each of those two tiers, rounds by distance from the grid's
    centre, one configuration per optimizer, batch size and seed in each round (where several
    are equally central, they take turns), so round 0 gives every batch size's steps to target a
    first value; seed 0 before others within a round, and within that the runs predicted
    cheapest first, so that a deadline cuts off few minutes of work. Ties keep the spec's order."""
    first = set(study.harvest_first)
    tier = {r.name: int(bool(first) and r.config.optimizer not in first) for r in study.runs}
    rank = grid_rank(study)
    levels = sorted(set(rank.values()))
    position = {r.name: i for i, r in enumerate(study.runs)}
    turn, seen = {}, {}
    for r in study.runs:  # the how-many-th equally central configuration of its group
        group = (_label(r), r.config.batch_size, r.config.seed, rank[r.name])
        turn[r.name] = seen.get(group, 0)
        seen[group] = turn[r.name] + 1
    return sorted(runs, key=lambda r: (tier[r.name], levels.index(rank[r.name]), turn[r.name], r.config.seed,
                                       predict.base(r) or 0.0, position[r.name]))


def _label(run: Run) -> str:
    c = run.config
    return c.optimizer if c.batch_schedule == "fixed" else f"{c.optimizer}+{c.batch_schedule}"


# ------------------------------------------------------------------------------ prediction

def run_iterations(run: Run) -> tuple[int, int]:
    """(iterations, evaluations) the run will take, from its config and the dataset's size."""
    from kfaclab.train.budget import evaluation_iterations, total_iterations

    c = run.config
    n_train = c.train_subset or TRAIN_SIZES.get(c.dataset)
    if n_train is None:
        return 0, 0
    spe = n_train // c.batch_size
    iters = total_iterations(c.budget, c.budget_value, c.batch_size, spe, c.rule_b0, c.rule_e0)
    return iters, len(evaluation_iterations(iters, spe, c.eval_every_epochs, c.min_evals))


def _interp_loglog(points: dict[int, float], b: int) -> float:
    """Interpolate y(B) linearly in log-log between measured batch sizes; beyond them, continue
    the nearest segment's slope (one point: y proportional to B)."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]] * b / xs[0]
    lx = math.log(b)
    i = 1
    while i < len(xs) - 1 and math.log(xs[i]) < lx:
        i += 1
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = math.log(points[x0]), math.log(points[x1])
    slope = (y1 - y0) / (math.log(x1) - math.log(x0))
    return math.exp(y0 + slope * (lx - math.log(x0)))


class Predictor:
    """Predicted seconds (and peak GPU bytes) of a run: iterations x the bench's amortized step
    time at its batch size x the measured slowdown of `sharing` runs on one device, plus its
    evaluations and a fixed overhead; without a bench, the spec's throughput model. Finished
    runs correct it: predictions are scaled by the median of actual/predicted so far."""

    def __init__(self, study: Study, sharing: int, bench: dict | None = None):
        self.study, self.sharing, self.bench = study, sharing, bench
        self.ratios: list[float] = []
        self.step_s: dict[str, dict[int, float]] = {}
        self.peak: dict[str, dict[int, float]] = {}
        self.slowdown: dict[str, float] = {}
        if bench:
            from kfaclab.sweep.throughput import slowdown

            for row in bench.get("step_times", []):
                for r in row["results"]:
                    self.step_s.setdefault(r["optimizer"], {})[row["batch_size"]] = r["amortized_step_s"]
                    if r.get("peak_memory_bytes"):
                        self.peak.setdefault(r["optimizer"], {})[row["batch_size"]] = r["peak_memory_bytes"]
            tp = bench.get("throughput")
            for opt in self.step_s:
                self.slowdown[opt] = slowdown(tp, opt, sharing) if tp else float(sharing)

    def base(self, run: Run) -> float | None:
        iters, evals = run_iterations(run)
        c = run.config
        steps = self.step_s.get(c.optimizer)
        if steps:
            step = _interp_loglog(steps, c.batch_size)
            # An evaluation pass: forward only over the test split, about a third of an SGD step
            # per example at the largest batch measured.
            sgd = self.step_s.get("sgd", steps)
            b_max = max(sgd)
            n_test = c.test_subset or 10000
            evaluation = n_test / b_max * sgd[b_max] / 3
            return (iters * step + evals * evaluation) * self.slowdown.get(c.optimizer, self.sharing) \
                + STEP_OVERHEAD_S
        tp = self.study.throughput
        if tp and c.optimizer in tp["epochs_per_second"]:
            n_train = c.train_subset or TRAIN_SIZES.get(c.dataset, 1)
            epochs = iters * c.batch_size / n_train
            return epochs * tp["runs_sharing"] / tp["epochs_per_second"][c.optimizer] + STEP_OVERHEAD_S
        return None

    def correction(self) -> float:
        return min(4.0, max(0.25, statistics.median(self.ratios))) if self.ratios else 1.0

    def __call__(self, run: Run) -> float:
        base = self.base(run)
        return (base if base is not None else STEP_OVERHEAD_S) * self.correction()

    def observe(self, run: Run, seconds: float) -> None:
        base = self.base(run)
        if base:
            self.ratios.append(seconds / base)

    def memory(self, run: Run) -> float:
        """Predicted peak device bytes of the run's process (0 where unmeasured: CPU)."""
        peaks = self.peak.get(run.config.optimizer)
        if not peaks:
            return 0.0
        xs = sorted(peaks)
        b = run.config.batch_size
        if len(xs) == 1:
            own = peaks[xs[0]] * b / xs[0]
        else:  # linear in the batch size through the two nearest measured points
            x0, x1 = (xs[-2], xs[-1]) if b >= xs[-1] else next((xs[i], xs[i + 1]) for i in range(len(xs) - 1)
                                                                   if b <= xs[i + 1])
            own = peaks[x0] + (peaks[x1] - peaks[x0]) * (b - x0) / (x1 - x0)
        return max(own, 0.0) + CONTEXT_BYTES


# ------------------------------------------------------------------------------ what is left

WINDOW_RUN_S = 400.0  # seconds of runs in one borrowed-GPU window: scripts/gpu-harvest.sh's 480 s
# deadline less the smoke check (at most 60 s) and decoding the data


def study_bench(study: Study) -> dict | None:
    """The study's newest harvest bench (runs/<study>/bench/), or None."""
    newest = None
    for p in sorted((study.directory / "bench").glob("*.json")):
        try:
            b = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(b, dict) and b.get("kind") == "kfaclab.harvest-bench" and b.get("step_times"):
            if newest is None or str(b.get("created", "")) >= str(newest.get("created", "")):
                newest = b
    return newest


def _wall_seconds(record: dict) -> float | None:
    """A finished run's wall time from its record's timestamps; where they cannot tell (records
    written with whole seconds), its training and evaluation seconds."""
    try:
        wall = (datetime.fromisoformat(record["finished_at"]) - datetime.fromisoformat(record["started_at"])
                ).total_seconds()
    except (KeyError, TypeError, ValueError):
        wall = None
    if wall and wall > 0:
        return wall
    final = record.get("final") or {}
    inside = (final.get("seconds") or 0.0) + (final.get("eval_seconds") or 0.0)
    return inside or None


def remaining_estimate(study: Study, pending: list[Run], sharing: int | None = None,
                       window_s: float = WINDOW_RUN_S) -> str | None:
    """What the pending runs cost on the device of the study's harvest bench, by the model the
    harvest schedules with (Predictor: the bench's amortized steps and measured slowdown of runs
    sharing the device), corrected by the study's finished runs (their wall time against the
    prediction), in minutes and in borrowed-GPU windows. None without a bench."""
    bench = study_bench(study)
    if bench is None:
        return None
    if sharing is None:
        sharing = (study.throughput or {}).get("runs_sharing") or max(
            [r["runs"] for r in ((bench.get("throughput") or {}).get("rows") or [])], default=1)
    predict = Predictor(study, sharing, bench)
    observed = 0
    for r in study.runs:
        if run_state(study.directory, r) != "done":
            continue
        try:
            rec = json.loads((study.directory / f"{r.name}.json").read_text())
        except (OSError, ValueError):
            continue
        wall = _wall_seconds(rec)
        if wall and wall > 0:
            predict.observe(r, wall)
            observed += 1
    total = sum(predict(r) for r in pending) / sharing
    env = bench.get("environment") or {}
    device = env.get("gpu") or (f"{env['cpu']} CPU" if env.get("cpu") else "the bench's device")
    corrected = (f", corrected by {observed} finished run{'s' if observed != 1 else ''} (x{predict.correction():.2f})"
                 if observed else ", not yet corrected by finished runs")
    together = "one run at a time" if sharing == 1 else f"{sharing} runs sharing it"
    return (f"estimated time: {total / 60:.1f} min on {device} with {together}, from the study's "
            f"bench of {str(bench.get('created', '?'))[:10]} (amortized steps and measured slowdown of runs sharing "
            f"the device){corrected}: about {math.ceil(total / window_s) if total else 0} borrowed-GPU window(s) of "
            f"{window_s:.0f} s of runs")


# ------------------------------------------------------------------------------ archive

def spec_digest(study: Study) -> str:
    return hashlib.sha256(study.path.read_bytes()).hexdigest()


def run_files(directory: Path, run: Run) -> list[Path]:
    """What a finished run left: its notebook (when there is one), its record or failure marker."""
    out = []
    for suffix in (".ipynb", ".json", ".failed.json"):
        p = directory / f"{run.name}{suffix}"
        if p.exists():
            out.append(p)
    return out


def pack(path: Path, study: Study, stage: Path, finished: list[tuple[Run, str]], bench_file: Path | None,
         environment: dict) -> None:
    """Write the archive (atomically): every finished run's files under <study>/, the bench
    under bench/, and manifest.json with each file's sha256."""
    entries, runs = [], []
    for run, status in finished:
        files = {}
        for p in run_files(stage, run):
            data = p.read_bytes()
            files[p.name] = hashlib.sha256(data).hexdigest()
            entries.append((f"{study.name}/{p.name}", data))
        runs.append({"name": run.name, "run_id": run.run_id, "status": status, "files": files})
    bench = None
    if bench_file is not None and bench_file.exists():
        data = bench_file.read_bytes()
        bench = {"file": f"bench/{bench_file.name}", "sha256": hashlib.sha256(data).hexdigest()}
        entries.append((bench["file"], data))
    manifest = {"kind": ARCHIVE_KIND, "version": ARCHIVE_VERSION, "study": study.name,
                "spec_sha256": spec_digest(study), "created": _now(), "environment": environment,
                "runs": runs, "bench": bench}
    entries.append(("manifest.json", (json.dumps(manifest, indent=1) + "\n").encode()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    write_bytes_atomic(path, buf.getvalue())


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
                       "started_at": _now(), "deadline_s": o.deadline_s, "slots": len(self.slots),
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
        _clean_partials(self.stage)
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
            self.report["finished_at"] = _now()
            self.write_report()
            self.say("interrupted; the archive holds every run that finished")
            return 130
        finally:
            for w in self.workers:
                w.close()
            restore_signals(previous)
        stopped = self.report["runs"].get("stopped")
        self.report["status"] = f"stopped: {stopped}" if stopped else "finished"
        self.report["finished_at"] = _now()
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
            self.say(f"check {c.name}: {'ok' if c.ok else 'FAILED'} (error {c.error:.2g} <= {c.tolerance:g}?) {c.detail}")
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

    def _with_watchdog(self, threads, stopping, limit_at):
        """Wait for the threads; at limit_at, or on Ctrl-C / SIGTERM, interrupt the runs in flight
        (they stay pending) and wait for the threads to end (then re-raise the interrupt)."""
        try:
            while any(t.is_alive() for t in threads):
                if self.opts.clock() >= limit_at and not stopping.is_set():
                    stopping.set()
                    self.say("deadline: interrupting the runs in flight (they stay pending)")
                    for w in self.workers:
                        w.interrupt()
                for t in threads:
                    t.join(0.2)
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
        _release_device_memory()  # the bench's cached blocks belong to the runs now
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
        runs_report = {"settled_before": len(settled), "pending_at_start": len(pending), "order": [r.name for r in order],
                       "finished": [], "interrupted": [], "predicted_total_s": round(sum(predict(r) for r in order), 1),
                       "memory_budget_bytes": budget}
        self.report["runs"] = runs_report
        self.say(f"runs: {len(settled)} done (or failed) before, {len(pending)} pending; predicted {runs_report['predicted_total_s']:.0f}s "
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
        self._with_watchdog(threads, stopping, self.deadline_at - 2.0)
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


def _release_device_memory():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _status(directory: Path, run: Run) -> str:
    try:
        return json.loads((directory / f"{run.name}.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "failed"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------ the bench

def run_harvest_bench(study: Study, batch_sizes, steps: int, slots, throughput_runs, throughput_seconds,
                      say=print) -> dict:
    """Amortized step times per optimizer of the study at each batch size (one process, the
    device alone), then the aggregate throughput of N runs sharing it."""
    from kfaclab.bench import run_bench
    from kfaclab.sweep.throughput import measure

    firsts = {}
    for r in study.runs:
        if r.config.optimizer not in ("trcg", "strcg"):  # a trust region has no comparable step
            firsts.setdefault(r.config.optimizer, r)
    if not firsts:
        raise UsageError(f"{study.path}: the bench times optimizers with a training step (sgd, kfac); "
                         "the study has none: run it with --bench never")
    base = next(iter(firsts.values())).config
    n_train = base.train_subset or TRAIN_SIZES.get(base.dataset, 0)
    sizes = [b for b in batch_sizes if b <= n_train] or [min(r.config.batch_size for r in study.runs)]
    hparams = {}
    for r in firsts.values():
        hparams.update(r.config.hparams)
    step_times, env = [], None
    for b in sizes:
        cfg = dataclasses.replace(base, batch_size=b, hparams=hparams)
        say(f"bench: batch {b}, {', '.join(firsts)}, {steps} steps each")
        result = run_bench(cfg, list(firsts), steps=5, warmup=5, rounds=1, amortize=steps, amortize_rounds=1,
                           progress=False)
        step_times.append({"batch_size": b, "results": result["results"]})
        env = result.get("environment")
    n_sharing = len(slots) if not any(slots) else sum(1 for s in slots if s == slots[0])
    result = {"kind": "kfaclab.harvest-bench", "study": study.name, "created": _now(), "amortized_steps": steps,
              "model": base.model, "environment": env, "step_times": step_times, "throughput": None}
    if n_sharing < 2:
        return result  # one run at a time: nothing shares the device
    counts = sorted({n for n in list(throughput_runs) + [n_sharing] if 2 <= n <= n_sharing})
    smallest = min(r.config.batch_size for r in study.runs)
    configs = []
    names = list(firsts)
    for i in range(max(counts + [1])):
        r = firsts[names[i % len(names)]]
        configs.append(dataclasses.replace(r.config, batch_size=smallest, output=None).to_dict())
    say(f"throughput: {', '.join(names)} alone, then {', '.join(map(str, counts)) or 'no'} runs sharing the device, "
        f"batch {smallest}, {throughput_seconds:g}s each")
    env = {"CUDA_VISIBLE_DEVICES": slots[0]} if slots and slots[0] is not None else None
    result["throughput"] = measure(configs, counts, throughput_seconds, env)
    return result


def bench_summary(b: dict) -> list[str]:
    lines = []
    for row in b.get("step_times", []):
        res = {r["optimizer"]: r for r in row["results"]}
        parts = [f"{o} {1e3 * r['amortized_step_s']:.1f} ms" for o, r in res.items()]
        if "sgd" in res and "kfac" in res:
            parts.append(f"kfac/sgd {res['kfac']['amortized_step_s'] / res['sgd']['amortized_step_s']:.2f}x")
        lines.append(f"batch {row['batch_size']}: " + ", ".join(parts))
    tp = b.get("throughput") or {}
    for row in tp.get("alone", []) + tp.get("rows", []):
        lines.append(f"{row['runs']} run(s) sharing: {row['epochs_per_s']:.3g} epochs/s in all "
                     f"({', '.join(sorted({p['optimizer'] for p in row['per_run']}))})")
    return lines


def harvest(spec: str | Path, opts: Options) -> int:
    study = load_grown(spec)
    return Harvest(study, opts).run()
