"""The scaling chapter's tables: steps to each target per optimizer and batch size, efficiency
against the ideal line, and the optimizers' ratios."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import Markdown

from kfaclab.report.study import name, unfinished
from kfaclab.results import (
    UNITS,
    steps_to_target,
    with_ideal_scaling,
)
from kfaclab.results.study import StudyResults, complete_cells


def steps_table(study: StudyResults, kind: str = "accuracy") -> pd.DataFrame:
    """Steps to target per optimizer, batch size and target, with the ideal-scaling columns.
    A cell whose grid has runs still pending keeps its row with no steps (`partial` true), and
    `so_far`: the same minimum over the runs that have finished (NaN where none reached the
    target), with `finished` of `runs`: a value that can still move as the rest arrive."""
    every = steps_to_target(study, kind=kind)
    full = every[["optimizer", "batch_size", "target", "pending", "finished", "runs", "iterations"]].rename(
        columns={"iterations": "so_far"})
    done = complete_cells(study)
    if len(done.runs):
        table = with_ideal_scaling(every if done is study else steps_to_target(done, kind=kind), "iterations")
        table = full.merge(table.drop(columns=["pending", "finished", "runs"]),
                           on=["optimizer", "batch_size", "target"], how="left")
    else:  # no grid has finished: every cell is partial
        table = full.assign(**{u: np.nan for u in UNITS}, ideal=np.nan, efficiency=np.nan, best_run=None,
                            seed_low=np.nan, seed_high=np.nan)
    table["partial"] = table["pending"] > 0
    table.loc[~table["partial"], "so_far"] = np.nan
    # Bracketing (kfaclab.sweep.bracket): a cell whose optimum is still on a grid edge at the limit.
    edges = {k for k, c in study.bracket_cells.items() if c["state"] == "edge"}
    table["edge"] = [(o, int(b)) in edges for o, b in zip(table["optimizer"], table["batch_size"])]
    return table


def _cell(r) -> str:
    if r["partial"]:
        ran = f"{r['finished']} of {r['runs']} run"
        return f"{r['so_far']:,.0f} so far ({ran})" if np.isfinite(r["so_far"]) else f"not yet ({ran})"
    if not np.isfinite(r["iterations"]):
        return "not reached"
    spread = f" [{r['seed_low']:,.0f}-{r['seed_high']:,.0f}]" if r["seed_high"] > r["seed_low"] else ""
    return f"{r['iterations']:,.0f}{spread}" + (" (edge)" if r.get("edge") else "")


def steps_view(study: StudyResults, kind: str = "accuracy", table: pd.DataFrame | None = None):
    """Iterations to each target: the best configuration's median over seeds [the range over its
    seeds that reached it]; where the grid still has runs pending, "N so far (k of n run)", the
    same over the runs that have finished, or "not yet (k of n run)" where none reached it."""
    t = steps_table(study, kind) if table is None else table
    shown = t.assign(cell=t.apply(_cell, axis=1)).pivot(index="batch_size", columns=["target", "optimizer"],
                                                         values="cell")
    fmt = (lambda v: f"{v:.0%}") if kind == "accuracy" else (lambda v: f"loss ≤ {v:g}")
    shown.columns = shown.columns.set_levels([fmt(v) for v in shown.columns.levels[0]], level=0)
    what = "test-accuracy" if kind == "accuracy" else "training-loss"
    return shown.style.set_caption(f"{study.name} study: iterations to each {what} target, the best configuration's "
                                   "median over seeds [the range over its seeds that reached it]; "
                                   "'so far (k of n run)': the same over the grid's finished runs while others are "
                                   "pending" + ("; '(edge)': the grid's optimum is still on an edge after bracketing's "
                                                "last step" if study.bracket_cells else ""))


def efficiency_view(study: StudyResults, table: pd.DataFrame | None = None):
    t = steps_table(study) if table is None else table
    eff = t.pivot_table(index="batch_size", columns=["target", "optimizer"], values="efficiency", dropna=False)
    return eff.style.format("{:.2f}", na_rep="-").format_index("{:.0%}", axis=1, level=0).set_caption(
        f"{study.name} study: scaling efficiency, perfect-scaling iterations / measured iterations (1 = perfect)")


def _sizes(bs, every) -> str:
    bs = [int(b) for b in bs]
    if bs and bs == list(every):
        return f"all {len(bs)} batch sizes"
    return ", ".join(str(b) for b in bs) if bs else "none"


def reach_lines(study: StudyResults, table: pd.DataFrame | None = None, threshold: float = 0.5) -> Markdown:
    """Per target: the batch sizes each optimizer reached it at, where K-FAC needed fewer
    iterations than SGD, and the largest batch size still scaling at `threshold` of ideal
    (`table`: steps_table's, where the caller has it already)."""
    table = steps_table(study) if table is None else table
    opts = [o for o in study.optimizers() if o in table["optimizer"].unique()]
    every = study.batch_sizes()
    lines = []
    for target in study.targets:
        t = table[(table["target"] == target) & ~table["partial"]]
        reach = {o: t[(t["optimizer"] == o) & t["iterations"].notna()]["batch_size"].tolist() for o in opts}
        eff = {}
        for o in opts:
            ok = t[(t["optimizer"] == o) & (t["efficiency"] >= threshold)]
            eff[o] = int(ok["batch_size"].max()) if len(ok) else None
        text = f"- **{target:.0%}**: " + ", ".join(f"{name(o)} reached it at {_sizes(reach[o], every)}" for o in opts)
        if "sgd" in reach and "kfac" in reach:
            both = sorted(set(reach["sgd"]) & set(reach["kfac"]))
            at = t.set_index(["optimizer", "batch_size"])["iterations"]
            faster = [b for b in both if at[("kfac", b)] < at[("sgd", b)]]
            text += (f"; K-FAC needed fewer iterations than SGD at "
                     f"{_sizes(faster, every) if len(faster) < len(both) else 'every one'} of the {len(both)} batch "
                     "sizes both reached")
        text += (f". The largest batch size still scaling at {threshold:.0%} of the ideal rate or better: "
                 + ", ".join(f"{name(o)} {eff[o]}" for o in opts) + ".")
        lines.append(text)
    if unfinished(study):
        lines.append(f"- Only batch sizes whose grids have finished count here; {unfinished(study)} runs have not run.")
    return Markdown("\n".join(lines))


def ratio_table(study: StudyResults, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each optimizer's steps to target over SGD's, in iterations and in training seconds."""
    table = steps_table(study) if table is None else table
    ratios = []
    for unit in ("iterations", "seconds"):
        wide = table.pivot_table(index=["target", "batch_size"], columns="optimizer", values=unit)
        for opt in ("kfac", "adam"):
            if opt in wide and "sgd" in wide:
                ratios.append((wide[opt] / wide["sgd"]).rename(f"{name(opt)} / SGD, {unit}"))
    if not ratios:
        return pd.DataFrame()
    return pd.concat(ratios, axis=1).unstack(0)


def ratio_view(ratio: pd.DataFrame):
    return ratio.style.format("{:.2f}", na_rep="-").format_index("{:.0%}", axis=1, level=1)


def ratio_lines(study: StudyResults, ratio: pd.DataFrame) -> list[str]:
    """Per target, K-FAC's iterations over SGD's at the smallest and largest batch size both
    reached and their least-squares change per doubling (descriptive: the verdicts judge)."""
    lines = []
    for target in study.targets:
        col = ("K-FAC / SGD, iterations", target)
        r = ratio[col].dropna() if col in ratio else pd.Series(dtype=float)
        if len(r) < 3:
            lines.append(f"- at {target:.0%}, too few batch sizes where both reached the target to say;")
            continue
        slope = np.polyfit(np.log2(r.index.to_numpy(dtype=float)), np.log2(r.to_numpy()), 1)[0]
        lines.append(f"- at {target:.0%}, K-FAC needed {r.iloc[0]:.2f}x SGD's iterations at batch {r.index[0]} and "
                     f"{r.iloc[-1]:.2f}x at batch {r.index[-1]}, a least-squares {2 ** slope:.2f}x per doubling of the "
                     f"batch (the paper: K-FAC's relative cost does not fall);")
    return lines
