"""A study's tidy tables as CSV files, for readers who want the data rather than the charts.

`write_csv(results, directory)` writes `<study>-runs.csv` (one row per run, with its status and
grid point), `<study>-evaluations.csv` (one row per evaluation of a finished run),
`<study>-steps-to-target.csv` (Shallue's rule per optimizer, batch size and target, accuracy
and training-loss targets) and, where the
runs some verdict compares have all finished, `<study>-verdicts.csv` (book/verdicts.md). Every
file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kfaclab.results.scaling import steps_to_target
from kfaclab.results.study import StudyResults
from kfaclab.train.record import write_bytes_atomic


def tables(results: StudyResults, prediction: dict | None = None) -> dict:
    from kfaclab.results.verdict_display import verdict_table

    steps = steps_to_target(results)
    if results.loss_targets:  # the training-loss targets, in the same table (its `kind` column)
        steps = pd.concat([steps, steps_to_target(results, kind="loss")], ignore_index=True)
    out = {"runs": results.runs, "evaluations": results.evals, "steps-to-target": steps}
    # A verdict is drawn only once the runs it compares have all finished (book/verdicts.md),
    # under the rules that judge the study: version 3 for its studies, versions 1-2 otherwise.
    vs = _ready(results, prediction)
    if vs:
        out["verdicts"] = verdict_table(vs)
    if results.bracket_cells:
        from kfaclab.results.study import bracket_table

        out["bracketing"] = bracket_table(results)
    return out


def _claims_of(results: StudyResults, j) -> str:
    """The claims a version-3 study's own verdicts file carries: the stopping-rule study's (with
    (k), which compares its critical batch sizes with the NQM's), or the budget studies' (d), (e)."""
    return "abcghijk" if results.name == j.main.name else "de"


def _any_ready(results: StudyResults) -> bool:
    """Whether some verdict of the study has all its runs (as `tables` decides, without computing it)."""
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts import ready_claims

    if judged_v3.is_v3(results):
        j = judged_v3.judged_for(results)
        left = judged_v3.waiting(j)
        return any(left.get(k) == 0 for k in _claims_of(results, j))
    return bool(ready_claims(results)[0])


def _ready(results: StudyResults, prediction: dict | None = None) -> list:
    from kfaclab.results import judged_v3
    from kfaclab.results.verdicts import ready_verdicts

    if judged_v3.is_v3(results):
        j = judged_v3.judged_for(results)
        return judged_v3.ready_verdicts(j, prediction, claims=_claims_of(results, j))[0]
    return ready_verdicts(results, prediction=prediction)[0]


def write_csv(results: StudyResults, directory, prediction: dict | None = None) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables(results, prediction).items():
        path = directory / f"{results.name}-{name}.csv"
        write_bytes_atomic(path, frame.to_csv(index=False).encode())
        written.append(path)
    return written


def csv_links(results: StudyResults, base: str = "../_static/data/") -> str:
    """HTML links to the study's CSV files as the book writes them (book/_ext/kfaclab_data.py):
    the verdicts file only where some verdict's runs have all finished, as `tables` writes it."""
    names = ["runs", "evaluations", "steps-to-target"] + (["verdicts"] if _any_ready(results) else []) \
        + (["bracketing"] if results.bracket_cells else [])
    return "The data behind this chapter, as CSV: " + ", ".join(
        f'<a href="{base}{results.name}-{t}.csv">{results.name} {t.replace("-", " ")}</a>' for t in names) + "."
