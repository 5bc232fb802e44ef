"""Each results chapter's section for one study, in order, with its verdicts under the rules that judge the study."""

from __future__ import annotations

from IPython.display import Markdown

from kfaclab import plots
from kfaclab.report.critical_batch import b_crit_lines, fit_chart, fit_table, fit_view
from kfaclab.report.robustness import (
    TOLERANCE,
    budgets_text,
    region_table,
    region_view,
    slope_lines,
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
    _not_yet,
    _partial,
    finished_runs_view,
    has_results,
    status_table,
    what_ran,
)
from kfaclab.results import (
    default_budget,
)
from kfaclab.results.study import StudyResults, complete_cells


def _no_grid_yet(study: StudyResults, claims: str) -> list | None:
    """While no (optimizer, batch size) grid has finished, the runs that have, and nothing
    derived from a minimum over a grid."""

    if has_results(complete_cells(study)):
        return None
    return [status_table(study),
            Markdown("No (optimizer, batch size) grid has finished yet, so nothing is charted or fitted: the steps "
                     "table gives each grid's best so far, and the runs with a result are listed as they are."),
            steps_view(study), finished_runs_view(study), chapter_verdicts(study, claims)]


def _opening(study: StudyResults, claims: str) -> tuple[list, bool]:
    """How every section starts: what ran, then either all there is to show (no result yet, or
    no grid finished yet: `complete` true) or, for a partly run study, the notice saying so."""
    items = [what_ran(study)]
    if not has_results(study):
        return items + _not_yet(study), True
    items += _partial(study)
    early = _no_grid_yet(study, claims)
    return (items + early, True) if early else (items, False)


def scaling_section(study: StudyResults) -> list:
    """What the scaling chapter shows of a study: what ran, steps to target, efficiency, the
    critical batch size, the optimizers' ratios and the verdicts."""
    items, complete = _opening(study, "abgh")
    if complete:
        return items
    done, table = complete_cells(study), steps_table(study)
    items += [status_table(study), plots.scaling_chart(done), steps_view(study, table=table)]
    if study.loss_targets:
        items.append(steps_view(study, "loss"))
    fits = fit_table(study)
    ratio = ratio_table(study, table)
    items += [efficiency_view(study, table), reach_lines(study, table), fit_chart(study, fits),
              fit_view(fits), b_crit_lines(study, fits)]
    if len(ratio):
        items += [ratio_view(ratio), Markdown("\n".join(ratio_lines(study, ratio)))]
    return items + [chapter_verdicts(study, "abgh")]


def robustness_section(study: StudyResults, tolerance: float = TOLERANCE) -> list:
    """What the robustness chapter shows of a study: its budgets, accuracy over each grid, the
    high-accuracy region and its trend, and the verdicts."""
    items, complete = _opening(study, "de")
    if complete:
        return items
    done = complete_cells(study)
    budgets = {b: default_budget(study, b) for b in ("epochs", "iterations")}
    view = region_table(study, tolerance)
    return items + [
        budgets_text(study), plots.robustness_heatmaps(study, budgets=budgets),
        plots.robustness_boxplots(done, budgets=budgets),
        plots.region_chart(done, tolerance=tolerance, budgets=budgets), region_view(study, view, tolerance),
        slope_lines(study, view), chapter_verdicts(study, "de")]  # the verdicts name what they rest on


def critical_batch_section(study: StudyResults) -> list:
    """What the critical-batch chapter shows of a study: the fits and the verdicts."""
    items, complete = _opening(study, "ci")
    if complete:
        return items
    fits = fit_table(study)
    return items + [fit_chart(study, fits), fit_view(fits), b_crit_lines(study, fits),
                    chapter_verdicts(study, "ci")]


def width_section(study: StudyResults) -> list:
    """What the robustness chapter shows of a version-3 budget study: what ran, its status, the
    widths of each optimizer's good region per batch size (table and chart), the bracketing, and
    the verdicts (d) and (e)."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts_v3 import width_table

    items, complete = _opening(study, "de")
    if complete:
        return items
    table = width_table(complete_cells(study))
    return items + [status_table(study), plots.width_chart(study, table),
                    table.style.hide(axis="index").format(precision=2, na_rep="–"),
                    Markdown(judged_v3.bracket_lines(judged_v3.Judged(study, None, None))),
                    judged_v3.chapter_verdicts(study, "de")]


def bracket_view(study: StudyResults):
    """Per (optimizer, batch size): whether its grid brackets the optimum, how many
    configurations it has and what bracketing added (kfaclab.results.study.bracket_table)."""
    from kfaclab.results.study import bracket_table

    table = bracket_table(study)
    if table.empty:
        return Markdown(f"The `{study.name}` study does not bracket its grids.")
    return table.style.hide(axis="index").set_caption(f"{study.name} study: does each grid bracket its optimum?")


def chapter_verdicts(study: StudyResults, claims: str):
    """The chapter's verdicts under the rules that judge the study: version 3 for its studies
    (kfaclab.results.judged_v3), versions 1-2 for the others."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdict_display import chapter_verdicts as v2

    return judged_v3.chapter_verdicts(study, claims) if judged_v3.is_v3(study) else v2(study, claims)


def show(items: list) -> None:
    """Display a section's items in order, in a notebook (the book's executed cells)."""
    from IPython.display import display

    for item in items:
        display(item)
