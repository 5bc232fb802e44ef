"""Outputs: a place that cannot be written fails before the work, a failed write reports its own
error, and SIGTERM saves a run's record exactly as Ctrl-C does."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kfaclab.errors import UsageError
from kfaclab.sweep import load_study
from kfaclab.train import record as rec

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--dataset", "synthetic", "--model", "mlp:16", "--resolution", "8", "--train-subset", "512",
         "--test-subset", "200", "--batch-size", "32", "--device", "cpu"]


def kfaclab(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "kfaclab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("where", ["under-a-file", "a-folder"])
def test_train_refuses_an_unwritable_out_before_training(tmp_path, where):
    (tmp_path / "plain").write_text("not a folder")
    out = tmp_path / "plain" / "run.json" if where == "under-a-file" else tmp_path
    t0 = time.perf_counter()
    r = kfaclab(*TRAIN, "--epochs", "200", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(out if where == "a-folder" else out.parent) in r.stderr
    assert time.perf_counter() - t0 < 60  # 200 epochs were never started


def test_a_failed_atomic_write_raises_its_own_error_not_the_cleanups(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    def unlink_fails(self, missing_ok=False):
        raise PermissionError(13, "cleanup refused")

    from kfaclab import atomic

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    monkeypatch.setattr(Path, "unlink", unlink_fails)
    with pytest.raises(OSError) as e:
        rec.write_atomic(tmp_path / "r.json", {"a": 1})
    assert e.value.errno == 28 and "No space" in str(e.value)  # the write's error, not the cleanup's
    monkeypatch.undo()
    assert not (tmp_path / "r.json").exists()


def test_check_writable_names_the_place_and_the_fix(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"it is a file, not a folder; choose another --out"):
        rec.check_writable(tmp_path / "f" / "run.json")
    with pytest.raises(UsageError, match="which is a folder"):
        rec.check_writable(tmp_path)
    assert rec.check_writable(tmp_path / "new" / "deeper" / "run.json").name == "run.json"
    assert (tmp_path / "new" / "deeper").is_dir() and not list((tmp_path / "new" / "deeper").iterdir())


def _interrupted_record(tmp_path, sig) -> dict:
    out = tmp_path / f"run-{sig.name}.json"
    proc = subprocess.Popen([sys.executable, "-m", "kfaclab", *TRAIN, "--epochs", "3000", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        t0 = time.time()
        while "%|" not in "".join(seen[-400:]):  # the progress bar: training has begun
            assert proc.poll() is None, "".join(seen)
            assert time.time() - t0 < 120
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    return json.loads(out.read_text())


def test_sigterm_writes_the_record_as_interrupted_exactly_as_ctrl_c(tmp_path):
    term = _interrupted_record(tmp_path, signal.SIGTERM)
    ctrl_c = _interrupted_record(tmp_path, signal.SIGINT)
    assert term["status"] == ctrl_c["status"] == "interrupted"
    assert set(term) == set(ctrl_c) and term["history"] and rec.validate_record(term) == []
    assert term["final"]["iteration"] > 0


def test_a_sweep_on_a_study_folder_it_cannot_write_fails_before_any_run(tmp_path, monkeypatch):
    from kfaclab.sweep import runner

    d = tmp_path / "smoke"
    d.mkdir()
    (d / "study.yaml").write_text((ROOT / "runs" / "smoke" / "study.yaml").read_text())
    study = load_study(d / "study.yaml")

    def refused(*a, **k):
        raise PermissionError(13, "Permission denied")

    started = []
    monkeypatch.setattr(rec.tempfile, "mkstemp", refused)
    monkeypatch.setattr(runner, "Worker", lambda *a, **k: started.append(a))
    with pytest.raises(UsageError, match=r"cannot write run records in .*smoke \(Permission denied\)"):
        runner.sweep(study, workers=1, progress=False)
    assert started == [] and not list(d.glob("*.json"))
    if os.geteuid() != 0:  # a real read-only folder, where permissions bind (not for root)
        monkeypatch.undo()
        d.chmod(0o555)
        try:
            r = kfaclab("sweep", str(d / "study.yaml"))
            assert r.returncode == 2 and "cannot write run records" in r.stderr
        finally:
            d.chmod(0o755)
