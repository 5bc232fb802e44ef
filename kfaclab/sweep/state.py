"""A study folder's runs on disk: the state of each run, records set aside, partial files cleared.

A run's state is read from its record alone (kfaclab.train.record), so the runner, the harvest,
the merge and the results all agree on which runs are done.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kfaclab import infrastructure
from kfaclab.sweep.spec import Run, Study
from kfaclab.train.record import read_record


def run_state(directory: Path, run: Run, repair: bool = False) -> str:
    """done | failed | pending (never run, interrupted, or a malformed record). With `repair`,
    a malformed record (truncated, not a run record, wrong types or values: read_record) is
    moved aside, never deleted, with one line on stderr, so that the run is made again."""
    path = directory / f"{run.name}.json"
    record, problem = read_record(path)
    if problem is not None:
        if repair:
            set_aside(path, problem)
        return "pending"
    if record is not None and record.get("run_id") == run.run_id:
        status = record.get("status")
        if status in ("completed", "diverged"):
            # A run is done when its record and its notebook have both landed: a kill between
            # the two leaves only a partial notebook, which the next sweep removes, so the run
            # is made again rather than left without its notebook for good.
            return "done" if (directory / f"{run.name}.ipynb").exists() else "pending"
        if status == "failed" and not infrastructure.kind_of(record.get("error")):
            return "failed"
        return "pending"  # interrupted, or failed for the machine's sake: re-run
    marker = directory / f"{run.name}.failed.json"
    if marker.exists():
        try:
            machine = json.loads(marker.read_text()).get("infrastructure")
        except (OSError, ValueError, AttributeError):
            machine = None
        return "pending" if machine else "failed"
    return "pending"


def set_aside(path: Path, problem: str) -> Path:
    """Move a malformed record out of the way (kept for inspection) and say so in one line."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.malformed-{stamp}")
    os.replace(path, aside)
    print(f"kfaclab: {path} {problem}; moved it to {aside.name} and will run it again", file=sys.stderr)
    return aside


def malformed_records(study: Study) -> list[tuple[str, str]]:
    """(file name, problem) of each record of the study that is there but not a valid record."""
    out = []
    for run in study.runs:
        _, problem = read_record(study.directory / f"{run.name}.json")
        if problem is not None:
            out.append((f"{run.name}.json", problem))
    return out


def clean_partials(directory: Path) -> None:
    """Notebooks left half-written by a killed sweep: never results, removed before a sweep."""
    for p in directory.glob(".*.ipynb.partial"):
        p.unlink(missing_ok=True)


def plan_runs(study: Study, retry_failed: bool, only: str | None = None, limit: int | None = None,
              repair: bool = True):
    """(runs to make, how many are done, how many failed). `repair`: malformed records are moved
    aside (run_state); a dry run passes False and changes nothing."""
    import fnmatch

    pending, done, failed = [], 0, 0
    for run in study.runs:
        if only and not fnmatch.fnmatchcase(run.name, only):
            continue
        state = run_state(study.directory, run, repair=repair)
        if state == "done":
            done += 1
        elif state == "failed" and not retry_failed:
            failed += 1
        else:
            pending.append(run)
    if limit is not None:
        pending = pending[:limit]
    return pending, done, failed
