"""Claims (d) and (e): the high-accuracy region under epoch and iteration budgets, and K-FAC's robustness against SGD's.

Rules versions 1-2 of book/verdicts.md: shares of grid configurations within one point of the best,
resampled over configurations and seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfaclab.results.bootstrap import (
    _interval,
    _resample_configs,
    _share_within,
    _slope,
)
from kfaclab.results.claims import (
    CONTRADICTED,
    N_BOOT,
    NOT_RESOLVED,
    REPRODUCED,
    SEED,
    Verdict,
    _decide,
    _verdict,
)
from kfaclab.results.study import StudyResults


def _accuracy_cells(results: StudyResults, budget_type: str) -> dict:
    """(optimizer, batch size) -> (configurations x seeds) accuracy at the budget (nan: none)."""
    from kfaclab.results.robustness import accuracy_at_budget

    table = accuracy_at_budget(results, budget_type)
    hp = [c for c in table.columns if c.startswith("hp_")]
    out = {}
    for (opt, b), g in table.groupby(["optimizer", "batch_size"], sort=True):
        keys = [c for c in hp if g[c].notna().all()]
        points = g[keys].astype(str).agg("|".join, axis=1) if keys else pd.Series("", index=g.index)
        seeds = sorted(results.runs.set_index("name").loc[g["name"], "seed"].unique())
        seed_of = results.runs.set_index("name")["seed"]
        configs = list(dict.fromkeys(points))
        values = np.full((len(configs), len(seeds)), np.nan)
        for (_, row), p in zip(g.iterrows(), points):
            values[configs.index(p), seeds.index(seed_of[row["name"]])] = row["accuracy"]
        out[(opt, int(b))] = values
    return out


def claim_d(results: StudyResults, n: int = N_BOOT, seed: int = SEED) -> Verdict:
    rule = ("slope per doubling of the share of the grid within one point of the optimizer's best: under the "
            "epoch budget reproduced below 0, under the iteration budget above 0; all four parts must hold")
    rng = np.random.default_rng(seed)
    parts, outcomes = [], []
    for budget, want in (("epochs", "down"), ("iterations", "up")):
        acc = _accuracy_cells(results, budget)
        for opt in ("sgd", "kfac"):
            bs = sorted(b for (o, b) in acc if o == opt)
            if len(bs) < 3:
                parts.append({"optimizer": opt, "budget": budget, "outcome": NOT_RESOLVED})
                outcomes.append(NOT_RESOLVED)
                continue
            with np.errstate(invalid="ignore"):
                point_means = [np.nanmean(acc[(opt, b)], axis=1) for b in bs]
            best = np.nanmax(np.concatenate(point_means)) if any(np.isfinite(m).any() for m in point_means) else np.nan
            point_share = [float(_share_within(m[None], np.array([best]))[0]) for m in point_means]
            boot_means = [_resample_configs(acc[(opt, b)], rng, n) for b in bs]  # each (n, c)
            with np.errstate(invalid="ignore"):
                boot_best = np.nanmax(np.concatenate(boot_means, axis=1), axis=1)
            shares = np.stack([_share_within(m, boot_best) for m in boot_means], axis=1)  # (n, len(bs))
            est = _slope(bs, point_share)
            samples = np.array([_slope(bs, row) for row in shares])
            iv = _interval(samples)
            if want == "down":
                o = _decide(iv, below=0.0, above=0.0, below_means=REPRODUCED, above_means=CONTRADICTED)
            else:
                o = _decide(iv, below=0.0, above=0.0)
            parts.append({"optimizer": opt, "budget": budget, "slope": est, "interval": iv, "outcome": o,
                          "shares": dict(zip(bs, point_share))})
            outcomes.append(o)
    outcome = CONTRADICTED if CONTRADICTED in outcomes else (REPRODUCED if all(o == REPRODUCED for o in outcomes)
                                                              else NOT_RESOLVED)
    return _verdict("d", results.name, outcome, "slopes of the high-accuracy region's share per doubling (four "
                    "parts)", None, (None, None), rule, "", parts)


def claim_e(results: StudyResults, n: int = N_BOOT, seed: int = SEED) -> Verdict:
    rule = ("mean over batch sizes of K-FAC's minus SGD's share of the grid within one point of the best at that "
            "batch size (final accuracy): reproduced below 0.15, contradicted above 0.15")
    rng = np.random.default_rng(seed)
    acc = _accuracy_cells(results, "rule")
    diffs, samples = [], []
    bs = sorted({b for (o, b) in acc if o == "sgd"} & {b for (o, b) in acc if o == "kfac"})
    if not bs:
        return _verdict("e", results.name, NOT_RESOLVED, "difference of region shares", None, (None, None), rule,
                        "no batch size with runs of both optimizers")
    per_b = []
    for b in bs:
        shares_point, shares_boot = {}, {}
        for opt in ("sgd", "kfac"):
            with np.errstate(invalid="ignore"):
                m = np.nanmean(acc[(opt, b)], axis=1)
            best = np.nanmax(m) if np.isfinite(m).any() else np.nan
            shares_point[opt] = float(_share_within(m[None], np.array([best]))[0])
            boot = _resample_configs(acc[(opt, b)], rng, n)
            with np.errstate(invalid="ignore"):
                shares_boot[opt] = _share_within(boot, np.nanmax(boot, axis=1))
        diffs.append(shares_point["kfac"] - shares_point["sgd"])
        samples.append(shares_boot["kfac"] - shares_boot["sgd"])
        per_b.append({"batch_size": b, **{f"{o}_share": s for o, s in shares_point.items()}})
    est = float(np.mean(diffs))
    samples = np.mean(np.stack(samples, axis=1), axis=1)
    iv = _interval(samples)
    return _verdict("e", results.name, _decide(iv, below=0.15, above=0.15, below_means=REPRODUCED,
                                               above_means=CONTRADICTED),
                    "mean difference of region shares (K-FAC - SGD)", est, iv, rule, "", per_b)
