"""The bootstrap under rules versions 1-2: steps to a target resampled over configurations and seeds.

A cell is one optimizer at one batch size: every configuration of its grid with its seeds' steps
to the target. bootstrap_steps resamples configurations, then seeds within each, and takes the
best configuration's mean (book/verdicts.md, versions 1-2); _Steps holds those replicates for a
study at its primary target, for the claims on steps and on the critical batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kfaclab.results.claims import LEVEL, N_BOOT, REGION_TOLERANCE, SEED
from kfaclab.results.study import FINISHED, StudyResults


def crossings(results: StudyResults, kind: str, target: float) -> pd.Series:
    """Per run name: the iteration of its first evaluation meeting the target (test accuracy >=
    target for kind 'accuracy', running training loss <= target for 'loss'); inf for a finished
    run that never met it. Runs without a result (failed, pending) are absent."""
    ev = results.evals
    finished = results.runs.loc[results.runs["status"].isin(FINISHED), "name"]
    if kind == "accuracy":
        hit = ev[ev["test_accuracy"] >= target]
    elif kind == "loss":
        hit = ev[ev["train_loss"].notna() & (ev["train_loss"] <= target)]
    else:
        raise ValueError(f"kind must be 'accuracy' or 'loss', got {kind!r}")
    first = hit.groupby("name")["iteration"].min()
    return pd.Series({n: float(first.get(n, math.inf)) for n in finished}, dtype=float)


@dataclass
class Cell:
    """The runs of one optimizer at one batch size: crossings per configuration (rows) and seed
    (columns, NaN where a seed has no result), for one target."""
    values: np.ndarray  # (configurations, seeds): iteration, inf = never, nan = no run
    configs: list  # the grid point of each row

    def point(self) -> float:
        return _steps(self.values)


def _steps(values: np.ndarray) -> float:
    """Shallue's rule with seeds: the minimum over configurations of the median over seeds."""
    meds = [np.median(v[~np.isnan(v)]) for v in values if (~np.isnan(v)).any()]
    best = min(meds) if meds else math.inf
    return best if math.isfinite(best) else math.nan


def cells(results: StudyResults, kind: str, target: float) -> dict:
    """(optimizer, batch size) -> Cell for this target."""
    cross = crossings(results, kind, target)
    runs = results.runs[results.runs["name"].isin(cross.index)]
    hp = [c for c in runs.columns if c.startswith("hp_")]
    out = {}
    for (opt, b), g in runs.groupby(["optimizer", "batch_size"], sort=True, observed=True):
        keys = [c for c in hp if g[c].notna().all()]
        points = g[keys].astype(str).agg("|".join, axis=1) if keys else pd.Series("", index=g.index)
        seeds = sorted(g["seed"].unique())
        configs = list(dict.fromkeys(points))
        values = np.full((len(configs), len(seeds)), np.nan)
        for (_, row), p in zip(g.iterrows(), points):
            values[configs.index(p), seeds.index(row["seed"])] = cross[row["name"]]
        out[(opt, int(b))] = Cell(values, configs)
    return out


def bootstrap_steps(cell: Cell, rng: np.random.Generator, n: int = N_BOOT) -> np.ndarray:
    """`n` replicates of the cell's steps to target: configurations resampled with replacement,
    then within each drawn configuration its seeds (those with a result) with replacement."""
    rows = [v[~np.isnan(v)] for v in cell.values]
    rows = [r for r in rows if len(r)]
    if not rows:
        return np.full(n, np.nan)
    width = max(len(r) for r in rows)
    padded = np.array([np.resize(r, width) for r in rows])  # each row cycles its own values
    counts = np.array([len(r) for r in rows])
    c = len(rows)
    pick = rng.integers(0, c, size=(n, c))
    seed_idx = (rng.random((n, c, width)) * counts[pick][..., None]).astype(int)
    draws = padded[pick[..., None], seed_idx]  # (n, c, width)
    # Each drawn configuration keeps its own number of seeds: columns past it are ignored.
    mask = np.arange(width)[None, None, :] < counts[pick][..., None]
    draws = np.where(mask, draws, np.nan)
    with np.errstate(invalid="ignore"):
        meds = np.nanmedian(draws, axis=2)
    best = meds.min(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def _interval(samples: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    ok = samples[np.isfinite(samples)]
    if not len(ok):
        return (None, None)
    q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    lo, hi = np.quantile(ok, q)
    return float(lo), float(hi)


def _slope(x, y) -> float:
    x, y = np.log2(np.asarray(x, float)), np.asarray(y, float)
    keep = np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    x, y = x[keep], y[keep]
    return float(np.polyfit(x, y, 1)[0])


def primary_target(results: StudyResults, optimizers=("sgd", "kfac")) -> float | None:
    """The highest accuracy target that every one of `optimizers` reaches at three or more batch
    sizes in the point estimate."""
    for t in sorted(results.targets, reverse=True):
        cs = cells(results, "accuracy", t)
        if all(sum(math.isfinite(c.point()) for (o, _), c in cs.items() if o == opt) >= 3 for opt in optimizers):
            return t
    return None


class _Steps:
    """Steps to the primary target per optimizer and batch size, with aligned bootstrap replicates
    (each replicate resamples every cell independently; replicate k of every cell together is
    one replicate of the study)."""

    def __init__(self, results: StudyResults, target: float, n: int = N_BOOT, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.target = target
        self.cells = cells(results, "accuracy", target)
        self.point = {k: c.point() for k, c in self.cells.items()}
        self.boot = {k: bootstrap_steps(c, rng, n) for k, c in self.cells.items()}
        self.n = n

    def batch_sizes(self, opt) -> list[int]:
        return sorted(b for (o, b) in self.cells if o == opt)

    def curve(self, opt, which="point"):
        bs = self.batch_sizes(opt)
        if which == "point":
            return bs, np.array([self.point[(opt, b)] for b in bs])
        return bs, np.stack([self.boot[(opt, b)] for b in bs], axis=1)  # (n, len(bs))


def fit_b_crit_rows(bs, steps: np.ndarray) -> np.ndarray:
    """B_crit of S(B) = S_min (1 + B_crit / B) fitted to every row of `steps` (replicates x batch
    sizes) at once (`fit_steps_rows`). NaN where a row has fewer than three finite steps or its
    B_crit is not identified (at the search's edge, or beyond the largest batch size the row has).
    The same function as rules version 3's (kfaclab.results.statistics.b_crit)."""
    from kfaclab.results.statistics import b_crit

    return b_crit(bs, steps)


def _resample_configs(values: np.ndarray, rng, n: int) -> np.ndarray:
    """(n, configurations) of per-configuration mean accuracy over resampled seeds, configurations
    resampled with replacement; a configuration without any accuracy stays nan (outside any region)."""
    c, s = values.shape
    pick = rng.integers(0, c, size=(n, c))
    seed_idx = rng.integers(0, s, size=(n, c, s))
    draws = values[pick[..., None], seed_idx]
    with np.errstate(invalid="ignore"):
        return np.nanmean(draws, axis=2) if s else np.full((n, c), np.nan)


def _share_within(means: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Share of configurations (last axis) within REGION_TOLERANCE of `best`; nan counts as outside."""
    with np.errstate(invalid="ignore"):
        inside = means >= (best[..., None] - REGION_TOLERANCE - 1e-12)
    return inside.sum(axis=-1) / means.shape[-1]
