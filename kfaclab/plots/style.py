"""What every chart shares: the optimizers' colours, axis titles, batch-size axes, and titles that name the study."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd

from kfaclab.results import (
    StudyResults,
)

OPTIMIZER_COLORS = {"sgd": "#1f77b4", "kfac": "#d62728", "adam": "#ff7f0e", "trcg": "#2ca02c", "strcg": "#9467bd"}


UNIT_TITLES = {"iterations": "iterations", "epochs": "epochs", "examples": "examples",
               "seconds": "training seconds", "propagations": "propagations (2n per forward+backward over n)"}


GRID_LABELS = {"hp_lr": "learning rate", "hp_momentum": "momentum", "hp_damping": "damping",
               "hp_radius": "trust radius", "hp_eps": "epsilon"}


# What a heatmap cell without an accuracy says (the tooltip gives the full status).
MISSING_LABELS = {"failed": "fail", "diverged": "div", "pending": "-", "interrupted": "-", "completed": "-"}


# The grid each optimizer's heatmap shows (x, y): the paper's pairs.
HEATMAP_AXES = {"sgd": ("hp_lr", "hp_momentum"), "kfac": ("hp_lr", "hp_damping"), "adam": ("hp_lr", "hp_eps")}


def _color(optimizers):
    opts = list(optimizers)
    return alt.Color("optimizer:N", title="optimizer",
                     scale=alt.Scale(domain=opts, range=[OPTIMIZER_COLORS.get(o, "#7f7f7f") for o in opts]))


def _batch_axis(batch_sizes, title="batch size"):
    return alt.X("batch_size:Q", title=title,
                 scale=alt.Scale(type="log", base=2, domain=[min(batch_sizes) / 1.2, max(batch_sizes) * 1.2]),
                 axis=alt.Axis(values=list(batch_sizes), format="d"))


def choice_param(name: str, options: list, label: str, value=None, labels: list[str] | None = None,
                 radio: bool = False):
    """A chart parameter bound to a select (or radio buttons) over `options` (with `labels`, one
    per option), bound only where there is a choice: an input with one option, or with options
    the data does not have, changes nothing on the page, so callers pass the values their data
    has, and a single value stays a fixed parameter (the chart's title says which)."""
    if labels is not None and len(labels) != len(options):
        raise ValueError(f"chart parameter {name!r}: {len(labels)} labels for {len(options)} options")
    pairs: dict = {}
    for option, text in zip(options, labels if labels is not None else options):
        pairs.setdefault(option, text)  # a repeated option keeps its first label
    if not pairs:
        raise ValueError(f"chart parameter {name!r}: no values to choose from")
    options = list(pairs)
    value = options[0] if value is None or value not in pairs else value
    if len(options) < 2:
        return alt.param(name=name, value=value)
    kw = {"options": options, "name": label}
    if labels is not None:
        kw["labels"] = [str(v) for v in pairs.values()]
    return alt.param(name=name, value=value, bind=(alt.binding_radio if radio else alt.binding_select)(**kw))


def _target_param(targets):
    targets = [float(t) for t in targets]
    return choice_param("target", targets, "target test accuracy ", labels=[f"{t:.0%}" for t in targets])


DATA_NAMES = {"cifar10-jpeg": "CIFAR-10 (JPEG q75 copy)", "cifar10": "CIFAR-10", "svhn": "SVHN",
              "synthetic": "synthetic images"}


def study_label(results: StudyResults) -> str:
    """Which study a chart shows, in one line: its name, model, data and resolution, and the
    hardware that ran it, so that a figure lifted out of the book cannot pass for the paper's."""
    runs = results.runs
    models = ", ".join(sorted({str(m) for m in runs["model"].dropna()})) if "model" in runs else "?"
    data = ", ".join(sorted({DATA_NAMES.get(str(d), str(d)) for d in runs["dataset"].dropna()})) \
        if "dataset" in runs else "?"
    r = (results.spec.get("fixed") or {}).get("resolution")
    size = f" at {r}x{r}" if r else ""
    gpus = sorted({str(g) for g in runs["gpu"].dropna()}) if "gpu" in runs else []
    cpus = sorted({str(c) for c in runs["cpu"].dropna()}) if "cpu" in runs else []
    hardware = f"GPU: {', '.join(gpus)}" if gpus else (f"CPU: {', '.join(cpus)}" if cpus else "not run yet")
    return f"study '{results.name}': {models} on {data}{size}; {hardware}"


def _title(text, results: StudyResults, subtitle: str | list[str] | None = None) -> alt.Title:
    """A chart's title, its subtitle lines (a list for several: a long line would widen the
    chart past the page's column) and, last, the study it shows."""
    lines = [subtitle] if isinstance(subtitle, str) else list(subtitle or [])
    return alt.Title(text, subtitle=lines + [study_label(results)])


def literal(text: str) -> str:
    """A string as a Vega expression literal: quoted and escaped, so a name with an apostrophe
    ("the best configuration's seeds") cannot end the expression early."""
    return json.dumps(text)


def goal_label(kind: str, target: float) -> str:
    """A target as the charts name it: "test accuracy >= 50%" or "training loss <= 1.4"."""
    return f"test accuracy ≥ {target:.0%}" if kind == "accuracy" else f"training loss ≤ {target:g}"


def _series(domain: list[str], dashes: list[list[int]]) -> alt.StrokeDash:
    # Below the plot: a second legend on the right would widen the chart past the page's column.
    return alt.StrokeDash("series:N", title="line", scale=alt.Scale(domain=domain, range=dashes),
                          legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555", orient="bottom",
                                            direction="vertical"))


def _seed_dash(seeds) -> alt.StrokeDash:
    """One line style per seed, so runs of one colour (a schedule, a learning rate) that differ
    only in their seed stay apart, and the legend says which is which."""
    values = sorted({int(v) for v in pd.Series(seeds).dropna()})
    styles = [SOLID, DASHED, DOTTED, [8, 2, 2, 2], [1, 3]]
    return alt.StrokeDash("seed:O", title="seed", scale=alt.Scale(domain=values,
                                                                  range=[styles[k % len(styles)] for k in
                                                                         range(len(values))]),
                          legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555", orient="bottom",
                                            direction="horizontal"))


# Line styles that tell a chart's series apart in its legend (the colour is the optimizer).
SOLID, DASHED, DOTTED = [1, 0], [6, 3], [2, 2]
