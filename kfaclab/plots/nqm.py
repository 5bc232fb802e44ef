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


def nqm_chart(curves: pd.DataFrame, fits: pd.DataFrame, first: dict | None = None, width: int = 460,
              height: int = 320) -> alt.LayerChart:
    """The NQM's steps to target against batch size (kfaclab.nqm.curve_table), with perfect
    scaling from the smallest batch size, the fit S_min (1 + B_crit / B) and the fitted B_crit;
    selects for the spectrum's decay, the preconditioning power and the momentum. Every curve
    is precomputed, so the static page needs no kernel."""
    first = {"decay": 1.0, "power": 0.0, "momentum": "tuned", **(first or {})}
    decays, powers = sorted(curves["decay"].unique()), sorted(curves["power"].unique())
    momenta = list(dict.fromkeys(curves["momentum"]))
    decay = choice_param("nqm_decay", [float(d) for d in decays], "curvature spectrum ", value=float(first["decay"]),
                         labels=[f"h_i = i^-{d:g}" for d in decays])
    power = choice_param(
        "nqm_power", [float(p) for p in powers], "preconditioning power p ", value=float(first["power"]),
        labels=[{0.0: "0 (SGD)", 0.5: "1/2 (Adam-like)", 1.0: "1 (exact curvature, K-FAC-like)"}.get(p, f"{p:g}")
                for p in powers])
    momentum = choice_param("nqm_momentum", momenta, "momentum ", value=str(first["momentum"]),
                            labels=[m if m == "tuned" else f"{m} (fixed)" for m in momenta])
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
