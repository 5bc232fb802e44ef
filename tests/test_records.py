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
from kfaclab.sweep.estimate import dry_run
from kfaclab.sweep.runner import sweep
from kfaclab.sweep.state import plan_runs
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


def _reached_at(where):
    def f(r):
        r["targets"][0].update(reached=True, iteration=where(r))
        return r
    return f


def _final_from_first_evaluation(r):
    r["final"]["test_accuracy"] = r["history"][0]["test_accuracy"] + (0.01 if r["history"][0]["test_accuracy"] ==
                                                                      r["history"][-1]["test_accuracy"] else 0)
    return r


# Well-typed records that cannot be (issue: impossible records passed validation).
IMPOSSIBLE = {
    "crossing-past-the-budget": _reached_at(lambda r: 10 ** 6),
    "crossing-where-it-did-not-evaluate": _reached_at(lambda r: r["history"][1]["iteration"] + 1),
    "infinite-seconds": _set(["final", "seconds"], float("inf")),
    "nan-test-loss": _set(["history", -1, "test_loss"], float("nan")),
    "infinite-optimizer-counter": _set(["optimizer", "propagations"], float("inf")),
    "final-is-not-the-last-evaluation": _final_from_first_evaluation,
    "past-its-budget": lambda r: _set(["final", "iteration"], r["resolved"]["iterations"] + 5)(r),
    "target-above-one": _set(["targets", 0, "test_accuracy"], 1.5),
}
DAMAGE.update(IMPOSSIBLE)


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
        path.write_text(json.dumps(how(rec)))  # NaN and Infinity as Python's json writes them


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


@pytest.mark.parametrize("kind", sorted(IMPOSSIBLE))
def test_an_impossible_record_is_refused_by_every_reader(study_copy, kind, tmp_path):
    """The one validator guards results (load_results), the sweep (run_state moves it aside) and
    harvest-merge (check_archive refuses the archive)."""
    import tarfile

    from kfaclab.errors import UsageError
    from kfaclab.sweep.merge import check_archive

    path = sorted(study_copy.glob("sgd-*.json"))[0]
    good = json.loads(path.read_text())
    _damage(path, kind)
    bad = path.read_text()
    assert read_record(path)[0] is None
    problems = validate_record(json.loads(bad))
    assert problems and all("\n" not in p for p in problems)
    assert load_results(study_copy).runs.set_index("name").loc[path.stem, "status"] == "pending"
    # harvest-merge: the same record inside an otherwise valid archive, into a study that lacks it
    import hashlib
    import io

    nb = (study_copy / f"{path.stem}.ipynb").read_bytes()
    files = {f"{path.stem}.json": bad.encode(), f"{path.stem}.ipynb": nb}
    manifest = {"kind": "kfaclab.harvest", "version": 1, "study": "smoke",
                "runs": [{"name": path.stem, "run_id": good["run_id"], "status": good["status"],
                          "files": {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}}]}
    archive = tmp_path / "harvest.tar.gz"

    def pack():
        with tarfile.open(archive, "w:gz") as tar:
            for name, data in [("manifest.json", json.dumps(manifest).encode())] + \
                    [(f"smoke/{f}", d) for f, d in files.items()]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    pack()
    target = tmp_path / "target"
    shutil.copytree(study_copy, target)
    (target / path.name).unlink()
    (target / f"{path.stem}.ipynb").unlink()
    with pytest.raises(UsageError, match="the record is malformed"):
        check_archive(archive, target)
    # the same archive with the good record merges
    files[f"{path.stem}.json"] = json.dumps(good).encode()
    manifest["runs"][0]["files"][f"{path.stem}.json"] = hashlib.sha256(files[f"{path.stem}.json"]).hexdigest()
    pack()
    check_archive(archive, target)
