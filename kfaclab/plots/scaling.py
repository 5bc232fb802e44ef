"""The scaling chapter's charts: steps to a target against the batch size, with the ideal line, and learning curves."""

from __future__ import annotations

import altair as alt
import pandas as pd

from kfaclab.plots.style import (
    DASHED,
    SOLID,
    _batch_axis,
    _color,
    _series,
    _title,
    choice_param,
    goal_label,
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


def learning_curves(results: StudyResults, names: list[str], x: str = "epoch", width: int = 460,
                    height: int = 260) -> alt.Chart:
    """Test accuracy against `x` (epoch, iteration, examples, seconds) for the given runs."""
    ev = results.evals[results.evals["name"].isin(names)]
    return alt.Chart(ev).mark_line(point=True).encode(
        x=alt.X(f"{x}:Q", title=x), y=alt.Y("test_accuracy:Q", title="test accuracy"),
        color=alt.Color("name:N", title="run"), tooltip=["name:N", f"{x}:Q", alt.Tooltip("test_accuracy:Q",
                                                                                         format=".3f")],
    ).properties(width=width, height=height, title=_title("Test accuracy along training", results))
