"""The critical-batch tables: S(B) = S_min (1 + B_crit / B) fitted per optimizer, with bootstrap
intervals, in a table and in words."""

from __future__ import annotations

import numpy as np
import pandas as pd
from IPython.display import Markdown

from kfaclab.report.study import name
from kfaclab.results import (
    critical_batch_size,
)
from kfaclab.results.study import StudyResults, complete_cells


def fit_table(study: StudyResults, n_boot: int = 200) -> pd.DataFrame:
    """McCandlish et al.'s S(B) = S_min (1 + B_crit / B) per optimizer and target, fitted to the
    batch sizes whose grids have finished, with its bootstrap interval over grid points and
    whether B_crit is identified (inside the batch sizes measured, not at the search's edge)."""
    done = complete_cells(study)
    column, v3 = interval_column(study), b_crit_intervals_v3(study, done)
    fits = []
    for opt in study.optimizers():
        for target in study.targets:
            try:
                f = critical_batch_size(done, opt, target, n_boot=n_boot)
            except ValueError as e:
                fits.append({"optimizer": opt, "target": target, "identified": False, "note": str(e)})
                continue
            lo, hi = v3[target].get(opt, (np.nan,) * 3)[1:] if v3 is not None else f["b_crit_interval"]
            measured = max(f["batch_sizes"]) if f["batch_sizes"] else 0
            note = ("not identified: B_crit at the edge of the search" if f["at_edge"] else
                    "not identified: B_crit beyond the largest batch size measured" if f["b_crit"] > measured else
                    "")
            fits.append({"optimizer": opt, "target": target, "B_crit": f["b_crit"],
                         column: f"{lo:,.0f}-{hi:,.0f}" if np.isfinite([lo, hi]).all() else "–",
                         "S_min (iterations)": f["s_min"],
                         "E_min (examples)": f["e_min"], "RMS log residual": f["rms_log_residual"],
                         "identified": not note, "note": note})
    return pd.DataFrame(fits).set_index(["optimizer", "target"])


def interval_column(study: StudyResults) -> str:
    """The name of the B_crit interval's column: version 3's 90% interval for the studies it
    judges, versions 1-2's 68% bootstrap over grid points for the others."""
    from kfaclab.results import judged_v3

    return "90% interval (rules v3)" if judged_v3.is_v3(study) else "68% interval"


def b_crit_intervals_v3(study: StudyResults, done: StudyResults) -> dict | None:
    """For a study judged by rules version 3, target -> optimizer -> (B_crit, low, high) with its
    90% interval (kfaclab.results.verdicts_v3.b_crit_intervals, on the finished cells `done`);
    None for the others."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts_v3 import b_crit_intervals

    if not judged_v3.is_v3(study):
        return None
    return {t: b_crit_intervals(done, t) for t in study.targets}


def fit_chart(study: StudyResults, fits: pd.DataFrame):
    """The fits' chart (kfaclab.plots.critical_batch_chart) over the finished batch sizes, or,
    while no optimizer has a fit at any target, a line that says so: an empty plot would show
    axes only."""
    from kfaclab import plots

    if "B_crit" not in fits or not np.isfinite(fits["B_crit"].astype(float)).any():
        return Markdown(f"No critical-batch fit in the `{study.name}` study yet: a fit needs a target reached "
                        "at 3 or more finished batch sizes.")
    return plots.critical_batch_chart(complete_cells(study))


def fit_view(fits: pd.DataFrame):
    return fits.drop(columns="identified").style.format(
        {"B_crit": "{:,.0f}", "S_min (iterations)": "{:,.0f}", "E_min (examples)": "{:,.0f}",
         "RMS log residual": "{:.2f}"}, na_rep="-").format_index("{:.0%}", level=1)


def b_crit_lines(study: StudyResults, fits: pd.DataFrame) -> Markdown:
    """Per target, the identified critical batch sizes and each optimizer's over SGD's."""
    lines = []
    for target in study.targets:
        have = [o for o in ("sgd", "adam", "kfac") if (o, target) in fits.index and "B_crit" in fits
                and np.isfinite(fits.loc[(o, target), "B_crit"])]
        if "sgd" not in have or len(have) < 2:
            lines.append(f"- at {target:.0%}: no fit for SGD and another optimizer (a target not reached at 3 or more "
                         "finished batch sizes);")
            continue
        ok = {o: bool(fits.loc[(o, target), "identified"]) for o in have}
        b = {o: fits.loc[(o, target), "B_crit"] for o in have}
        # version 3's interval in words too (versions 1-2's, which can end at its estimate, stays in the table)
        column = next((c for c in fits.columns if "rules v3" in c), None)

        found = ", ".join(_with_interval(fits, o, target, b[o], column) for o in have if ok[o])
        ratios = "; ".join(f"{name(o)} over SGD {b[o] / b['sgd']:.2f}" for o in have
                           if o != "sgd" and ok[o] and ok["sgd"])
        text = f"- at {target:.0%}: {found or 'none identified'}"
        if ratios:
            text += f" (ratios: {ratios})"
        missing = [name(o) for o in have if not ok[o]]
        if missing:
            text += f"; not identified for {' and '.join(missing)} (B_crit beyond the batch sizes measured)"
        lines.append(text + ";")
    return Markdown(f"Fitted critical batch sizes in the `{study.name}` study:\n\n" + "\n".join(lines))


def _with_interval(fits: pd.DataFrame, opt: str, target: float, b_crit: float, column: str | None) -> str:
    """"SGD 366 (90% interval 297-450)", or without its interval where `column` is None or empty."""
    iv = fits.loc[(opt, target), column] if column else None
    level = column.split(" ")[0] if column else ""
    return f"{name(opt)} {b_crit:,.0f}" + (f" ({level} interval {iv})" if isinstance(iv, str) and iv != "–" else "")
