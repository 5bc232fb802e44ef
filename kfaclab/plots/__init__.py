"""Altair charts of a study's results (fed by `kfaclab.results`; presentation only), one module per chapter.

Every chart carries its data inline and its interactivity as Vega-Lite parameters bound to
HTML inputs (selectors, radio buttons, sliders), so it works in a static page with no kernel.
Axis titles carry units; batch sizes are on log2 axes labelled with the sizes themselves.

Offline pages: `write_vega_bundle` writes Vega, Vega-Lite and vega-embed as one script (from
vl-convert, no network), and `use_offline_renderer` makes charts render as HTML that calls that
script's `vegaEmbed`, so a page that serves the bundle itself needs nothing from a CDN. The
book does both (book/_ext/kfaclab_vega.py); in Jupyter the default renderer needs neither.

Where each chart is drawn: `plots.scaling` (the scaling chapter), `plots.robustness`,
`plots.critical_batch`, `plots.adaptive`, `plots.phases` (K-FAC's step cost), `plots.exactness`,
`plots.nqm`;
`plots.style` holds what they share and `plots.vega` the offline rendering. This package
re-exports each chart, so `from kfaclab import plots; plots.scaling_chart(...)` reads as before.
"""

from kfaclab.plots.adaptive import (
    adaptive_curves_chart,
    adaptive_curves_data,
    adaptive_trajectory_chart,
    sharpness_chart,
)
from kfaclab.plots.critical_batch import critical_batch_chart, critical_batch_data
from kfaclab.plots.exactness import exactness_chart
from kfaclab.plots.nqm import nqm_against_runs_chart, nqm_against_runs_data, nqm_chart
from kfaclab.plots.phases import PHASE_ORDER, phase_chart
from kfaclab.plots.robustness import (
    heatmap_axes,
    region_chart,
    robustness_boxplots,
    robustness_data,
    robustness_heatmaps,
    width_chart,
)
from kfaclab.plots.scaling import learning_curves, scaling_chart, scaling_data
from kfaclab.plots.style import (
    DASHED,
    DATA_NAMES,
    DOTTED,
    GRID_LABELS,
    HEATMAP_AXES,
    MISSING_LABELS,
    OPTIMIZER_COLORS,
    SOLID,
    UNIT_TITLES,
    goal_label,
    study_label,
)
from kfaclab.plots.vega import (
    VEGA_BUNDLE,
    chart_html,
    use_offline_renderer,
    vega_lite_version,
    write_vega_bundle,
)

__all__ = [
    "exactness_chart",
    "OPTIMIZER_COLORS",
    "UNIT_TITLES",
    "GRID_LABELS",
    "MISSING_LABELS",
    "HEATMAP_AXES",
    "DATA_NAMES",
    "study_label",
    "goal_label",
    "SOLID",
    "DASHED",
    "DOTTED",
    "scaling_data",
    "scaling_chart",
    "learning_curves",
    "robustness_data",
    "heatmap_axes",
    "robustness_heatmaps",
    "robustness_boxplots",
    "region_chart",
    "width_chart",
    "critical_batch_data",
    "critical_batch_chart",
    "adaptive_curves_data",
    "adaptive_curves_chart",
    "adaptive_trajectory_chart",
    "sharpness_chart",
    "PHASE_ORDER",
    "phase_chart",
    "nqm_chart",
    "nqm_against_runs_data",
    "nqm_against_runs_chart",
    "VEGA_BUNDLE",
    "vega_lite_version",
    "write_vega_bundle",
    "chart_html",
    "use_offline_renderer",
]
