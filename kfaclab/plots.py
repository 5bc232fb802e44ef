"""Altair charts of a study's results (fed by `kfaclab.results`; presentation only).

Every chart carries its data inline and its interactivity as Vega-Lite parameters bound to
HTML inputs (selectors, radio buttons, sliders), so it works in a static page with no kernel.
Axis titles carry units; batch sizes are on log2 axes labelled with the sizes themselves.

Offline pages: `write_vega_bundle` writes Vega, Vega-Lite and vega-embed as one script (from
vl-convert, no network), and `use_offline_renderer` makes charts render as HTML that calls that
script's `vegaEmbed`, so a page that serves the bundle itself needs nothing from a CDN. The
book does both (book/_ext/kfaclab_vega.py); in Jupyter the default renderer needs neither.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from kfaclab.results import (BUDGET_TYPES, UNITS, StudyResults, accuracy_at_budget, critical_batch_size,
                             high_accuracy_region, steps_curve, steps_to_target, with_ideal_scaling)
from kfaclab.results.robustness import seed_medians

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


def _target_param(targets):
    targets = [float(t) for t in targets]
    return alt.param(name="target", value=targets[0],
                     bind=alt.binding_select(options=targets, labels=[f"{t:.0%}" for t in targets],
                                             name="target test accuracy "))


# ---------------------------------------------------------------------- scaling

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


def goal_label(kind: str, target: float) -> str:
    """A target as the charts name it: "test accuracy >= 50%" or "training loss <= 1.4"."""
    return f"test accuracy ≥ {target:.0%}" if kind == "accuracy" else f"training loss ≤ {target:g}"


def scaling_data(results: StudyResults) -> pd.DataFrame:
    """Long format: one row per (optimizer, batch size, target, unit) with the measured steps,
    the ideal line and the best configuration; the accuracy targets, then the training-loss
    targets, each named by `goal` (goal_label)."""
    tables = [steps_to_target(results)]
    if results.loss_targets:
        tables.append(steps_to_target(results, kind="loss"))
    rows = []
    for table in tables:
        hp = [c for c in table.columns if c.startswith("hp_")]
        for unit in UNITS:
            t = with_ideal_scaling(table, unit)
            part = t[["optimizer", "batch_size", "kind", "target", "reached", "runs", "diverged", "failed",
                      "best_run", *hp]].copy()
            part["unit"], part["steps"], part["ideal"], part["efficiency"] = unit, t[unit], t["ideal"], t["efficiency"]
            rows.append(part)
    data = pd.concat(rows, ignore_index=True)
    data["goal"] = [goal_label(k, t) for k, t in zip(data["kind"], data["target"])]
    return data


# Line styles that tell a chart's series apart in its legend (the colour is the optimizer).
SOLID, DASHED, DOTTED = [1, 0], [6, 3], [2, 2]


def _series(domain: list[str], dashes: list[list[int]]) -> alt.StrokeDash:
    # Below the plot: a second legend on the right would widen the chart past the page's column.
    return alt.StrokeDash("series:N", title="line", scale=alt.Scale(domain=domain, range=dashes),
                          legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555", orient="bottom",
                                            direction="vertical"))


def scaling_chart(results: StudyResults, width: int = 460, height: int = 320) -> alt.LayerChart:
    """Steps to the target against batch size, log-log, one line per optimizer; the dotted line
    is perfect scaling from each optimizer's smallest batch size (steps halve per doubling)."""
    data = scaling_data(results)
    data = data[data["steps"].notna() | data["ideal"].notna()]
    goals = list(dict.fromkeys(data["goal"])) or [goal_label("accuracy", t) for t in results.targets]
    target = alt.param(name="goal", value=goals[0], bind=alt.binding_select(options=goals, name="target "))
    unit = alt.param(name="unit", value="iterations",
                     bind=alt.binding_radio(options=list(UNITS), name="measured in "))
    series = ["measured (best of the grid)", "perfect scaling"]
    dash = _series(series, [SOLID, DASHED])
    base = alt.Chart(data).transform_filter(
        (alt.datum.goal == target) & (alt.datum.unit == unit))
    x = _batch_axis(results.batch_sizes())
    y = alt.Y("steps:Q", scale=alt.Scale(type="log"), title="to the target (unit chosen below)")
    color = _color(results.optimizers())
    tooltip = [alt.Tooltip("optimizer:N"), alt.Tooltip("batch_size:Q", title="batch size"),
               alt.Tooltip("steps:Q", title="to target", format=",.4~g"),
               alt.Tooltip("efficiency:Q", title="scaling efficiency", format=".2f"),
               alt.Tooltip("reached:Q", title="grid points that reached it"),
               alt.Tooltip("best_run:N", title="best run")]
    measured = base.transform_filter(alt.datum.steps > 0).transform_calculate(series=f"'{series[0]}'").mark_line(
        point=True).encode(x=x, y=y, color=color, strokeDash=dash, tooltip=tooltip)
    ideal = base.transform_filter(alt.datum.ideal > 0).transform_calculate(series=f"'{series[1]}'").mark_line(
        opacity=0.7).encode(x=x, y=alt.Y("ideal:Q", scale=alt.Scale(type="log")), color=color, strokeDash=dash,
                            detail="optimizer:N")
    title = _title(alt.ExprRef("'Steps to ' + goal + ', in ' + unit"), results,
                   "solid: measured (best of the grid); dashed: perfect scaling")
    return alt.layer(measured, ideal).add_params(target, unit).properties(width=width, height=height, title=title)


# ---------------------------------------------------------------------- robustness

def robustness_data(results: StudyResults, budgets: dict | None = None) -> pd.DataFrame:
    """accuracy_at_budget for each budget type (default budgets unless given), one row per
    configuration (the median over its seeds: seed_medians), stacked."""
    budgets = budgets or {}
    parts = [seed_medians(accuracy_at_budget(results, b, budgets.get(b))) for b in BUDGET_TYPES]
    df = pd.concat(parts, ignore_index=True)
    return df


def _budget_param(results: StudyResults, data: pd.DataFrame):
    labels = []
    for b in BUDGET_TYPES:
        v = data.loc[data["budget_type"] == b, "budget"].iloc[0] if (data["budget_type"] == b).any() else None
        labels.append({"epochs": f"epoch budget ({v:g} epochs)" if v is not None else "epoch budget",
                       "iterations": f"iteration budget ({v:g} iterations)" if v is not None else "iteration budget",
                       "rule": "each run's own stopping-rule budget"}[b])
    return alt.param(name="budget_type", value="epochs",
                     bind=alt.binding_radio(options=list(BUDGET_TYPES), labels=labels, name="budget "))


def heatmap_axes(results: StudyResults, opt: str):
    """(x, y) columns of an optimizer's heatmap: the paper's pair where the study tunes it,
    else its first two grid keys; y is None for a one-dimensional grid."""
    keys = [f"hp_{k}" for k in results.grid_keys.get(opt, [])]
    preferred = HEATMAP_AXES.get(opt)
    if preferred and all(k in keys for k in preferred):
        return preferred
    if not keys:
        return None
    return keys[0], keys[1] if len(keys) > 1 else None


def robustness_heatmaps(results: StudyResults, budgets: dict | None = None, cell: int = 40):
    """Test accuracy over each optimizer's tuned grid (SGD: lr x momentum, K-FAC: lr x damping)
    at one batch size (select) under one budget (radio). Grey cells: no accuracy (failed,
    diverged before the budget, or not run)."""
    data = robustness_data(results, budgets)
    sizes = results.batch_sizes()
    # A select of the batch sizes themselves (a slider over log2 would show exponents).
    batch = alt.param(name="batch", value=sizes[0],
                      bind=alt.binding_select(options=sizes, labels=[f"{b:,}" for b in sizes], name="batch size "))
    budget = _budget_param(results, data)
    domain = [float(np.nanmin(data["accuracy"])) if data["accuracy"].notna().any() else 0.0,
              float(np.nanmax(data["accuracy"])) if data["accuracy"].notna().any() else 1.0]
    charts = []
    for opt in results.optimizers():
        axes = heatmap_axes(results, opt)
        if axes is None:
            continue
        xk, yk = axes
        d = data[data["optimizer"] == opt].copy()
        d["x"] = d[xk].map(lambda v: f"{v:g}")
        d["y"] = d[yk].map(lambda v: f"{v:g}") if yk else "(fixed)"
        xs = [f"{v:g}" for v in sorted(d[xk].unique())]
        ys = [f"{v:g}" for v in sorted(d[yk].unique(), reverse=True)] if yk else ["(fixed)"]
        enc = dict(x=alt.X("x:O", sort=xs, title=GRID_LABELS.get(xk, xk) + " (base, before batch scaling)"),
                   y=alt.Y("y:O", sort=ys, title=GRID_LABELS.get(yk, yk) if yk else None))
        # Every cell grey first; cells with an accuracy are coloured over it; the label says
        # the accuracy, or why there is none.
        d["label"] = [f"{a:.2f}" if np.isfinite(a) else MISSING_LABELS.get(st, "-")
                      for a, st in zip(d["accuracy"].astype(float), d["status"].astype(str))]
        d = d[["name", "status", "seeds", "x", "y", "label", "accuracy", "batch_size", "budget_type"]]
        base = alt.Chart(d).transform_filter(
            (alt.datum.batch_size == batch) & (alt.datum.budget_type == budget))
        background = base.mark_rect(color="#dddddd").encode(
            **enc, tooltip=[alt.Tooltip("name:N", title="run"), alt.Tooltip("status:N")])
        rect = base.transform_filter("isValid(datum.accuracy)").mark_rect().encode(
            **enc,
            color=alt.Color("accuracy:Q", title="test accuracy", scale=alt.Scale(scheme="viridis", domain=domain)),
            tooltip=[alt.Tooltip("name:N", title="run"), alt.Tooltip("status:N"), alt.Tooltip("seeds:Q"),
                     alt.Tooltip("accuracy:Q", title="test accuracy (median over seeds)", format=".3f")])
        text = base.mark_text(fontSize=10).encode(
            **enc, text="label:N",
            color=alt.condition(f"isValid(datum.accuracy) && datum.accuracy < {(domain[0] + domain[1]) / 2}",
                                alt.value("white"), alt.value("black")))
        charts.append(alt.layer(background, rect, text).properties(
            width=cell * len(xs), height=cell * len(ys), title=f"{opt}: test accuracy over its grid"))
    title = _title(alt.ExprRef("'Batch size ' + batch"), results,
                   "accuracy of each grid point at the chosen budget")
    # Two heatmaps side by side; more wrap two per row, or they would run past the page's column.
    grid = alt.hconcat(*charts) if len(charts) <= 2 else alt.concat(*charts, columns=2)
    return grid.add_params(batch, budget).resolve_scale(color="shared").properties(title=title)


def robustness_boxplots(results: StudyResults, budgets: dict | None = None, width: int = 460,
                        height: int = 280) -> alt.Chart:
    """Accuracy across each optimizer's grid per batch size (boxes), for the chosen budget."""
    data = robustness_data(results, budgets)
    data = data[data["accuracy"].notna()]
    budget = _budget_param(results, data if len(data) else robustness_data(results, budgets))
    return alt.Chart(data).transform_filter(alt.datum.budget_type == budget).mark_boxplot(extent="min-max").encode(
        x=alt.X("batch_size:O", title="batch size"),
        xOffset=alt.XOffset("optimizer:N"),
        y=alt.Y("accuracy:Q", title="test accuracy over the grid", scale=alt.Scale(zero=False)),
        color=_color(results.optimizers()),
    ).add_params(budget).properties(width=width, height=height,
                                    title=_title("Spread of accuracy across the tuned grid", results))


def region_chart(results: StudyResults, tolerance: float = 0.01, budgets: dict | None = None,
                 width: int = 460, height: int = 260) -> alt.Chart:
    """Share of the grid within `tolerance` of the optimizer's best accuracy, per batch size
    and budget type: the paper's 'high-accuracy region'."""
    table = high_accuracy_region(robustness_data(results, budgets), tolerance)
    budget = alt.param(name="budget_type_region", value="epochs",
                       bind=alt.binding_radio(options=list(BUDGET_TYPES), name="budget "))
    return alt.Chart(table).transform_filter(alt.datum.budget_type == budget).mark_line(point=True).encode(
        x=_batch_axis(results.batch_sizes()),
        y=alt.Y("share:Q", title=f"share of grid within {tolerance:.0%} of the best", axis=alt.Axis(format=".0%"),
                scale=alt.Scale(domain=[0, 1])),
        color=_color(results.optimizers()),
        tooltip=["optimizer:N", alt.Tooltip("batch_size:Q", title="batch size"), "in_region:Q", "grid_points:Q",
                 alt.Tooltip("best_accuracy:Q", format=".3f"), alt.Tooltip("reference:Q", format=".3f")],
    ).add_params(budget).properties(width=width, height=height, title=_title("The high-accuracy region", results))


# ---------------------------------------------------------------------- critical batch size

def width_chart(results: StudyResults, table: pd.DataFrame, width: int = 460, height: int = 280) -> alt.LayerChart:
    """Rules version 3's robustness: the width of each optimizer's good region (log2 of the
    effective learning rate over which accuracy stays within one point of its best) against the
    batch size, with 90% intervals; a censored width (its region reaches the end of its row) is
    a hollow point, a lower bound. `table` is kfaclab.results.verdicts_v3.width_table's."""
    data = table.rename(columns={"width (log2 effective lr)": "width"}).copy()
    data["kind"] = np.where(data["censored"], "censored (a lower bound)", "bracketed")
    base = alt.Chart(data).encode(x=_batch_axis(sorted(data["batch_size"].unique())), color=_color(data["optimizer"].unique()))
    bars = base.mark_rule().encode(y=alt.Y("low:Q", title="width of the good region (log2 of the effective lr)"),
                                   y2="high:Q")
    points = base.mark_point(size=70, filled=True).encode(
        y="width:Q", shape=alt.Shape("kind:N", title="width", scale=alt.Scale(
            domain=["bracketed", "censored (a lower bound)"], range=["circle", "triangle-up"])),
        tooltip=["optimizer:N", alt.Tooltip("batch_size:Q", title="batch size"),
                 alt.Tooltip("width:Q", title="width (log2)", format=".2f"), alt.Tooltip("low:Q", format=".2f"),
                 alt.Tooltip("high:Q", format=".2f"), "kind:N",
                 alt.Tooltip("KL clip bound (share of steps):Q", title="K-FAC steps clipped", format=".0%")])
    return alt.layer(bars, points).properties(width=width, height=height, title=_title(
        "Robustness as a width (rules version 3)", results, "90% intervals: pooled seed bootstrap, hull"))


def critical_batch_data(results: StudyResults, unit: str = "iterations", n_boot: int = 200):
    """Measured points, fitted curves and fitted B_crit per (optimizer, target)."""
    points, curves, fits = [], [], []
    sizes = results.batch_sizes()
    dense = np.exp(np.linspace(np.log(min(sizes)), np.log(max(sizes)), 60))
    for opt in results.optimizers():
        for t in results.targets:
            try:
                fit = critical_batch_size(results, opt, t, unit, n_boot=n_boot)
            except ValueError:
                continue
            for b, s in zip(fit["batch_sizes"], fit["steps"]):
                if np.isfinite(s):
                    points.append({"optimizer": opt, "target": t, "batch_size": b, "steps": s})
            for b, s in zip(dense, steps_curve(fit, dense)):
                curves.append({"optimizer": opt, "target": t, "batch_size": b, "steps": s})
            lo, hi = fit["b_crit_interval"]
            fits.append({"optimizer": opt, "target": t, "b_crit": fit["b_crit"], "b_crit_lo": lo, "b_crit_hi": hi,
                         "s_min": fit["s_min"], "e_min": fit["e_min"], "rms_log_residual": fit["rms_log_residual"]})
    return pd.DataFrame(points), pd.DataFrame(curves), pd.DataFrame(fits)


def critical_batch_chart(results: StudyResults, unit: str = "iterations", n_boot: int = 200,
                         noise_scale: pd.DataFrame | None = None, width: int = 460, height: int = 320):
    """Measured steps-to-target (points), the fit S = S_min (1 + B_crit / B) (lines), and the
    fitted B_crit with its bootstrap interval (vertical rule and band). With `noise_scale`
    (optimizer, b_simple), the measured gradient noise scale is drawn as a dashed rule."""
    points, curves, fits = critical_batch_data(results, unit, n_boot)
    target = _target_param(results.targets)
    # The axis spans the batch sizes, and the noise scale where it is drawn: a rule outside
    # the axis would be drawn outside the plot.
    span = list(results.batch_sizes())
    if noise_scale is not None and len(noise_scale):
        span += [float(v) for v in noise_scale["b_simple"] if np.isfinite(v) and v > 0]
    xscale = alt.Scale(type="log", base=2, domain=[min(span) / 1.2, max(span) * 1.2])
    x = alt.X("batch_size:Q", title="batch size", scale=xscale,
              axis=alt.Axis(values=[2 ** k for k in range(int(math.log2(min(span))), int(math.log2(max(span))) + 2)],
                            format="d"))
    color = _color(results.optimizers())
    series = ["fit S(B)", "fitted B_crit"] + (["noise scale B_simple"] if noise_scale is not None and len(noise_scale)
                                              else [])
    dash = _series(series, [SOLID, DASHED, DOTTED][:len(series)])
    y = alt.Y("steps:Q", scale=alt.Scale(type="log"), title=f"{UNIT_TITLES[unit]} to the target")
    layers = [
        alt.Chart(curves).transform_filter(alt.datum.target == target).transform_calculate(
            series=f"'{series[0]}'").mark_line().encode(x=x, y=y, color=color, strokeDash=dash),
        alt.Chart(points).transform_filter(alt.datum.target == target).mark_point(filled=True, size=50).encode(
            x=x, y=y, color=color, tooltip=["optimizer:N", alt.Tooltip("batch_size:Q", title="batch size"),
                                            alt.Tooltip("steps:Q", format=",.4~g")]),
    ]
    if len(fits):
        band = fits.assign(b_crit_lo=fits["b_crit_lo"].clip(lower=min(span) / 1.2),
                           b_crit_hi=fits["b_crit_hi"].clip(upper=max(span) * 1.2))
        in_view = band[(band["b_crit"] > min(span) / 1.2) & (band["b_crit"] < max(span) * 1.2)]
        layers += [
            alt.Chart(in_view).transform_filter(alt.datum.target == target).mark_rect(opacity=0.12).encode(
                x=alt.X("b_crit_lo:Q", scale=xscale), x2="b_crit_hi:Q", color=color),
            alt.Chart(in_view).transform_filter(alt.datum.target == target).transform_calculate(
                series=f"'{series[1]}'").mark_rule(strokeWidth=2).encode(
                x=alt.X("b_crit:Q", scale=xscale), color=color, strokeDash=dash,
                tooltip=["optimizer:N", alt.Tooltip("b_crit:Q", title="fitted B_crit", format=",.0f"),
                         alt.Tooltip("b_crit_lo:Q", title="68% interval from", format=",.0f"),
                         alt.Tooltip("b_crit_hi:Q", title="to", format=",.0f"),
                         alt.Tooltip("s_min:Q", title="S_min", format=",.3~g")]),
        ]
    if noise_scale is not None and len(noise_scale):
        layers.append(alt.Chart(noise_scale).transform_calculate(series=f"'{series[2]}'").mark_rule(
            strokeWidth=2).encode(x=alt.X("b_simple:Q", scale=xscale), color=color, strokeDash=dash,
            tooltip=["optimizer:N", alt.Tooltip("b_simple:Q", title="gradient noise scale B_simple", format=",.0f")]))
    return alt.layer(*layers).add_params(target).properties(
        width=width, height=height,
        title=_title("Critical batch size: S(B) = S_min (1 + B_crit / B)", results,
                     ["points: measured; solid: the fit; dashed rule and band: fitted B_crit and its 68%",
                      "bootstrap interval over grid points" + ("; dotted rule: the measured noise scale"
                                                               if len(series) > 2 else "")]))


def learning_curves(results: StudyResults, names: list[str], x: str = "epoch", width: int = 460,
                    height: int = 260) -> alt.Chart:
    """Test accuracy against `x` (epoch, iteration, examples, seconds) for the given runs."""
    ev = results.evals[results.evals["name"].isin(names)]
    return alt.Chart(ev).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x), y=alt.Y("test_accuracy:Q", title="test accuracy"),
        color=alt.Color("name:N", title="run"), tooltip=["name:N", f"{x}:Q", alt.Tooltip("test_accuracy:Q", format=".3f")],
    ).properties(width=width, height=height, title=_title("Test accuracy along training", results))


# ---------------------------------------------------------------------- adaptive batch sizes


def adaptive_curves_data(results: StudyResults) -> pd.DataFrame:
    """Test accuracy along training of each method's best configuration (all its seeds)."""
    from kfaclab.results.adaptive import best_run_names

    ev = results.evals[results.evals["name"].isin(best_run_names(results))].copy()
    ev["base_optimizer"] = ev["optimizer"].str.split("+").str[0]
    ev["schedule"] = ev["batch_schedule"]
    ev["run"] = ev["optimizer"] + ", seed " + ev["seed"].astype(str)
    return ev


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


def adaptive_curves_chart(results: StudyResults, width: int = 460, height: int = 280) -> alt.Chart:
    """Test accuracy against iterations (or epochs) for fixed batch, ABS and ABSA at their best
    learning rates; a select picks the optimizer, a radio the x axis."""
    data = adaptive_curves_data(results)
    optimizers = list(dict.fromkeys(data["base_optimizer"]))
    opt = alt.param(name="base_optimizer", value=optimizers[0],
                    bind=alt.binding_select(options=optimizers, name="optimizer "))
    axis = alt.param(name="x_axis", value="iteration",
                     bind=alt.binding_radio(options=["iteration", "epoch"], name="against "))
    long = data.melt(id_vars=[c for c in data.columns if c not in ("iteration", "epoch")],
                     value_vars=["iteration", "epoch"], var_name="axis", value_name="x")
    return alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=14)).encode(
        x=alt.X("x:Q", title="iterations or epochs (see the radio)"),
        y=alt.Y("test_accuracy:Q", title="test accuracy", scale=alt.Scale(zero=False)),
        color=alt.Color("schedule:N", title="batch schedule", sort=["fixed", "abs", "absa"]),
        strokeDash=_seed_dash(data["seed"]), detail="run:N",
        tooltip=["run:N", "schedule:N", alt.Tooltip("iteration:Q"), alt.Tooltip("epoch:Q", format=".2f"),
                 alt.Tooltip("current_batch_size:Q", title="batch size"),
                 alt.Tooltip("test_accuracy:Q", format=".3f")],
    ).transform_filter(
        (alt.datum.base_optimizer == opt) & (alt.datum.axis == axis)
    ).add_params(opt, axis).properties(width=width, height=height,
                                       title=_title("Test accuracy at each method's best learning rate", results))


def adaptive_trajectory_chart(results: StudyResults, width: int = 460, height: int = 170) -> alt.VConcatChart:
    """Per adaptive method (a select): the top eigenvalue measured after each epoch and the batch
    size of the epoch that follows, one line per learning rate and seed."""
    from kfaclab.results.adaptive import trajectories

    t = trajectories(results)
    # The rule acts after the last epoch too; that doubling never trains, so the batch-size
    # line keeps the last batch used.
    planned = results.runs.set_index("name")["planned_epochs"]
    after = t["epoch"] >= t["name"].map(planned)
    t["batch_size"] = t["batch_size"].where(~after, t.groupby("name")["batch_size"].shift(1))
    t["lr"] = t["lr"].astype(float)
    t["run"] = "lr " + t["lr"].map("{:g}".format) + ", seed " + t["seed"].astype(str)
    methods = list(dict.fromkeys(t["method"]))
    method = alt.param(name="adaptive_method", value=methods[0],
                       bind=alt.binding_select(options=methods, name="method "))
    base = alt.Chart(t).transform_filter(alt.datum.method == method).encode(
        x=alt.X("epoch:Q", title="epoch"), color=alt.Color("lr:O", title="learning rate"),
        strokeDash=_seed_dash(t["seed"]), detail="run:N",
        tooltip=["run:N", "epoch:Q", alt.Tooltip("eigenvalue:Q", format=".3g"), "action:N", "batch_size:Q",
                 "lr_multiplier:Q", alt.Tooltip("adv_ratio:Q", format=".3f")])
    eig = base.transform_filter("isValid(datum.eigenvalue)").mark_line(point=True).encode(
        y=alt.Y("eigenvalue:Q", title="top Hessian eigenvalue", scale=alt.Scale(type="log"))
    ).properties(width=width, height=height)
    batch = base.mark_line(interpolate="step-after").encode(
        y=alt.Y("batch_size:Q", title="batch size (in use)", scale=alt.Scale(type="log", base=2),
                axis=alt.Axis(values=sorted({int(b) for b in t["batch_size"].dropna()}), format="d"))
    ).properties(width=width, height=height)
    return alt.vconcat(eig, batch).add_params(method).properties(
        title=_title("The ABS rule at work", results, "eigenvalue after each epoch; the batch size that follows"))


def sharpness_chart(results: StudyResults, width: int = 460, height: int = 300) -> alt.Chart:
    """The top Hessian eigenvalue at the end of training against the batch size, per optimizer
    and learning rate (the sharp-minima picture)."""
    from kfaclab.results.adaptive import final_sharpness

    data = final_sharpness(results)
    data["lr"] = data["lr"].astype(float)
    points = alt.Chart(data).mark_point(filled=True, size=60).encode(
        x=_batch_axis(sorted(set(data["batch_size"]))),
        y=alt.Y("top_eigenvalue:Q", title="top Hessian eigenvalue at the end", scale=alt.Scale(type="log")),
        color=_color(list(dict.fromkeys(data["optimizer"]))),
        shape=alt.Shape("lr:O", title="base learning rate"),
        tooltip=["optimizer:N", "batch_size:Q", "lr:Q", alt.Tooltip("top_eigenvalue:Q", format=".3g"),
                 alt.Tooltip("final_accuracy:Q", format=".3f")],
    )
    line = alt.Chart(data).mark_line(opacity=0.5).encode(
        x=_batch_axis(sorted(set(data["batch_size"]))), y="median(top_eigenvalue):Q",
        color=_color(list(dict.fromkeys(data["optimizer"]))))
    return alt.layer(line, points).properties(width=width, height=height, title=_title(
        "Sharpness of the end point against the batch size", results,
        "points: each learning rate (completed runs); lines: median over learning rates"))


# ---------------------------------------------------------------------- offline rendering

VEGA_BUNDLE = "vega-bundle.js"


def vega_lite_version() -> str:
    """The Vega-Lite minor version Altair's schema targets, as vl-convert names it (v5.20)."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"v{major}.{minor}"


def write_vega_bundle(directory: str | Path) -> Path:
    """Write Vega + Vega-Lite + vega-embed as one script defining window.vegaEmbed."""
    import vl_convert

    path = Path(directory) / VEGA_BUNDLE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"/* Vega {vl_convert.get_vega_version()}, Vega-Lite {vega_lite_version()}, vega-embed "
              f"{vl_convert.get_vega_embed_version()}: bundled by vl-convert for offline pages */\n")
    # In a function scope: the bundle's top-level `const` names would otherwise be globals of
    # the page, clashing with any other classic script that declares the same short names.
    path.write_text(header + "(function () {\n" + vl_convert.javascript_bundle(vl_version=vega_lite_version())
                    + "\n})();\n")
    return path


def chart_html(spec: dict, div_id: str | None = None) -> str:
    """A chart as HTML that embeds itself with the page's own vegaEmbed (no external script)."""
    div_id = div_id or f"kfaclab-chart-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")  # no early </script>
    return f"""<div id="{div_id}" class="kfaclab-chart"></div>
<script type="text/javascript">
(function () {{
  var spec = {payload};
  function embed() {{
    var el = document.getElementById("{div_id}");
    if (!window.vegaEmbed) {{
      el.textContent = "This chart needs {VEGA_BUNDLE}, which this page did not load.";
      console.error("kfaclab: vegaEmbed is missing; serve {VEGA_BUNDLE} with the page");
      return;
    }}
    window.vegaEmbed(el, spec, {{actions: false, mode: "vega-lite", renderer: "svg"}}).catch(function (e) {{ console.error(e); }});
  }}
  if (document.readyState === "complete") {{ embed(); }} else {{ window.addEventListener("load", embed); }}
}})();
</script>"""


def _offline_renderer(spec: dict, **kwargs) -> dict:
    return {"text/html": chart_html(spec), "text/plain": "<Altair chart: needs the page's vega bundle>"}


def use_offline_renderer() -> None:
    """Render Altair charts as `chart_html` (for pages that serve VEGA_BUNDLE themselves)."""
    alt.renderers.register("kfaclab-offline", _offline_renderer)
    alt.renderers.enable("kfaclab-offline")


# ---------------------------------------------------------------------- step cost

PHASE_ORDER = ["forward_backward", "curvature_backward", "factor_statistics", "factor_update", "decompositions",
               "preconditioning", "sgd_update", "other"]


def phase_chart(table: pd.DataFrame, first: str | None = None, width: int = 340) -> alt.Chart:
    """Where K-FAC's amortized step goes, per phase (stacked), before and after, for each model,
    batch size and K-FAC variant of `kfaclab.bench.phase_table`; a select picks the model and
    batch size ("model, batch B"; `first` is the one shown first); a rule marks the SGD step of
    the same bench."""
    if table.empty:
        raise ValueError("no K-FAC phases in these benches: time a K-FAC optimizer with `kfaclab bench`")
    data = table.copy()
    data["workload"] = data["model"] + ", batch " + data["batch_size"].astype(str)
    data["row"] = data["optimizer"] + " (" + data["version"] + ")"
    cases = list(dict.fromkeys(data["workload"]))
    pick = alt.param(name="workload_pick", value=first if first in cases else cases[0],
                     bind=alt.binding_select(options=cases, name="model and batch: "))
    phases = [p for p in PHASE_ORDER if p in set(data["phase"])] + sorted(set(data["phase"]) - set(PHASE_ORDER))
    data["order"] = data["phase"].map({p: i for i, p in enumerate(phases)})
    rows = list(dict.fromkeys(data.sort_values(["optimizer", "version"], ascending=[True, False])["row"]))
    y = alt.Y("row:N", title=None, sort=rows, axis=alt.Axis(labelLimit=330))
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("sum(ms):Q", title="milliseconds per amortized step"), y=y,
        color=alt.Color("phase:N", title="phase", sort=phases, scale=alt.Scale(scheme="tableau10"),
                        legend=alt.Legend(orient="bottom", columns=4)),
        order=alt.Order("order:Q"),
        tooltip=["row:N", "phase:N", alt.Tooltip("ms:Q", format=".2f", title="ms per step"),
                 alt.Tooltip("step_ms:Q", format=".1f", title="amortized step, ms"),
                 alt.Tooltip("ratio_to_sgd:Q", format=".2f", title="x SGD (same bench)"), "hardware:N"],
    ).transform_filter(alt.datum.workload == pick)
    sgd = alt.Chart(data.dropna(subset=["sgd_ms"])).mark_rule(color="black", strokeDash=[4, 3]).encode(
        x="mean(sgd_ms):Q", detail="version:N",
        tooltip=["version:N", alt.Tooltip("mean(sgd_ms):Q", format=".1f", title="SGD step, ms")],
    ).transform_filter(alt.datum.workload == pick)
    return alt.layer(bars, sgd).add_params(pick).properties(
        width=width, title=alt.Title("Where a K-FAC step goes, before (a182562) and after",
                                     subtitle=["bench on this project's CPU (kfaclab bench, runs/bench); "
                                               "dashed: the SGD step of the same bench"]))


# ---------------------------------------------------------------------- the noisy quadratic model

def nqm_chart(curves: pd.DataFrame, fits: pd.DataFrame, first: dict | None = None, width: int = 460,
              height: int = 320) -> alt.LayerChart:
    """The NQM's steps to target against batch size (kfaclab.nqm.curve_table), with perfect
    scaling from the smallest batch size, the fit S_min (1 + B_crit / B) and the fitted B_crit;
    selects for the spectrum's decay, the preconditioning power and the momentum. Every curve
    is precomputed, so the static page needs no kernel."""
    first = {"decay": 1.0, "power": 0.0, "momentum": "tuned", **(first or {})}
    decays, powers = sorted(curves["decay"].unique()), sorted(curves["power"].unique())
    momenta = list(dict.fromkeys(curves["momentum"]))
    decay = alt.param(name="nqm_decay", value=float(first["decay"]), bind=alt.binding_select(
        options=[float(d) for d in decays], labels=[f"h_i = i^-{d:g}" for d in decays], name="curvature spectrum "))
    power = alt.param(name="nqm_power", value=float(first["power"]), bind=alt.binding_select(
        options=[float(p) for p in powers],
        labels=[{0.0: "0 (SGD)", 0.5: "1/2 (Adam-like)", 1.0: "1 (exact curvature, K-FAC-like)"}.get(p, f"{p:g}")
                for p in powers], name="preconditioning power p "))
    momentum = alt.param(name="nqm_momentum", value=str(first["momentum"]), bind=alt.binding_select(
        options=momenta, labels=[m if m == "tuned" else f"{m} (fixed)" for m in momenta], name="momentum "))
    pick = (alt.datum.decay == decay) & (alt.datum.power == power) & (alt.datum.momentum == momentum)
    bs = sorted(curves["batch_size"].unique())
    x = alt.X("batch_size:Q", title="batch size (the model's examples per step)",
              scale=alt.Scale(type="log", base=2, domain=[min(bs) / 1.2, max(bs) * 1.2]),
              axis=alt.Axis(values=[float(b) for b in bs[::4]], labelExpr="'2^' + round(log(datum.value) / log(2))"))
    y = alt.Y("value:Q", scale=alt.Scale(type="log"), title="steps to 1% of the initial loss")
    series = ["NQM (exact, tuned)", "perfect scaling", "fit S_min (1 + B_crit / B)", "fitted B_crit"]
    dash = _series(series, [SOLID, DASHED, DOTTED, [8, 4, 2, 4]])
    long = curves.melt(id_vars=["decay", "power", "momentum", "batch_size"], value_vars=["steps", "ideal", "fit"],
                       var_name="kind", value_name="value").dropna(subset=["value"])
    # The perfect-scaling line and the fit are drawn down to an eighth of the curve's fewest
    # steps, not to fractions of a step that would squash the curves into the top of the plot.
    fewest = curves.groupby(["decay", "power", "momentum"])["steps"].transform("min")
    floor = pd.concat([fewest] * 3, ignore_index=True).reindex(long.index) / 8
    long = long[(long["value"] > 0) & ((long["kind"] == "steps") | (long["value"] >= floor))]
    long["series"] = long["kind"].map({"steps": series[0], "ideal": series[1], "fit": series[2]})
    lines = alt.Chart(long).transform_filter(pick).mark_line(point=False).encode(
        x=x, y=y, strokeDash=dash, color=alt.value("#333"), detail="series:N",
        tooltip=[alt.Tooltip("series:N", title="line"), alt.Tooltip("batch_size:Q", title="batch size", format=",.0f"),
                 alt.Tooltip("value:Q", title="steps", format=",.4~g")])
    dots = alt.Chart(long[long["kind"] == "steps"]).transform_filter(pick).mark_point(
        filled=True, size=30, color="#333").encode(x=x, y=y)
    view = fits[(fits["b_crit"] >= min(bs) / 1.2) & (fits["b_crit"] <= max(bs) * 1.2)].assign(series=series[3])
    rule = alt.Chart(view).transform_filter(pick).mark_rule(strokeWidth=2, color="#d62728").encode(
        x=alt.X("b_crit:Q", scale=alt.Scale(type="log", base=2, domain=[min(bs) / 1.2, max(bs) * 1.2])),
        strokeDash=dash,
        tooltip=[alt.Tooltip("b_crit:Q", title="fitted B_crit", format=",.0f"),
                 alt.Tooltip("s_min:Q", title="S_min", format=",.3~g")])
    return alt.layer(lines, dots, rule).add_params(decay, power, momentum).properties(
        width=width, height=height,
        title=alt.Title("Noisy quadratic model: steps to target against batch size",
                        subtitle=["exact expected loss, 10,000 coordinates, noise covariance H / B; every learning",
                                  "rate tuned per batch size; not a measured run (kfaclab.nqm)"]))


def nqm_against_runs_data(results: StudyResults, curves: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The NQM set up as the studies tune (kfaclab.nqm.study_curves) and a study's steps to one
    accuracy target (the highest that SGD, Adam and K-FAC all reach at three or more batch sizes;
    steps as the verdicts count them: the grid's minimum of each configuration's median over
    seeds), each in units of its own SGD fit: batch size over SGD's B_crit, steps over SGD's
    S_min. Only shapes compare: the model's batch sizes are its own units."""
    from kfaclab import nqm
    from kfaclab.results.scaling import fit_steps_curve
    from kfaclab.results.verdicts import cells, primary_target

    curves = curves if curves is not None else nqm.study_curves()
    opts = [o for o in ("sgd", "adam", "kfac") if o in results.optimizers() and o in curves]
    rows = []
    ref = curves["sgd"]["fit"]
    for o in opts:
        r = curves[o]
        for b, s in zip(r["batch_sizes"], r["steps"]):
            if np.isfinite(s):
                rows.append({"optimizer": o, "source": "NQM (exact)", "batch_size": float(b), "steps": float(s),
                             "x": b / ref["b_crit"], "y": s / ref["s_min"]})
    target = primary_target(results, tuple(opts)) if opts else None
    info = {"target": target, "optimizers": opts}
    if target is not None:
        points = {(o, b): c.point() for (o, b), c in cells(results, "accuracy", target).items() if o in opts}
        sgd_b = sorted(b for (o, b) in points if o == "sgd")
        fit = fit_steps_curve(sgd_b, [points[("sgd", b)] for b in sgd_b])
        info.update(b_crit=fit["b_crit"], s_min=fit["s_min"])
        for (o, b), s in points.items():
            if np.isfinite(s):
                rows.append({"optimizer": o, "source": f"runs ({results.name})", "batch_size": float(b),
                             "steps": float(s), "x": b / fit["b_crit"], "y": s / fit["s_min"]})
    return pd.DataFrame(rows), info


def nqm_against_runs_chart(results: StudyResults, curves: dict | None = None, width: int = 460,
                           height: int = 320) -> alt.LayerChart:
    """Steps against batch size for SGD, Adam and K-FAC in the NQM (lines) and in a study's runs
    (points), each in units of its own SGD fit, so that the shapes can be held side by side."""
    data, info = nqm_against_runs_data(results, curves)
    sources = list(dict.fromkeys(data["source"]))
    dash = alt.StrokeDash("source:N", title="", scale=alt.Scale(domain=sources, range=[SOLID, DOTTED][:len(sources)]),
                          legend=alt.Legend(symbolType="stroke", symbolStrokeColor="#555", orient="bottom",
                                            direction="vertical"))
    view = data[(data["x"] >= 1 / 256) & (data["x"] <= 64)] if len(data) else data
    x = alt.X("x:Q", title="batch size / SGD's fitted B_crit (each in its own world)",
              scale=alt.Scale(type="log", base=2),
              axis=alt.Axis(values=[4.0 ** k for k in range(-4, 4)], format=".2~g"))
    y = alt.Y("y:Q", title="steps / SGD's fitted S_min", scale=alt.Scale(type="log"))
    color = _color(info["optimizers"])
    tooltip = ["optimizer:N", "source:N", alt.Tooltip("batch_size:Q", title="batch size", format=",.0f"),
               alt.Tooltip("steps:Q", format=",.4~g")]
    model = alt.Chart(view).transform_filter(alt.datum.source == "NQM (exact)").mark_line().encode(
        x=x, y=y, color=color, strokeDash=dash, tooltip=tooltip)
    runs = alt.Chart(view).transform_filter(alt.datum.source != "NQM (exact)").mark_line(point=True).encode(
        x=x, y=y, color=color, strokeDash=dash, tooltip=tooltip)
    goal = f"test accuracy ≥ {info['target']:.0%}" if info.get("target") is not None else "no shared target"
    return alt.layer(model, runs).properties(width=width, height=height, title=_title(
        "The NQM's shapes against the runs'", results,
        [f"lines: NQM set up as the study tunes (target 1% of the initial loss); points: runs, steps to {goal}",
         "both axes in units of each world's own SGD fit"]))
