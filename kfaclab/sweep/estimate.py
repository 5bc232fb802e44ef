"""What a sweep will cost before it runs: the dry run, and predicted durations from measured rates.

The dry run lists the runs a sweep would make and estimates their wall time from the study's
finished records (or its bench); the harvest's Predictor uses the same measured rates to decide
which runs fit in a borrowed GPU window.
"""

from __future__ import annotations

import json
import math
import statistics
from datetime import datetime

from kfaclab.sweep.spec import Run, RunList, Study
from kfaclab.sweep.state import malformed_records, plan_runs, run_state
from kfaclab.train.budget import TRAIN_SIZES, run_iterations
from kfaclab.train.record import read_record


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
    seconds, unknown, proxied = 0.0, 0, set()
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
        if rate is None and c.optimizer == "adam" and ("sgd", c.model) in rates:
            rate = rates[("sgd", c.model)]  # Adam's step costs what SGD's does, give or take elementwise work
            proxied.add(f"adam ({c.model})")
        if rate is not None:
            seconds += rate[0] * iters + rate[1] * iters * c.batch_size
        lines.append(f"  {r.name}: {iters} iterations, {iters * c.batch_size} examples")
    lines.append(f"total: {len(pending)} runs, {totals['iterations']} iterations, {totals['examples']} examples "
                 f"({totals['examples'] / max(1, _typical_train_size(study)):.0f} epochs of the training split)")

    # A study run by harvests has a bench of its device: the harvest's own model of what is
    # left (runs sharing the device) beats per-run seconds summed as if in one worker.
    harvested = remaining_estimate(study, pending)
    if harvested:
        lines.append(harvested)
    elif rates:
        missing = sorted({f"{r.config.optimizer} ({r.config.model})" for r in pending
                          if (r.config.optimizer, r.config.model) not in rates} - proxied)
        lines.append(f"estimated time: {seconds / 60:.1f} min of training in one worker, from a cost model "
                     f"(seconds per iteration and per example) fitted to this study's finished runs, plus runner "
                     "overhead per run"
                     + (f"; {', '.join(sorted(proxied))} at SGD's measured cost (none of its runs has finished)"
                        if proxied else "")
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
        iters, evals = run_iterations(run.config)
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


WINDOW_RUN_S = 400.0  # seconds of runs in one borrowed-GPU window: scripts/gpu-harvest.sh's 480 s


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


STEP_OVERHEAD_S = 3.0  # per run before any measurement: papermill, set-up, evaluations


CONTEXT_BYTES = 1.0e9  # a process's CUDA context and allocator slack, beside its run's own peak
