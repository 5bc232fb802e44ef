"""The harvest (a study in deadline-bounded windows, packed into one archive) and its merge.

The rehearsal runs the GPU window's command on the CPU, end to end, on a tiny synthetic study:
smoke check, bench, ordering, a deadline that cuts the study in two, the archive, the merge,
and a second harvest that runs exactly the rest."""

import hashlib
import io
import json
import math
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from kfaclab.errors import UsageError
from kfaclab.results.device_bench import load_benches, step_table
from kfaclab.sweep import estimate as sweep_estimate
from kfaclab.sweep import harvest as hv
from kfaclab.sweep import load_study
from kfaclab.sweep.estimate import dry_run
from kfaclab.sweep.harvest_order import grid_rank
from kfaclab.sweep.merge import merge
from kfaclab.sweep.state import run_state
from kfaclab.train.budget import run_iterations

ROOT = Path(__file__).resolve().parents[1]

REHEARSAL = {
    "name": "rehearsal",
    "description": "the harvest's rehearsal: synthetic data, CPU",
    "fixed": {"dataset": "synthetic", "model": "mlp:16", "train_subset": 512, "test_subset": 200, "resolution": 8,
              "augment": False, "min_evals": 3, "device": "cpu"},
    "batch_sizes": [32, 64, 128],
    "budget": {"rule": {"b0": 32, "e0": 2}},
    "lr_scaling": {"rule": "linear", "base_batch_size": 32},
    "targets": [0.3, 0.5],
    "seeds": [0],
    "optimizers": {
        "sgd": {"fixed": {"weight_decay": 0.0}, "grid": {"lr": [0.01, 0.03, 0.1], "momentum": [0.5, 0.9]}},
        "kfac": {"fixed": {"momentum": 0.9, "weight_decay": 0.0, "cov_update_freq": 2, "inv_update_freq": 4},
                 "grid": {"lr": [0.01, 0.03, 0.1], "damping": [0.1, 0.3]}},
    },
}


def write_spec(directory: Path, spec=None, **changes) -> Path:
    spec = {**(spec or REHEARSAL), **changes}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory / "study.yaml"


def archive_members(path: Path) -> dict:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


# ------------------------------------------------------------------------------ ordering and prediction

def test_teaching_order_runs_each_grid_centre_first_then_spreads_out(tmp_path):
    spec = {**REHEARSAL, "optimizers": {
        "sgd": {"grid": {"lr": [0.01, 0.03, 0.1], "momentum": [0.0, 0.5, 0.9]}},
        "kfac": {"grid": {"lr": [0.01, 0.03, 0.1], "damping": [0.01, 0.1, 1.0]}}}}
    study = load_study(write_spec(tmp_path / "s", spec))
    predict = hv.Predictor(study, 1)
    order = hv.teaching_order(study, study.runs, predict)
    first_round = order[:6]  # 2 optimizers x 3 batch sizes
    assert {(r.config.optimizer, r.config.batch_size) for r in first_round} == \
        {(o, b) for o in ("sgd", "kfac") for b in (32, 64, 128)}
    assert all(set(r.grid_point.values()) <= {0.03, 0.5, 0.1} for r in first_round)  # the centres
    assert all(r.grid_point["lr"] == 0.03 for r in first_round)
    # Then the four edge midpoints of each grid, corners last.
    rank = grid_rank(study)
    assert [rank[r.name] for r in order] == sorted(rank[r.name] for r in order)
    corners = [r for r in order if rank[r.name] == 1.0]
    assert len(corners) == 2 * 3 * 4 and order[-len(corners):] == corners
    # Within a round the cheapest (predicted) run goes first: the spec's model has no bench yet,
    # so a throughput model decides.
    study.throughput = {"source": "test", "runs_sharing": 1, "epochs_per_second": {"sgd": 1.0, "kfac": 0.5}}
    order = hv.teaching_order(study, study.runs, hv.Predictor(study, 1))
    costs = [hv.Predictor(study, 1).base(r) for r in order[:6]]
    assert costs == sorted(costs)


def test_the_optimizers_a_study_compares_first_finish_before_the_others_start(tmp_path):
    three = {**REHEARSAL["optimizers"], "adam": {"grid": {"lr": [0.001, 0.003, 0.01]}}}
    plain = load_study(write_spec(tmp_path / "plain", {**REHEARSAL, "optimizers": three}))
    first = load_study(write_spec(tmp_path / "first", {**REHEARSAL, "optimizers": three,
                                                      "harvest_first": ["sgd", "kfac"]}))
    assert first.harvest_first == ["sgd", "kfac"] and plain.harvest_first == []
    order = [r.config.optimizer for r in hv.teaching_order(first, first.runs, hv.Predictor(first, 1))]
    n = sum(o != "adam" for o in order)
    assert set(order[:n]) == {"sgd", "kfac"} and set(order[n:]) == {"adam"}
    # Within each tier the teaching order is the one without the key: the centres first.
    plain_order = [r.name for r in hv.teaching_order(plain, plain.runs, hv.Predictor(plain, 1))]
    names = [r.name for r in hv.teaching_order(first, first.runs, hv.Predictor(first, 1))]
    assert names[:n] == [x for x in plain_order if not x.startswith("adam")]
    assert names[n:] == [x for x in plain_order if x.startswith("adam")]
    # Without the key, Adam's centres come in the first round beside the others'.
    assert "adam" in {p.split("-")[0] for p in plain_order[:9]}


def test_what_is_left_is_estimated_from_the_studys_bench_with_runs_sharing_the_device(tmp_path):
    spec = write_spec(tmp_path / "left")
    study = load_study(spec)
    assert sweep_estimate.remaining_estimate(study, study.runs) is None  # no bench: the spec's model or nothing
    bench = {"kind": "kfaclab.harvest-bench", "created": "2026-11-27T10:00:00+00:00", "environment": {"gpu": "H200"},
             "step_times": [{"batch_size": b, "results": [{"optimizer": "sgd", "amortized_step_s": 0.01},
                                                         {"optimizer": "kfac", "amortized_step_s": 0.02}]}
                            for b in (32, 128)], "throughput": None}
    (spec.parent / "bench").mkdir()
    (spec.parent / "bench" / "bench-left.json").write_text(json.dumps(bench))
    # By hand: each run costs (iterations x its step + evaluations x a third of SGD's step per
    # 128 test examples) x the runs sharing the device (no throughput measured: no overlap
    # assumed) + 3 s, and 2 runs share the device.
    def by_hand(sharing):
        total = 0.0
        for r in study.runs:
            iters, evals = run_iterations(r.config)
            step = 0.01 if r.config.optimizer == "sgd" else 0.02
            total += (iters * step + evals * (200 / 128 * 0.01 / 3)) * sharing + 3.0
        return total / sharing

    est = sweep_estimate.remaining_estimate(study, study.runs, sharing=2, window_s=10)
    assert f"{by_hand(2) / 60:.1f} min on H200 with 2 runs sharing it" in est
    assert "not yet corrected" in est and f"about {math.ceil(by_hand(2) / 10)} borrowed-GPU window(s)" in est
    # The dry run says the same, with one run at a time where neither the spec nor the bench
    # says how many share the device.
    assert f"{by_hand(1) / 60:.1f} min on H200 with one run at a time" in dry_run(study)


def test_predictor_interpolates_the_bench_and_learns_from_finished_runs(tmp_path):
    study = load_study(write_spec(tmp_path / "s"))
    bench = {"step_times": [
        {"batch_size": 32, "results": [{"optimizer": "sgd", "amortized_step_s": 0.01, "peak_memory_bytes": 1e8},
                                       {"optimizer": "kfac", "amortized_step_s": 0.04, "peak_memory_bytes": 2e8}]},
        {"batch_size": 128, "results": [{"optimizer": "sgd", "amortized_step_s": 0.04, "peak_memory_bytes": 4e8},
                                        {"optimizer": "kfac", "amortized_step_s": 0.08, "peak_memory_bytes": 5e8}]}],
        "throughput": None}
    p = hv.Predictor(study, 1, bench)
    assert sweep_estimate._interp_loglog({32: 0.01, 128: 0.04}, 64) == pytest.approx(0.02)  # slope 1 in log-log
    assert sweep_estimate._interp_loglog({32: 0.01, 128: 0.04}, 256) == pytest.approx(0.08)  # continued beyond
    run = next(r for r in study.runs if r.config.optimizer == "kfac" and r.config.batch_size == 64)
    iters, evals = run_iterations(run.config)
    assert iters == 2 * (512 // 64) * 2  # rule: (log2(64/32) + 1) x 2 epochs
    step = sweep_estimate._interp_loglog({32: 0.04, 128: 0.08}, 64)
    evaluation = 200 / 128 * 0.04 / 3
    assert p.base(run) == pytest.approx(iters * step + evals * evaluation + sweep_estimate.STEP_OVERHEAD_S)
    assert p.memory(run) == pytest.approx(2e8 + (5e8 - 2e8) * (64 - 32) / 96 + sweep_estimate.CONTEXT_BYTES)
    # Two runs that took twice their prediction: later predictions double.
    p.observe(run, 2 * p.base(run))
    p.observe(run, 2 * p.base(run))
    assert p(run) == pytest.approx(2 * p.base(run))
    # Sharing the device: the measured slowdown of the optimizer scales the time.
    shared = hv.Predictor(study, 4, {**bench, "throughput": {"alone": [], "rows": [
        {"runs": 4, "per_run": [{"optimizer": "kfac", "slowdown": 3.0}, {"optimizer": "sgd", "slowdown": 2.0}]}]}})
    overhead = sweep_estimate.STEP_OVERHEAD_S
    assert shared.base(run) - overhead == pytest.approx(3 * (p.base(run) - overhead))


# ------------------------------------------------------------------------------ the rehearsal

class RunsPhaseClock:
    """A clock that stands still until the runs phase starts, then follows real time: the
    deadline then falls inside the runs phase however long everything before it took here
    (importing torch into a cold process, the environment, the data, the smoke check, the
    bench). Pausing named phases instead left the set-up between them on the clock, and on a
    cold machine that alone could use up the deadline before the first run (0 runs finished)."""

    def __init__(self):
        self.started_at = None  # real time when the runs phase began

    def __call__(self):
        if self.started_at is None:
            return 0.0
        return time.monotonic() - self.started_at

    def starting_runs(self, fn):
        def wrapped(*a, **k):
            self.started_at = time.monotonic()
            return fn(*a, **k)
        return wrapped


def run_harvest_cli(spec, out, work, *extra, deadline=600):
    # The smoke check's limit is the GPU window's 60 s by default; on a slow or busy CPU the
    # rehearsal's smoke check takes longer (93 s seen beside a 2-worker study), so the tests give it
    # 600 s unless they pass their own (argparse keeps the last value given).
    cmd = [sys.executable, "-m", "kfaclab", "harvest", str(spec), "--out", str(out), "--work", str(work),
           "--deadline-s", str(deadline), "--bench-batch-sizes", "32,128", "--bench-steps", "8",
           "--smoke-limit-s", "600", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)


def test_rehearsal_deadline_cut_archive_merge_and_a_second_harvest_that_runs_exactly_the_rest(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "rehearsal")
    study = load_study(spec)
    total = len(study.runs)

    # First window: smoke, bench, then runs until a deadline that falls inside the runs phase.
    clock = RunsPhaseClock()
    monkeypatch.setattr(hv.Harvest, "harvest_runs", clock.starting_runs(hv.Harvest.harvest_runs))
    out1 = tmp_path / "out1"
    # 36 runs of about half a second each here. The runs phase gets the whole 8 s: the first run
    # (predicted 3 s of overhead before any run is measured, x1.2) fits before the 1 s margin, and
    # runs in flight are interrupted 2 s before the deadline, so a machine 3x slower still finishes some.
    opts = hv.Options(out=out1, deadline_s=8.0, margin_s=1.0, smoke_limit_s=600, bench_batch_sizes=(32, 128),
                      bench_steps=8,
                      work=tmp_path / "work1", progress=False, clock=clock)
    harvest = hv.Harvest(study, opts)
    assert harvest.run() == 0
    assert clock() - harvest.started <= opts.deadline_s  # stopped by itself before the deadline
    monkeypatch.undo()

    report = json.loads((out1 / "harvest-rehearsal-report.json").read_text())
    assert report["status"] == "finished" and report["smoke"]["ok"]
    assert all(c["ok"] for c in report["smoke"]["checks"]) and len(report["smoke"]["runs"]) == 2
    assert report["bench"]["ran"] and (out1 / "bench-rehearsal.json").exists()
    finished = [e["name"] for e in report["runs"]["finished"]]
    n1 = len(finished)
    assert 0 < n1 < total, f"the deadline should cut the study in two, finished {n1} of {total}"
    assert report["runs"]["left"] == total - n1 == len(report["runs"]["left_names"])
    order = report["runs"]["order"]
    assert finished[0] == order[0] and set(finished) <= set(order)
    by_name = {r.name: r for r in study.runs}
    first = [by_name[n] for n in order[:6]]  # one configuration per optimizer and batch size first
    assert {(r.config.optimizer, r.config.batch_size) for r in first} == \
        {(o, b) for o in ("sgd", "kfac") for b in (32, 64, 128)}
    assert all(r.grid_point["lr"] == 0.03 for r in first)

    # The archive holds exactly the finished runs, whole, and nothing else but the bench.
    archive = out1 / "harvest-rehearsal.tar.gz"
    members = archive_members(archive)
    manifest = json.loads(members["manifest.json"])
    assert sorted(r["name"] for r in manifest["runs"]) == sorted(finished)
    for r in manifest["runs"]:
        assert {f"{r['name']}.json", f"{r['name']}.ipynb"} <= set(r["files"])
    assert sorted(set(members) - {"manifest.json"}) == sorted(
        [f"rehearsal/{f}" for r in manifest["runs"] for f in r["files"]] + [manifest["bench"]["file"]])
    assert len(list(out1.iterdir())) == 3  # archive, report, bench: well under the 8 files that come back

    # Merge: the runs are done in the study, the bench is kept; merging again is refused.
    summary = merge(archive, spec.parent)
    assert sum(summary.merged.values()) == n1
    assert sum(run_state(spec.parent, r) == "done" for r in study.runs) == n1
    assert list((spec.parent / "bench").glob("*.json"))
    # What is left, by the harvest's model corrected by the merged runs' wall times.
    left = [r for r in study.runs if run_state(spec.parent, r) == "pending"]
    assert f"corrected by {n1} finished runs" in sweep_estimate.remaining_estimate(study, left, sharing=1)
    # The merged bench is what the book's tables read: each optimizer at each batch size, on the
    # device the environment names.
    benches = load_benches(tmp_path)
    assert [b["study"] for b in benches] == ["rehearsal"] and benches[0]["environment"]["device"] == "cpu"
    steps = step_table(benches)
    assert sorted(zip(steps["batch size"], steps["optimizer"])) == [(b, o) for b in (32, 128) for o in ("kfac", "sgd")]
    with pytest.raises(UsageError, match="already done"):
        merge(archive, spec.parent)

    # Second window (the command line, as on the GPU machine): the bench is taken from the study,
    # and exactly the runs left are run.
    out2 = tmp_path / "out2"
    p = run_harvest_cli(spec, out2, tmp_path / "work2")
    assert p.returncode == 0, p.stderr + p.stdout
    report2 = json.loads((out2 / "harvest-rehearsal-report.json").read_text())
    assert report2["bench"]["ran"] is False
    second = [e["name"] for e in report2["runs"]["finished"]]
    assert sorted(second) == sorted(report["runs"]["left_names"]) and not set(second) & set(finished)
    assert report2["runs"]["left"] == 0
    merge(out2 / "harvest-rehearsal.tar.gz", spec)
    assert all(run_state(spec.parent, r) == "done" for r in study.runs)

    from kfaclab.results import load_results, status_counts

    res = load_results(spec.parent)
    assert int(status_counts(res).to_numpy().sum()) == total
    assert set(res.runs["status"]) <= {"completed", "diverged"}

    # A third harvest finds nothing to do.
    p = run_harvest_cli(spec, tmp_path / "out3", tmp_path / "work3", "--no-smoke")
    assert p.returncode == 0, p.stderr
    report = json.loads((tmp_path / "out3" / "harvest-rehearsal-report.json").read_text())
    assert report["runs"]["pending_at_start"] == 0


def test_a_failing_smoke_check_stops_the_harvest_with_a_report(tmp_path):
    # A valid spec whose runs fail when they start: more noise-scale batches than an epoch has.
    spec = write_spec(tmp_path / "bad", name="bad", fixed={**REHEARSAL["fixed"], "noise_scale_batches": 64})
    p = run_harvest_cli(spec, tmp_path / "out", tmp_path / "work", "--bench", "never", "--smoke-limit-s", "600")
    assert p.returncode == 1
    report = json.loads((tmp_path / "out" / "harvest-bad-report.json").read_text())
    assert report["status"] == "smoke check failed" and not report["smoke"]["ok"]
    assert [r["status"] for r in report["smoke"]["runs"]] == ["failed", "failed"]
    assert all("noise_scale_batches" in r["error"] for r in report["smoke"]["runs"])
    assert "runs" not in report and not (tmp_path / "out" / "harvest-bad.tar.gz").exists()


def test_a_smoke_check_over_its_time_limit_fails(tmp_path):
    spec = write_spec(tmp_path / "slow", name="slow", batch_sizes=[128])
    p = run_harvest_cli(spec, tmp_path / "out", tmp_path / "work", "--bench", "never", "--smoke-limit-s", "0.5")
    assert p.returncode == 1
    report = json.loads((tmp_path / "out" / "harvest-slow-report.json").read_text())
    assert report["smoke"]["error"] == "the smoke check took longer than 0.5s" and not report["smoke"]["ok"]


# ------------------------------------------------------------------------------ merge validation

@pytest.fixture(scope="module")
def one_archive(tmp_path_factory):
    """A real harvest of the rehearsal's twelve runs at batch 128 (no smoke, no bench)."""
    d = tmp_path_factory.mktemp("merge")
    spec = write_spec(d / "rehearsal", batch_sizes=[128])
    p = run_harvest_cli(spec, d / "out", d / "work", "--no-smoke", "--bench", "never")
    assert p.returncode == 0, p.stderr
    return spec, (d / "out" / "harvest-rehearsal.tar.gz").read_bytes()


def _rewrite(data: bytes, edit) -> bytes:
    """The archive with its members passed through edit(dict) -> dict (manifest included)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    members = edit(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _restamp(members, name):
    """Keep the manifest's sha256 of `name` in step with an edit (a careful forger)."""
    m = json.loads(members["manifest.json"])
    for r in m["runs"]:
        for f in r["files"]:
            if f"rehearsal/{f}" == name:
                r["files"][f] = hashlib.sha256(members[name]).hexdigest()
    members["manifest.json"] = json.dumps(m).encode()
    return members


def _first_record(members):
    return next(n for n in members if n.endswith(".json") and n.startswith("rehearsal/")
                and not n.endswith(".failed.json"))


def _edit_record(fn, restamp=True):
    def edit(members):
        name = _first_record(members)
        rec = json.loads(members[name])
        fn(rec)
        members[name] = json.dumps(rec).encode()
        return _restamp(members, name) if restamp else members
    return edit


def _edit_manifest(fn):
    def edit(members):
        m = json.loads(members["manifest.json"])
        fn(m)
        members["manifest.json"] = json.dumps(m).encode()
        return members
    return edit


def _drop_notebooks(members):
    return {k: v for k, v in members.items() if not k.endswith(".ipynb")}


def _add_member(name):
    def edit(members):
        members[name] = b"{}"
        return members
    return edit


TAMPERED = [
    ("record bytes altered", _edit_record(lambda r: r.update(status="diverged"), restamp=False), "sha256"),
    ("config altered, sha kept in step", _edit_record(lambda r: r["config"]["hparams"].update(lr=9.0)),
     "config does not give the run's id"),
    ("record truncated to a malformed one", _edit_record(lambda r: r.pop("history")), "malformed"),
    ("unknown status", _edit_manifest(lambda m: m["runs"][0].update(status="interrupted")), "not a finished"),
    ("a run of another spec", _edit_manifest(lambda m: m["runs"][0].update(run_id="0123456789ab")),
     "not a run of"),
    ("another study", _edit_manifest(lambda m: m.update(study="cpu")), "a harvest of study 'cpu'"),
    ("a run twice", _edit_manifest(lambda m: m["runs"].append(m["runs"][0])), "twice"),
    ("notebook missing", _drop_notebooks, "missing"),
    ("a member the manifest does not list", _add_member("rehearsal/extra.json"), "not listed"),
    ("a path outside the study", _add_member("../escape.json"), "plain name"),
    ("no manifest", lambda m: {k: v for k, v in m.items() if k != "manifest.json"}, "no manifest"),
]


@pytest.mark.parametrize("what,edit,says", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_merge_refuses_a_bad_archive_whole_and_writes_nothing(one_archive, tmp_path, what, edit, says):
    spec, data = one_archive
    target = write_spec(tmp_path / "rehearsal", yaml.safe_load(spec.read_text()))
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_rewrite(data, edit))
    before = sorted(p.name for p in target.parent.iterdir())
    with pytest.raises(UsageError, match=says):
        merge(bad, target.parent)
    assert sorted(p.name for p in target.parent.iterdir()) == before


def test_merge_refuses_damaged_bytes_at_many_offsets(one_archive, tmp_path):
    spec, data = one_archive
    target = write_spec(tmp_path / "rehearsal", yaml.safe_load(spec.read_text()))
    bad = tmp_path / "bad.tar.gz"
    for offset in range(10, len(data) - 8, max(1, len(data) // 23)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x5A
        bad.write_bytes(bytes(damaged))
        with pytest.raises(UsageError):
            merge(bad, target.parent)
    bad.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(UsageError, match="damaged"):
        merge(bad, target.parent)
    assert not list(target.parent.glob("*.json"))
    merge_ok = merge(_write(tmp_path / "good.tar.gz", data), target.parent)  # the intact archive merges
    assert sum(merge_ok.merged.values()) == len(load_study(target).runs) == 12


def _write(path, data):
    path.write_bytes(data)
    return path


def test_merged_runs_are_not_run_again_by_a_sweep(one_archive, tmp_path):
    from kfaclab.sweep.state import plan_runs

    spec, data = one_archive
    target = write_spec(tmp_path / "rehearsal", yaml.safe_load(spec.read_text()))
    merge(_write(tmp_path / "a.tar.gz", data), target)
    study = load_study(target)
    pending, done, _ = plan_runs(study, retry_failed=False)
    assert done == len(study.runs) == 12 and not pending
    assert all((target.parent / f"{r.name}.ipynb").exists() for r in study.runs)


def test_harvest_command_line_errors_are_one_line(tmp_path):
    spec = write_spec(tmp_path / "s")
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, says in [
        (["harvest", str(spec), "--out", str(blocker / "x"), "--deadline-s", "10"], "cannot write to --out"),
        (["harvest", str(spec), "--out", str(tmp_path), "--deadline-s", "0"], "must be positive"),
        (["harvest", str(spec), "--out", str(tmp_path), "--deadline-s", "5", "--bench-batch-sizes", "a"],
         "--bench-batch-sizes must be whole numbers"),
        (["harvest-merge", str(blocker), str(spec.parent)], "not a readable harvest archive"),
        (["harvest-merge", str(blocker), str(tmp_path / "nowhere")], "no study spec"),
    ]:
        p = subprocess.run([sys.executable, "-m", "kfaclab", *args], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_gpu_tree_cuts_what_travels_to_the_study_and_restores_the_index_exactly(tmp_path):
    """scripts/gpu-tree.sh: before a GPU window the other studies' records leave git's index and
    are ignored (still on disk), so the tree that travels fits the device tool's 64 MiB; restore
    gives back the index HEAD has and the exclude file as it was; a second cut, a cut with staged
    changes and a cut without a study are refused in one line (exit 2)."""
    import shutil

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copyfile(ROOT / "scripts" / "gpu-tree.sh", repo / "scripts" / "gpu-tree.sh")
    for path in ("runs/README.md", "runs/gpu/study.yaml", "runs/big/a.json", "runs/big/a.ipynb", "runs/other/b.json",
                 "kfaclab/x.py"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(path * 100)

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    def tree(*args):
        return subprocess.run(["bash", "scripts/gpu-tree.sh", *args], cwd=repo, capture_output=True, text=True)

    git("init", "-q")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("# mine\n/.mine/\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    before = git("ls-files")
    assert tree("cut").returncode == 2 and "give the study folder" in tree("cut").stderr
    r = tree("cut", "runs/gpu")
    assert r.returncode == 0, r.stderr
    travels = set(git("ls-files").split()) | set(git("ls-files", "--others", "--exclude-standard").split())
    assert travels == {"runs/README.md", "runs/gpu/study.yaml", "kfaclab/x.py", "scripts/gpu-tree.sh"}
    assert (repo / "runs" / "big" / "a.json").exists()  # on disk, untouched
    again = tree("cut", "runs/gpu")
    assert again.returncode == 2 and "already cut" in again.stderr
    r = tree("restore")
    assert r.returncode == 0 and git("ls-files") == before and git("status", "--porcelain") == ""
    assert (repo / ".git" / "info" / "exclude").read_text() == "# mine\n/.mine/\n"
    assert tree("restore").returncode == 0 and git("ls-files") == before  # twice is harmless
    (repo / "kfaclab" / "x.py").write_text("changed")
    git("add", "kfaclab/x.py")
    staged = tree("cut", "runs/gpu")
    assert staged.returncode == 2 and "staged changes" in staged.stderr
