"""Steps to a target against batch size: Shallue et al.'s rule, the ideal line, the scaling
efficiency, and the fit S(B) = S_min (1 + B_crit / B) of McCandlish et al.

Steps-to-target for (optimizer, batch size, target) is the minimum over the tuned grid of the
first evaluated iteration at which test accuracy reached the target (Shallue et al. 2018). It
is resolved to the evaluation cadence of the runs: a run evaluated every k iterations reports
the first evaluation at or after the true crossing. Within one batch size, epochs and examples
are proportional to iterations, so the same configuration is best in all three units;
seconds and propagations are minimized on their own (another configuration may win there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfaclab.results.study import FINISHED, StudyResults, loss_key

UNITS = {"iterations": "iteration", "epochs": "epoch", "examples": "examples", "seconds": "seconds",
         "propagations": "propagations"}


def steps_to_target(results: StudyResults, targets=None, kind: str = "accuracy") -> pd.DataFrame:
    """One row per (optimizer, batch size, target): the minimum over the grid, in each unit, of
    each configuration's median over its seeds of the first crossing (a seed that never crossed
    counts as never, so a configuration reaches a target when most of its seeds do:
    book/verdicts.md); with one seed, the minimum over the grid of the first crossings. Also:
    the best configuration (by iterations; ties go to the smallest learning rate, then the
    smallest values of the other grid axes), the range of its seeds' crossings in iterations
    (`seed_low`, `seed_high`), and how many runs the row rests on (finished, reached, diverged,
    failed or pending). Rows whose target no configuration reached have NaN steps.

    `kind` "accuracy" races the test-accuracy targets (default: the study's), "loss" the
    training-loss targets (default: the study's `loss_targets`); the `kind` column says which."""
    df = results.runs
    if kind not in ("accuracy", "loss"):
        raise ValueError(f"kind must be 'accuracy' or 'loss', got {kind!r}")
    if targets is None:
        targets = results.targets if kind == "accuracy" else results.loss_targets
    hp = [c for c in df.columns if c.startswith("hp_")]
    rows = []
    for (opt, b), group in df.groupby(["optimizer", "batch_size"], sort=True, observed=True):
        finished = group[group["status"].isin(FINISHED)]
        keys = [c for c in hp if finished[c].notna().all()] if len(finished) else []
        for t in targets:
            key = f"{t:g}" if kind == "accuracy" else loss_key(t)
            row = {"optimizer": opt, "batch_size": int(b), "kind": kind, "target": t, "runs": len(group),
                   "finished": len(finished), "diverged": int((group["status"] == "diverged").sum()),
                   "failed": int((group["status"] == "failed").sum()),
                   "pending": int(group["status"].isin(["pending", "interrupted"]).sum())}
            col = f"iteration_to_{key}"
            row["reached"] = int(finished[col].notna().sum()) if col in finished else 0
            medians = _config_medians(finished, keys, key) if col in finished and len(finished) else pd.DataFrame()
            for unit in UNITS:
                values = medians[unit] if unit in medians else pd.Series(dtype=float)
                row[unit] = float(values.min()) if np.isfinite(values).any() else np.nan
            row["best_run"], row["seed_low"], row["seed_high"] = None, np.nan, np.nan
            if len(medians) and np.isfinite(medians["iterations"]).any():
                best = medians[medians["iterations"] == medians["iterations"].min()].sort_values(keys).iloc[0]
                row.update({k: best[k] for k in keys})
                row["best_run"] = best["best_run"]
                row["seed_low"], row["seed_high"] = best["seed_low"], best["seed_high"]
            rows.append(row)
    return pd.DataFrame(rows)


def _config_medians(finished: pd.DataFrame, keys: list, target_key: str) -> pd.DataFrame:
    """Per configuration: the median over its seeds of the first crossing in each unit (inf for a
    seed that never crossed), the range of the seeds' crossings in iterations, and the run of the
    seed nearest the median (the first such seed on a tie). Configurations come in the order of
    their first run. Grouped once for all units: steps_to_target calls this per (optimizer,
    batch size, target), hundreds of times per study (a loop over groups took half a chapter)."""
    if keys:
        ids = pd.Series(finished.groupby(keys, dropna=False, sort=False).ngroup().to_numpy(), index=finished.index)
    else:
        ids = pd.Series(0, index=finished.index)
    first = ~ids.duplicated()
    out = finished.loc[first, keys].copy() if keys else pd.DataFrame(index=finished.index[first])
    out.index = ids[first].to_numpy()
    for unit, field in UNITS.items():
        c = f"{field}_to_{target_key}"
        v = finished[c].astype(float).fillna(np.inf) if c in finished else pd.Series(np.inf, index=finished.index)
        med = v.groupby(ids).median()
        out[unit] = med.where(np.isfinite(med), np.nan)
    its = finished[f"iteration_to_{target_key}"].astype(float)
    out["seed_low"], out["seed_high"] = its.groupby(ids).min(), its.groupby(ids).max()
    reached = its.notna()
    centre = out["iterations"].where(np.isfinite(out["iterations"]), its[reached].groupby(ids[reached]).median())
    dev = (its[reached] - centre.reindex(ids[reached]).to_numpy()).abs()
    nearest = dev.groupby(ids[reached]).idxmin()
    out["best_run"] = finished["name"].reindex(nearest.reindex(out.index).to_numpy()).to_numpy()
    out["best_run"] = out["best_run"].where(out.index.isin(nearest.index), None)
    return out.sort_index().reset_index(drop=True)


# Units in which perfect scaling is flat: the work per example does not change with B.
PER_EXAMPLE_UNITS = ("epochs", "examples", "propagations")


def with_ideal_scaling(table: pd.DataFrame, unit: str = "iterations") -> pd.DataFrame:
    """Adds `ideal`, the perfect-scaling line from the smallest batch size that reached the
    target, and `efficiency` = ideal / measured (1 = perfect). Perfect scaling halves the steps
    per doubling of B; so it halves iterations and (with a step time that does not grow with
    B, as on ideal parallel hardware) seconds, and keeps epochs, examples and propagations
    constant."""
    out = []
    for _, g in table.groupby(["optimizer", "target"], sort=False):
        g = g.sort_values("batch_size").copy()
        ok = g[g[unit].notna()]
        if len(ok):
            b0, s0 = ok["batch_size"].iloc[0], ok[unit].iloc[0]
            ideal = s0 if unit in PER_EXAMPLE_UNITS else s0 * b0 / g["batch_size"]
            g["ideal"] = np.where(g["batch_size"] >= b0, ideal, np.nan)
        else:
            g["ideal"] = np.nan
        g["efficiency"] = g["ideal"] / g[unit]
        out.append(g)
    return pd.concat(out, ignore_index=True) if out else table.assign(ideal=np.nan, efficiency=np.nan)


# ---------------------------------------------------------------------- critical batch size

def fit_steps_curve(batch_sizes, steps) -> dict:
    """Least squares in log space of log S = log S_min + log(1 + B_crit / B).

    For fixed B_crit the best log S_min is a mean, so the fit is a one-dimensional search over
    log B_crit (a grid, then golden-section refinement): no optimizer package needed, and no
    local minimum is missed. Returns s_min, b_crit, e_min = S_min B_crit (the fewest examples,
    from E(B) = E_min (1 + B / B_crit)) and the residual (RMS in log S)."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    keep = np.isfinite(s) & (s > 0)
    b, s = b[keep], s[keep]
    if len(b) < 3:
        raise ValueError(f"need steps at 3 or more batch sizes to fit S_min and B_crit, got {len(b)}")
    logs = np.log(s)

    def loss(log_bc):
        shape = np.log1p(np.exp(log_bc) / b)
        log_smin = np.mean(logs - shape)
        return np.mean((logs - log_smin - shape) ** 2), log_smin

    lo, hi = np.log(b.min()) - 8, np.log(b.max()) + 8  # B_crit far outside the data is a plateau
    grid = np.linspace(lo, hi, 801)
    values = [loss(x)[0] for x in grid]
    i = int(np.argmin(values))
    a, c = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        x1, x2 = c - phi * (c - a), a + phi * (c - a)
        if loss(x1)[0] < loss(x2)[0]:
            c = x2
        else:
            a = x1
    log_bc = (a + c) / 2
    err, log_smin = loss(log_bc)
    s_min, b_crit = float(np.exp(log_smin)), float(np.exp(log_bc))
    return {"s_min": s_min, "b_crit": b_crit, "e_min": s_min * b_crit, "rms_log_residual": float(np.sqrt(err)),
            "at_edge": bool(i in (0, len(grid) - 1))}


def steps_curve(fit: dict, batch_sizes) -> np.ndarray:
    b = np.asarray(batch_sizes, dtype=float)
    return fit["s_min"] * (1 + fit["b_crit"] / b)


def grid_loss(grid: np.ndarray, b: np.ndarray, logs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """fit_steps_rows' loss at every grid point for every row, (rows, k): the weighted variance of
    log steps less the curve's shape, expanded into matrix products (var(L - S) = E[L^2] -
    2E[LS] + E[S^2] - (E[L] - E[S])^2 with each row's weights), so that no (rows, k, batch
    sizes) array is made: the bootstrap's thousands of rows over 801 points took most of a
    verdict's time. The shapes are centred first, which keeps the subtraction exact to ~1e-12."""
    shape = np.log1p(np.exp(grid)[:, None] / b)  # (k, B)
    shape = shape - shape.mean(axis=1, keepdims=True)  # a constant per grid point: var unchanged
    count = np.maximum(w.sum(axis=1), 1)[:, None]
    wl = w * logs
    mean_l = wl.sum(axis=1)[:, None] / count
    mean_s = (w @ shape.T) / count
    second = (wl * logs).sum(axis=1)[:, None] - 2 * (wl @ shape.T) + w @ (shape ** 2).T
    return np.maximum(second / count - (mean_l - mean_s) ** 2, 0.0)


def fit_steps_rows(bs, steps: np.ndarray) -> dict:
    """`fit_steps_curve` for every row of `steps` (replicates x batch sizes) at once: the same
    least squares in log space over the same grid of log B_crit (spanning all of `bs`), then
    golden-section refinement. Returns arrays s_min, b_crit, whether the grid's minimum lay at
    its edge, and how many finite steps each row had (a fit needs three)."""
    b = np.asarray(bs, float)
    steps = np.atleast_2d(np.asarray(steps, float))
    ok = np.isfinite(steps) & (steps > 0)
    w = ok.astype(float)
    logs = np.where(ok, np.log(np.where(ok, steps, 1.0)), 0.0)
    count = w.sum(axis=1)

    def loss(log_bc):  # log_bc: (rows, k) -> ((rows, k) mean squared residual, (rows, k) log S_min)
        shape = np.log1p(np.exp(log_bc)[..., None] / b)  # (rows, k, B)
        resid = logs[:, None, :] - shape
        mean = (resid * w[:, None, :]).sum(-1) / np.maximum(count, 1)[:, None]
        return (((resid - mean[..., None]) ** 2) * w[:, None, :]).sum(-1) / np.maximum(count, 1)[:, None], mean

    lo, hi = np.log(b.min()) - 8, np.log(b.max()) + 8
    grid = np.linspace(lo, hi, 801)
    i = grid_loss(grid, b, logs, w).argmin(axis=1)
    a, c = grid[np.maximum(i - 1, 0)], grid[np.minimum(i + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(80):
        x1, x2 = c - phi * (c - a), a + phi * (c - a)
        f1, f2 = loss(x1[:, None])[0][:, 0], loss(x2[:, None])[0][:, 0]
        c = np.where(f1 < f2, x2, c)
        a = np.where(f1 < f2, a, x1)
    log_bc = (a + c) / 2
    _, log_smin = loss(log_bc[:, None])
    return {"s_min": np.exp(log_smin[:, 0]), "b_crit": np.exp(log_bc), "at_edge": (i == 0) | (i == len(grid) - 1),
            "count": count}


def critical_batch_size(results: StudyResults, optimizer: str, target: float, unit: str = "iterations",
                        n_boot: int = 200, seed: int = 0, level: float = 0.68) -> dict:
    """The fit for one optimizer and target, with a bootstrap interval over grid points: each
    replicate resamples, per batch size, the grid's configurations (each at its median over
    seeds, as steps_to_target counts them) with replacement, takes Shallue's minimum again and
    refits. Returns the fit, the interval of S_min and B_crit at `level`,
    and the share of replicates that could be fitted."""
    df = results.runs
    df = df[(df["optimizer"] == optimizer) & df["status"].isin(FINISHED)]
    col = f"{UNITS[unit]}_to_{target:g}"
    if col not in df:
        raise ValueError(f"no runs of {optimizer} record target {target:g}")
    # Per batch size, each configuration's median over its seeds (as steps_to_target and the
    # verdicts count steps); the bootstrap resamples these configurations.
    keys = [c for c in df.columns if c.startswith("hp_") and df[c].notna().all()]
    crossing = df[col].astype(float).fillna(np.inf)  # a seed that never crossed counts as never
    medians = crossing.groupby([df["batch_size"], *[df[k] for k in keys]]).median()
    groups = {int(b): np.where(np.isfinite(m.to_numpy()), m.to_numpy(), np.nan)
              for b, m in medians.groupby(level=0)}
    point = {b: np.nanmin(v) if np.isfinite(v).any() else np.nan for b, v in groups.items()}
    bs = sorted(point)
    fit = fit_steps_curve(bs, [point[b] for b in bs])
    rng = np.random.default_rng(seed)
    rows = np.full((n_boot, len(bs)), np.nan)
    for j, b in enumerate(bs):
        v = groups[b]
        draws = v[rng.integers(0, len(v), size=(n_boot, len(v)))]
        with np.errstate(invalid="ignore"):
            rows[:, j] = np.where(np.isfinite(draws).any(axis=1), np.nanmin(np.where(np.isfinite(draws), draws, np.inf),
                                                                           axis=1), np.nan)
    fits = fit_steps_rows(bs, rows)
    keep = fits["count"] >= 3  # as fit_steps_curve: three or more batch sizes with steps
    reps = list(zip(fits["s_min"][keep], fits["b_crit"][keep]))
    q = [(1 - level) / 2, (1 + level) / 2]
    reps = np.array(reps) if reps else np.full((0, 2), np.nan)
    fit.update(optimizer=optimizer, target=target, unit=unit, batch_sizes=bs, steps=[point[b] for b in bs],
               bootstrap=len(reps) / n_boot, level=level,
               s_min_interval=tuple(np.quantile(reps[:, 0], q)) if len(reps) else (np.nan, np.nan),
               b_crit_interval=tuple(np.quantile(reps[:, 1], q)) if len(reps) else (np.nan, np.nan))
    return fit
