"""The critical-batch chapter's chart: the fitted S(B) = S_min (1 + B_crit / B) per optimizer, with bootstrap bands."""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from kfaclab.plots.style import (
    DASHED,
    DOTTED,
    SOLID,
    UNIT_TITLES,
    _color,
    _series,
    _target_param,
    _title,
    literal,
)
from kfaclab.results import (
    StudyResults,
    critical_batch_size,
    steps_curve,
)


def critical_batch_data(results: StudyResults, unit: str = "iterations", n_boot: int = 200):
    """Measured points, fitted curves and fitted B_crit per (optimizer, target), with B_crit's
    interval: rules version 3's 90% interval for the studies it judges, else versions 1-2's 68%
    bootstrap over grid points."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts_v3 import b_crit_intervals

    v3 = {t: b_crit_intervals(results, t) for t in results.targets} if judged_v3.is_v3(results) else None
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
            lo, hi = v3[t].get(opt, (np.nan,) * 3)[1:] if v3 is not None else fit["b_crit_interval"]
            fits.append({"optimizer": opt, "target": t, "b_crit": fit["b_crit"], "b_crit_lo": lo, "b_crit_hi": hi,
                         "s_min": fit["s_min"], "e_min": fit["e_min"], "rms_log_residual": fit["rms_log_residual"]})
    return pd.DataFrame(points), pd.DataFrame(curves), pd.DataFrame(fits)


def critical_batch_chart(results: StudyResults, unit: str = "iterations", n_boot: int = 200,
                         noise_scale: pd.DataFrame | None = None, width: int = 460, height: int = 320):
    """Measured steps-to-target (points), the fit S = S_min (1 + B_crit / B) (lines), and the
    fitted B_crit with its bootstrap interval (vertical rule and band). With `noise_scale`
    (optimizer, b_simple), the measured gradient noise scale is drawn as a dashed rule."""
    from kfaclab.results import judged_v3

    points, curves, fits = critical_batch_data(results, unit, n_boot)
    level, how = ("90%", "interval (rules version 3: pooled seed bootstrap, hull)") if judged_v3.is_v3(results) \
        else ("68%", "bootstrap interval over grid points")
    # Only the targets with a fit are offered: another would show an empty plot (with none, the
    # first target stays fixed and the plot shows its axes only).
    fitted = [t for t in results.targets if len(points) and (points["target"] == t).any()]
    target = _target_param(fitted or results.targets[:1])
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
            series=literal(series[0])).mark_line().encode(x=x, y=y, color=color, strokeDash=dash),
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
                series=literal(series[1])).mark_rule(strokeWidth=2).encode(
                x=alt.X("b_crit:Q", scale=xscale), color=color, strokeDash=dash,
                tooltip=["optimizer:N", alt.Tooltip("b_crit:Q", title="fitted B_crit", format=",.0f"),
                         alt.Tooltip("b_crit_lo:Q", title=f"{level} interval from", format=",.0f"),
                         alt.Tooltip("b_crit_hi:Q", title="to", format=",.0f"),
                         alt.Tooltip("s_min:Q", title="S_min", format=",.3~g")]),
        ]
    if noise_scale is not None and len(noise_scale):
        rule = alt.Chart(noise_scale)
        if "target" in noise_scale:  # measured where the runs reach each target: the selected one's
            rule = rule.transform_filter(alt.datum.target == target)
        layers.append(rule.transform_calculate(series=literal(series[2])).mark_rule(
            strokeWidth=2).encode(x=alt.X("b_simple:Q", scale=xscale), color=color, strokeDash=dash,
            tooltip=["optimizer:N", alt.Tooltip("b_simple:Q", title="gradient noise scale B_simple", format=",.0f")]))
    return alt.layer(*layers).add_params(target).properties(
        width=width, height=height,
        title=_title(alt.ExprRef("'Critical batch size at test accuracy ≥ ' + format(target, '.0%') + "
                                 "': S(B) = S_min (1 + B_crit / B)'"), results,
                     ["points: measured; solid: the fit; dashed rule and band: fitted B_crit and its " + level,
                      how + ("; dotted rule: the measured noise scale of plain "
                                                               "gradients" if len(series) > 2 else "")]))
