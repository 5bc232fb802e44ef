"""Study specs: `runs/<study>/study.yaml`, validated and expanded into runs.

A spec names everything a study varies and fixes:

    name: cpu                      # the study's name (defaults to its folder)
    description: ...               # free text: what it reproduces, what it cannot
    fixed: {dataset: ..., ...}     # RunConfig fields shared by every run
    batch_sizes: [32, 64, ...]
    budget: {rule: {b0: 32, e0: 4}} | {epochs: E} | {iterations: N} | {examples: N}
    lr_scaling: {rule: linear, base_batch_size: 128}   # optional, default none
    targets: [0.5, 0.6]
    loss_targets: [1.4, 1.3]       # optional: training-loss targets, raced by kfaclab.results
    seeds: [0]
    optimizers:
      sgd:  {fixed: {weight_decay: 0.0005}, grid: {lr: [...], momentum: [...]}}
      kfac: {fixed: {...}, grid: {lr: [...], damping: [...]}}
    harvest_first: [sgd, kfac]     # optional: the harvest runs these optimizers' runs before the others'
    bracket: {max_steps: 2}        # optional: grow an (optimizer, batch size) grid whose optimum sits on
                                   # an edge (kfaclab.sweep.bracket; scales: {axis: log | one_minus_log |
                                   # linear} for axes not named in kfaclab.sweep.grid_axes)
    throughput:                    # optional: the model of what the study costs before it has runs
      source: ...                  # where the figures come from (assumed, or measured when/where)
      runs_sharing: 8              # runs in flight on one device
      epochs_per_second: {sgd: 2.0, kfac: 1.2}   # aggregate over those runs, per optimizer

Grid and fixed keys of an optimizer are its hyperparameters, or RunConfig fields (model,
train_subset, ...) where a study varies those. Every key is checked: unknown keys, wrong types
and empty grids are one-line errors naming the key and the file, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from kfaclab.errors import UsageError
from kfaclab.train.config import RunConfig

TOP_KEYS = {"name", "description", "fixed", "batch_sizes", "budget", "lr_scaling", "targets", "seeds",
            "optimizers", "throughput", "loss_targets", "harvest_first", "bracket"}
REQUIRED = ("batch_sizes", "budget", "optimizers")
OPTIMIZER_KEYS = {"fixed", "grid"}
BUDGETS = ("rule", "epochs", "iterations", "examples")
# Set by the spec's own sections, not in `fixed`:
OWNED = {"optimizer", "hparams", "batch_size", "budget", "budget_value", "rule_b0", "rule_e0", "lr_scaling",
         "lr_base_batch_size", "targets", "seed", "output"}


@dataclass
class Run:
    name: str  # readable, unique in the study: optimizer, batch size, grid values, seed, id
    run_id: str  # hash of the resolved config (RunConfig.run_id)
    config: RunConfig
    grid_point: dict  # the grid values of this run (for tables)


@dataclass
class Study:
    name: str
    path: Path  # the spec file
    description: str
    runs: list[Run]
    throughput: dict | None = None  # the spec's throughput model (see the module's text)
    loss_targets: list = dataclasses.field(default_factory=list)  # training-loss targets (results only)
    # Optimizers whose runs a harvest starts before any other's (kfaclab.sweep.harvest.teaching_order):
    # where the claims a study is for compare some of its optimizers, their grids finish first.
    harvest_first: list = dataclasses.field(default_factory=list)
    # Bracketing (kfaclab.sweep.bracket): {"max_steps": N, "scales": {axis: scale}}, or None.
    bracket: dict | None = None
    # What a run is made of (make_run): the spec's fixed settings, budget, scaling, targets, seeds
    # and each optimizer's fixed settings and grid.
    recipe: dict = dataclasses.field(default_factory=dict)
    # Per (optimizer, batch size): what bracketing found (kfaclab.sweep.bracket.grow fills it).
    bracket_cells: dict = dataclasses.field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.path.parent


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no study spec at {path}; give the path of a study.yaml (e.g. runs/smoke/study.yaml)")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    return parse_study(spec, path)


def parse_study(spec, path: Path) -> Study:
    where = str(path)

    def bad(key, msg):
        raise UsageError(f"{where}: {key}: {msg}")

    if not isinstance(spec, dict):
        raise UsageError(f"{where}: a study spec is a mapping of keys ({', '.join(sorted(TOP_KEYS))})")
    for k in spec:
        if k not in TOP_KEYS:
            bad(k, f"unknown key; a study spec has {', '.join(sorted(TOP_KEYS))}")
    for k in REQUIRED:
        if k not in spec:
            bad(k, "missing (required)")
    name = spec.get("name", path.parent.name)
    if not isinstance(name, str) or not name or "/" in name:
        bad("name", f"must be a non-empty name without '/', got {name!r}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        bad("description", "must be text")

    fixed = _mapping(spec.get("fixed", {}), "fixed", bad)
    for k in fixed:
        if k in OWNED:
            bad(f"fixed.{k}", f"is set by the spec's own sections ({_owner(k)}), not in fixed")
    batch_sizes = _list(spec["batch_sizes"], "batch_sizes", bad, int, positive=True)
    seeds = _list(spec.get("seeds", [0]), "seeds", bad, int)
    targets = _list(spec.get("targets", []), "targets", bad, (int, float), allow_empty=True)
    budget_fields = _budget(spec["budget"], bad)
    scaling = _lr_scaling(spec.get("lr_scaling", {"rule": "none"}), bad)

    optimizers = _mapping(spec["optimizers"], "optimizers", bad)
    if not optimizers:
        bad("optimizers", "is empty: name at least one optimizer with its grid")
    from kfaclab.optim import OPTIMIZERS

    config_fields = {f.name for f in dataclasses.fields(RunConfig)} - OWNED
    recipe = {"where": where, "fixed": fixed, "budget": budget_fields, "scaling": scaling, "targets": targets,
              "seeds": seeds, "batch_sizes": batch_sizes, "optimizers": {}}
    for opt_name, opt_spec in optimizers.items():
        key = f"optimizers.{opt_name}"
        if opt_name not in OPTIMIZERS:
            bad(key, f"unknown optimizer; choose from {', '.join(OPTIMIZERS)}")
        if opt_spec is None or opt_spec == {}:
            bad(key, "is empty: give its grid (e.g. grid: {lr: [0.1]}) or its fixed hyperparameters")
        opt_spec = _mapping(opt_spec, key, bad)
        for k in opt_spec:
            if k not in OPTIMIZER_KEYS:
                bad(f"{key}.{k}", "unknown key; an optimizer has fixed and grid")
        opt_fixed = _mapping(opt_spec.get("fixed", {}), f"{key}.fixed", bad)
        grid = _mapping(opt_spec.get("grid", {}), f"{key}.grid", bad)
        if "grid" in opt_spec and not grid:
            bad(f"{key}.grid", "is empty: give at least one hyperparameter with its values, or drop grid and set "
                "the hyperparameters in fixed")
        known = set(OPTIMIZERS[opt_name].defaults) | config_fields
        for section, values in (("fixed", opt_fixed), ("grid", grid)):
            for k in values:
                if k not in known:
                    bad(f"{key}.{section}.{k}", f"not a hyperparameter of {opt_name} nor a run setting; "
                        f"{opt_name} takes {', '.join(OPTIMIZERS[opt_name].defaults)}")
        for k, values in grid.items():
            _list(values, f"{key}.grid.{k}", bad, object)
        recipe["optimizers"][opt_name] = {"fixed": opt_fixed, "grid": grid}
    runs = RunList(recipe)
    if len(runs) <= EAGER_RUNS:
        runs = list(runs)  # every run made (and so every grid point checked) now, as it always was
        ids = [r.run_id for r in runs]
        if len(set(ids)) != len(ids):
            bad("optimizers", "two runs resolve to the same config (a grid repeats a value?)")
    else:
        runs.check_axes()
    throughput = _throughput(spec["throughput"], optimizers, bad) if "throughput" in spec else None
    # Raced from each run's history by kfaclab.results: not part of a run's config, so adding
    # them leaves every run id as it was.
    loss_targets = _list(spec.get("loss_targets", []), "loss_targets", bad, (int, float), positive=True,
                         allow_empty=True)
    first = _list(spec.get("harvest_first", []), "harvest_first", bad, str, allow_empty=True)
    for opt in first:
        if opt not in optimizers:
            bad("harvest_first", f"{opt!r} is not an optimizer of this study ({', '.join(optimizers)})")
    bracket = _bracket(spec["bracket"], optimizers, bad) if "bracket" in spec else None
    return Study(name, path, description, runs, throughput, [float(t) for t in loss_targets], list(first), bracket,
                 recipe)


# Up to this many runs a spec is expanded when it is loaded; beyond, its runs are made when asked
# (RunList), so that a dry run of a million runs, or a sweep's first run, does not wait for all.
EAGER_RUNS = 50_000


class RunList(Sequence):
    """A spec's runs in their order (optimizer, grid point, batch size, seed), each made when it
    is asked for; `keys()` walks them without making any. Runs added later (bracketing) follow."""

    def __init__(self, recipe: dict, extra: tuple = ()):
        self.recipe = recipe
        self.extra = tuple(extra)
        self.per_point = len(recipe["batch_sizes"]) * len(recipe["seeds"])
        self.blocks = []  # (optimizer, axes, values per axis, runs in the block)
        for opt, spec in recipe["optimizers"].items():
            axes = list(spec["grid"])
            values = [list(spec["grid"][a]) for a in axes]
            self.blocks.append((opt, axes, values, math.prod(len(v) for v in values) * self.per_point))
        self.base = sum(b[3] for b in self.blocks)
        # Grid axes that are run settings (train_subset, ...): they can change a run's budget.
        config_fields = {f.name for f in dataclasses.fields(RunConfig)} - OWNED
        self.config_axes = {a for _, axes, _, _ in self.blocks for a in axes if a in config_fields}

    def __len__(self) -> int:
        return self.base + len(self.extra)

    def key(self, i: int) -> tuple:
        """(optimizer, grid point, batch size, seed) of run i of the spec's own runs."""
        for opt, axes, values, size in self.blocks:
            if i < size:
                p, rest = divmod(i, self.per_point)
                b, s = divmod(rest, len(self.recipe["seeds"]))
                point = {}
                for a, vals in zip(reversed(axes), reversed(values)):  # the last axis varies fastest
                    p, j = divmod(p, len(vals))
                    point[a] = vals[j]
                point = {a: point[a] for a in axes}
                return opt, point, self.recipe["batch_sizes"][b], self.recipe["seeds"][s]
            i -= size
        raise IndexError(i)

    def keys(self):
        for i in range(self.base):
            yield self.key(i)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i >= self.base:
            return self.extra[i - self.base]
        return make_run(self.recipe, *self.key(i))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __add__(self, more) -> RunList:
        return RunList(self.recipe, self.extra + tuple(more))

    def check_axes(self) -> None:
        """Each grid value of each optimizer once, with the other axes at their first value: a
        bad value is a one-line error at load time, without making every run."""
        for opt, axes, values, _ in self.blocks:
            first = {a: v[0] for a, v in zip(axes, values)}
            for a, vals in zip(axes, values):
                for v in vals:
                    make_run(self.recipe, opt, {**first, a: v}, self.recipe["batch_sizes"][0], self.recipe["seeds"][0])
            for b in self.recipe["batch_sizes"]:
                make_run(self.recipe, opt, first, b, self.recipe["seeds"][0])


def make_run(recipe: dict, opt_name: str, point: dict, batch_size: int, seed: int) -> Run:
    """The run of one grid point (a configuration) at one batch size and seed, from the study's
    recipe; a bad hyperparameter is a one-line error naming the spec and the point."""
    from kfaclab.optim import resolve_hyperparameters

    where, key = recipe["where"], f"optimizers.{opt_name}"
    config_fields = {f.name for f in dataclasses.fields(RunConfig)} - OWNED
    settings = {**recipe["optimizers"][opt_name]["fixed"], **point}
    hp = {k: v for k, v in settings.items() if k not in config_fields}
    cfg_over = {k: v for k, v in settings.items() if k in config_fields}
    try:
        resolve_hyperparameters(opt_name, hp)
    except UsageError as e:
        raise UsageError(f"{where}: {key} {_describe(point)}: {e}") from None
    d = {**recipe["fixed"], **cfg_over, **recipe["budget"], **recipe["scaling"], "optimizer": opt_name, "hparams": hp,
         "batch_size": batch_size, "targets": recipe["targets"], "seed": seed}
    cfg = RunConfig.from_dict(d, where=f"{where}: {key} {_describe(point)} batch {batch_size}")
    run_id = cfg.run_id()
    return Run(_run_name(opt_name, batch_size, point, seed, run_id, cfg.batch_schedule), run_id, cfg, point)


def _bracket(value, optimizers, bad) -> dict:
    from kfaclab.sweep.grid_axes import SCALES, scale_of

    value = _mapping(value, "bracket", bad)
    for k in value:
        if k not in ("max_steps", "scales"):
            bad(f"bracket.{k}", "unknown key; bracket has max_steps and scales")
    steps = value.get("max_steps")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        bad("bracket.max_steps", f"must be a whole number >= 1 (grid steps added per side of an axis), got {steps!r}")
    scales = _mapping(value.get("scales", {}), "bracket.scales", bad)
    for axis, scale in scales.items():
        if scale not in SCALES:
            bad(f"bracket.scales.{axis}", f"must be one of {', '.join(SCALES)}, got {scale!r}")
    for opt_name, opt_spec in optimizers.items():
        for axis, values in (opt_spec.get("grid") or {}).items():
            if scale_of(axis, scales) is None:
                bad(f"optimizers.{opt_name}.grid.{axis}", "has no bracketing scale; give bracket.scales."
                    f"{axis}: {' | '.join(SCALES)}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                bad(f"optimizers.{opt_name}.grid.{axis}", "bracketing steps numeric axes only; its values must be "
                    "numbers")
            if len(values) < 3:
                bad(f"optimizers.{opt_name}.grid.{axis}", "needs at least three values to have an inside to "
                    "bracket")
    return {"max_steps": steps, "scales": dict(scales)}


def _throughput(value, optimizers, bad) -> dict:
    value = _mapping(value, "throughput", bad)
    for k in value:
        if k not in ("source", "runs_sharing", "epochs_per_second"):
            bad(f"throughput.{k}", "unknown key; throughput has source, runs_sharing and epochs_per_second")
    for k in ("source", "runs_sharing", "epochs_per_second"):
        if k not in value:
            bad(f"throughput.{k}", "missing (required)")
    if not isinstance(value["source"], str) or not value["source"].strip():
        bad("throughput.source", "must say where the figures come from")
    n = value["runs_sharing"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        bad("throughput.runs_sharing", f"must be a whole number >= 1, got {n!r}")
    eps = _mapping(value["epochs_per_second"], "throughput.epochs_per_second", bad)
    for opt, v in eps.items():
        if opt not in optimizers:
            bad(f"throughput.epochs_per_second.{opt}", f"not an optimizer of this study ({', '.join(optimizers)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            bad(f"throughput.epochs_per_second.{opt}", f"must be a positive number, got {v!r}")
    return {"source": value["source"].strip(), "runs_sharing": n,
            "epochs_per_second": {k: float(v) for k, v in eps.items()}}


def _owner(k):
    return {"optimizer": "optimizers", "hparams": "optimizers.<name>.fixed/grid", "batch_size": "batch_sizes",
            "budget": "budget", "budget_value": "budget", "rule_b0": "budget", "rule_e0": "budget",
            "lr_scaling": "lr_scaling", "lr_base_batch_size": "lr_scaling", "targets": "targets", "seed": "seeds",
            "output": "the sweep"}[k]


def _mapping(value, key, bad) -> dict:
    if not isinstance(value, dict):
        bad(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _list(value, key, bad, kind, positive=False, allow_empty=False) -> list:
    if not isinstance(value, list):
        bad(key, f"must be a list, got {value!r}")
    if not value and not allow_empty:
        bad(key, "is empty: give at least one value")
    for v in value:
        if kind is not object and (not isinstance(v, kind) or isinstance(v, bool)):
            bad(key, f"values must be {getattr(kind, '__name__', 'numbers')}, got {v!r}")
        if positive and not v > 0:
            bad(key, f"values must be positive, got {v!r}")
    if len(set(map(repr, value))) != len(value):
        bad(key, "repeats a value")
    return value


def _budget(value, bad) -> dict:
    value = _mapping(value, "budget", bad)
    if len(value) != 1 or next(iter(value)) not in BUDGETS:
        bad("budget", f"must be exactly one of {', '.join(BUDGETS)}, got {sorted(value)}")
    (kind, v), = value.items()
    if kind == "rule":
        v = _mapping(v, "budget.rule", bad)
        for k in v:
            if k not in ("b0", "e0"):
                bad(f"budget.rule.{k}", "unknown key; the stopping rule has b0 and e0")
        b0, e0 = v.get("b0", 128), v.get("e0", 100.0)
        if not (isinstance(b0, int) and b0 > 0):
            bad("budget.rule.b0", f"must be a positive whole number, got {b0!r}")
        if not (isinstance(e0, (int, float)) and e0 > 0):
            bad("budget.rule.e0", f"must be positive, got {e0!r}")
        return {"budget": "rule", "budget_value": None, "rule_b0": b0, "rule_e0": float(e0)}
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        bad(f"budget.{kind}", f"must be a positive number, got {v!r}")
    return {"budget": kind, "budget_value": float(v)}


def _lr_scaling(value, bad) -> dict:
    value = _mapping(value, "lr_scaling", bad)
    for k in value:
        if k not in ("rule", "base_batch_size"):
            bad(f"lr_scaling.{k}", "unknown key; lr_scaling has rule and base_batch_size")
    out = {"lr_scaling": value.get("rule", "none")}
    if "base_batch_size" in value:
        out["lr_base_batch_size"] = value["base_batch_size"]
    return out


def run_name_stem(recipe: dict, opt_name: str, point: dict, batch_size: int, seed: int) -> str:
    """A run's name without its id (the part after the last '-'), from the spec alone: what a
    large spec's dry run matches against the files in the folder before making any run."""
    schedule = point.get("batch_schedule", recipe["optimizers"][opt_name]["fixed"].get(
        "batch_schedule", recipe["fixed"].get("batch_schedule", "fixed")))
    return _run_name(opt_name, batch_size, point, seed, "", schedule)[:-1]


def _describe(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()) or "(no grid)"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("/", "_").replace(":", "_").replace(" ", "")


def _run_name(optimizer: str, batch_size: int, point: dict, seed: int, run_id: str, schedule: str = "fixed") -> str:
    # An adaptive batch schedule is part of the method's label (sgd+abs), as in kfaclab.results.
    label = optimizer if schedule == "fixed" else f"{optimizer}+{schedule}"
    parts = [label, f"b{batch_size}"] + [f"{k}{_fmt(v)}" for k, v in point.items() if k != "batch_schedule"]
    parts += [f"s{seed}", run_id[:6]]
    return "-".join(parts)


def cost_estimate(study: Study, steps_per_epoch) -> dict:
    """Iterations and examples of the whole study; `steps_per_epoch(cfg)` gives the training
    split's batches per epoch for a run (it needs the dataset size)."""
    from kfaclab.train.budget import total_iterations

    iters = examples = 0
    for r in study.runs:
        c = r.config
        spe = steps_per_epoch(c)
        n = total_iterations(c.budget, c.budget_value, c.batch_size, spe, c.rule_b0, c.rule_e0)
        iters += n
        examples += n * c.batch_size
    return {"runs": len(study.runs), "iterations": iters, "examples": examples}
