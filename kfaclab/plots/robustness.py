"""The robustness chapter's charts: accuracy over each grid under epoch and iteration budgets, the
high-accuracy region, and its width."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from kfaclab.plots.style import (
    GRID_LABELS,
    HEATMAP_AXES,
    MISSING_LABELS,
    _batch_axis,
    _color,
    _title,
    choice_param,
)
from kfaclab.results import (
    BUDGET_TYPES,
    StudyResults,
    accuracy_at_budget,
    high_accuracy_region,
)
from kfaclab.results.robustness import seed_medians


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
    # Only the budget types with an accuracy: another would show an empty (or all-grey) chart.
    measured = data[data["accuracy"].notna()] if "accuracy" in data else data
    have = [k for k, b in enumerate(BUDGET_TYPES) if (measured["budget_type"] == b).any()] or range(len(BUDGET_TYPES))
    return choice_param("budget_type", [BUDGET_TYPES[k] for k in have], "budget ", value="epochs",
                        labels=[labels[k] for k in have], radio=True)


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
    # The batch sizes with at least one accuracy (all of them while none has one).
    sizes = sorted({int(b) for b in data.loc[data["accuracy"].notna(), "batch_size"]}) or results.batch_sizes()
    # A select of the batch sizes themselves (a slider over log2 would show exponents).
    batch = choice_param("batch", sizes, "batch size ", labels=[f"{b:,}" for b in sizes])
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
    budget = choice_param("budget_type_region", [b for b in BUDGET_TYPES if (table["budget_type"] == b).any()]
                          or list(BUDGET_TYPES), "budget ", value="epochs", radio=True)
    return alt.Chart(table).transform_filter(alt.datum.budget_type == budget).mark_line(point=True).encode(
        x=_batch_axis(results.batch_sizes()),
        y=alt.Y("share:Q", title=f"share of grid within {tolerance:.0%} of the best", axis=alt.Axis(format=".0%"),
                scale=alt.Scale(domain=[0, 1])),
        color=_color(results.optimizers()),
        tooltip=["optimizer:N", alt.Tooltip("batch_size:Q", title="batch size"), "in_region:Q", "grid_points:Q",
                 alt.Tooltip("best_accuracy:Q", format=".3f"), alt.Tooltip("reference:Q", format=".3f")],
    ).add_params(budget).properties(width=width, height=height, title=_title("The high-accuracy region", results))


def width_chart(results: StudyResults, table: pd.DataFrame, width: int = 460, height: int = 280) -> alt.LayerChart:
    """Rules version 3's robustness: the width of each optimizer's good region (log2 of the
    effective learning rate over which accuracy stays within one point of its best) against the
    batch size, with 90% intervals; a censored width (its region reaches the end of its row) is
    a hollow point, a lower bound. `table` is kfaclab.results.verdicts_v3.width_table's."""
    data = table.rename(columns={"width (log2 effective lr)": "width"}).copy()
    data["kind"] = np.where(data["censored"], "censored (a lower bound)", "bracketed")
    base = alt.Chart(data).encode(x=_batch_axis(sorted(data["batch_size"].unique())),
                                  color=_color(data["optimizer"].unique()))
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
