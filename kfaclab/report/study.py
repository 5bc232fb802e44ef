"""What ran and how far it got: a study's data, model, budget and hardware in words, its runs by
status, and notices for a partial study."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import HTML, Markdown

from kfaclab import plots
from kfaclab.models import resnet_shape
from kfaclab.results import (
    status_counts,
)
from kfaclab.results.study import StudyResults

NAMES = {"sgd": "SGD", "kfac": "K-FAC", "adam": "Adam", "trcg": "TRCG", "strcg": "stochastic TRCG"}


MODELS = {"resnet20": "ResNet-20", "resnet32": "ResNet-32", "resnet56": "ResNet-56", "c1": "the AlexNet-like C1 net"}


UNFINISHED = ("pending", "interrupted")


def name(opt: str) -> str:
    return NAMES.get(opt, opt)


def model_name(model: str) -> str:
    """How prose names a model: "ResNet-20", "ResNet-14 at 0.5x width", "an MLP (mlp:256)"."""
    if model.startswith("mlp"):
        return f"an MLP ({model})"
    shape = resnet_shape(model)
    if shape is not None:
        depth, width = shape
        return f"ResNet-{depth}" + ("" if width == 1 else f" at {width:g}x width")
    return MODELS.get(model, model)


def unfinished(study: StudyResults) -> int:
    return int(study.runs["status"].isin(UNFINISHED).sum())


def has_results(study: StudyResults) -> bool:
    return bool(study.runs["status"].isin(["completed", "diverged"]).any())


def _arithmetic(finished: pd.DataFrame) -> list[str]:
    """How the finished runs computed, from their records: bf16 autocast, channels-last."""
    if finished.empty or "precision" not in finished:
        return []
    how = []
    for precision in sorted(set(finished["precision"].dropna()) - {"fp32"}):
        n = int((finished["precision"] == precision).sum())
        how.append(f"{precision} autocast" + ("" if n == len(finished) else f" in {n:,} of {len(finished):,} runs"))
    n = int(finished["channels_last"].fillna(False).astype(bool).sum()) if "channels_last" in finished else 0
    if n:
        how.append("channels-last" + ("" if n == len(finished) else f" in {n:,} of {len(finished):,} runs"))
    return how


def _hardware(finished: pd.DataFrame) -> str:
    gpus = sorted({str(g) for g in finished["gpu"].dropna()}) if "gpu" in finished else []
    cpus = sorted({str(c) for c in finished["cpu"].dropna()}) if "cpu" in finished else []
    how = _arithmetic(finished)
    if gpus:
        return f"{', '.join(gpus)} GPU" + (f" ({', '.join(how)})" if how else "")
    if not cpus:
        return "unknown hardware"
    cores = sorted({int(c) for c in finished["cpu_count"].dropna()}) if "cpu_count" in finished else []
    threads = sorted({int(t) for t in finished["threads"].dropna()}) if "threads" in finished else []
    detail = ([f"{' or '.join(map(str, cores))} cores"] if cores else []) + (
        [f"{' or '.join(map(str, threads))} thread{'s' if threads != [1] else ''} per run"] if threads else []) + how
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
    e0 = f"{rule['e0']} epoch{'' if rule['e0'] == 1 else 's'}" if rule else ""
    budget = (f"stopping rule with B0 = {rule['b0']} and E0 = {e0}" if rule else
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
    evals = finished["eval_seconds"].dropna() if "eval_seconds" in finished else pd.Series(dtype=float)
    if len(trained) and len(evals) and trained.sum() + evals.sum() > 0:
        # evaluation's share of the runs' wall time: what the evaluation schedule costs
        time += f", and evaluation took {evals.sum() / (trained.sum() + evals.sum()):.0%} of the runs' time"
    where = _hardware(finished) if len(finished) else "nothing yet"
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


def where_it_runs(study: StudyResults) -> str:
    """Where a study's runs are made, and by which rules they are judged, from its spec."""
    from kfaclab.results import judged_v3

    rules = "judged by rules version 3 (the verdicts chapter)" if judged_v3.is_v3(study) else \
        "judged by the same rules as the miniature"
    device = str((study.spec.get("fixed") or {}).get("device", "auto"))
    if device.startswith("cpu"):
        return f"it runs on a CPU, cell by cell (`scripts/run-v3.sh` for the version-3 studies), {rules}" \
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
