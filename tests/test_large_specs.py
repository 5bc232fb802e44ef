"""Specs expand lazily (kfaclab.sweep.spec.RunList): a spec of a million runs loads, answers a dry
run and starts a sweep without making every run. Timing-free: the tests count the runs made."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kfaclab.sweep import spec as spec_module
from kfaclab.sweep.estimate import dry_run
from kfaclab.sweep.runner import _pending_as_made, sweep
from kfaclab.sweep.spec import RunList, load_study

ROOT = Path(__file__).resolve().parents[1]
LR = [0.001, 0.002, 0.003, 0.005, 0.007, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0,
      5.0]
MILLION = {  # 20 x 20 x 25 x 2 sgd points + 50 kfac points, 8 batch sizes, 7 seeds: 1,122,800 runs
    "fixed": {"dataset": "synthetic", "model": "mlp:8", "device": "cpu"},
    "batch_sizes": [32, 64, 128, 256, 512, 1024, 2048, 4096], "budget": {"rule": {"b0": 32, "e0": 1}},
    "seeds": list(range(7)),
    "optimizers": {"sgd": {"grid": {"lr": LR, "momentum": [round(0.05 * i, 2) for i in range(20)],
                                    "weight_decay": [round(1e-4 * i, 4) for i in range(25)],
                                    "nesterov": [True, False]}},
                   "kfac": {"grid": {"lr": LR[:5], "damping": [0.001 * 3 ** i for i in range(10)]}}},
}
SIZE = (20 * 20 * 25 * 2 + 5 * 10) * 8 * 7


@pytest.fixture
def counted(monkeypatch):
    made = []
    real = spec_module.make_run

    def make_run(*a, **k):
        made.append(a[1:])
        return real(*a, **k)

    monkeypatch.setattr(spec_module, "make_run", make_run)
    return made


def write(tmp_path, spec, name="big") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": name}, sort_keys=False))
    return d / "study.yaml"


def test_a_million_runs_load_and_dry_run_without_being_made(tmp_path, counted):
    study = load_study(write(tmp_path, MILLION))
    assert isinstance(study.runs, RunList) and len(study.runs) == SIZE
    at_load = len(counted)
    assert at_load <= sum(len(v) for v in MILLION["optimizers"]["sgd"]["grid"].values()) + 20 + 8 * 2
    text = dry_run(study)
    assert len(counted) - at_load <= 2 * 8 + 1  # one per (optimizer, batch size) for its budget, one for the data size
    lines = text.splitlines()
    assert lines[0].startswith(f"study big: {SIZE:,} runs; {SIZE:,} to run, 0 done")
    assert len(lines) == 2 + 2 * 8  # a line per optimizer and batch size, not per run
    assert lines[-1].startswith(f"total: {SIZE:,} runs")


def test_the_large_dry_run_counts_what_the_folder_holds(tmp_path, counted):
    path = write(tmp_path, MILLION)
    study = load_study(path)
    some = study.runs[12345]
    (path.parent / f"{some.name}.failed.json").write_text(json.dumps({"run_id": some.run_id, "error": "x"}))
    before = len(counted)
    text = dry_run(study)
    assert f"{SIZE - 1:,} to run, 0 done, 1 failed" in text.splitlines()[0]
    assert len(counted) - before <= 2 * 8 + 2  # and the one run with a file, made to read its state


def test_the_lazy_order_and_runs_are_the_eager_ones(tmp_path, monkeypatch):
    small = {**MILLION, "seeds": [0, 1], "batch_sizes": [32, 64],
             "optimizers": {"sgd": {"grid": {"lr": LR[:3], "momentum": [0.0, 0.9]}},
                            "kfac": {"grid": {"lr": LR[:2], "damping": [0.1, 1.0]}}}}
    eager = load_study(write(tmp_path, small, "eager"))
    monkeypatch.setattr(spec_module, "EAGER_RUNS", 3)
    lazy = load_study(write(tmp_path, small, "lazy"))
    assert isinstance(lazy.runs, RunList) and isinstance(eager.runs, list)
    assert [(r.name, r.run_id) for r in lazy.runs] == [(r.name, r.run_id) for r in eager.runs]
    assert [r.name for r in lazy.runs[2:5]] == [r.name for r in eager.runs[2:5]] and lazy.runs[-1].name == \
        eager.runs[-1].name


def test_a_sweep_starts_its_first_run_without_making_the_rest(tmp_path, counted):
    study = load_study(write(tmp_path, MILLION))
    made = len(counted)
    gen = _pending_as_made(study, False, None, None, {"done": 0, "failed": 0})
    first = next(gen)
    assert first.name == study.runs[0].name and len(counted) - made == 2  # it, and the comparison's own


def test_a_lazy_sweep_runs_what_it_is_given_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(spec_module, "EAGER_RUNS", 3)
    d = tmp_path / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    study = load_study(d / "study.yaml")
    assert isinstance(study.runs, RunList) and len(study.runs) == 8
    s = sweep(study, workers=2, progress=False, limit=3)
    assert len(s.outcomes) == 3 and s.count("failed") == 0
    again = sweep(load_study(d / "study.yaml"), workers=2, progress=False)
    assert len(again.outcomes) == 5 and again.skipped_done == 3
