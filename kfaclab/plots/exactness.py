"""The K-FAC chapter's exactness chart: the cosine of K-FAC's step with the exact natural-gradient
step against the batch size, per model class, beside the plain gradient's."""

from __future__ import annotations

import altair as alt
import pandas as pd

from kfaclab.plots.style import DASHED, SOLID, _batch_axis, _series, choice_param

STATE_COLORS = {"init": "#1f77b4", "trained": "#d62728"}
# Facet headers short enough to sit over their panels (the file's long names go in the subtitle).
SHORT = {"mlp": "MLP 192-24-10", "resnet-bn": "ResNet-8 (1/4 width), BatchNorm",
         "resnet-nobn": "ResNet-8 (1/4 width), no BatchNorm"}


def exactness_chart(rows: pd.DataFrame, models: dict, width: int = 180, height: int = 200) -> alt.FacetChart:
    """Whole-model cosines (over all of K-FAC's layers) per model class, with a damping and a
    Fisher (exact or sampled) to choose; solid: K-FAC's step, dashed: the plain gradient."""
    whole = rows[rows["layer"] == "all K-FAC layers"]
    data = pd.concat([whole.assign(series="K-FAC", cosine=whole["kfac_cosine"]),  # `series`: the dash (style)
                      whole.assign(series="plain gradient", cosine=whole["gradient_cosine"])], ignore_index=True)
    data["model class"] = [SHORT.get(m, m) for m in data["model"]]
    dampings = sorted(float(d) for d in data["damping"].unique())
    damping = choice_param("damping", dampings, "damping ", value=dampings[len(dampings) // 2], radio=True)
    fisher = choice_param("fisher", sorted(data["fisher"].unique()), "K-FAC's Fisher ", value="exact", radio=True)
    chart = alt.Chart(data).mark_line(point=True).encode(
        x=_batch_axis(sorted(data["batch_size"].unique())),
        y=alt.Y("cosine:Q", title="cosine with the exact natural-gradient step", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("state:N", title="when", scale=alt.Scale(domain=list(STATE_COLORS),
                                                                range=list(STATE_COLORS.values())),
                        legend=alt.Legend(orient="bottom")),
        strokeDash=_series(["K-FAC", "plain gradient"], [SOLID, DASHED]).title("step"),
        detail="series:N",
        tooltip=["model class:N", "state:N", "batch_size:Q", alt.Tooltip("series:N", title="step"),
                 alt.Tooltip("cosine:Q", format=".3f"),
                 "damping:Q", "fisher:N", "parameters:Q"],
    ).add_params(damping, fisher).transform_filter(
        (alt.datum.damping == damping) & (alt.datum.fisher == fisher)
    ).properties(width=width, height=height)
    order = [SHORT.get(m, m) for m in models]
    return chart.facet(column=alt.Column("model class:N", title=None, sort=order)).properties(
        title=alt.Title("How exact K-FAC's step is, per model class",
                        subtitle=["runs/exactness: dense float64 Fisher of one batch of the synthetic 8x8 task; "
                                  "at initialisation and after 300 SGD steps",
                                  "; ".join(models.values())]))
