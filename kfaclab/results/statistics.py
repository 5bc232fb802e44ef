"""The verdict statistics of rules version 3 as array functions (book/verdicts.md).

Each takes the point estimate and the bootstrap replicates in one array (rows: the estimate or
a replicate; columns: batch sizes), so that the verdicts (kfaclab.results.verdicts_v3) and the
coverage simulation (kfaclab.results.coverage) compute exactly the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from kfaclab.results.scaling import fit_steps_rows


def slopes(bs, y: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of `y` against log2(bs), over the row's finite entries
    (NaN where a row has fewer than three)."""
    x = np.log2(np.asarray(bs, float))
    y = np.atleast_2d(np.asarray(y, float))
    ok = np.isfinite(y)
    n = ok.sum(axis=1)
    xs = np.where(ok, x, 0.0)
    ys = np.where(ok, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = xs.sum(1) / n
        my = ys.sum(1) / n
        cov = (np.where(ok, (x - mx[:, None]) * (y - my[:, None]), 0.0)).sum(1)
        var = (np.where(ok, (x - mx[:, None]) ** 2, 0.0)).sum(1)
        out = cov / var
    return np.where(n >= 3, out, np.nan)


def log2_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log2(np.asarray(num, float) / np.asarray(den, float))


def efficiency(bs, steps: np.ndarray, i0: int, i1: int) -> np.ndarray:
    """Scaling efficiency at batch index i1 against the ideal line from i0 (ideal steps halve per
    doubling): steps[i0] x bs[i0] / bs[i1] / steps[i1]."""
    steps = np.atleast_2d(np.asarray(steps, float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps[:, i0] * bs[i0] / bs[i1] / steps[:, i1]


def b_crit(bs, steps: np.ndarray) -> np.ndarray:
    """Fitted B_crit of S(B) = S_min (1 + B_crit / B) per row; NaN where a row has fewer than
    three finite steps or the fit does not identify B_crit (at the search's edge, or beyond the
    largest batch size the row has)."""
    b = np.asarray(bs, float)
    steps = np.atleast_2d(np.asarray(steps, float))
    fit = fit_steps_rows(b, steps)
    ok = np.isfinite(steps) & (steps > 0)
    largest = np.where(ok, b, -np.inf).max(axis=1)
    bad = (fit["count"] < 3) | fit["at_edge"] | (fit["b_crit"] > largest)
    return np.where(bad, np.nan, fit["b_crit"])


def used_batch_sizes(point_a: np.ndarray, point_b: np.ndarray | None = None) -> list[int]:
    """Indices of the batch sizes where the point estimates (of one or two optimizers) exist."""
    ok = np.isfinite(np.asarray(point_a, float))
    if point_b is not None:
        ok &= np.isfinite(np.asarray(point_b, float))
    return [int(i) for i in np.flatnonzero(ok)]


def steps_statistics(bs, sgd: np.ndarray, kfac: np.ndarray) -> dict:
    """Rules (a), (b), (c), (g) and (h) on steps to target (rows: estimate first, then replicates;
    columns: batch sizes `bs`). Returns statistic -> (rows,) array, plus the batch indices each
    used; a statistic that cannot be formed from the estimate is absent."""
    bs = list(bs)
    sgd, kfac = np.atleast_2d(sgd), np.atleast_2d(kfac)
    out: dict = {}
    both = used_batch_sizes(sgd[0], kfac[0])
    ratio = log2_ratio(kfac, sgd)
    if len(both) >= 3:
        out["a"] = slopes([bs[i] for i in both], ratio[:, both])
    if both:
        if both[0] == 0:
            out["g"] = ratio[:, 0]
        out["h"] = ratio[:, both[-1]]
    for name, steps in (("sgd", sgd), ("kfac", kfac)):
        own = used_batch_sizes(steps[0])
        if own and bs[own[-1]] >= 8 * bs[own[0]]:
            out[f"b_{name}"] = efficiency(bs, steps, own[0], own[-1])
    # each optimizer's own critical batch size, over its own batch sizes: (c) is their ratio, and
    # the critical-batch chapter shows each (log2) with an interval whose coverage is measured too
    fits = {name: b_crit(bs, steps) for name, steps in (("sgd", sgd), ("kfac", kfac))
            if len(used_batch_sizes(steps[0])) >= 3}
    if len(fits) == 2:
        out["c"] = log2_ratio(fits["kfac"], fits["sgd"])
    for name, fit in fits.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"bcrit_{name}"] = np.log2(fit)
    return out


def log_b_crit(bs, steps: np.ndarray) -> np.ndarray:
    """log2 of each row's fitted B_crit (NaN where b_crit does not identify it)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log2(b_crit(bs, steps))


def width_statistics(bs, w_sgd: np.ndarray, w_kfac: np.ndarray) -> dict:
    """Rules (d) and (e) on robustness widths under one budget (rows: estimate then replicates;
    columns: batch sizes): the slope per doubling of each optimizer's width, and the mean over
    batch sizes of K-FAC's width minus SGD's."""
    w_sgd, w_kfac = np.atleast_2d(w_sgd), np.atleast_2d(w_kfac)
    out = {"d_sgd": slopes(bs, w_sgd), "d_kfac": slopes(bs, w_kfac)}
    both = used_batch_sizes(w_sgd[0], w_kfac[0])
    if both:
        with np.errstate(invalid="ignore"):
            out["e"] = np.mean(w_kfac[:, both] - w_sgd[:, both], axis=1)
    return out


def finite_or_none(v) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None
