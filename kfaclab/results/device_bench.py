"""A study's device bench (`runs/<study>/bench/*.json`, written by the harvest) as tables.

The harvest times each optimizer's amortized step at a few batch sizes on the device alone,
then the aggregate throughput of N runs sharing it (kfaclab.sweep.harvest.run_harvest_bench).
The K-FAC chapter shows the step ratios beside the CPU's; the Reproduce chapter, the
throughput. A file that claims to be such a bench and is not well formed is an error naming
it, never a silently shorter table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

KIND = "kfaclab.harvest-bench"


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: not a valid harvest bench ({what}); delete it or merge the harvest's archive again")


def load_benches(runs_dir: str | Path) -> list[dict]:
    """Every harvest bench under runs/<study>/bench/, oldest first, each with its `path`.
    Other JSON files there (none today) are skipped by kind; a harvest bench that is malformed
    raises ValueError naming the file."""
    out = []
    for path in sorted(Path(runs_dir).glob("*/bench/*.json")):
        try:
            b = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise _bad(path, f"unreadable JSON: {e}") from None
        if not isinstance(b, dict) or b.get("kind") != KIND:
            continue
        steps = b.get("step_times")
        if not isinstance(steps, list) or not all(
                isinstance(r, dict) and isinstance(r.get("batch_size"), int) and isinstance(r.get("results"), list)
                and all(isinstance(x, dict) and isinstance(x.get("optimizer"), str)
                        and isinstance(x.get("amortized_step_s"), (int, float)) and x["amortized_step_s"] > 0
                        for x in r["results"]) for r in steps):
            raise _bad(path, "step_times must list batch sizes, each with optimizers and positive amortized_step_s")
        tp = b.get("throughput")
        if tp is not None and not (isinstance(tp, dict) and isinstance(tp.get("rows"), list)
                                   and isinstance(tp.get("alone"), list)):
            raise _bad(path, "throughput must hold the 'alone' and 'rows' lists")
        out.append({**b, "path": path})
    return sorted(out, key=lambda b: str(b.get("created", "")))


def hardware(b: dict) -> str:
    env = b.get("environment") or {}
    if env.get("gpu"):
        return str(env["gpu"])
    if env.get("cpu"):
        return f"{env['cpu']} CPU"
    return "device not recorded"


def step_table(benches: list[dict]) -> pd.DataFrame:
    """One row per (study, batch size, optimizer): the amortized step in ms and its ratio to
    SGD's in the same bench (NaN where the bench has no SGD)."""
    rows = []
    for b in benches:
        for st in b["step_times"]:
            times = {r["optimizer"]: r["amortized_step_s"] for r in st["results"]}
            for opt, t in times.items():
                rows.append({"study": b.get("study"), "hardware": hardware(b), "model": b.get("model"),
                             "batch size": st["batch_size"], "optimizer": opt, "ms per step": 1e3 * t,
                             "x SGD": t / times["sgd"] if "sgd" in times else float("nan"),
                             "amortized over": b.get("amortized_steps")})
    return pd.DataFrame(rows, columns=["study", "hardware", "model", "batch size", "optimizer", "ms per step",
                                       "x SGD", "amortized over"])


def throughput_table(benches: list[dict]) -> pd.DataFrame:
    """One row per (study, measurement): how many runs shared the device, the training
    throughput of all of them together (epochs of the training split per second and examples
    per second), which optimizers ran, and the mean slowdown of one run against running alone."""
    rows = []
    for b in benches:
        tp = b.get("throughput")
        if not tp:
            continue
        for r in tp["alone"] + tp["rows"]:
            per = r.get("per_run", [])
            rows.append({"study": b.get("study"), "hardware": hardware(b), "runs sharing": r["runs"],
                         "batch size": per[0]["batch_size"] if per else None,
                         "optimizers": ", ".join(sorted({p["optimizer"] for p in per})),
                         "epochs per second": r["epochs_per_s"], "examples per second": r["examples_per_s"],
                         "slowdown per run": sum(p.get("slowdown", 1.0) for p in per) / len(per) if per else None})
    return pd.DataFrame(rows, columns=["study", "hardware", "runs sharing", "batch size", "optimizers",
                                       "epochs per second", "examples per second", "slowdown per run"])
