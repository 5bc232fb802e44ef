"""The Ray backend: the smoke study as Ray tasks in a local Ray instance gives the same run ids
and files as the local backend, resumes, isolates a failing run, and refuses mixed flags."""

import json
import re
import subprocess
import sys

import pytest
from test_sweep import forty_image_fixed, records, smoke_spec

from kfaclab.sweep import load_study
from kfaclab.sweep.lock import LOCK_NAME
from kfaclab.train import validate_record

ray = pytest.importorskip("ray", reason="Ray is not installed here (pip install -r requirements-dev.txt brings it)")


def ray_sweep(spec, *extra, timeout=600):
    return subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(spec), "--backend", "ray", "--quiet", *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_smoke_study_runs_as_ray_tasks_with_the_same_ids_and_files(tmp_path):
    # One failing run rides along: 40 training images cannot fill a batch of 64.
    spec = smoke_spec(tmp_path, fixed=forty_image_fixed(tmp_path), optimizers={"sgd": {"grid": {"lr": [0.01, 0.05]}}},
                      batch_sizes=[64, 32])
    study = load_study(spec)
    r = ray_sweep(spec, "--cpus-per-run", "1")
    assert r.returncode == 1, r.stderr  # non-zero: some runs failed
    assert "failed: sgd-b64-lr0.01" in r.stdout and "failed: sgd-b64-lr0.05" in r.stdout
    assert "runner overhead" in r.stdout

    recs = records(study.directory)
    good = [run for run in study.runs if run.config.batch_size == 32]
    assert len(good) == 2 and set(recs) == {run.name for run in good}  # the names a local sweep would write
    for run in good:
        assert recs[run.name]["run_id"] == run.run_id and validate_record(recs[run.name]) == []
        assert recs[run.name]["status"] in ("completed", "diverged")
        assert (study.directory / f"{run.name}.ipynb").exists()
    for run in study.runs:
        if run.config.batch_size == 64:
            marker = json.loads((study.directory / f"{run.name}.failed.json").read_text())
            assert marker["run_id"] == run.run_id and "larger than the 40 training examples" in marker["error"]
    # No temp or partial files; the study's lock file (kfaclab.sweep.lock) stays, free, by design.
    assert not [p for p in study.directory.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]

    again = ray_sweep(spec)  # everything done or failed before: nothing runs, nothing is rewritten
    assert again.returncode == 0, again.stderr
    assert re.search(r"skipped \(already done\) +2\n", again.stdout), again.stdout
    assert re.search(r"skipped \(failed before\) +2\n", again.stdout) and "failed:" not in again.stdout


def test_flags_of_the_other_backend_are_one_line_errors(tmp_path):
    spec = smoke_spec(tmp_path)
    for extra, says in ((["--backend", "ray", "--workers", "2"], "--workers is for the local backend"),
                        (["--address", "auto"], "--address is for --backend ray"),
                        (["--gpus-per-run", "0.5"], "--gpus-per-run is for --backend ray")):
        r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(spec), *extra], capture_output=True,
                           text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
