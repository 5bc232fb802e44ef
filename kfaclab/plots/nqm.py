"""The NQM chapter's charts: the noisy quadratic model's steps-to-target curves, and its predictions
held against the runs."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from kfaclab.plots.style import DASHED, DOTTED, SOLID, _color, _series, _title, choice_param
from kfaclab.results import (
    StudyResults,
)

POWER_LABELS = {0.0: "p = 0 (SGD)", 0.5: "p = 1/2 (Adam-like)", 1.0: "p = 1 (exact curvature, K-FAC-like)"}
POWER_COLORS = {0.0: "#1f77b4", 0.25: "#17becf", 0.5: "#ff7f0e", 0.75: "#9467bd", 1.0: "#d62728"}


def nqm_chart(curves: pd.DataFrame, fits: pd.DataFrame, first: dict | None = None, width: int = 460,
              height: int = 320, target: str = "1% of the initial loss") -> alt.LayerChart:
    """The NQM's steps to target against batch size (kfaclab.nqm_tables.curve_table), every
    preconditioning power on one chart (a colour each), with perfect scaling from the smallest
    batch size (dashed) and the fitted B_crit (rules); selects for the spectrum's decay and the
    momentum. Every curve is precomputed, so the static page needs no kernel."""
    first = {"decay": 1.0, "momentum": "tuned", **(first or {})}
    decays = sorted(curves["decay"].unique())
    momenta = list(dict.fromkeys(curves["momentum"]))
    decay = choice_param("nqm_decay", [float(d) for d in decays], "curvature spectrum ", value=float(first["decay"]),
                         labels=[f"h_i = i^-{d:g}" for d in decays])
    momentum = choice_param("nqm_momentum", momenta, "momentum ", value=str(first["momentum"]),
                            labels=[m if m == "tuned" else f"{m} (fixed)" for m in momenta])
    pick = (alt.datum.decay == decay) & (alt.datum.momentum == momentum)
    powers = sorted(float(p) for p in curves["power"].unique())
    names = [POWER_LABELS.get(p, f"p = {p:g}") for p in powers]
    color = alt.Color("preconditioner:N", title="preconditioner H^-p",
                      scale=alt.Scale(domain=names, range=[POWER_COLORS.get(p, "#7f7f7f") for p in powers]),
                      legend=alt.Legend(orient="bottom", direction="vertical", symbolType="stroke",
                                        symbolStrokeWidth=3))
    bs = sorted(curves["batch_size"].unique())
    xscale = alt.Scale(type="log", base=2, domain=[min(bs) / 1.2, max(bs) * 1.2])
    x = alt.X("batch_size:Q", title="batch size (the model's examples per step)", scale=xscale,
              axis=alt.Axis(values=[float(b) for b in bs[::4]], labelExpr="'2^' + round(log(datum.value) / log(2))"))
    y = alt.Y("value:Q", scale=alt.Scale(type="log"), title=f"steps to {target}")
    series = ["NQM (exact, tuned)", "perfect scaling", "fitted B_crit"]
    dash = _series(series, [SOLID, DASHED, DOTTED])
    long = curves.melt(id_vars=["decay", "power", "momentum", "batch_size"], value_vars=["steps", "ideal"],
                       var_name="kind", value_name="value").dropna(subset=["value"])
    # The perfect-scaling line is drawn down to an eighth of the curve's fewest steps, not to
    # fractions of a step that would squash the curves into the top of the plot.
    fewest = long[long["kind"] == "steps"].groupby(["decay", "power", "momentum"])["value"].min().rename("fewest")
    long = long.join(fewest, on=["decay", "power", "momentum"])
    long = long[(long["value"] > 0) & ((long["kind"] == "steps") | (long["value"] >= long["fewest"] / 8))]
    long["series"] = long["kind"].map({"steps": series[0], "ideal": series[1]})
    long["preconditioner"] = [POWER_LABELS.get(float(p), f"p = {p:g}") for p in long["power"]]
    tooltip = [alt.Tooltip("preconditioner:N"), alt.Tooltip("series:N", title="line"),
               alt.Tooltip("batch_size:Q", title="batch size", format=",.0f"),
               alt.Tooltip("value:Q", title="steps", format=",.4~g")]
    lines = alt.Chart(long).transform_filter(pick).mark_line(point=False).encode(
        x=x, y=y, strokeDash=dash, color=color, detail="series:N", opacity=alt.condition(
            alt.datum.kind == "steps", alt.value(1.0), alt.value(0.45)), tooltip=tooltip)
    dots = alt.Chart(long[long["kind"] == "steps"]).transform_filter(pick).mark_point(
        filled=True, size=26).encode(x=x, y=y, color=color, tooltip=tooltip)
    view = fits[(fits["b_crit"] >= min(bs) / 1.2) & (fits["b_crit"] <= max(bs) * 1.2)].assign(series=series[2])
    view["preconditioner"] = [POWER_LABELS.get(float(p), f"p = {p:g}") for p in view["power"]]
    rule = alt.Chart(view).transform_filter(pick).mark_rule(strokeWidth=2).encode(
        x=alt.X("b_crit:Q", scale=xscale), color=color, strokeDash=dash,
        tooltip=[alt.Tooltip("preconditioner:N"), alt.Tooltip("b_crit:Q", title="fitted B_crit", format=",.0f"),
                 alt.Tooltip("s_min:Q", title="S_min", format=",.3~g")])
    return alt.layer(lines, dots, rule).add_params(decay, momentum).properties(
        width=width, height=height,
        title=alt.Title(alt.ExprRef("'Noisy quadratic model (not a study): steps to target, momentum ' + "
                                    "nqm_momentum"),
                        subtitle=["exact expected loss, 10,000 coordinates, noise covariance H / B; every learning",
                                  "rate tuned per batch size; each colour a preconditioning power (kfaclab.nqm)"]))


def nqm_against_runs_data(results: StudyResults, curves: dict | None = None) -> tuple[pd.DataFrame, dict]:
    """The NQM set up as the studies tune (kfaclab.nqm.study_curves) and a study's steps to one
    accuracy target (the highest that SGD, Adam and K-FAC all reach at three or more batch sizes;
    steps as the verdicts count them: the grid's minimum of each configuration's median over
    seeds), each in units of its own SGD fit: batch size over SGD's B_crit, steps over SGD's
    S_min. Only shapes compare: the model's batch sizes are its own units."""
    from kfaclab import nqm
    from kfaclab.results.bootstrap import cells, primary_target
    from kfaclab.results.scaling import fit_steps_curve

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
