"""How often a verdict's interval covers the truth, measured on synthetic studies.

A synthetic study is generated like a real one (rules version 3; a `Design` says which: the
miniature3 study's, by default, or the resnet-cpu study's): SGD and K-FAC on 4 x 4 grids
(learning rate x a second hyperparameter) at batch sizes 32 to 16,384, three seeds, crossings
seen only at 40 evaluations per run (so many configurations tie), a budget past which a
configuration never reaches the target, per-seed noise in the crossings (training noise) and in
the accuracies (training and test-set noise), and for K-FAC a KL clip that caps the effective
learning rate (so its learning-rate axis goes flat). Its truth is known exactly: steps to target
are the minimum over the grid of each configuration's noise-free crossing, seen at the
evaluations (the population median of the quantized crossing is the quantized noise-free one);
accuracies are the noise-free means. Each statistic of the verdicts (kfaclab.results.statistics)
is computed on the truth and on the noisy study with its interval, and `coverage` counts how
often the interval holds the truth.

The noise spans what the `miniature` study measured, and more: there the seed-to-seed standard
deviation of a configuration's log crossing (50% target) has a median of 0.07 for SGD and 0.06
for K-FAC (90th percentiles 0.11 and 0.14), and that of its final accuracy 0.22 and 0.28 points
(90th percentiles 0.36 and 0.53); the simulation draws them from 0.05-0.25 and 0.2-0.8 points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kfaclab.results import intervals
from kfaclab.results.intervals import (
    interval,
    mean_replicates,
    min_of_medians,
    step_replicates,
)
from kfaclab.results.statistics import steps_statistics, width_statistics
from kfaclab.results.width import widths

N_TRAIN, B0, EVALS, SEEDS = 50_000, 32, 40, 3
OPTIMIZERS = ("sgd", "kfac")


@dataclass(frozen=True)
class Design:
    """What a synthetic study is shaped like: its batch sizes, the stopping rule's E0, and each
    optimizer's grid (learning rates x values of the second axis; one value: the axis is held), and
    the stopping rule's B0 (the batch size whose budget is E0 epochs)."""
    batch_sizes: tuple
    e0: float
    lrs: tuple
    others: int
    b0: int = B0


# miniature3: 4 x 4 grids, batch sizes 32 to 16,384, E0 = 2 epochs.
MINIATURE3 = Design(tuple(32 * 2 ** k for k in range(10)), 2.0,
                    tuple(float(v) for v in 0.003 * (10 / 3) ** np.arange(4)), 4)
# resnet-cpu: three learning rates (the second axis held), batch sizes 32 to 8,192, E0 = 1 epoch.
RESNET_CPU = Design(tuple(32 * 2 ** k for k in range(9)), 1.0, (0.03, 0.1, 0.3), 1)
# gpu: three learning rates, batch sizes 128 to 4,096, B0 = 128 and E0 = 3 epochs.
GPU = Design(tuple(128 * 2 ** k for k in range(6)), 3.0, (0.05, 0.1, 0.2), 1, b0=128)
DESIGNS = {"miniature3": MINIATURE3, "resnet-cpu": RESNET_CPU, "gpu": GPU}
BATCH_SIZES = list(MINIATURE3.batch_sizes)


@dataclass
class Synthetic:
    """One synthetic study: per (optimizer, batch size), crossings and accuracies (configs x
    seeds), the grid (lr, other, x = log2 effective lr), and the truth."""
    crossings: dict
    accuracy: dict
    grid: dict
    true_steps: dict
    true_accuracy: dict
    design: Design = MINIATURE3


def budget_iterations(b: int, e0: float = MINIATURE3.e0, b0: int = B0) -> int:
    return max(1, round((math.log2(b / b0) + 1) * e0 * (N_TRAIN // b)))


def simulate(rng: np.random.Generator, design: Design = MINIATURE3) -> Synthetic:
    crossings, accuracy, grid, true_steps, true_acc = {}, {}, {}, {}, {}
    sizes = design.batch_sizes
    for opt in OPTIMIZERS:
        lrs = np.array(design.lrs)
        others = np.arange(float(design.others))
        lr, other = np.repeat(lrs, len(others)), np.tile(others, len(lrs))
        b_crit = math.exp(rng.uniform(math.log(150), math.log(3000)))
        kappa, kappa_u = rng.uniform(0.05, 0.4), rng.uniform(0.02, 0.3)
        sigma = rng.uniform(0.05, 0.25)  # per-seed noise of a crossing (log scale)
        acc_top = rng.uniform(0.48, 0.56)
        k_acc, k_acc_u = rng.uniform(0.002, 0.03), rng.uniform(0.001, 0.02)
        acc_noise = rng.uniform(0.002, 0.008)
        # the second axis's optimum: inside a 4-value grid; near the value a held axis sits at
        u_star = rng.uniform(0.5, 2.5) if design.others > 1 else rng.uniform(-0.5, 0.5)
        drift = rng.uniform(0.0, 0.5)  # the optimal learning rate moves this much (log2) per doubling
        for k, b in enumerate(sizes):
            budget = budget_iterations(b, design.e0, design.b0)
            spacing = max(1, budget // EVALS)
            last = budget_iterations(sizes[-1], design.e0, design.b0)
            s_opt = 0.25 * last * (1 + b_crit / b) / (1 + b_crit / sizes[-1])
            x = np.log2(lr)
            if opt == "kfac":  # the KL clip caps the effective learning rate
                cap = math.log2(lrs[1]) + rng.uniform(-0.5, 2.5)
                x = np.minimum(x, cap + 0.3 * (x - cap))
            x_star = rng.uniform(x.min() + 0.3, x.max() - 0.3) if x.max() - x.min() > 0.6 else x.mean()
            x_star += drift * (k - (len(sizes) - 1) / 2) * 0.1
            dist = kappa * (x - x_star) ** 2 + kappa_u * (other - u_star) ** 2
            T = s_opt * np.exp(dist)
            quant = lambda t: np.where(t <= budget, np.ceil(t / spacing) * spacing, np.inf)  # noqa: B023 (used in this iteration)
            true_steps[(opt, b)] = float(quant(T).min()) if np.isfinite(quant(T)).any() else math.nan
            noisy = T[:, None] * np.exp(sigma * rng.standard_normal((len(T), SEEDS)))
            crossings[(opt, b)] = quant(noisy)
            a = acc_top - k_acc * (x - x_star) ** 2 - k_acc_u * (other - u_star) ** 2
            true_acc[(opt, b)] = a
            accuracy[(opt, b)] = a[:, None] + acc_noise * rng.standard_normal((len(a), SEEDS))
            grid[(opt, b)] = (lr, other, x)
    return Synthetic(crossings, accuracy, grid, true_steps, true_acc, design)


def _steps_rows(syn: Synthetic, opt: str, rng, n: int, method: str) -> np.ndarray:
    """(1 + n, batch sizes): the estimate, then n replicates of steps to target."""
    rows = []
    for b in syn.design.batch_sizes:
        v = syn.crossings[(opt, b)]
        est = min_of_medians(v[None])[0]
        if method == "configs":  # rules versions 1 and 2: configurations and seeds resampled
            from kfaclab.results.bootstrap import Cell, bootstrap_steps

            reps = bootstrap_steps(Cell(v, list(range(len(v)))), rng, n)
        else:  # what the verdicts of version 3 resample (intervals.REPLICATES), or as asked
            reps = step_replicates(v, rng, n, method)
        rows.append(np.concatenate([[est], reps]))
    return np.stack(rows, axis=1)


def _width_rows(syn: Synthetic, opt: str, rng, n: int, method: str) -> np.ndarray:
    rows = []
    for b in syn.design.batch_sizes:
        lr, other, x = syn.grid[(opt, b)]
        acc = syn.accuracy[(opt, b)]
        reps = mean_replicates(acc, rng, n, "seeds" if method == "configs" else method)
        means = np.concatenate([acc.mean(axis=1)[None], reps])
        rows.append(widths(lr, other, x, means)[0])
    return np.stack(rows, axis=1)


def truth(syn: Synthetic) -> dict:
    sizes = list(syn.design.batch_sizes)
    sgd = np.array([[syn.true_steps[("sgd", b)] for b in sizes]])
    kfac = np.array([[syn.true_steps[("kfac", b)] for b in sizes]])
    out = {k: float(v[0]) for k, v in steps_statistics(sizes, sgd, kfac).items()}
    w = {o: np.array([[widths(*syn.grid[(o, b)], syn.true_accuracy[(o, b)][None])[0][0] for b in sizes]])
         for o in OPTIMIZERS}
    out.update({k: float(v[0]) for k, v in width_statistics(sizes, w["sgd"], w["kfac"]).items()})
    return out


def coverage(studies: int = 200, n: int = 400, seed: int = 0, replicates: str | None = None,
             interval_method: str | None = None, level: float = 0.90, design: str = "miniature3") -> dict:
    """Per statistic: {"covered": share of studies whose interval holds the truth, "studies": how
    many studies had the statistic in both truth and estimate, "missing": share of those where
    the interval could not be formed}. replicates: "pooled" (version 3: the grid as run, seed noise
    pooled over each cell's configurations), "seeds" (each configuration's own seeds resampled) or
    "configs" (versions 1 and 2: configurations and seeds resampled; widths then as "seeds").
    Both default to what the verdicts use (intervals.REPLICATES, intervals.METHOD). design: a
    name of DESIGNS, the shape of the studies simulated."""
    replicates = replicates or intervals.REPLICATES
    interval_method = interval_method or intervals.METHOD
    rng = np.random.default_rng(seed)
    shape = DESIGNS[design]
    sizes = list(shape.batch_sizes)
    hits: dict = {}
    for _ in range(studies):
        syn = simulate(rng, shape)
        true = truth(syn)
        st = steps_statistics(sizes, _steps_rows(syn, "sgd", rng, n, replicates),
                              _steps_rows(syn, "kfac", rng, n, replicates))
        st.update(width_statistics(sizes, _width_rows(syn, "sgd", rng, n, replicates),
                                   _width_rows(syn, "kfac", rng, n, replicates)))
        for key, rows in st.items():
            t = true.get(key)
            if t is None or not math.isfinite(t) or not math.isfinite(rows[0]):
                continue
            lo, hi = interval(rows[0], rows[1:], interval_method, level)
            h = hits.setdefault(key, [0, 0, 0])
            h[1] += 1
            if lo is None:
                h[2] += 1
            elif lo - 1e-9 <= t <= hi + 1e-9:
                h[0] += 1
    return {k: {"covered": c / s, "studies": s, "missing": m / s} for k, (c, s, m) in sorted(hits.items())}


# The measurements the book shows (runs/coverage/run.sh writes them to runs/coverage/coverage.json):
# version 3's method on 400 studies, and the other methods on 200.
MEASUREMENTS = {
    "version 3: pooled seeds, hull": dict(studies=400, n=400, seed=1),
    "versions 1-2: configurations and seeds, percentile": dict(studies=200, n=400, seed=0, replicates="configs",
                                                               interval_method="percentile"),
    "pooled seeds, percentile": dict(studies=200, n=400, seed=0, replicates="pooled", interval_method="percentile"),
    # the resnet-cpu study's shape (three learning rates, batch sizes 32 to 8,192), measured before its runs
    "version 3 on the resnet-cpu design: pooled seeds, hull": dict(studies=400, n=400, seed=2, design="resnet-cpu"),
    # the gpu study's shape (three learning rates, batch sizes 128 to 4,096, B0 = 128), before its runs
    "version 3 on the gpu design: pooled seeds, hull": dict(studies=400, n=400, seed=3, design="gpu"),
}


def main(out: str) -> None:
    """Measure every method of MEASUREMENTS and write them, with their settings, as JSON."""
    import json

    from kfaclab.train.record import write_atomic

    write_atomic(out, {"kind": "kfaclab.coverage", "level": 0.90,
                       "methods": {name: {"settings": kw, "coverage": coverage(**kw)}
                                   for name, kw in MEASUREMENTS.items()}})
    print(json.dumps({name: {k: round(v["covered"], 3) for k, v in coverage_of.items()} for name, coverage_of in
                      ((n, m["coverage"]) for n, m in json.load(open(out))["methods"].items())}, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1] if len(sys.argv) > 1 else "runs/coverage/coverage.json")
