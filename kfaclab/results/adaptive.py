"""Adaptive batch size studies (ABS/ABSA, Yao et al. 2018): what each method reached with how
many updates, and the trajectories of batch size, learning rate, eigenvalue and adversarial
ratio that the runs recorded.

Methods are `results.study.method` labels ("sgd", "sgd+abs", "kfac+absa"). Per method, the
best configuration is the one with the highest final test accuracy (mean over seeds), the
protocol of the seed paper (each method at its own tuned learning rate); iterations to a
target use the rule of the scaling chapter (minimum over the grid of the first crossing).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kfaclab.results.scaling import steps_to_target
from kfaclab.results.study import FINISHED, StudyResults


def best_configurations(results: StudyResults) -> pd.DataFrame:
    """One row per method: its best grid point by final accuracy (mean over seeds), with that
    point's mean and spread of final accuracy, iterations, examples, seconds, final batch size."""
    runs = results.runs[results.runs["status"].isin(FINISHED)].copy()
    hp = [c for c in runs.columns if c.startswith("hp_") and runs[c].notna().any()]
    rows = []
    for m, g in runs.groupby("optimizer", sort=False):
        keys = [c for c in hp if g[c].notna().all()]
        by_point = g.groupby(keys, dropna=False) if keys else [((), g)]
        best = None
        for point, pg in by_point:
            acc = pg["final_accuracy"].astype(float)
            if best is None or acc.mean() > best[1]["final_accuracy"].astype(float).mean():
                best = (point if isinstance(point, tuple) else (point,), pg)
        point, pg = best
        row = {"method": m, "base_optimizer": pg["base_optimizer"].iloc[0],
               "batch_schedule": pg["batch_schedule"].iloc[0],
               "base_batch_size": int(pg["batch_size"].iloc[0]), "seeds": len(pg),
               "final_accuracy": float(pg["final_accuracy"].mean()),
               "final_accuracy_std": float(pg["final_accuracy"].std(ddof=1)) if len(pg) > 1 else np.nan,
               "iterations": float(pg["iterations"].mean()), "examples": float(pg["examples"].mean()),
               "seconds": float(pg["seconds"].mean()),
               "final_batch_size": float(pg["final_batch_size"].mean()) if "final_batch_size" in pg else
               float(pg["batch_size"].iloc[0]),
               "diverged_in_grid": int((g["status"] == "diverged").sum())}
        row.update({k[3:]: v for k, v in zip(keys, point)})
        rows.append(row)
    return pd.DataFrame(rows)


def _best_runs(results: StudyResults, best: pd.DataFrame) -> dict:
    """method -> the finished runs (all seeds) of its best configuration."""
    runs = results.runs[results.runs["status"].isin(FINISHED)]
    out = {}
    for m, b in best.iterrows():
        mine = runs[runs["optimizer"] == m]
        for c in [c for c in runs.columns if c.startswith("hp_")]:
            if c[3:] in b.index and pd.notna(b[c[3:]]):
                mine = mine[mine[c] == b[c[3:]]]
        out[m] = mine
    return out


def comparison(results: StudyResults, baseline_schedule: str = "fixed") -> pd.DataFrame:
    """Per method and target: iterations to the target (the median over seeds, minimum over the grid, and
    the mean over the seeds of the best configuration, NaN unless every seed reached it) and the
    best configuration's final accuracy, each relative to the same optimizer's fixed-batch run:
    `fewer_iterations` = baseline iterations / method iterations (the paper's "up to 5x"; also
    `fewer_iterations_best_config`), `accuracy_change` = method accuracy - baseline accuracy."""
    best = best_configurations(results).set_index("method")
    best_runs = _best_runs(results, best)
    steps = steps_to_target(results)
    rows = []
    for _, r in steps.iterrows():
        m = r["optimizer"]
        if m not in best.index:  # no finished run yet (pending, failed): nothing to compare
            continue
        base_opt = best.loc[m, "base_optimizer"]
        baseline = base_opt if baseline_schedule == "fixed" else f"{base_opt}+{baseline_schedule}"
        row = {"method": m, "base_optimizer": base_opt, "batch_schedule": best.loc[m, "batch_schedule"],
               "target": r["target"], "iterations_to_target": r["iterations"],
               "examples_to_target": r["examples"], "final_accuracy": best.loc[m, "final_accuracy"],
               "total_iterations": best.loc[m, "iterations"]}
        col = f"iteration_to_{r['target']:g}"

        def at_best(method):
            its = best_runs[method][col].astype(float) if col in best_runs[method] else pd.Series(dtype=float)  # noqa: B023 (called in this iteration)
            return float(its.mean()) if len(its) and its.notna().all() else np.nan

        row["iterations_to_target_best_config"] = at_best(m)
        b = steps[(steps["optimizer"] == baseline) & (steps["target"] == r["target"])]
        if len(b) and baseline in best.index:
            row["fewer_iterations"] = float(b["iterations"].iloc[0] / r["iterations"])
            row["fewer_iterations_best_config"] = at_best(baseline) / row["iterations_to_target_best_config"]
            row["fewer_total_iterations"] = float(best.loc[baseline, "iterations"] / best.loc[m, "iterations"])
            row["accuracy_change"] = float(best.loc[m, "final_accuracy"] - best.loc[baseline, "final_accuracy"])
        rows.append(row)
    return pd.DataFrame(rows)


def best_run_names(results: StudyResults) -> list[str]:
    """The runs (all seeds) of every method's best configuration."""
    best = best_configurations(results).set_index("method")
    return [n for runs in _best_runs(results, best).values() for n in runs["name"]]


def trajectories(results: StudyResults) -> pd.DataFrame:
    """One row per epoch of every finished adaptive run, from its record's `adaptive` log: the
    eigenvalue measured after the epoch, the rule's action, and the batch size, learning-rate
    multiplier and adversarial ratio of the epoch that follows; plus epoch 0 (the start)."""
    rows = []
    runs = results.runs[results.runs["status"].isin(FINISHED) & (results.runs["batch_schedule"] != "fixed")]
    hp = [c for c in runs.columns if c.startswith("hp_")]
    for _, run in runs.iterrows():
        rec = json.loads((results.directory / f"{run['name']}.json").read_text())
        adaptive = rec["adaptive"]
        keep = {"name": run["name"], "method": run["optimizer"], "seed": run["seed"],
                **{k[3:]: run[k] for k in hp if pd.notna(run[k])}}
        start = rec["history"][0]
        rows.append({**keep, "epoch": 0, "iteration": 0, "eigenvalue": np.nan, "action": None,
                     "batch_size": start.get("batch_size", run["batch_size"]), "lr_multiplier": 1.0,
                     "adv_ratio": start.get("adv_ratio", 0.0)})
        for e in adaptive["epochs"]:
            rows.append({**keep, **{k: e[k] for k in ("epoch", "iteration", "eigenvalue", "action", "batch_size",
                                                      "lr_multiplier", "adv_ratio")}})
    return pd.DataFrame(rows)


def final_sharpness(results: StudyResults) -> pd.DataFrame:
    """The top Hessian eigenvalue at the end of each completed run that measured it (fixed-batch
    runs with `measure_top_eigenvalue`, or any adaptive run), with its batch size and accuracy."""
    ev = results.evals
    if "top_eigenvalue" not in ev:
        return pd.DataFrame(columns=["name", "optimizer", "batch_size", "top_eigenvalue", "final_accuracy"])
    # Completed runs only: a diverged run's last measurement is not the end of training.
    ev = ev[ev["status"] == "completed"]
    last = ev[ev["top_eigenvalue"].notna()].sort_values("iteration").groupby("name").tail(1)
    runs = results.runs.set_index("name")
    out = last[["name", "optimizer", "batch_size", "current_batch_size", "top_eigenvalue"]].copy()
    out["final_accuracy"] = [runs.loc[n, "final_accuracy"] for n in out["name"]]
    hp = [c for c in runs.columns if c.startswith("hp_")]
    for c in hp:
        out[c[3:]] = [runs.loc[n, c] for n in out["name"]]
    return out.reset_index(drop=True)
