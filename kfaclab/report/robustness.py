"""The robustness chapter's tables: the budgets, the high-accuracy region per batch size, and its trend."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import Markdown

from kfaclab.report.study import name
from kfaclab.results import (
    accuracy_at_budget,
    default_budget,
    high_accuracy_region,
)
from kfaclab.results.robustness import seed_medians
from kfaclab.results.study import StudyResults, complete_cells

TOLERANCE = 0.02  # the robustness chapter's high-accuracy region: within 2 points of the best


def budgets_text(study: StudyResults) -> Markdown:
    epochs, iterations = default_budget(study, "epochs"), default_budget(study, "iterations")
    fixed = study.spec.get("fixed") or {}
    evals = f" (runs are evaluated at least {fixed['min_evals']} times)" if fixed.get("min_evals") else ""
    return Markdown(
        f"- **epoch budget**: {epochs:g} epochs, the fewest any run is given (the smallest batch size's);\n"
        f"- **iteration budget**: {iterations:g} iterations, the fewest any run is given (the largest batch size's);\n"
        f"- **rule**: each run's final accuracy, after its own budget from the stopping rule.\n\n"
        f"A run's accuracy at a budget is that of its last evaluation at or before it{evals}. One caveat the paper's "
        "separately trained budgets do not have: each run's cosine learning-rate schedule spans its own "
        "stopping-rule budget, so a run read at a shorter budget has not annealed its rate.")


def region_table(study: StudyResults, tolerance: float = TOLERANCE) -> pd.DataFrame:
    """Share of each grid within `tolerance` of the optimizer's best accuracy under the budget,
    per batch size (columns: budget type, optimizer), over the cells whose runs have finished.
    The budgets are the complete study's, so the shares do not move as the rest arrives."""
    done = complete_cells(study)
    tables = []
    for budget in ("epochs", "iterations"):
        acc = seed_medians(accuracy_at_budget(done, budget, default_budget(study, budget)))
        tables.append(high_accuracy_region(acc, tolerance))
    region = pd.concat(tables)
    return region.pivot_table(index="batch_size", columns=["budget_type", "optimizer"], values="share")


def region_view(study: StudyResults, view: pd.DataFrame, tolerance: float = TOLERANCE):
    return view.style.format("{:.0%}").set_caption(
        f"{study.name} study: share of each grid within {tolerance:.0%} of the optimizer's best accuracy under the "
        "budget")


def slope_lines(study: StudyResults, view: pd.DataFrame) -> Markdown:
    """The least-squares slope of each share against log2(batch size), beside the paper's direction."""
    lines = []
    for budget, paper in (("epochs", "shrinks"), ("iterations", "grows")):
        for opt in ("kfac", "adam", "sgd"):
            if (budget, opt) not in view.columns:
                continue
            s = view[(budget, opt)].dropna()
            # No direction is read off the sign of a slope: the verdicts judge it, with its
            # interval, by the rule registered before the runs.
            shown = ("too few batch sizes" if len(s) < 3 else
                     f"{np.polyfit(np.log2(s.index.to_numpy(dtype=float)), s.to_numpy(), 1)[0]:+.1%} of the grid "
                     "per doubling")
            lines.append(f"- under the {budget[:-1]} budget, {name(opt)}'s share: {shown} (the paper: it {paper});")
    return Markdown(f"In the `{study.name}` study, by the least-squares slope of the share against log2(batch "
                    "size):\n\n" + "\n".join(lines))
