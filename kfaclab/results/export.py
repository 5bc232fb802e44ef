"""A study's tidy tables as CSV files, for readers who want the data rather than the charts.

`write_csv(results, directory)` writes `<study>-runs.csv` (one row per run, with its status and
grid point), `<study>-evaluations.csv` (one row per evaluation of a finished run),
`<study>-steps-to-target.csv` (Shallue's rule per optimizer, batch size and target) and, where the
study has finished and can carry them, `<study>-verdicts.csv` (book/verdicts.md). Every file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

from kfaclab.results.scaling import steps_to_target
from kfaclab.results.study import StudyResults
from kfaclab.train.record import write_bytes_atomic


def tables(results: StudyResults) -> dict:
    from kfaclab.results.verdicts import verdict_table, verdicts

    out = {"runs": results.runs, "evaluations": results.evals, "steps-to-target": steps_to_target(results)}
    # A verdict is drawn only from a study whose runs have all finished (book/verdicts.md).
    unfinished = results.runs["status"].isin(["pending", "interrupted"]).any()
    vs = [] if unfinished else verdicts(results)
    if vs:
        out["verdicts"] = verdict_table(vs)
    return out


def write_csv(results: StudyResults, directory) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in tables(results).items():
        path = directory / f"{results.name}-{name}.csv"
        write_bytes_atomic(path, frame.to_csv(index=False).encode())
        written.append(path)
    return written
