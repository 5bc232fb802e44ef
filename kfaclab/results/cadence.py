"""K-FAC's update cadence against the run's length (book/verdicts.md, version 3): steps to each
target and final accuracy with the fixed cadence (inverses every 100 steps) and with the cadence
scaled to the run, from a study whose grid varies `refreshes_per_run` (runs/cadence)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfaclab.results.study import FINISHED, StudyResults


def cadence_table(results: StudyResults) -> pd.DataFrame:
    """Per batch size and cadence (refreshes_per_run; 0: the fixed cadence): the inverse and factor
    update periods the runs used, and for each target the steps to it (Shallue's rule over the
    learning rates: the minimum of each rate's median over seeds, a seed that never reached it
    counting as never), and the best mean final accuracy over the learning rates."""
    runs = results.runs[results.runs["status"].isin(FINISHED)].copy()
    if runs.empty or "hp_refreshes_per_run" not in runs:
        return pd.DataFrame()
    rows = []
    for (b, n), g in runs.groupby(["batch_size", "hp_refreshes_per_run"]):
        row = {"batch_size": int(b), "cadence": "fixed (every 100)" if n == 0 else f"scaled ({int(n)} refreshes)",
               "iterations": int(g["planned_iterations"].max()), "runs": len(g)}
        for t in results.targets:
            col = f"iteration_to_{t:g}"
            med = g.assign(v=g[col].astype(float).fillna(np.inf)).groupby("hp_lr")["v"].median()
            best = med.min()
            row[f"steps to {t:.0%}"] = best if np.isfinite(best) else np.nan
        row["best final accuracy"] = g.groupby("hp_lr")["final_accuracy"].mean().max()
        rows.append(row)
    return pd.DataFrame(rows)


def cadence_lines(table: pd.DataFrame) -> str:
    """What the scaled cadence changes at each batch size, in words computed from the table."""
    if table.empty:
        return "No run of the cadence study has finished yet."
    out = []
    targets = [c for c in table.columns if c.startswith("steps to ")]
    for b, g in table.groupby("batch_size"):
        if len(g) < 2:
            continue
        fixed, scaled = g[g["cadence"].str.startswith("fixed")], g[g["cadence"].str.startswith("scaled")]
        if fixed.empty or scaled.empty:
            continue
        parts = []
        for t in targets:
            f, s = fixed[t].iloc[0], scaled[t].iloc[0]
            if np.isfinite(f) and np.isfinite(s):
                parts.append(f"{t[9:]}: {f:,.0f} -> {s:,.0f} iterations ({s / f:.2f}x)")
            else:
                parts.append(f"{t[9:]}: {'never' if not np.isfinite(f) else f'{f:,.0f}'} -> "
                             f"{'never' if not np.isfinite(s) else f'{s:,.0f}'}")
        acc = (scaled["best final accuracy"].iloc[0] - fixed["best final accuracy"].iloc[0]) * 100
        out.append(f"- batch {b:,} ({int(g['iterations'].max())} iterations), fixed -> scaled cadence: "
                   + "; ".join(parts) + f"; best final accuracy {acc:+.1f} points")
    return "\n".join(out)
