"""An ipywidgets explorer of studies, for live use in Jupyter (the static book uses the Altair
charts' own selectors instead, which need no kernel).

    from kfaclab.widgets import Explorer
    Explorer("runs").show()

Pick a study, an optimizer, a target, a budget and a batch size: the chart (steps to that
target against batch size for that optimizer, with the ideal line and the chosen batch size
marked, beside the accuracy over its grid at that batch size and budget) and the tables follow
every control. It opens on the study the book's results chapters show.
"""

from __future__ import annotations

from pathlib import Path

import altair as alt
import ipywidgets as W
import pandas as pd
from IPython.display import display

from kfaclab.errors import UsageError
from kfaclab.plots import goal_label, heatmap_axes
from kfaclab.results import (
    BUDGET_TYPES,
    accuracy_at_budget,
    load_results,
    steps_to_target,
    with_ideal_scaling,
)
from kfaclab.results.robustness import seed_medians


def studies(root: str | Path = "runs") -> list[str]:
    """Study folders under `root` that have a spec and at least one run record."""
    root = Path(root)
    return sorted(p.parent.name for p in root.glob("*/study.yaml")
                  if any(q.suffix == ".json" and not q.name.endswith(".failed.json") for q in p.parent.iterdir()))


MAIN_STUDY = "miniature"  # the study the book's results chapters show


class Explorer:
    def __init__(self, root: str | Path = "runs", study: str | None = None):
        self.root = Path(root)
        names = studies(self.root)
        if not names:
            raise UsageError(f"no study with results under {self.root}; run one first "
                             f"(python -m kfaclab sweep runs/smoke/study.yaml)")
        if study is not None and study not in names:
            raise UsageError(f"no study '{study}' with results under {self.root}; choose from {', '.join(names)}")
        default = study or (MAIN_STUDY if MAIN_STUDY in names else names[0])
        self.study = W.Dropdown(options=names, value=default, description="study")
        self.optimizer = W.Dropdown(description="optimizer")
        self.target = W.Dropdown(description="target")
        self.budget = W.ToggleButtons(options=list(BUDGET_TYPES), description="budget")
        self.batch_size = W.SelectionSlider(options=[0], description="batch size", continuous_update=False)
        self.chart_out, self.table_out = W.Output(), W.Output()
        self._load()
        self.study.observe(lambda _: self._load(), names="value")
        for w in (self.optimizer, self.target, self.budget, self.batch_size):
            w.observe(lambda _: self.refresh(), names="value")

    # ------------------------------------------------------------------ state
    def _load(self):
        self.results = load_results(self.root / self.study.value)
        self._quiet = True
        # A Dropdown given new options keeps no selection: choose the first of each.
        self.optimizer.options = self.results.optimizers()
        self.optimizer.index = 0
        # Accuracy targets, then the training-loss targets: (kind, target) pairs.
        self.target.options = [(goal_label("accuracy", t), ("accuracy", t)) for t in self.results.targets] + \
            [(goal_label("loss", t), ("loss", t)) for t in self.results.loss_targets]
        self.target.index = 0
        self.batch_size.options = self.results.batch_sizes()
        self._quiet = False
        self.refresh()

    def steps_table(self) -> pd.DataFrame:
        """Steps to the chosen target per batch size for the chosen optimizer, with the ideal line."""
        kind, target = self.target.value
        t = with_ideal_scaling(steps_to_target(self.results, [target], kind=kind))
        return t[t["optimizer"] == self.optimizer.value].reset_index(drop=True)

    def grid_table(self) -> pd.DataFrame:
        """Accuracy over the chosen optimizer's grid at the chosen batch size and budget."""
        acc = seed_medians(accuracy_at_budget(self.results, self.budget.value))  # one accuracy per configuration
        acc = acc[(acc["optimizer"] == self.optimizer.value) & (acc["batch_size"] == self.batch_size.value)]
        axes = heatmap_axes(self.results, self.optimizer.value)
        if axes is None or axes[1] is None:
            return acc.set_index(axes[0] if axes else "name")[["accuracy"]]
        return acc.pivot_table(index=axes[1], columns=axes[0], values="accuracy", dropna=False)

    def chart(self) -> alt.HConcatChart:
        """Steps to the chosen target against batch size for the chosen optimizer (the ideal line
        dashed, the chosen batch size marked), beside the accuracy over its grid at that batch
        size and budget: every control changes it."""
        opt, (kind, target), b, budget = (self.optimizer.value, self.target.value, self.batch_size.value,
                                          self.budget.value)
        goal = goal_label(kind, target)
        steps = self.steps_table()[["batch_size", "iterations", "ideal"]]
        x = alt.X("batch_size:Q", scale=alt.Scale(type="log", base=2), title="batch size")
        base = alt.Chart(steps).encode(x=x)
        left = alt.layer(
            base.mark_line(point=True).encode(y=alt.Y("iterations:Q", scale=alt.Scale(type="log"),
                                                       title=f"iterations to {goal}"),
                                              tooltip=["batch_size", "iterations"]),
            base.mark_line(strokeDash=[4, 4], color="gray").encode(y="ideal:Q"),
            alt.Chart(pd.DataFrame({"batch_size": [b]})).mark_rule(color="firebrick").encode(x=x),
        ).properties(width=300, height=220, title=f"{self.results.name}: {opt}, steps to {goal}")
        acc = seed_medians(accuracy_at_budget(self.results, budget))  # the median over seeds per cell
        acc = acc[(acc["optimizer"] == opt) & (acc["batch_size"] == b)]
        axes = heatmap_axes(self.results, opt) or ("name", None)
        enc = {"x": alt.X(f"{axes[0]}:O", title=axes[0].removeprefix("hp_")),
               "color": alt.Color("accuracy:Q", scale=alt.Scale(scheme="viridis")),
               "tooltip": ["name", "accuracy"]}
        if axes[1] is not None:
            enc["y"] = alt.Y(f"{axes[1]}:O", title=axes[1].removeprefix("hp_"))
        right = alt.Chart(acc).mark_rect().encode(**enc).properties(
            width=220, height=220, title=f"accuracy at the {budget} budget, batch {b}")
        return alt.hconcat(left, right)

    # ------------------------------------------------------------------ view
    def refresh(self):
        if getattr(self, "_quiet", False) or self.optimizer.value is None:
            return
        self.chart_out.clear_output(wait=True)
        with self.chart_out:
            display(self.chart())
        self.table_out.clear_output(wait=True)
        with self.table_out:
            display(self.steps_table()[["batch_size", "reached", "iterations", "epochs", "seconds", "ideal",
                                        "efficiency", "best_run"]])
            display(self.grid_table().style.format("{:.3f}", na_rep="-")
                    .set_caption(f"{self.optimizer.value}, batch {self.batch_size.value}, {self.budget.value} budget"))

    def widget(self) -> W.Widget:
        controls = W.VBox([self.study, self.optimizer, self.target, self.budget, self.batch_size])
        return W.VBox([controls, W.HBox([self.chart_out, self.table_out])])

    def show(self):
        display(self.widget())
