"""The scaling chapter's charts: steps to a target against the batch size, with the ideal line, and learning curves."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from kfaclab.plots.style import (
    DASHED,
    DOTTED,
    SOLID,
    _batch_axis,
    _color,
    _series,
    _title,
    choice_param,
    goal_label,
    literal,
)
from kfaclab.results import (
    UNITS,
    StudyResults,
    steps_to_target,
    with_ideal_scaling,
)


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
            # The best configuration's range over its seeds, measured in iterations, carried to the
            # units proportional to them at a fixed batch size (not to seconds).
            scale = t[unit] / t["iterations"] if unit != "seconds" else np.nan
            part["seed_low"], part["seed_high"] = t["seed_low"] * scale, t["seed_high"] * scale
            rows.append(part)
    data = pd.concat(rows, ignore_index=True)
    data["goal"] = [goal_label(k, t) for k, t in zip(data["kind"], data["target"])]
    return data


def scaling_chart(results: StudyResults, width: int = 460, height: int = 320) -> alt.LayerChart:
    """Steps to the target against batch size, log-log, one line per optimizer; the dotted line
    is perfect scaling from each optimizer's smallest batch size (steps halve per doubling)."""
    data = scaling_data(results)
    data = data[data["steps"].notna() | data["ideal"].notna()]
    goals = list(dict.fromkeys(data["goal"])) or [goal_label("accuracy", t) for t in results.targets]
    target = choice_param("goal", goals, "target ")
    unit = choice_param("unit", [u for u in UNITS if (data["unit"] == u).any()] or list(UNITS), "measured in ",
                        value="iterations", radio=True)
    series = ["measured (best of the grid)", "perfect scaling", "range over the best configuration's seeds"]
    dash = _series(series, [SOLID, DASHED, DOTTED])
    base = alt.Chart(data).transform_filter(
        (alt.datum.goal == target) & (alt.datum.unit == unit))
    x = _batch_axis(results.batch_sizes())
    # The axis fits the data shown (no rounding out to whole decades, which left most of it empty).
    y = alt.Y("steps:Q", scale=alt.Scale(type="log", nice=False, padding=8), title="to the target (unit chosen below)")
    color = _color(results.optimizers())
    tooltip = [alt.Tooltip("optimizer:N"), alt.Tooltip("batch_size:Q", title="batch size"),
               alt.Tooltip("steps:Q", title="to target", format=",.4~g"),
               alt.Tooltip("efficiency:Q", title="scaling efficiency", format=".2f"),
               alt.Tooltip("reached:Q", title="grid points that reached it"),
               alt.Tooltip("best_run:N", title="best run")]
    measured = base.transform_filter(alt.datum.steps > 0).transform_calculate(series=literal(series[0])).mark_line(
        point=True).encode(x=x, y=y, color=color, strokeDash=dash, tooltip=tooltip)
    ideal = base.transform_filter(alt.datum.ideal > 0).transform_calculate(series=literal(series[1])).mark_line(
        opacity=0.7).encode(x=x, y=alt.Y("ideal:Q", scale=alt.Scale(type="log")), color=color, strokeDash=dash,
                            detail="optimizer:N")
    spread = base.transform_filter(
        (alt.datum.seed_high > alt.datum.seed_low) & (alt.datum.seed_low > 0)).transform_calculate(
        series=literal(series[2])).mark_rule(strokeWidth=2).encode(
        x=x, y=alt.Y("seed_low:Q", scale=alt.Scale(type="log")), y2="seed_high:Q", color=color, strokeDash=dash,
        tooltip=[alt.Tooltip("optimizer:N"), alt.Tooltip("batch_size:Q", title="batch size"),
                 alt.Tooltip("seed_low:Q", title="fastest seed", format=",.4~g"),
                 alt.Tooltip("seed_high:Q", title="slowest seed", format=",.4~g")])
    title = _title(alt.ExprRef("'Steps to ' + goal + ', in ' + unit"), results,
                   ["solid: measured (best of the grid, median over seeds); dashed: perfect scaling;",
                    "dotted bars: the best configuration's fastest to slowest seed (none in seconds)"])
    return alt.layer(measured, ideal, spread).add_params(target, unit).properties(width=width, height=height,
                                                                                  title=title)


def learning_curves(results: StudyResults, names: list[str], x: str = "epoch", width: int = 460,
                    height: int = 260) -> alt.Chart:
    """Test accuracy against `x` (epoch, iteration, examples, seconds) for the given runs."""
    ev = results.evals[results.evals["name"].isin(names)]
    return alt.Chart(ev).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x), y=alt.Y("test_accuracy:Q", title="test accuracy"),
        color=alt.Color("name:N", title="run"), tooltip=["name:N", f"{x}:Q", alt.Tooltip("test_accuracy:Q",
                                                                                         format=".3f")],
    ).properties(width=width, height=height, title=_title("Test accuracy along training", results))
