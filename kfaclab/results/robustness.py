"""Hyperparameter robustness: accuracy over the tuned grid at a budget, and the share of the
grid that is within a tolerance of the best (the high-accuracy region).

Two budget views of the same runs (DESIGN 3): an epoch budget (money: examples processed) and
an iteration budget (time: sequential steps). The accuracy of a run at a budget is that of its
last evaluation at or before the budget. Defaults make every run long enough: the epoch budget
is the fewest epochs any run was given (the smallest batch size's, under the stopping rule) and
the iteration budget the fewest iterations (the largest batch size's). `rule` takes each run's
final accuracy, at the end of its own stopping-rule budget. A caveat the book states: a run's
learning-rate schedule spans its own budget, so a run read before its end is not the run one
would have tuned for that shorter budget.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfaclab.results.study import StudyResults

BUDGET_TYPES = ("epochs", "iterations", "rule")
_COLUMN = {"epochs": "epoch", "iterations": "iteration"}


def default_budget(results: StudyResults, budget_type: str) -> float | None:
    """The fewest epochs (or iterations) any run of the study is given: the budget common to all
    batch sizes. Every run counts, run or not (a pending run's budget comes from its config), so
    the budget of a partly run study is already the one it will have when complete."""
    col = "planned_" + budget_type
    if budget_type == "rule" or col not in results.runs:
        return None
    planned = results.runs[col][results.runs[col] > 0]  # a run that failed before its plan has none
    return float(planned.min()) if len(planned) else None


def accuracy_at_budget(results: StudyResults, budget_type: str = "epochs", budget: float | None = None) -> pd.DataFrame:
    """One row per run: its grid point, batch size, status and test accuracy at the budget
    (NaN for runs without a result: failed, pending, or diverged before the budget)."""
    if budget_type not in BUDGET_TYPES:
        raise ValueError(f"budget_type must be one of {', '.join(BUDGET_TYPES)}, got {budget_type!r}")
    if budget is None:
        budget = default_budget(results, budget_type)
    runs = results.runs
    hp = [c for c in runs.columns if c.startswith("hp_")]
    out = runs[["name", "optimizer", "batch_size", "seed", "status", *hp]].copy()
    out["budget_type"], out["budget"] = budget_type, budget
    if budget_type == "rule":
        out["accuracy"] = runs["final_accuracy"].where(runs["status"] == "completed") \
            if "final_accuracy" in runs else np.nan
        return out
    ev = results.evals
    if ev.empty or budget is None:
        out["accuracy"] = np.nan
        return out
    col = _COLUMN[budget_type]
    within = ev[ev[col] <= budget * (1 + 1e-9)]
    last = within.sort_values(col).groupby("name").tail(1).set_index("name")["test_accuracy"]
    out["accuracy"] = out["name"].map(last)
    # A run that diverged before the budget has no accuracy at the budget.
    diverged_early = (runs["status"] == "diverged") & (runs[budget_type] < budget * (1 - 1e-9))
    out.loc[diverged_early.to_numpy(), "accuracy"] = np.nan
    return out


def seed_medians(table: pd.DataFrame) -> pd.DataFrame:
    """accuracy_at_budget with one row per configuration instead of per run: the median of its
    seeds' accuracies, where a seed without an accuracy (failed, diverged, pending) counts as the
    worst, so a configuration has an accuracy when most of its seeds do (as steps to target
    count a seed that never crossed as never: book/verdicts.md). `seeds` says how many runs a
    row rests on; `status` is the configuration's most common status. With one seed per
    configuration this changes nothing but the added `seeds` column."""
    if "seed" not in table or table.empty:
        return table.assign(seeds=1)
    hp = [c for c in table.columns if c.startswith("hp_")]
    keys = ["optimizer", "batch_size", "budget_type", "budget", *hp]
    rows = []
    for point, g in table.groupby(keys, dropna=False, sort=False):
        acc = g["accuracy"].astype(float).fillna(-np.inf).to_numpy()
        med = float(np.median(acc))
        row = dict(zip(keys, point))
        row.update(name=g["name"].iloc[0] if len(g) == 1 else f"{g['name'].iloc[0]} and {len(g) - 1} more seeds",
                   status=g["status"].astype(str).mode().iloc[0], accuracy=med if np.isfinite(med) else np.nan,
                   seeds=len(g))
        rows.append(row)
    return pd.DataFrame(rows)


def high_accuracy_region(table: pd.DataFrame, tolerance: float = 0.01, relative_to: str = "optimizer") -> pd.DataFrame:
    """Per (optimizer, batch size, budget): the share of the grid within `tolerance` (absolute
    accuracy) of the best. `relative_to="optimizer"`: the best of that optimizer over all batch
    sizes under the budget (a region that shrinks says large batches miss the accuracy small
    ones reach); `"batch_size"`: the best at that batch size (the flatness of its landscape).
    Runs without an accuracy (failed, diverged, pending) count as outside the region."""
    if relative_to not in ("optimizer", "batch_size"):
        raise ValueError("relative_to must be 'optimizer' or 'batch_size'")
    rows = []
    for (opt, btype), g in table.groupby(["optimizer", "budget_type"], sort=False):
        overall = g["accuracy"].max()
        for b, gb in g.groupby("batch_size"):
            best = overall if relative_to == "optimizer" else gb["accuracy"].max()
            inside = (gb["accuracy"] >= best - tolerance).sum() if np.isfinite(best) else 0
            rows.append({"optimizer": opt, "budget_type": btype, "budget": gb["budget"].iloc[0],
                         "batch_size": int(b), "grid_points": len(gb),
                         "with_accuracy": int(gb["accuracy"].notna().sum()),
                         "best_accuracy": gb["accuracy"].max(), "reference": best, "tolerance": tolerance,
                         "in_region": int(inside), "share": inside / len(gb)})
    return pd.DataFrame(rows)
