"""Intervals for the verdicts of rules version 3 (book/verdicts.md), chosen by measured coverage.

Rules versions 1 and 2 took the 90% percentile interval of a bootstrap that resampled a grid's
configurations with replacement. For a statistic built on a grid minimum (steps to target are
the minimum over the grid of each configuration's median over seeds) that interval sits on its
own estimate: a resample can only lose the best configuration, never find a better one. Version 3:

- keeps the grid as it was run (the configurations are a design, not a sample) and resamples the
  noise a rerun would change, the seeds. Three seeds per configuration say little about their own
  spread, so the noise is **pooled over the cell's configurations**: a replicate redraws each
  configuration's seeds around its own centre (median log crossing; mean accuracy) from the
  residuals of all configurations of that optimizer and batch size (a seed that never crossed
  stays never with the configuration's own share of such seeds);
- takes the **hull** of the percentile and the basic (reverse percentile) intervals of the
  replicates, [min(q_lo, 2t - q_hi), max(q_hi, 2t - q_lo)]: the percentile interval is right when
  the replicates lie around the estimate as the estimate lies around the truth, the basic one when
  they lie reflected (a minimum of noisy values is biased, and so are its replicates), and the
  hull does not bet on which;
- reports the Monte-Carlo error of each end of the interval (the spread of that end over ten
  disjoint blocks of the replicates, divided by the square root of ten): a verdict whose interval
  end lies within that error of a threshold is not resolved.

The choice is not argued but measured: `kfaclab.results.coverage` generates synthetic studies
with known truth and counts how often each method's interval covers it (tests/test_coverage.py
requires 85% of nominal 90% for every statistic, and fails for the percentile bootstrap of the
minimum, with or without resampled configurations).
"""

from __future__ import annotations

import math

import numpy as np

LEVEL = 0.90
N_BOOT = 1000
BLOCKS = 10  # disjoint blocks of replicates for the Monte-Carlo error of an interval's ends
METHODS = ("hull", "basic", "percentile")
# What the verdicts of version 3 use (and what tests/test_coverage.py measures): change either and
# the coverage test says whether the verdicts' intervals still cover the truth.
METHOD = "hull"
REPLICATES = "pooled"  # pooled | seeds (each configuration's own seeds)


def seed_replicates(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, configurations, seeds) resampled crossings or accuracies: each configuration keeps its
    own seeds with a result (NaN: none) and draws as many of them with replacement."""
    values = np.asarray(values, float)
    c, s = values.shape
    have = ~np.isnan(values)
    counts = have.sum(axis=1)
    order = np.argsort(~have, axis=1, kind="stable")  # the seeds with a result first
    packed = np.take_along_axis(values, order, axis=1)
    u = rng.random((n, c, s))
    idx = np.minimum((u * np.maximum(counts, 1)[None, :, None]).astype(int), np.maximum(counts - 1, 0)[None, :, None])
    draws = np.take_along_axis(np.broadcast_to(packed, (n, c, s)), idx, axis=2)
    mask = (np.arange(s)[None, None, :] < counts[None, :, None])
    return np.where(mask, draws, np.nan)


def pooled_step_replicates(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) replicates of Shallue's minimum for one cell (configurations x seeds of crossings;
    inf: never; NaN: no run). Each configuration keeps its centre (median log crossing of its
    seeds that crossed) and its share of seeds that never crossed; its seeds are redrawn from the
    residuals pooled over the cell's configurations with two or more crossings, scaled by
    sqrt(s / (s - 1)) (residuals about a sample's own centre are smaller than about the truth)."""
    v = np.asarray(values, float)
    c, s = v.shape
    runs = ~np.isnan(v)
    fin = np.isfinite(v)
    logs = np.where(fin, np.log(np.where(fin & (v > 0), v, 1.0)), np.nan)
    with _quiet():
        centre = np.nanmedian(logs, axis=1)
    enough = fin.sum(axis=1) >= 2
    resid = (logs - centre[:, None])[fin & enough[:, None]]
    if len(resid):
        resid = resid * math.sqrt(s / max(s - 1, 1))
    else:
        resid = np.zeros(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        never = np.where(runs.sum(axis=1) > 0, (runs & ~fin).sum(axis=1) / np.maximum(runs.sum(axis=1), 1), 1.0)
    draws = centre[None, :, None] + rng.choice(resid, size=(n, c, s))
    gone = (rng.random((n, c, s)) < never[None, :, None]) | ~np.isfinite(centre)[None, :, None]
    x = np.where(gone, np.inf, np.exp(draws))
    x = np.where(runs[None], x, np.nan)  # a configuration keeps its number of seeds
    return min_of_medians(x)


def pooled_mean_replicates(values: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, configurations) replicates of each configuration's mean over seeds (accuracies,
    configurations x seeds; NaN: none): the mean plus normal noise with the residual variance
    pooled over the cell's configurations, divided by the configuration's number of seeds."""
    v = np.asarray(values, float)
    have = ~np.isnan(v)
    k = have.sum(axis=1)
    with _quiet():
        mean = np.nanmean(v, axis=1)
    dof = int(np.sum(np.maximum(k - 1, 0)))
    sq = np.nansum((v - mean[:, None]) ** 2)
    sd = math.sqrt(sq / dof) if dof else 0.0
    noise = rng.standard_normal((n, len(v))) * sd / np.sqrt(np.maximum(k, 1))[None, :]
    return mean[None, :] + noise


def step_replicates(values: np.ndarray, rng: np.random.Generator, n: int, how: str | None = None) -> np.ndarray:
    """(n,) replicates of a cell's steps to target by the verdicts' resampling (REPLICATES)."""
    how = how or REPLICATES
    if how == "pooled":
        return pooled_step_replicates(values, rng, n)
    if how == "seeds":
        return min_of_medians(seed_replicates(values, rng, n))
    raise ValueError(f"unknown replicates {how!r}; choose pooled or seeds")


def mean_replicates(values: np.ndarray, rng: np.random.Generator, n: int, how: str | None = None) -> np.ndarray:
    """(n, configurations) replicates of each configuration's mean over seeds (REPLICATES)."""
    how = how or REPLICATES
    if how == "pooled":
        return pooled_mean_replicates(values, rng, n)
    if how == "seeds":
        return np.nanmean(seed_replicates(values, rng, n), axis=2)
    raise ValueError(f"unknown replicates {how!r}; choose pooled or seeds")


def min_of_medians(draws: np.ndarray) -> np.ndarray:
    """Shallue's rule with seeds on (..., configurations, seeds): the minimum over configurations
    of the median over seeds (inf counts as never; NaN seeds are absent); NaN where no
    configuration has a finite median."""
    with np.errstate(invalid="ignore"), _quiet():
        med = np.nanmedian(draws, axis=-1)
    med = np.where(np.isnan(med), np.inf, med)
    best = med.min(axis=-1)
    return np.where(np.isfinite(best), best, np.nan)


def interval(estimate: float | None, samples: np.ndarray, method: str | None = None, level: float = LEVEL):
    """(low, high) at `level` from bootstrap replicates; (None, None) without an estimate or
    finite replicates."""
    method = method or METHOD
    ok = np.asarray(samples, float)
    ok = ok[np.isfinite(ok)]
    if estimate is None or not math.isfinite(estimate) or not len(ok):
        return (None, None)
    lo_q, hi_q = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    if method == "percentile":
        return float(lo_q), float(hi_q)
    if method == "basic":
        return float(2 * estimate - hi_q), float(2 * estimate - lo_q)
    if method == "hull":
        return float(min(lo_q, 2 * estimate - hi_q)), float(max(hi_q, 2 * estimate - lo_q))
    raise ValueError(f"unknown interval method {method!r}; choose from {', '.join(METHODS)}")


def monte_carlo_error(estimate: float | None, samples: np.ndarray, method: str | None = None,
                      level: float = LEVEL) -> float | None:
    """The Monte-Carlo standard error of the interval's ends: each end computed on BLOCKS disjoint
    blocks of the replicates, its standard deviation over blocks divided by sqrt(BLOCKS) (the
    larger of the two ends). None where the blocks cannot give it."""
    samples = np.asarray(samples, float)
    if estimate is None or not math.isfinite(estimate) or len(samples) < 2 * BLOCKS:
        return None
    ends = []
    for block in np.array_split(samples, BLOCKS):
        lo, hi = interval(estimate, block, method, level)
        if lo is None:
            return None
        ends.append((lo, hi))
    ends = np.array(ends)
    return float(ends.std(axis=0, ddof=1).max() / math.sqrt(BLOCKS))


def missing_share(samples: np.ndarray) -> float:
    samples = np.asarray(samples, float)
    return float(np.mean(~np.isfinite(samples))) if len(samples) else 1.0


class _quiet:
    """Silences numpy's warnings on all-NaN slices (a configuration without any seed)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
