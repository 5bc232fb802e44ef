"""The cadence comparison (kfaclab.results.cadence) on a constructed study."""

import pandas as pd

from kfaclab.results.cadence import cadence_lines, cadence_table
from kfaclab.results.study import StudyResults


def test_steps_per_cadence_are_the_best_rates_median_over_seeds():
    rows = []
    # fixed cadence: lr 0.01 crosses at 40, 48, never (median 48); lr 0.03 at 56, 56, 64 (56)
    # scaled: lr 0.01 at 24, 32, 32 (32); lr 0.03 never, never, 16 (never)
    for n, lr, crossings, acc in [(0, 0.01, [40, 48, None], 0.50), (0, 0.03, [56, 56, 64], 0.52),
                                  (40, 0.01, [24, 32, 32], 0.54), (40, 0.03, [None, None, 16], 0.40)]:
        for seed, c in enumerate(crossings):
            rows.append({"name": f"r{n}-{lr}-{seed}", "status": "completed", "batch_size": 16384,
                         "hp_refreshes_per_run": n, "hp_lr": lr, "planned_iterations": 60, "final_accuracy": acc,
                         "iteration_to_0.5": c})
    runs = pd.DataFrame(rows)
    res = StudyResults("cadence", None, "", runs, pd.DataFrame(), {"kfac": ["refreshes_per_run", "lr"]}, [0.5], {})
    t = cadence_table(res).set_index("cadence")
    assert t.loc["fixed (every 100)", "steps to 50%"] == 48
    assert t.loc["scaled (40 refreshes)", "steps to 50%"] == 32
    assert t.loc["scaled (40 refreshes)", "best final accuracy"] == 0.54
    assert "50%: 48 -> 32 iterations (0.67x)" in cadence_lines(cadence_table(res))
    empty = StudyResults("cadence", None, "", runs.iloc[:0], pd.DataFrame(), {}, [0.5], {})
    assert cadence_table(empty).empty and cadence_lines(cadence_table(empty)).startswith("No run")
