"""A study folder -> tidy pandas frames: one row per run, one row per evaluation.

With a spec (`study.yaml`), the runs are the spec's: a record counts only if its run id is the
spec's (a stale record of an older config is ignored), and runs without a record are listed
as `pending`, runs with only a `.failed.json` marker as `failed`. Without a spec (hand-made
or copied records) every `*.json` record in the folder is a run. Nothing is dropped: every
run appears in `runs` with its status, and the derived tables say how many of each status
they rest on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kfaclab.errors import UsageError
from kfaclab.train.record import read_record


def method(cfg: dict) -> str:
    """The label a run is compared under: its optimizer, with its batch-size schedule when that
    is adaptive ("sgd+abs", "kfac+absa"), so that adaptive runs never mix with fixed-batch runs of
    the same base batch size in steps-to-target tables."""
    schedule = cfg.get("batch_schedule", "fixed")
    return cfg["optimizer"] if schedule == "fixed" else f"{cfg['optimizer']}+{schedule}"


STATUSES = ("completed", "diverged", "failed", "interrupted", "pending")
# Statuses whose history is a result (a diverged run's evaluations before it diverged count).
FINISHED = ("completed", "diverged")


@dataclass
class StudyResults:
    name: str
    directory: Path
    description: str
    runs: pd.DataFrame  # one row per run
    evals: pd.DataFrame  # one row per evaluation of a finished run
    grid_keys: dict  # optimizer -> the hyperparameters its grid varies
    targets: list  # the study's target accuracies
    spec: dict  # fixed settings, batch sizes, budget, as the spec gives them (empty without one)
    loss_targets: list = field(default_factory=list)  # the study's training-loss targets
    # (file name, problem) of records that are there but not valid run records: counted as not
    # run (`pending`, with the problem in `error`), never dropped silently.
    malformed: list = field(default_factory=list)
    # Per (optimizer, batch size), what bracketing found (kfaclab.sweep.bracket): state
    # (bracketed | edge | running), configurations, grid steps added, edges left at the limit.
    # Empty for a study that does not bracket.
    bracket_cells: dict = field(default_factory=dict)

    def optimizers(self) -> list[str]:
        return list(dict.fromkeys(self.runs["optimizer"]))

    def batch_sizes(self) -> list[int]:
        return sorted(set(int(b) for b in self.runs["batch_size"]))


def load_results(path: str | Path) -> StudyResults:
    """Load `runs/<study>/` (or its `study.yaml`). Kept on disk by kfaclab.computed, keyed by the
    bytes of the spec and of every JSON file in the folder (all that is read here) and by the
    code: the book's chapters and the tests load the same studies again and again."""
    from kfaclab import computed

    path = Path(path)
    directory = path.parent if path.suffix in (".yaml", ".yml") else path
    if not directory.is_dir():
        raise UsageError(f"no study folder at {directory}; give runs/<study> or its study.yaml")
    spec_file = directory / "study.yaml"
    inputs = computed.files_fingerprint([spec_file, *directory.glob("*.json")])
    slot = f"results:{directory.resolve()}"
    results = computed.cached(slot, inputs, (lambda: _with_spec(spec_file)) if spec_file.exists()
                              else (lambda: _without_spec(directory)))
    # One entry per study however it is named (../runs/x from a chapter, an absolute path from
    # the book's data extension); the folder is the one field that depends on the name given
    # (tests/test_computed.py checks the others do not), so it is the caller's again here.
    return dataclasses.replace(results, directory=directory)


def _other_kind(path: Path) -> bool:
    data = _read(path)
    return isinstance(data, dict) and "kind" in data and data["kind"] != "kfaclab.run"


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _with_spec(spec_file: Path) -> StudyResults:
    import yaml

    from kfaclab.sweep.bracket import load_grown

    study = load_grown(spec_file)
    raw = yaml.safe_load(spec_file.read_text())
    rows, evals = [], []
    grid_keys: dict = {}
    malformed = []
    for run in study.runs:
        grid_keys.setdefault(method(run.config.to_dict()), [k for k in run.grid_point if k != "batch_schedule"])
        rec, problem = read_record(study.directory / f"{run.name}.json")
        if problem is not None:
            malformed.append((f"{run.name}.json", problem))
        if rec is not None and rec.get("run_id") != run.run_id:
            rec = None  # stale: another config under this name
        marker = _read(study.directory / f"{run.name}.failed.json")
        row = _row(run.name, run.run_id, run.config.to_dict(), run.grid_point, rec,
                   marker if marker and marker.get("run_id") == run.run_id else None)
        if rec is None:
            row.update(_planned(run))
        if problem is not None:
            row["error"] = f"malformed record: {problem}"
        rows.append(row)
        if rec is not None and rec.get("status") in FINISHED:
            evals += _eval_rows(row, rec)
    spec = {k: raw.get(k) for k in ("fixed", "batch_sizes", "budget", "lr_scaling", "seeds")}
    evals = _evals_frame(evals)
    loss_targets = [float(t) for t in study.loss_targets]
    return StudyResults(study.name, study.directory, study.description, _with_loss_crossings(_frame(rows), evals,
                                                                                           loss_targets),
                        evals, grid_keys, list(study.runs[0].config.targets), spec, loss_targets, malformed,
                        study.bracket_cells)


def _planned(run) -> dict:
    """A run's budget from its config alone (the record states it once the run has trained), so
    that budgets read across a study (the robustness chapter's common epoch and iteration
    budgets) do not move as a partly run study fills in. Empty where the dataset's size is not
    known without loading it."""
    from kfaclab.train.budget import TRAIN_SIZES, run_iterations

    c = run.config
    n_train = c.train_subset or TRAIN_SIZES.get(c.dataset)
    iters, _ = run_iterations(c)
    if not iters:
        return {}
    return {"planned_iterations": iters, "planned_epochs": iters / (n_train // c.batch_size)}


def loss_key(target: float) -> str:
    """The column suffix of a training-loss target: `iteration_to_loss1.5` beside the accuracy
    target's `iteration_to_0.5`."""
    return f"loss{target:g}"


def _with_loss_crossings(runs: pd.DataFrame, evals: pd.DataFrame, loss_targets: list) -> pd.DataFrame:
    """Adds, per training-loss target, the columns an accuracy target has (`reached_<key>`,
    `iteration_to_<key>`, ...): the first evaluation whose training loss (the running mean since
    the previous evaluation) is at or below the target. Records store only accuracy crossings,
    so these come from the evaluation history; an unfinished run has NaN, as for accuracy."""
    if not loss_targets:
        return runs
    runs = runs.copy()
    ev = evals[evals["train_loss"].notna()] if len(evals) else evals
    for t in loss_targets:
        key = loss_key(t)
        hit = ev[ev["train_loss"] <= t].sort_values("iteration").groupby("name").first() if len(ev) else None
        finished = runs["status"].isin(FINISHED)
        reached = runs["name"].isin(hit.index if hit is not None else [])
        runs[f"reached_{key}"] = reached.astype(object).where(finished, None)
        for unit, col in (("iteration", "iteration"), ("epoch", "epoch"), ("examples", "examples"),
                          ("seconds", "seconds"), ("propagations", "propagations")):
            values = runs["name"].map(hit[col]) if hit is not None else pd.Series(float("nan"), index=runs.index)
            runs[f"{unit}_to_{key}"] = values.where(finished)
    return runs


def _without_spec(directory: Path) -> StudyResults:
    records, malformed = [], []
    for p in sorted(directory.glob("*.json")):
        if p.name.endswith(".failed.json"):
            continue
        if _other_kind(p):
            continue  # another tool's JSON (a bench, a report): not a run record
        rec, problem = read_record(p)
        if problem is not None:
            malformed.append((p.name, problem))
        elif rec is not None:
            records.append((p.stem, rec))
    if not records and malformed:
        raise UsageError(f"{directory}: no valid run record; {malformed[0][0]} {malformed[0][1]}"
                         f"{f' (and {len(malformed) - 1} more)' if len(malformed) > 1 else ''}")
    if not records:
        raise UsageError(f"{directory}: no study.yaml and no run records (*.json); nothing to load")
    # The grid of an optimizer: the hyperparameters that vary between its runs.
    values: dict = {}
    for _, rec in records:
        for k, v in rec["config"]["hparams"].items():
            values.setdefault(method(rec["config"]), {}).setdefault(k, set()).add(json.dumps(v))
    grid_keys = {o: [k for k, vs in hp.items() if len(vs) > 1] for o, hp in values.items()}
    rows, evals = [], []
    for name, rec in records:
        cfg = rec["config"]
        point = {k: cfg["hparams"].get(k) for k in grid_keys.get(method(cfg), [])}
        row = _row(name, rec["run_id"], cfg, point, rec, None)
        rows.append(row)
        if rec.get("status") in FINISHED:
            evals += _eval_rows(row, rec)
    targets = sorted({t for _, rec in records for t in rec["config"]["targets"]})
    return StudyResults(directory.name, directory, "", _frame(rows), _evals_frame(evals),
                        grid_keys, targets, {}, [], malformed)


def _row(name, run_id, cfg: dict, point: dict, rec: dict | None, marker: dict | None) -> dict:
    status = rec["status"] if rec is not None else ("failed" if marker is not None else "pending")
    row = {"name": name, "run_id": run_id, "status": status, "optimizer": method(cfg),
           "base_optimizer": cfg["optimizer"], "batch_schedule": cfg.get("batch_schedule", "fixed"),
           "batch_size": cfg["batch_size"], "seed": cfg["seed"], "model": cfg["model"], "dataset": cfg["dataset"],
           # the arithmetic that ran (a record's config holds it resolved; records before it: fp32)
           "precision": cfg.get("precision", "fp32"), "channels_last": bool(cfg.get("channels_last"))}
    row.update({f"hp_{k}": v for k, v in point.items() if k != "batch_schedule"})
    if rec is not None:
        f, res = rec["final"], rec["resolved"]
        # the best accuracy of the whole test set: a sequential evaluation's early stops read a prefix
        n_test = res.get("test_examples")
        accs = [h["test_accuracy"] for h in rec["history"] if h.get("test_examples", n_test) == n_test]
        row.update(peak_lr=res.get("peak_lr"), planned_iterations=res["iterations"], planned_epochs=res["epochs"],
                   iterations=f["iteration"], epochs=f["epoch"], examples=f["examples"], seconds=f["seconds"],
                   eval_seconds=f.get("eval_seconds"),
                   propagations=rec["optimizer"].get("propagations"), final_accuracy=f["test_accuracy"],
                   # K-FAC's KL clip (rules version 3): how often it bound, and the effective rate
                   kl_clip_bound_share=rec["optimizer"].get("kl_clip_bound_share"),
                   effective_lr_geomean=rec["optimizer"].get("effective_lr_geomean"),
                   final_test_loss=f["test_loss"], best_accuracy=max(accs) if accs else None,
                   steps_per_epoch=res["steps_per_epoch"], train_examples=res["train_examples"],
                   test_examples=res.get("test_examples"),
                   device=rec["environment"].get("device"),
                   cpu=rec["environment"].get("cpu"), gpu=rec["environment"].get("gpu"),
                   cpu_count=rec["environment"].get("cpu_count"), threads=rec["environment"].get("torch_threads"))
        row["final_batch_size"] = rec["history"][-1].get("batch_size", cfg["batch_size"]) if rec["history"] \
            else cfg["batch_size"]
        adaptive = rec.get("adaptive")
        if adaptive is not None:
            log = adaptive["epochs"]
            row.update(max_batch=adaptive["max_batch"],
                       doublings_eigenvalue=sum(e["action"] == "eigenvalue" for e in log),
                       doublings_patience=sum(e["action"] == "patience" for e in log))
        for t in rec["targets"]:
            key = f"{t['test_accuracy']:g}"
            row[f"reached_{key}"] = t["reached"]
            for unit in ("iteration", "epoch", "examples", "seconds", "propagations"):
                row[f"{unit}_to_{key}"] = t[unit]
    row["error"] = (rec or {}).get("error") or (marker or {}).get("error")
    return row


def _eval_rows(row: dict, rec: dict) -> list[dict]:
    keep = {k: row[k] for k in row if k in ("name", "status", "optimizer", "batch_schedule", "batch_size", "seed")
            or k.startswith("hp_")}
    out = []
    for h in rec["history"]:
        e = {**keep, **{k: h[k] for k in ("iteration", "epoch", "examples", "seconds", "propagations", "lr",
                                          "train_loss", "test_loss", "test_accuracy")}}
        # Adaptive schedules: the batch size in use; any run: the top eigenvalue where measured.
        e["current_batch_size"] = h.get("batch_size", row["batch_size"])
        # how much of the test set the evaluation read (sequential evaluation; otherwise all of it)
        e["test_examples"] = h.get("test_examples", rec["resolved"].get("test_examples"))
        for k in ("adv_ratio", "top_eigenvalue"):
            if h.get(k) is not None:
                e[k] = h[k]
        noise = h.get("noise")
        if noise:
            e.update(noise_b_small=noise["b_small"], noise_b_big=noise["b_big"], noise_grad_sq=noise["grad_sq"],
                     noise_trace=noise["trace"])
        out.append(e)
    return out


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["status"] = pd.Categorical(df["status"], categories=STATUSES)
    return df


def _evals_frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["name", "status", "optimizer", "batch_size", "seed", "iteration", "epoch", "examples", "seconds",
            "propagations", "lr", "train_loss", "test_loss", "test_accuracy"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)


def finished(results: StudyResults) -> bool:
    """Whether every run of the study has a result (completed, diverged or failed): verdicts are
    drawn only from finished studies (book/verdicts.md)."""
    return not results.runs["status"].isin(["pending", "interrupted"]).any()


def complete_cells(results: StudyResults) -> StudyResults:
    """The study restricted to the (optimizer, batch size) cells whose runs have all finished
    (completed, diverged or failed): a minimum over part of a grid, or a share of part of it,
    would move as the rest arrives, so what is derived from a partly run study uses these."""
    runs = results.runs
    waiting = runs["status"].isin(["pending", "interrupted"]).groupby(
        [runs["optimizer"], runs["batch_size"]]).transform("any")
    if not waiting.any():
        return results
    keep = runs[~waiting]
    evals = results.evals[results.evals["name"].isin(set(keep["name"]))] if len(results.evals) else results.evals
    return dataclasses.replace(results, runs=keep.reset_index(drop=True), evals=evals.reset_index(drop=True))


def evidence(results: StudyResults) -> str:
    """What a study's intervals rest on, in words computed from its runs: seeds per
    configuration and test images per evaluation (with the binomial sampling error of one
    accuracy near 50%), so prose never states them by hand."""
    runs = results.runs
    seeds = sorted({int(s) for s in runs["seed"].dropna()})
    tests = sorted({int(n) for n in runs["test_examples"].dropna()}) if "test_examples" in runs else []
    n_seeds = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} per configuration"
    if not tests:
        return f"{n_seeds}; no run has finished"
    se = 100 * (0.25 / tests[0]) ** 0.5
    over = "grid points and seeds" if len(seeds) > 1 else "grid points only"
    return (f"{n_seeds}, {' or '.join(f'{n:,}' for n in tests)} test images (sampling error of one accuracy near "
            f"50%: ±{se:.1f} points); the intervals resample {over}")


def bracket_table(results: StudyResults) -> pd.DataFrame:
    """Per (optimizer, batch size): whether its grid brackets the optimum (interior), how many
    configurations it has, the grid steps bracketing added, and the edges still holding the
    optimum at the spec's limit (those cells are flagged wherever they are used)."""
    rows = [{"optimizer": o, "batch_size": b, "optimum": {"bracketed": "interior", "edge": "ON AN EDGE (limit)",
                                                          "running": "not yet known"}[c["state"]],
             "configurations": c["configurations"],
             "grid steps added": ", ".join(f"{k} +{n}" for k, n in c["steps"].items()) or "none",
             "edges at the limit": ", ".join(c["edges"]) or ""}
            for (o, b), c in sorted(results.bracket_cells.items())]
    return pd.DataFrame(rows)


def status_counts(results: StudyResults) -> pd.DataFrame:
    """Runs per optimizer and batch size by status: what every derived table rests on."""
    df = results.runs
    table = pd.crosstab([df["optimizer"], df["batch_size"]], df["status"], dropna=False)
    return table.reindex(columns=list(STATUSES), fill_value=0)
