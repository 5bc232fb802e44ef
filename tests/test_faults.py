"""Fault injection on sweeps: kills at seeded moments (between a record and its notebook
included) and concurrent sweeps. After re-runs, every run is done exactly once, with its
notebook. (Corrupt archives: test_data_integrity.py; malformed records: test_records.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kfaclab.errors import UsageError
from kfaclab.sweep import load_study
from kfaclab.sweep.lock import LOCK_NAME, study_lock
from kfaclab.sweep.runner import sweep
from kfaclab.sweep.state import plan_runs, run_state

ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path) -> Path:
    d = tmp_path / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    return d


def _sweep_process(spec: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kfaclab", "sweep", str(spec), "--workers", "2", "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _done(study) -> dict:
    """Runs that are done (record and notebook), with the time their record was finished."""
    out = {}
    for run in study.runs:
        if run_state(study.directory, run) == "done":
            out[run.name] = json.loads((study.directory / f"{run.name}.json").read_text())["finished_at"]
    return out


def test_kills_at_seeded_moments_leave_every_run_done_exactly_once_with_its_notebook(tmp_path):
    d = _study(tmp_path)
    study = load_study(d / "study.yaml")
    rng = np.random.default_rng(19)
    first_seen: dict = {}
    for delay in sorted(rng.uniform(2.0, 14.0, size=4)):
        proc = _sweep_process(d / "study.yaml")
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its workers and their kernels, without warning
        proc.wait()
        time.sleep(1.0)
        for name, finished in _done(study).items():
            # A run once done is never made again: its record keeps the time it was finished.
            assert first_seen.setdefault(name, finished) == finished, f"{name} ran twice"
    summary = sweep(study, workers=2, progress=False)
    assert not summary.interrupted and summary.count("failed") == 0
    done = _done(study)
    assert sorted(done) == sorted(r.name for r in study.runs)  # every run, each with its notebook
    for name, finished in first_seen.items():
        assert done[name] == finished, f"{name} was made again after it was done"
    assert not list(d.glob(".*.partial")) and not list(d.glob(".*.tmp"))


def test_a_kill_between_record_and_notebook_makes_the_run_again_not_a_run_without_notebook(tmp_path):
    d = _study(tmp_path)
    study = load_study(d / "study.yaml")
    sweep(study, workers=2, progress=False)
    victim = study.runs[0].name
    # What a kill after the record was written and before the notebook was renamed leaves.
    os.replace(d / f"{victim}.ipynb", d / f".{victim}.ipynb.partial")
    assert run_state(d, study.runs[0]) == "pending"
    before = _done(study)
    summary = sweep(study, workers=1, progress=False)
    assert [o.run.name for o in summary.outcomes] == [victim]  # only that run, made again
    assert (d / f"{victim}.ipynb").exists() and not (d / f".{victim}.ipynb.partial").exists()
    after = _done(study)
    assert {k: v for k, v in after.items() if k != victim} == before and victim in after


def test_a_second_sweep_of_the_same_study_fails_at_once_in_one_line(tmp_path):
    d = _study(tmp_path)
    study = load_study(d / "study.yaml")
    with study_lock(d):
        with pytest.raises(UsageError, match=r"is in use by a sweep \(pid \d+"):
            sweep(study, workers=1, progress=False)
        r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(d / "study.yaml")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "in use by" in r.stderr
        assert not list(d.glob("*.json"))  # nothing ran
    pending, _, _ = plan_runs(study, retry_failed=False)
    assert len(pending) == 8


def test_two_sweeps_started_together_never_make_a_run_twice(tmp_path):
    d = _study(tmp_path)
    study = load_study(d / "study.yaml")
    a, b = _sweep_process(d / "study.yaml"), _sweep_process(d / "study.yaml")
    codes = sorted([a.wait(timeout=300), b.wait(timeout=300)])
    assert codes == [0, 2]  # one ran the study, the other refused at once
    assert sorted(_done(study)) == sorted(r.name for r in study.runs)


def test_the_lock_of_a_sweep_killed_with_sigkill_is_free_at_once(tmp_path):
    d = _study(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from kfaclab.sweep.lock import study_lock\n"
                               f"with study_lock({str(d)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UsageError, match=f"pid {holder.pid}"):
        with study_lock(d):
            pass
    holder.kill()  # SIGKILL: no clean-up runs
    holder.wait()
    with study_lock(d):  # the operating system released it
        assert (d / LOCK_NAME).exists()
