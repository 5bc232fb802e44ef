"""The K-FAC chapter's chart: where a K-FAC step's time goes, phase by phase."""

from __future__ import annotations

import altair as alt
import pandas as pd

from kfaclab.plots.style import choice_param

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
    pick = choice_param("workload_pick", cases, "model and batch: ", value=first)
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
