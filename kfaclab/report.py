"""A results chapter's paragraphs, tables and figures for any study.

The scaling, robustness and critical-batch chapters show the `miniature` study in prose and the
`gpu` study (the paper's model, run in borrowed GPU windows) beside it; both go through these
functions, so the two studies are measured, tabulated and judged alike. A study that has only
partly run is shown as partial: everything derived from steps or accuracies (charts, fits,
shares of a grid) uses only the (optimizer, batch size) cells whose runs have all finished, the
steps tables give the others' best so far, marked so, and a verdict waits for every run of the
optimizers it compares (kfaclab.results.verdicts.ready_verdicts).

Presentation only: it reads kfaclab.results and draws with kfaclab.plots.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import HTML, Markdown

from kfaclab import plots
from kfaclab.results import (UNITS, accuracy_at_budget, critical_batch_size, default_budget,
                             high_accuracy_region, status_counts, steps_to_target, with_ideal_scaling)
from kfaclab.results.robustness import seed_medians
from kfaclab.results.study import StudyResults, complete_cells

NAMES = {"sgd": "SGD", "kfac": "K-FAC", "adam": "Adam", "trcg": "TRCG", "strcg": "stochastic TRCG"}
MODELS = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "resnet56": "ResNet-56", "c1": "the AlexNet-like C1 net"}
UNFINISHED = ("pending", "interrupted")
TOLERANCE = 0.02  # the robustness chapter's high-accuracy region: within 2 points of the best


def name(opt: str) -> str:
    return NAMES.get(opt, opt)


def model_name(model: str) -> str:
    if model.startswith("mlp"):
        return f"an MLP ({model})"
    return MODELS.get(model, model)


# ------------------------------------------------------------------------------ what ran

def unfinished(study: StudyResults) -> int:
    return int(study.runs["status"].isin(UNFINISHED).sum())


def has_results(study: StudyResults) -> bool:
    return bool(study.runs["status"].isin(["completed", "diverged"]).any())


def _hardware(finished: pd.DataFrame, fixed: dict) -> str:
    gpus = sorted({str(g) for g in finished["gpu"].dropna()}) if "gpu" in finished else []
    cpus = sorted({str(c) for c in finished["cpu"].dropna()}) if "cpu" in finished else []
    if gpus:
        how = [f"{fixed['precision']} autocast"] if fixed.get("precision") not in (None, "fp32") else []
        how += ["channels-last"] if fixed.get("channels_last") else []
        return f"{', '.join(gpus)} GPU" + (f" ({', '.join(how)})" if how else "")
    if not cpus:
        return "unknown hardware"
    cores = sorted({int(c) for c in finished["cpu_count"].dropna()}) if "cpu_count" in finished else []
    threads = sorted({int(t) for t in finished["threads"].dropna()}) if "threads" in finished else []
    detail = ([f"{' or '.join(map(str, cores))} cores"] if cores else []) + (
        [f"{' or '.join(map(str, threads))} thread{'s' if threads != [1] else ''} per run"] if threads else [])
    return f"{', '.join(cpus)} CPU" + (f" ({', '.join(detail)})" if detail else "")


def what_ran(study: StudyResults) -> Markdown:
    """The study in one paragraph, from its spec and records: runs by status, data, model,
    batch sizes, budget, learning-rate scaling, targets, seeds, grids, hardware, time."""
    runs, fixed = study.runs, study.spec.get("fixed") or {}
    finished = runs[runs["status"].isin(["completed", "diverged", "failed"])]
    counts = runs["status"].value_counts()
    ran = (f"**{len(runs)} runs**, of which {counts.get('completed', 0)} completed, {counts.get('diverged', 0)} "
           f"diverged, {counts.get('failed', 0)} failed and {unfinished(study)} have not run")
    datasets = sorted({str(d) for d in runs["dataset"].dropna()})
    data = ", ".join(plots.DATA_NAMES.get(d, d) for d in datasets)
    n_train = int(finished["train_examples"].max()) if "train_examples" in finished and finished[
        "train_examples"].notna().any() else None
    test = (f"a class-stratified {fixed['test_subset']:,} of the test images" if fixed.get("test_subset")
            else "all {:,} test images".format(int(finished["test_examples"].max()))
            if "test_examples" in finished and finished["test_examples"].notna().any() else "the full test set")
    native = " (32x32)" if any(d.startswith("cifar10") or d == "svhn" for d in datasets) else ""
    size = f"downsampled to {fixed['resolution']}x{fixed['resolution']}" if fixed.get("resolution") else \
        f"at full resolution{native}"
    augment = "random crop and flip" if fixed.get("augment", True) else "no augmentation"
    models = ", ".join(model_name(str(m)) for m in sorted({str(m) for m in runs["model"].dropna()}))
    rule = (study.spec.get("budget") or {}).get("rule")
    budget = study.spec.get("budget") or {}
    fixed_budget = next(((k, v) for k, v in budget.items() if k != "rule"), None)
    budget = (f"stopping rule with B0 = {rule['b0']} and E0 = {rule['e0']} epochs" if rule else
              f"every run trained to {fixed_budget[1]:g} {fixed_budget[0]}, its schedule ending there" if fixed_budget
              else "fixed budgets")
    scaling = study.spec.get("lr_scaling") or {}
    lr = {"sqrt": f"learning rates scaled by $\\sqrt{{B/{scaling.get('base_batch_size', 128)}}}$",
          "linear": f"learning rates scaled by $B/{scaling.get('base_batch_size', 128)}$"}.get(
        scaling.get("rule"), "learning rates not scaled with the batch")
    decay = f" and decayed by a {fixed['lr_decay']}" if fixed.get("lr_decay") not in (None, "constant") else ""
    targets = ", ".join(f"{t:.0%}" for t in study.targets) + " test accuracy"
    if study.loss_targets:
        targets += " and " + ", ".join(f"{t:g}" for t in study.loss_targets) + " training loss"
    seeds = len(study.spec.get("seeds") or sorted(set(runs["seed"])))
    grids, points = [], set()
    for opt, keys in study.grid_keys.items():
        mine = runs[runs["optimizer"] == opt]
        counts = [int(mine[f"hp_{k}"].nunique()) for k in keys]
        points.add(int(np.prod(counts)))
        shape = "x".join(map(str, counts))
        label = " x ".join({"lr": "learning rate", "eps": "epsilon"}.get(k, k) for k in keys)
        grids.append(f"{name(opt)} over {label} ({shape})")
    trained = finished["seconds"].dropna() if "seconds" in finished else pd.Series(dtype=float)
    time = f"; {trained.sum() / 60:.0f} minutes of training in all" if len(trained) else ""
    where = _hardware(finished, fixed) if len(finished) else "nothing yet"
    return Markdown(
        f"The `{study.name}` study (`runs/{study.name}/study.yaml`): {ran}. Data: {data}, "
        + (f"all {n_train:,} training images" if n_train else "the training set")
        + f" and {test}, {size}, {augment}. Model: {models}. Batch sizes "
        f"{', '.join(str(b) for b in study.batch_sizes())}; {budget}; {lr}{decay}; targets {targets}; "
        f"{seeds} seed{'s' if seeds != 1 else ''} per configuration. "
        f"{'Grids of equal size' if len(points) == 1 else 'Grids'} per batch size: {'; '.join(grids)}"
        + (" (the largest grid at any batch size: each starts at the spec's grid and grows until it brackets its "
           "optimum, the bracketing table says where)" if study.bracket_cells else "")
        + f". Ran on: {where}{time}.")


def status_table(study: StudyResults):
    """Runs per optimizer and batch size by status: what has run and what has not."""
    counts = status_counts(study)
    shown = [s for s in counts.columns if s != "interrupted" or counts[s].any()]  # never hide one
    counts = counts[shown].unstack(0).swaplevel(axis=1).sort_index(axis=1)
    return counts.loc[:, (slice(None), shown)]


# ------------------------------------------------------------------------------ scaling

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


def fit_table(study: StudyResults, n_boot: int = 200) -> pd.DataFrame:
    """McCandlish et al.'s S(B) = S_min (1 + B_crit / B) per optimizer and target, fitted to the
    batch sizes whose grids have finished, with its bootstrap interval over grid points and
    whether B_crit is identified (inside the batch sizes measured, not at the search's edge)."""
    done = complete_cells(study)
    fits = []
    for opt in study.optimizers():
        for target in study.targets:
            try:
                f = critical_batch_size(done, opt, target, n_boot=n_boot)
            except ValueError as e:
                fits.append({"optimizer": opt, "target": target, "identified": False, "note": str(e)})
                continue
            lo, hi = f["b_crit_interval"]
            measured = max(f["batch_sizes"]) if f["batch_sizes"] else 0
            note = ("not identified: B_crit at the edge of the search" if f["at_edge"] else
                    "not identified: B_crit beyond the largest batch size measured" if f["b_crit"] > measured else
                    "")
            fits.append({"optimizer": opt, "target": target, "B_crit": f["b_crit"],
                         "68% interval": f"{lo:,.0f}-{hi:,.0f}", "S_min (iterations)": f["s_min"],
                         "E_min (examples)": f["e_min"], "RMS log residual": f["rms_log_residual"],
                         "identified": not note, "note": note})
    return pd.DataFrame(fits).set_index(["optimizer", "target"])


def fit_view(fits: pd.DataFrame):
    return fits.drop(columns="identified").style.format(
        {"B_crit": "{:,.0f}", "S_min (iterations)": "{:,.0f}", "E_min (examples)": "{:,.0f}",
         "RMS log residual": "{:.2f}"}, na_rep="-").format_index("{:.0%}", level=1)


def b_crit_lines(study: StudyResults, fits: pd.DataFrame) -> Markdown:
    """Per target, the identified critical batch sizes and each optimizer's over SGD's."""
    lines = []
    for target in study.targets:
        have = [o for o in ("sgd", "adam", "kfac") if (o, target) in fits.index and "B_crit" in fits
                and np.isfinite(fits.loc[(o, target), "B_crit"])]
        if "sgd" not in have or len(have) < 2:
            lines.append(f"- at {target:.0%}: no fit for SGD and another optimizer (a target not reached at 3 or more "
                         "finished batch sizes);")
            continue
        ok = {o: bool(fits.loc[(o, target), "identified"]) for o in have}
        b = {o: fits.loc[(o, target), "B_crit"] for o in have}
        found = ", ".join(f"{name(o)} {b[o]:,.0f}" for o in have if ok[o])
        ratios = "; ".join(f"{name(o)} over SGD {b[o] / b['sgd']:.2f}" for o in have
                           if o != "sgd" and ok[o] and ok["sgd"])
        text = f"- at {target:.0%}: {found or 'none identified'}"
        if ratios:
            text += f" (ratios: {ratios})"
        missing = [name(o) for o in have if not ok[o]]
        if missing:
            text += f"; not identified for {' and '.join(missing)} (B_crit beyond the batch sizes measured)"
        lines.append(text + ";")
    return Markdown(f"Fitted critical batch sizes in the `{study.name}` study:\n\n" + "\n".join(lines))


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


# ------------------------------------------------------------------------------ robustness

def budgets_text(study: StudyResults) -> Markdown:
    epochs, iterations = default_budget(study, "epochs"), default_budget(study, "iterations")
    fixed = study.spec.get("fixed") or {}
    evals = f" (runs are evaluated at least {fixed['min_evals']} times)" if fixed.get("min_evals") else ""
    return Markdown(
        f"- **epoch budget**: {epochs:g} epochs, the fewest any run is given (the smallest batch size's);\n"
        f"- **iteration budget**: {iterations:g} iterations, the fewest any run is given (the largest batch size's);\n"
        f"- **rule**: each run's final accuracy, after its own budget from the stopping rule.\n\n"
        f"A run's accuracy at a budget is that of its last evaluation at or before it{evals}. One caveat the paper's "
        "separately trained budgets do not have: each run's cosine learning-rate schedule spans its own "
        "stopping-rule budget, so a run read at a shorter budget has not annealed its rate.")


def region_table(study: StudyResults, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Share of each grid within `tolerance` of the optimizer's best accuracy under the budget,
    per batch size (columns: budget type, optimizer), over the cells whose runs have finished.
    The budgets are the complete study's, so the shares do not move as the rest arrives."""
    done = complete_cells(study)
    tables = []
    for budget in ("epochs", "iterations"):
        acc = seed_medians(accuracy_at_budget(done, budget, default_budget(study, budget)))
        tables.append(high_accuracy_region(acc, tolerance))
    region = pd.concat(tables)
    return region.pivot_table(index="batch_size", columns=["budget_type", "optimizer"], values="share")


def region_view(study: StudyResults, view: pd.DataFrame, tolerance: float = TOLERANCE):
    return view.style.format("{:.0%}").set_caption(
        f"{study.name} study: share of each grid within {tolerance:.0%} of the optimizer's best accuracy under the "
        "budget")


def slope_lines(study: StudyResults, view: pd.DataFrame) -> Markdown:
    """The least-squares slope of each share against log2(batch size), beside the paper's direction."""
    lines = []
    for budget, paper in (("epochs", "shrinks"), ("iterations", "grows")):
        for opt in ("kfac", "adam", "sgd"):
            if (budget, opt) not in view.columns:
                continue
            s = view[(budget, opt)].dropna()
            # No direction is read off the sign of a slope: the verdicts judge it, with its
            # interval, by the rule registered before the runs.
            shown = ("too few batch sizes" if len(s) < 3 else
                     f"{np.polyfit(np.log2(s.index.to_numpy(dtype=float)), s.to_numpy(), 1)[0]:+.1%} of the grid "
                     "per doubling")
            lines.append(f"- under the {budget[:-1]} budget, {name(opt)}'s share: {shown} (the paper: it {paper});")
    return Markdown(f"In the `{study.name}` study, by the least-squares slope of the share against log2(batch "
                    "size):\n\n" + "\n".join(lines))


# ------------------------------------------------------------------------------ device benches

def device_bench_view(benches: list[dict], cpu: pd.DataFrame):
    """The harvest's amortized steps on the GPU (kfaclab.results.device_bench.step_table), each
    optimizer's ratio to SGD beside the CPU bench's for the same model, batch and optimizer
    (`cpu`: columns model, batch size, optimizer, x SGD); a sentence while there is none."""
    from kfaclab.results.device_bench import step_table

    steps = step_table(benches)
    if not len(steps):
        return Markdown("No GPU bench has been merged yet: the first GPU window's harvest writes it to "
                        "`runs/gpu/bench/`, and this table shows it from then on. Until then every ratio in this "
                        "chapter is the CPU's, where a step is compute-bound; on a GPU a ResNet-20 step at small "
                        "batches is bound by kernel launches instead, so K-FAC's extra kernels may cost relatively "
                        "more there.")
    cpu = cpu.rename(columns={"x SGD": "x SGD on the CPU"})[["model", "batch size", "optimizer", "x SGD on the CPU"]]
    shown = steps[steps["optimizer"] != "sgd"].merge(cpu, on=["model", "batch size", "optimizer"], how="left")
    sgd = steps[steps["optimizer"] == "sgd"].set_index(["study", "hardware", "batch size"])["ms per step"]
    shown["SGD ms per step"] = [sgd.get(k, np.nan) for k in zip(shown["study"], shown["hardware"], shown["batch size"])]
    table = shown.set_index(["study", "hardware", "batch size", "optimizer"])[
        ["SGD ms per step", "ms per step", "x SGD", "x SGD on the CPU"]]
    return table.style.format("{:.2f}", na_rep="not benched").set_caption(
        "Amortized step on the harvest's device alone, and its ratio to SGD's, beside the CPU bench's ratio for the "
        "same model and batch")


def throughput_view(benches: list[dict], assumed: dict | None = None):
    """The measured throughput of runs sharing a device; while there is none, the throughput
    the gpu spec assumes (`assumed`: its `throughput` section) and that it is an assumption."""
    from kfaclab.results.device_bench import throughput_table

    measured = throughput_table(benches)
    if len(measured):
        return measured.set_index(["study", "hardware", "runs sharing", "optimizers"]).style.format(
            {"epochs per second": "{:.2f}", "examples per second": "{:,.0f}",
             "slowdown per run": "{:.2f}"}).set_caption(
            "Training throughput of runs sharing one device: all of them together, and how much slower each trains "
            "than alone")
    text = "Not measured yet: no GPU window has run the `gpu` study."
    if assumed:
        text += (" Its spec plans with an assumed " + ", ".join(
            f"{v:g} epochs per second for {name(k)}" for k, v in assumed["epochs_per_second"].items())
            + f", with {assumed['runs_sharing']} runs sharing the GPU; the first harvest's measurement replaces the "
            "assumption in its time estimates and in this table.")
    return Markdown(text)


# ------------------------------------------------------------------------------ sections

def where_it_runs(study: StudyResults) -> str:
    """Where a study's runs are made, and by which rules they are judged, from its spec."""
    from kfaclab.results import judged_v3

    rules = "judged by rules version 3 (the verdicts chapter)" if judged_v3.is_v3(study) else \
        "judged by the same rules as the miniature"
    device = str((study.spec.get("fixed") or {}).get("device", "auto"))
    if device.startswith("cpu"):
        return f"it runs on a CPU, cell by cell (`scripts/run-miniature3.sh` for the version-3 studies), {rules}" \
            if judged_v3.is_v3(study) else f"it runs on a CPU, {rules}"
    return f"it runs in borrowed GPU windows (the Reproduce chapter says how), {rules}"


def _not_yet(study: StudyResults) -> list:
    failed = int((study.runs["status"] == "failed").sum())
    items = [Markdown(f"None of the `{study.name}` study's {len(study.runs)} runs has completed yet"
                      + (f" ({failed} failed: listed below with their status)" if failed else "")
                      + f": {where_it_runs(study)}, and this section fills in as they land."),
             HTML(status_table(study).to_html())]
    return items + ([finished_runs_view(study)] if failed else [])


def _partial(study: StudyResults) -> list:
    left = unfinished(study)
    if not left:
        return []
    return [Markdown(f"**Partial results**: {len(study.runs) - left} of {len(study.runs)} runs have a result. "
                     "Charts, fits and shares below use only the batch sizes whose grid has finished for that "
                     "optimizer; the steps tables give the others' best so far, marked so; a verdict waits for "
                     "every run of the optimizers it compares.")]


def finished_runs_view(study: StudyResults):
    """Every run with a result, while no grid has finished: its final accuracy, the iterations
    at which it first reached each target, and a failed run's error."""
    runs = study.runs[study.runs["status"].isin(["completed", "diverged", "failed"])]
    cols = {"name": "run", "status": "status", "final_accuracy": "final test accuracy"}
    cols.update({f"iteration_to_{t:g}": f"iterations to {t:.0%}" for t in study.targets})
    cols["error"] = "error"
    cols = {k: v for k, v in cols.items() if k in runs}
    table = runs[list(cols)].rename(columns=cols).set_index("run")
    counts = {c: "{:,.0f}" for c in table.columns if c.startswith("iterations to")}
    return table.style.format({"final test accuracy": "{:.1%}", **counts} if "final test accuracy" in table
                              else counts, na_rep="-").set_caption(f"{study.name} study: the runs with a result so far")


def _no_grid_yet(study: StudyResults, claims: str) -> list | None:
    """While no (optimizer, batch size) grid has finished, the runs that have, and nothing
    derived from a minimum over a grid."""

    if has_results(complete_cells(study)):
        return None
    return [status_table(study),
            Markdown("No (optimizer, batch size) grid has finished yet, so nothing is charted or fitted: the steps "
                     "table gives each grid's best so far, and the runs with a result are listed as they are."),
            steps_view(study), finished_runs_view(study), chapter_verdicts(study, claims)]


def _opening(study: StudyResults, claims: str) -> tuple[list, bool]:
    """How every section starts: what ran, then either all there is to show (no result yet, or
    no grid finished yet: `complete` true) or, for a partly run study, the notice saying so."""
    items = [what_ran(study)]
    if not has_results(study):
        return items + _not_yet(study), True
    items += _partial(study)
    early = _no_grid_yet(study, claims)
    return (items + early, True) if early else (items, False)


def scaling_section(study: StudyResults) -> list:
    """What the scaling chapter shows of a study: what ran, steps to target, efficiency, the
    critical batch size, the optimizers' ratios and the verdicts."""
    items, complete = _opening(study, "abgh")
    if complete:
        return items
    done, table = complete_cells(study), steps_table(study)
    items += [status_table(study), plots.scaling_chart(done), steps_view(study, table=table)]
    if study.loss_targets:
        items.append(steps_view(study, "loss"))
    fits = fit_table(study)
    ratio = ratio_table(study, table)
    items += [efficiency_view(study, table), reach_lines(study, table), plots.critical_batch_chart(done),
              fit_view(fits), b_crit_lines(study, fits)]
    if len(ratio):
        items += [ratio_view(ratio), Markdown("\n".join(ratio_lines(study, ratio)))]
    return items + [chapter_verdicts(study, "abgh")]


def robustness_section(study: StudyResults, tolerance: float = TOLERANCE) -> list:
    """What the robustness chapter shows of a study: its budgets, accuracy over each grid, the
    high-accuracy region and its trend, and the verdicts."""
    items, complete = _opening(study, "de")
    if complete:
        return items
    done = complete_cells(study)
    budgets = {b: default_budget(study, b) for b in ("epochs", "iterations")}
    view = region_table(study, tolerance)
    return items + [
        budgets_text(study), plots.robustness_heatmaps(study, budgets=budgets),
        plots.robustness_boxplots(done, budgets=budgets),
        plots.region_chart(done, tolerance=tolerance, budgets=budgets), region_view(study, view, tolerance),
        slope_lines(study, view), chapter_verdicts(study, "de")]  # the verdicts name what they rest on


def critical_batch_section(study: StudyResults) -> list:
    """What the critical-batch chapter shows of a study: the fits and the verdicts."""
    items, complete = _opening(study, "ci")
    if complete:
        return items
    fits = fit_table(study)
    return items + [plots.critical_batch_chart(complete_cells(study)), fit_view(fits), b_crit_lines(study, fits),
                    chapter_verdicts(study, "ci")]


def width_section(study: StudyResults) -> list:
    """What the robustness chapter shows of a version-3 budget study: what ran, its status, the
    widths of each optimizer's good region per batch size (table and chart), the bracketing, and
    the verdicts (d) and (e)."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts_v3 import width_table

    items, complete = _opening(study, "de")
    if complete:
        return items
    table = width_table(complete_cells(study))
    return items + [status_table(study), plots.width_chart(study, table),
                    table.style.hide(axis="index").format(precision=2, na_rep="–"),
                    Markdown(judged_v3.bracket_lines(judged_v3.Judged(study, None, None))),
                    judged_v3.chapter_verdicts(study, "de")]


def bracket_view(study: StudyResults):
    """Per (optimizer, batch size): whether its grid brackets the optimum, how many
    configurations it has and what bracketing added (kfaclab.results.study.bracket_table)."""
    from kfaclab.results.study import bracket_table

    table = bracket_table(study)
    if table.empty:
        return Markdown(f"The `{study.name}` study does not bracket its grids.")
    return table.style.hide(axis="index").set_caption(f"{study.name} study: does each grid bracket its optimum?")


def chapter_verdicts(study: StudyResults, claims: str):
    """The chapter's verdicts under the rules that judge the study: version 3 for its studies
    (kfaclab.results.judged_v3), versions 1-2 for the others."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts import chapter_verdicts as v2

    return judged_v3.chapter_verdicts(study, claims) if judged_v3.is_v3(study) else v2(study, claims)


def show(items: list) -> None:
    """Display a section's items in order, in a notebook (the book's executed cells)."""
    from IPython.display import display

    for item in items:
        display(item)
