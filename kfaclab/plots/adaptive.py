"""The adaptive-batch chapter's charts (ABS, ABSA): accuracy against examples, the batch size's
trajectory, and the Hessian's top eigenvalue."""

from __future__ import annotations

import altair as alt
import pandas as pd

from kfaclab.plots.style import _batch_axis, _color, _seed_dash, _title, choice_param
from kfaclab.results import (
    StudyResults,
)


def adaptive_curves_data(results: StudyResults) -> pd.DataFrame:
    """Test accuracy along training of each method's best configuration (all its seeds)."""
    from kfaclab.results.adaptive import best_run_names

    ev = results.evals[results.evals["name"].isin(best_run_names(results))].copy()
    ev["base_optimizer"] = ev["optimizer"].str.split("+").str[0]
    ev["schedule"] = ev["batch_schedule"]
    ev["run"] = ev["optimizer"] + ", seed " + ev["seed"].astype(str)
    return ev


def adaptive_curves_chart(results: StudyResults, width: int = 460, height: int = 280) -> alt.Chart:
    """Test accuracy against iterations (or epochs) for fixed batch, ABS and ABSA at their best
    learning rates; a select picks the optimizer, a radio the x axis."""
    data = adaptive_curves_data(results)
    optimizers = list(dict.fromkeys(data["base_optimizer"]))
    opt = choice_param("base_optimizer", optimizers, "optimizer ")
    axis = choice_param("x_axis", ["iteration", "epoch"], "against ", radio=True)
    long = data.melt(id_vars=[c for c in data.columns if c not in ("iteration", "epoch")],
                     value_vars=["iteration", "epoch"], var_name="axis", value_name="x")
    # The axis spans the second half of training, where the methods differ by a few points; the
    # first epochs' low accuracies would squeeze them into a sliver (they run off the bottom).
    late = data[data["epoch"] >= data["epoch"].max() / 2]["test_accuracy"].dropna()
    acc = data["test_accuracy"].dropna()
    low = float(late.min() if len(late) else acc.min()) - 0.02
    domain = [max(0.0, low), min(1.0, float(acc.max()) + 0.01)]
    return alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=14), clip=True).encode(
        x=alt.X("x:Q", title="iterations or epochs (see the radio)"),
        y=alt.Y("test_accuracy:Q", title=f"test accuracy (axis from {domain[0]:.0%}; earlier points below it)",
                scale=alt.Scale(domain=domain, nice=False)),
        color=alt.Color("schedule:N", title="batch schedule",
                        sort=["fixed", "abs", "absa", "doubling", "doubling-adv"]),
        strokeDash=_seed_dash(data["seed"]), detail="run:N",
        tooltip=["run:N", "schedule:N", alt.Tooltip("iteration:Q"), alt.Tooltip("epoch:Q", format=".2f"),
                 alt.Tooltip("current_batch_size:Q", title="batch size"),
                 alt.Tooltip("test_accuracy:Q", format=".3f")],
    ).transform_filter(
        (alt.datum.base_optimizer == opt) & (alt.datum.axis == axis)
    ).add_params(opt, axis).properties(width=width, height=height, title=_title(
        alt.ExprRef('base_optimizer + ": test accuracy at each method\'s best learning rate"'), results))


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
    method = choice_param("adaptive_method", methods, "method ")
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
