"""A full disk, and failures after training: a finished run is never lost, a sweep stops in one
line, and what the machine did is not held against the run (kfaclab.infrastructure).

The disk is a real small filesystem (tmpfs, mounted here as root; the tests skip where mounting
is not allowed), filled up at the moment each case needs."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kfaclab import infrastructure
from kfaclab.sweep import load_study
from kfaclab.sweep.state import run_state
from kfaclab.train import RunConfig, loop, record, train, validate_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_fs(tmp_path):
    mounted = []

    def make(size_kb: int) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `folder`, leaving about `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "ab") as f:
        while True:
            free = shutil.disk_usage(folder).free
            if free <= leave:
                break
            try:
                f.write(b"\0" * min(65536, max(1, free - leave)))
                f.flush()
            except OSError:
                break
    return filler


def cfg(output, **kw):
    base = dict(dataset="synthetic", train_subset=512, test_subset=200, resolution=8, model="mlp:16", batch_size=64,
                budget="epochs", budget_value=1.0, hparams={"lr": 0.05}, min_evals=4, eval_batch_size=200,
                device="cpu", output=str(output))
    return RunConfig(**{**base, **kw})


def test_train_refuses_to_start_when_the_record_would_not_fit(small_fs):
    fs = small_fs(256)
    fill(fs, leave=8_000)
    r = subprocess.run([sys.executable, "-m", "kfaclab", "train", "--dataset", "synthetic", "--model", "mlp:16",
                        "--epochs", "1", "--out", str(fs / "run.json"), "--quiet"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no room for the record" in lines[0] and "No space left on device" in lines[0]
    assert not (fs / "run.json").exists() and not list(fs.glob(".kfaclab-*"))


def test_a_record_that_cannot_be_written_at_the_end_is_rescued(small_fs, tmp_path, monkeypatch):
    fs = small_fs(1024)
    rescue = tmp_path / "rescue"
    monkeypatch.setenv(record.RESCUE_ENV, str(rescue))
    real = loop._run

    def run_then_fill(*a, **k):  # the disk fills while the run trains
        real(*a, **k)
        fill(fs)

    monkeypatch.setattr(loop, "_run", run_then_fill)
    with pytest.raises(record.RecordNotSaved) as e:
        train(cfg(fs / "run.json"), progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and str(rescue / "run.json") in msg
    saved = json.loads((rescue / "run.json").read_text())
    assert saved["status"] == "completed" and validate_record(saved) == []
    assert not (fs / "run.json").exists() and not [p for p in fs.iterdir() if p.name != "filler"]


def test_an_exception_after_training_still_writes_the_record(tmp_path, monkeypatch):
    def broken(device):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(record, "environment", broken)
    r = train(cfg(tmp_path / "run.json"), progress=False)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert r["status"] == saved["status"] == "completed" and validate_record(saved) == []
    assert "torchvision::nms" in saved["environment"]["error"] and saved["finish_notes"]
    assert saved["final"]["test_accuracy"] == saved["history"][-1]["test_accuracy"]


def test_a_sweep_on_a_full_disk_stops_in_one_line_and_resumes(small_fs):
    fs = small_fs(8192)
    d = fs / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "kfaclab", "sweep", str(d / "study.yaml"), "--workers", "1",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    filled = threading.Event()

    def fill_after_the_first_run():
        t0 = time.time()
        while time.time() - t0 < 300 and not list(d.glob("*.ipynb")):
            time.sleep(0.05)
        fill(fs)
        filled.set()

    threading.Thread(target=fill_after_the_first_run, daemon=True).start()
    out, err = proc.communicate(timeout=600)
    assert filled.is_set()
    assert proc.returncode == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("kfaclab: error: the disk holding") and "is full" in last
    # Nothing cut under a final name; nothing marked failed for good.
    for nb in d.glob("*.ipynb"):
        json.loads(nb.read_text())
    study = load_study(d / "study.yaml")
    states = [run_state(d, r) for r in study.runs]
    assert "failed" not in states and states.count("done") >= 1 and "pending" in states
    (fs / "filler").unlink()
    again = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(d / "study.yaml"), "--workers", "1",
                            "--quiet"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert [run_state(d, r) for r in study.runs] == ["done"] * len(study.runs)


@pytest.mark.parametrize("error,kind", [
    ("OSError: [Errno 28] No space left on device", "disk"), ("no room for the record in /x (No space left on "
                                                              "device: 1 bytes needed)", "disk"),
    ("RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried... MemoryError", "memory"),
    ("the kernel died (out of memory, or killed): ...", "killed"),
    ("the worker process died (exit status -9)", "killed"),
    ("RuntimeError: Kernel died before replying to kernel_info", "killed"),
    ("RuntimeError: Kernel didn't respond in 60 seconds", "start"),
    ("RuntimeError: Kernel didn't respond to heartbeats in 60 seconds and timed out", "start"),
    ("ValueError: batch size 64 is larger than the 40 training examples", None), (None, None),
])
def test_what_the_machine_did_is_told_from_what_the_run_did(error, kind):
    assert infrastructure.kind_of(error) == kind


def test_a_machine_failure_is_not_sticky(tmp_path):
    d = tmp_path / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    run = load_study(d / "study.yaml").runs[0]
    marker = d / f"{run.name}.failed.json"
    marker.write_text(json.dumps({"run_id": run.run_id, "error": "x", "infrastructure": "disk"}))
    assert run_state(d, run) == "pending"
    marker.write_text(json.dumps({"run_id": run.run_id, "error": "ValueError: a bad config"}))
    assert run_state(d, run) == "failed"
    os.unlink(marker)
    assert run_state(d, run) == "pending"


def test_a_harvest_whose_out_fills_up_stops_and_keeps_its_last_archive(small_fs, tmp_path, monkeypatch):
    """$OUT full after the first run: the harvest stops in its report ("cannot write the archive"),
    the archive it wrote last is whole and holds the runs before, and nothing is counted twice."""
    import tarfile

    import yaml

    from kfaclab.sweep import harvest as hv

    spec = {"name": "full", "fixed": {"dataset": "synthetic", "model": "mlp:16", "train_subset": 512,
                                      "test_subset": 200, "resolution": 8, "augment": False, "min_evals": 3,
                                      "device": "cpu"},
            "batch_sizes": [32, 64], "budget": {"epochs": 1}, "seeds": [0],
            "optimizers": {"sgd": {"grid": {"lr": [0.01, 0.03, 0.1]}}}}
    d = tmp_path / "full"
    d.mkdir()
    (d / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = small_fs(2048)
    real = hv.Harvest._pack
    packs = []

    def pack_then_fill(self):
        real(self)
        packs.append(1)
        if len(packs) == 1:
            fill(out)  # the first archive is written; then $OUT is full

    monkeypatch.setattr(hv.Harvest, "_pack", pack_then_fill)
    opts = hv.Options(out=out, deadline_s=600, margin_s=1.0, bench="never", smoke=False, work=tmp_path / "work",
                      progress=False)
    harvest = hv.Harvest(load_study(d / "study.yaml"), opts)
    harvest.run()
    report = harvest.report  # the one in memory: the file on the full $OUT may be the last one that fitted
    assert "cannot write the archive" in report["runs"]["stopped"]
    with tarfile.open(out / "harvest-full.tar.gz") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
    assert len(manifest["runs"]) == 1 and len(report["runs"]["finished"]) == 1


def test_a_kernel_that_does_not_start_in_time_leaves_its_run_pending(tmp_path, monkeypatch):
    """A loaded machine can make a kernel's start-up (importing torch) slow: the run is given
    minutes to start, not papermill's 60 s, and a start that still times out is the machine's
    failure, so the next sweep runs it again instead of skipping it as failed."""
    import papermill

    from kfaclab.sweep import execute as ex
    from kfaclab.sweep.worker import read_outcome

    seen = {}

    def slow_start(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("Kernel didn't respond in 300 seconds")

    class NoKernel:
        kernel_name, km = "python3", None

        def ensure(self, cwd):
            pass

    monkeypatch.setattr(papermill, "execute_notebook", slow_start)
    d = tmp_path / "smoke"
    d.mkdir()
    shutil.copy(ROOT / "runs" / "smoke" / "study.yaml", d / "study.yaml")
    run = load_study(d / "study.yaml").runs[0]
    job = {"template": "t.ipynb", "notebook": str(d / f"{run.name}.ipynb"), "cwd": str(d), "parameters": {}}
    code, error = ex.execute(job, NoKernel(), "kfaclab-warm-kernel")
    assert seen["start_timeout"] == ex.KERNEL_START_S >= 300
    assert code == 3 and "Kernel didn't respond" in error
    out = read_outcome(run, d, code, error, 1.0)
    assert out.status == "failed" and out.infrastructure == "start"
    assert run_state(d, run) == "pending"
