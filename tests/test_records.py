"""Malformed records: `results`, `sweep` and `sweep --dry-run` name them in one line and count them
as not done; a sweep moves them aside (never deletes them) and runs them again."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kfaclab.results import load_results, status_counts
from kfaclab.sweep import load_study
from kfaclab.sweep.runner import dry_run, plan_runs, sweep
from kfaclab.train.record import read_record, validate_record

ROOT = Path(__file__).resolve().parents[1]


def _drop(key):
    def f(r):
        del r[key]
        return r
    return f


def _set(path, value):
    def f(r):
        node = r
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        return r
    return f


# Every kind of damage: the bytes on disk, or a change to a valid record.
DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "not-utf8": b"\xff\xfe\x00garbage",
    "empty-file": "",
    "a-json-list": "[1, 2, 3]",
    "empty-object": "{}",
    "missing-final": _drop("final"),
    "missing-history": _drop("history"),
    "history-not-a-list": _set(["history"], {"0": 1}),
    "unknown-status": _set(["status"], "finished"),
    "accuracy-above-one": _set(["final", "test_accuracy"], 1.7),
    "negative-iteration": _set(["history", 0, "iteration"], -5),
    "accuracy-as-text": _set(["history", -1, "test_accuracy"], "0.9"),
    "reached-without-iteration": _set(["targets", 0, "iteration"], None),
    "wrong-schema-version": _set(["schema_version"], 99),
}


def _damage(path: Path, kind: str):
    how = DAMAGE[kind]
    if isinstance(how, bytes):
        path.write_bytes(how)
    elif isinstance(how, str):
        path.write_text(how)
    elif kind == "truncated":
        path.write_text(how(path.read_text()))
    else:
        rec = json.loads(path.read_text())
        if kind == "reached-without-iteration":
            rec["targets"][0]["reached"] = True
        path.write_text(json.dumps(how(rec)))


@pytest.fixture
def study_copy(smoke_study, tmp_path):
    d = tmp_path / "smoke"
    shutil.copytree(smoke_study, d)
    return d


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_read_record_names_the_problem_in_one_line(study_copy, kind):
    path = sorted(study_copy.glob("sgd-*.json"))[0]
    assert read_record(path)[1] is None  # valid before
    _damage(path, kind)
    record, problem = read_record(path)
    assert record is None and problem and "\n" not in problem


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_results_count_a_malformed_record_as_not_run(study_copy, kind):
    path = sorted(study_copy.glob("kfac-*.json"))[0]
    _damage(path, kind)
    res = load_results(study_copy)
    row = res.runs.set_index("name").loc[path.stem]
    assert row["status"] == "pending" and "malformed record" in row["error"]
    assert [n for n, _ in res.malformed] == [path.name]
    counts = status_counts(res)
    assert counts.to_numpy().sum() == len(res.runs) == 8  # header and table agree: nothing dropped
    assert path.stem not in set(res.evals["name"])


def test_results_cli_lists_malformed_records_without_a_traceback(study_copy):
    path = sorted(study_copy.glob("kfac-*.json"))[0]
    _damage(path, "truncated")
    r = subprocess.run([sys.executable, "-m", "kfaclab", "results", str(study_copy)], capture_output=True, text=True,
                       cwd=ROOT, timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "malformed" in ln]
    assert len(lines) == 1 and path.name in lines[0] and "not valid JSON" in lines[0]


@pytest.mark.parametrize("kind", ["truncated", "unknown-status", "accuracy-above-one", "a-json-list"])
def test_a_sweep_moves_a_malformed_record_aside_and_plans_it_again(study_copy, kind, capsys):
    study = load_study(study_copy / "study.yaml")
    path = sorted(study_copy.glob("sgd-*.json"))[0]
    _damage(path, kind)
    damaged = path.read_bytes()
    text = dry_run(study)  # the dry run reports it and changes nothing
    assert f"{path.name} " in text and "counted as to run" in text and path.read_bytes() == damaged
    pending, done, failed = plan_runs(study, retry_failed=False)
    assert [r.name for r in pending] == [path.stem] and done == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and path.name in err and "moved it to" in err
    [aside] = list(study_copy.glob(f"{path.name}.malformed-*"))
    assert aside.read_bytes() == damaged and not path.exists()  # kept, not deleted


def test_the_sweep_runs_a_malformed_record_again_to_a_valid_one(study_copy):
    study = load_study(study_copy / "study.yaml")
    path = sorted(study_copy.glob("sgd-*.json"))[0]
    _damage(path, "missing-final")
    summary = sweep(study, workers=1, progress=False)
    assert len(summary.outcomes) == 1 and summary.outcomes[0].run.name == path.stem
    record, problem = read_record(path)
    assert problem is None and validate_record(record) == [] and record["status"] in ("completed", "diverged")
    assert (study_copy / f"{path.stem}.ipynb").exists()
    assert len(load_results(study_copy).malformed) == 0
