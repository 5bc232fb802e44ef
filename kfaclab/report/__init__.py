"""A results chapter's paragraphs, tables and figures for any study, one module per concern.

The scaling, robustness and critical-batch chapters show the `miniature` study in prose and the
`gpu` study (the paper's model, run in borrowed GPU windows) beside it; both go through these
functions, so the two studies are measured, tabulated and judged alike. A study that has only
partly run is shown as partial: everything derived from steps or accuracies (charts, fits,
shares of a grid) uses only the (optimizer, batch size) cells whose runs have all finished, the
steps tables give the others' best so far, marked so, and a verdict waits for every run of the
optimizers it compares (kfaclab.results.verdicts.ready_verdicts).

Presentation only: it reads kfaclab.results and draws with kfaclab.plots.

Where each part lives: `report.study` (what ran, how far), `report.steps` (the scaling tables),
`report.critical_batch`, `report.robustness`, `report.device` (benches), and `report.sections`
(each chapter's section, in order, with its verdicts). This package re-exports them, so a
chapter's `report.scaling_section(study)` reads as before.
"""

from kfaclab.report.critical_batch import b_crit_lines, fit_table, fit_view
from kfaclab.report.device import device_bench_view, throughput_view
from kfaclab.report.robustness import (
    TOLERANCE,
    budgets_text,
    region_table,
    region_view,
    slope_lines,
)
from kfaclab.report.sections import (
    bracket_view,
    chapter_verdicts,
    critical_batch_section,
    robustness_section,
    scaling_section,
    show,
    width_section,
)
from kfaclab.report.steps import (
    efficiency_view,
    ratio_lines,
    ratio_table,
    ratio_view,
    reach_lines,
    steps_table,
    steps_view,
)
from kfaclab.report.study import (
    MODELS,
    NAMES,
    UNFINISHED,
    finished_runs_view,
    has_results,
    model_name,
    name,
    status_table,
    unfinished,
    what_ran,
    where_it_runs,
)
from kfaclab.results.study import (
    complete_cells,  # chapters take the finished cells from here too
)

__all__ = [
    "NAMES",
    "MODELS",
    "UNFINISHED",
    "name",
    "model_name",
    "unfinished",
    "has_results",
    "what_ran",
    "status_table",
    "where_it_runs",
    "finished_runs_view",
    "steps_table",
    "steps_view",
    "efficiency_view",
    "reach_lines",
    "ratio_table",
    "ratio_view",
    "ratio_lines",
    "fit_table",
    "fit_view",
    "b_crit_lines",
    "TOLERANCE",
    "budgets_text",
    "region_table",
    "region_view",
    "slope_lines",
    "device_bench_view",
    "throughput_view",
    "scaling_section",
    "robustness_section",
    "critical_batch_section",
    "width_section",
    "bracket_view",
    "chapter_verdicts",
    "show",
    "complete_cells",
]
