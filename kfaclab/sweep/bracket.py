"""Bracketing: a grid grows until its optimum lies inside it (book/verdicts.md, version 3).

Shallue et al. require the best configuration to lie inside the space searched; a grid whose
best learning rate is its lowest value says only that the optimum is somewhere below. So, for
a study whose spec has `bracket: {max_steps: N}`, once every run of an (optimizer, batch size)
cell has finished, each grid axis is checked on each side and grows by one grid step
(kfaclab.sweep.grid_axes) on a side where

- the best configurations by steps to the highest accuracy target the cell reaches (median over
  seeds; ties counted) all lie on the axis's edge on that side, none strictly inside; or
- the best configurations by final accuracy (mean over seeds; ties counted) do; or, for the
  learning rate (grid_axes.WIDTH_AXIS), the region within one point of the best final accuracy,
  along the best configuration's learning-rate row, reaches that edge (robustness widths are
  measured there and must be bracketed on both sides).

A side is bracketed without growing where every run at its edge value diverged, where the next
value would leave the axis's domain, or after N steps on that side (then the cell is flagged as
on an edge wherever it is used). A grown axis gets every combination with the cell's other axis
values and every seed, so the cell's grid stays a full product. Growth is a function of the
records in the study folder alone: loading a study again grows it the same way, so sweeps,
harvests, dry runs and results agree on the runs a study has.

The level playing field: every optimizer starts from a grid of the same size; a grid grows only
where its optimum was not inside it, which is where the base grid disadvantaged that optimizer
(steps to target are a minimum over the grid, so growing one optimizer's grid can only help
that optimizer). The number of configurations per cell is reported beside every verdict.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np

from kfaclab.sweep.grid_axes import WIDTH_AXIS, next_value, scale_of
from kfaclab.sweep.spec import Run, RunList, Study, load_study, make_run
from kfaclab.train.record import read_record

REGION_TOLERANCE = 0.01  # "within one point" of the best final accuracy
FINISHED = ("completed", "diverged", "failed")


def load_grown(path: str | Path) -> Study:
    """The study of a spec with the runs bracketing has added from the records already there."""
    return grow(load_study(path))


def grow(study: Study) -> Study:
    """`study` with its bracketing runs: for each (optimizer, batch size) cell, as long as all its
    runs have finished and an axis needs a side grown, the runs of the next grid step. Sets
    `bracket_cells` to what each cell's check found. A study without `bracket` is returned as is."""
    if not study.bracket:
        return study
    reader = _Records(study.directory)
    new: list = []
    cells: dict = {}
    for run in study.runs:
        if run.config.batch_schedule == "fixed":
            cells.setdefault((run.config.optimizer, run.config.batch_size), []).append(run)
    report = {}
    for (opt, b), cell in cells.items():
        added, status = _grow_cell(study, opt, b, cell, reader)
        new += added
        report[(opt, b)] = status
    runs = study.runs + new if isinstance(study.runs, RunList) else list(study.runs) + new
    return dataclasses.replace(study, runs=runs, bracket_cells=report)


def _grow_cell(study: Study, opt: str, b: int, cell: list, reader) -> tuple[list, dict]:
    limit, scales = study.bracket["max_steps"], study.bracket["scales"]
    axes = list(study.recipe["optimizers"][opt]["grid"])
    values = {a: sorted({float(r.grid_point[a]) for r in cell}) for a in axes}
    steps = {(a, side): 0 for a in axes for side in ("low", "high")}
    for a in axes:  # steps taken earlier show in the values beyond the spec's grid
        base = [float(v) for v in study.recipe["optimizers"][opt]["grid"][a]]
        steps[(a, "low")] = sum(v < min(base) for v in values[a])
        steps[(a, "high")] = sum(v > max(base) for v in values[a])
    added: list[Run] = []
    seeds = sorted({r.config.seed for r in cell})
    while True:
        records = [reader.get(r) for r in cell]
        if any(rec is None or rec.get("status") not in FINISHED for rec in records):
            return added, {"state": "running", "configurations": _count(cell), "steps": _steps_taken(steps),
                           "edges": []}
        need = sides_to_grow(cell, records, axes)
        grow_now, edges = [], []
        for a, side in need:
            v = next_value(values[a], side, scale_of(a, scales))
            if v is None or _all_diverged_at(cell, records, a, values[a][0 if side == "low" else -1]):
                continue  # bracketed by the axis's bound or by divergence
            if steps[(a, side)] >= limit:
                edges.append(f"{a} {side}")
                continue
            grow_now.append((a, side, v))
        if not grow_now:
            return added, {"state": "bracketed" if not edges else "edge", "configurations": _count(cell),
                           "steps": _steps_taken(steps), "edges": edges}
        for a, side, v in grow_now:
            values[a] = sorted(values[a] + [v])
            steps[(a, side)] += 1
        have = {_key(r.grid_point, axes) for r in cell}
        for combo in itertools.product(*(values[a] for a in axes)):
            point = dict(zip(axes, combo))
            if _key(point, axes) in have:
                continue
            point = {a: _spec_value(study, opt, a, v) for a, v in point.items()}
            for seed in seeds:
                run = make_run(study.recipe, opt, point, b, seed)
                cell.append(run)
                added.append(run)


def sides_to_grow(cell: list, records: list, axes: list) -> list[tuple[str, str]]:
    """The (axis, side) pairs whose edge holds the cell's optimum (see the module's text), from
    finished runs' records."""
    configs = sorted({_key(r.grid_point, axes) for r in cell})
    index = {c: i for i, c in enumerate(configs)}
    n_targets = max((len(rec.get("targets") or []) for rec in records if rec), default=0)
    cross = [[[] for _ in range(n_targets)] for _ in configs]  # per config, per target: crossings
    acc = [[] for _ in configs]
    for run, rec in zip(cell, records):
        i = index[_key(run.grid_point, axes)]
        if rec.get("status") == "failed":
            continue
        for t, entry in enumerate(rec.get("targets") or []):
            cross[i][t].append(entry["iteration"] if entry.get("reached") else math.inf)
        final = (rec.get("final") or {}).get("test_accuracy")
        acc[i].append(0.0 if rec.get("status") == "diverged" or final is None else float(final))
    sets = []
    for t in reversed(range(n_targets)):  # the highest target some configuration reaches
        med = np.array([np.median(c[t]) if c[t] else math.inf for c in cross])
        if np.isfinite(med).any():
            sets.append({configs[i] for i in np.flatnonzero(med == med.min())})
            break
    mean = np.array([np.mean(a) if a else -math.inf for a in acc])
    if np.isfinite(mean).any():
        best = mean.max()
        sets.append({configs[i] for i in np.flatnonzero(mean == best)})
    out = set()
    for j, a in enumerate(axes):
        vals = sorted({c[j] for c in configs})
        lo, hi = vals[0], vals[-1]
        for s in sets:
            if not any(lo < c[j] < hi for c in s):
                out |= {(a, "low")} if any(c[j] == lo for c in s) else set()
                out |= {(a, "high")} if any(c[j] == hi for c in s) else set()
        if a == WIDTH_AXIS and np.isfinite(mean).any():
            top = configs[int(np.argmax(mean))]
            row = [i for i, c in enumerate(configs) if all(c[k] == top[k] for k in range(len(axes)) if k != j)]
            good = [configs[i][j] for i in row if mean[i] >= mean.max() - REGION_TOLERANCE - 1e-12]
            if lo in good:
                out.add((a, "low"))
            if hi in good:
                out.add((a, "high"))
    return sorted(out)


def _all_diverged_at(cell, records, axis, value) -> bool:
    at = [rec for r, rec in zip(cell, records) if float(r.grid_point[axis]) == value]
    return bool(at) and all(rec.get("status") == "diverged" for rec in at)


def _key(point: dict, axes: list) -> tuple:
    return tuple(float(point[a]) for a in axes)


def _spec_value(study: Study, opt: str, axis: str, v: float):
    """A grid value as the spec writes it (an int stays an int), so run ids match the spec's runs."""
    for given in study.recipe["optimizers"][opt]["grid"][axis]:
        if float(given) == v:
            return given
    return v


def _count(cell) -> int:
    return len({tuple(sorted(r.grid_point.items())) for r in cell})


def _steps_taken(steps: dict) -> dict:
    return {f"{a} {side}": n for (a, side), n in steps.items() if n}


class _Records:
    """Records of the study folder, read once each (a malformed one counts as not finished)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.cache: dict = {}

    def get(self, run: Run):
        if run.name not in self.cache:
            rec, problem = read_record(self.directory / f"{run.name}.json")
            ok = rec is not None and problem is None and rec.get("run_id") == run.run_id
            if not ok and (self.directory / f"{run.name}.failed.json").exists():
                rec = {"status": "failed"}
                ok = True
            self.cache[run.name] = rec if ok else None
        return self.cache[run.name]
