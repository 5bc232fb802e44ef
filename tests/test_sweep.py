"""Study specs and sweeps: validation errors, real papermill execution with 2 workers, resume,
failure isolation, interruption and kills."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from kfaclab.errors import UsageError
from kfaclab.sweep import load_study
from kfaclab.sweep.estimate import dry_run
from kfaclab.sweep.runner import sweep
from kfaclab.sweep.worker import template_path
from kfaclab.train import validate_record

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "runs" / "smoke" / "study.yaml"


def smoke_spec(tmp_path, **changes) -> Path:
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(changes)
    d = tmp_path / "smoke"
    d.mkdir()
    (d / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return d / "study.yaml"


def records(directory: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in directory.glob("*.json") if not p.name.endswith(".failed.json")}


# ---------------------------------------------------------------------- spec validation

BAD_SPECS = [
    ({"colour": "red"}, "colour: unknown key"),
    ({"batch_sizes": "32"}, "batch_sizes: must be a list"),
    ({"batch_sizes": []}, "batch_sizes: is empty"),
    ({"batch_sizes": [32, 0]}, "batch_sizes: values must be positive"),
    ({"budget": {"epochs": 2, "iterations": 5}}, "budget: must be exactly one of"),
    ({"budget": {"rule": {"b0": 32, "e1": 2}}}, "budget.rule.e1: unknown key"),
    ({"fixed": {"batch_size": 32}}, "fixed.batch_size: is set by the spec's own sections (batch_sizes)"),
    ({"fixed": {"modle": "mlp"}}, "unknown key(s) modle"),
    ({"fixed": {"train_subset": "many"}}, "train_subset must be int"),
    ({"optimizers": {"adamw": {"grid": {"lr": [0.1]}}}}, "optimizers.adamw: unknown optimizer"),
    ({"optimizers": {"sgd": {"grid": {"lr": []}}}}, "optimizers.sgd.grid.lr: is empty"),
    ({"optimizers": {"sgd": {"grid": {"damping": [0.1]}}}}, "optimizers.sgd.grid.damping: not a hyperparameter of sgd"),
    ({"optimizers": {"sgd": {"grids": {"lr": [0.1]}}}}, "optimizers.sgd.grids: unknown key"),
    ({"optimizers": {"kfac": {"grid": {"damping": [-1.0]}}}}, "damping must be a non-negative number"),
    ({"optimizers": {}}, "optimizers: is empty"),
    ({"optimizers": {"sgd": None}}, "optimizers.sgd: is empty: give its grid"),
    ({"optimizers": {"sgd": {}}}, "optimizers.sgd: is empty: give its grid"),
    ({"fixed": {"dataset": "synthetic", "model": "vgg11", "device": "cpu"}}, "model is not valid: unknown model"),
    ({"fixed": {"dataset": "synthetic", "model": "resnet99", "device": "cpu"}}, "model is not valid: a CIFAR ResNet's"),
    ({"fixed": {"dataset": "synthetic", "model": "mlp:0", "device": "cpu"}}, "model is not valid: bad MLP widths"),
    ({"fixed": {"dataset": "mnist", "model": "mlp:16", "device": "cpu"}},
     "unknown dataset 'mnist'; choose from cifar10"),
    ({"fixed": {"dataset": "synthetic", "model": "mlp:16", "train_subset": 9000, "device": "cpu"}},
     "train_subset 9,000 is more than the 5,000 training images of synthetic"),
    ({"fixed": {"dataset": "cifar10-jpeg", "model": "mlp:16", "test_subset": 10001, "device": "cpu"}},
     "test_subset 10,001 is more than the 10,000 test images"),
    ({"fixed": {"dataset": "synthetic", "model": "mlp:16", "train_subset": 40, "device": "cpu"}},
     "batch_size 64 is more than the 40 training examples"),
    ({"loss_targets": [1.5, -1.0]}, "loss_targets: values must be positive"),
    ({"loss_targets": "low"}, "loss_targets: must be a list"),
    ({"throughput": {"source": "x", "runs_sharing": 2, "epochs_per_second": {"adam": 1.0}}},
     "throughput.epochs_per_second.adam: not an optimizer of this study"),
    ({"throughput": {"source": "x", "runs_sharing": 0, "epochs_per_second": {}}}, "throughput.runs_sharing"),
    ({"throughput": {"runs_sharing": 2, "epochs_per_second": {}}}, "throughput.source: missing"),
    ({"harvest_first": ["adam"]}, "harvest_first: 'adam' is not an optimizer of this study"),
    ({"harvest_first": "sgd"}, "harvest_first: must be a list"),
    ({"harvest_first": ["sgd", "sgd"]}, "harvest_first: repeats a value"),
    ({"optimizers": {"sgd": {"fixed": {"lr": 0.1}, "grid": {}}}}, "optimizers.sgd.grid: is empty"),
    ({"bracket": {"max_steps": 2}}, "needs at least three values"),  # the smoke grid has two learning rates
]


@pytest.mark.parametrize("change,says", BAD_SPECS)
def test_invalid_specs_are_one_line_errors_naming_key_and_file(tmp_path, change, says):
    path = smoke_spec(tmp_path, **change)
    with pytest.raises(UsageError) as e:
        load_study(path)
    msg = str(e.value)
    assert says in msg and str(path) in msg and "\n" not in msg, msg


def test_missing_and_malformed_spec_files(tmp_path):
    with pytest.raises(UsageError, match="no study spec at"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "study.yaml"
    bad.write_text("batch_sizes: [32\nbudget: x\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_study(bad)
    r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not valid YAML" in r.stderr


def test_spec_expands_into_stable_named_runs(tmp_path):
    path = smoke_spec(tmp_path)
    study = load_study(path)
    assert len(study.runs) == 2 * (2 + 2)  # batch sizes x (sgd lr grid + kfac lr x damping grid)
    again = load_study(path)
    assert [r.run_id for r in study.runs] == [r.run_id for r in again.runs]
    r = next(r for r in study.runs if r.config.optimizer == "kfac" and r.config.batch_size == 64)
    assert r.name.startswith("kfac-b64-lr0.01-damping0.1-s0-") and r.config.hparams["damping"] == 0.1
    assert r.config.budget == "rule" and r.config.rule_b0 == 32 and r.config.lr_scaling == "linear"
    assert r.run_id == r.config.run_id()


# ---------------------------------------------------------------------- execution

def test_template_runs_by_hand_with_its_own_defaults(tmp_path):
    """The template's parameters cell is a complete run: executed as it is, it trains and
    writes the record."""
    from nbclient import NotebookClient

    nb = nbformat.read(template_path(), as_version=4)
    assert "parameters" in nb.cells[1].metadata["tags"]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    rec = json.loads((tmp_path / "experiment.json").read_text())
    assert validate_record(rec) == [] and rec["status"] == "completed"


def test_smoke_study_with_two_workers_then_resume_skips_everything(tmp_path):
    study = load_study(smoke_spec(tmp_path))
    s = sweep(study, workers=2, progress=False)
    assert s.count("completed") + s.count("diverged") == 8 and s.count("failed") == 0
    recs = records(study.directory)
    assert set(recs) == {r.name for r in study.runs}
    for r in study.runs:
        assert validate_record(recs[r.name]) == [] and recs[r.name]["run_id"] == r.run_id
        nb = study.directory / f"{r.name}.ipynb"
        assert nb.exists() and nb.stat().st_size < 60_000  # lean: no embedded data
    assert not list(study.directory.glob(".*.partial"))
    assert s.overhead["runs"] == 8 and s.overhead["per_run_s"] > 0
    again = sweep(study, workers=2, progress=False)
    assert again.outcomes == [] and again.skipped_done == 8
    assert "8 runs; 0 to run, 8 done" in dry_run(study)


def forty_image_fixed(tmp_path) -> dict:
    """The smoke spec's fixed settings on an image folder of 40 training images: a dataset whose
    size only loading reveals, so a batch of 64 passes the spec's checks and fails inside the
    run (a runtime failure, as a user's own data can cause)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "forty"
    for split, n in (("train", 20), ("test", 10)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                (root / split / cls / f"{i:03d}.png").write_bytes(buf.getvalue())
    fixed = {k: v for k, v in yaml.safe_load(SMOKE.read_text())["fixed"].items()
             if k not in ("train_subset", "test_subset")}
    return {**fixed, "dataset": f"imagefolder:{root}"}


def test_a_failing_run_is_isolated_recorded_and_retried_on_request(tmp_path):
    # 40 training images: batch 64 cannot fit, a runtime error inside the kernel.
    # One worker, the failing run first: the worker's next run must get a working kernel.
    spec = smoke_spec(tmp_path, fixed=forty_image_fixed(tmp_path), optimizers={"sgd": {"grid": {"lr": [0.05]}}},
                      batch_sizes=[64, 32])
    study = load_study(spec)
    assert [r.config.batch_size for r in study.runs] == [64, 32]
    s = sweep(study, workers=1, progress=False)
    assert s.count("completed") + s.count("diverged") == 1 and s.count("failed") == 1
    failed = next(o for o in s.outcomes if o.status == "failed")
    assert failed.run.config.batch_size == 64 and "larger than the 40 training examples" in failed.error
    marker = json.loads((study.directory / f"{failed.run.name}.failed.json").read_text())
    assert "larger than the 40 training examples" in marker["error"]
    assert (study.directory / f"{failed.run.name}.ipynb").exists()  # with the error in it
    again = sweep(study, workers=2, progress=False)
    assert again.outcomes == [] and again.skipped_failed == 1 and again.skipped_done == 1
    retry = sweep(study, workers=1, progress=False, retry_failed=True)
    assert [o.status for o in retry.outcomes] == ["failed"]
    r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(spec), "--retry-failed", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "failed: sgd-b64" in r.stdout


def _sweep_process(spec, *extra, sigint_ignored=False):
    # A shell script's background job starts with SIGINT ignored: the sweep must still stop on it.
    pre = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([sys.executable, "-m", "kfaclab", "sweep", str(spec), "--workers", "1", "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=pre)


def _wait_for_records(directory, n, proc, timeout=180):
    t0 = time.time()
    while len(records(directory)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["kill", "ctrl-c", "sigterm", "sigint-in-background"])
def test_killed_or_interrupted_sweep_resumes_losing_and_duplicating_nothing(tmp_path, how):
    spec = smoke_spec(tmp_path)
    study = load_study(spec)
    proc = _sweep_process(spec, sigint_ignored=how == "sigint-in-background")
    _wait_for_records(study.directory, 2, proc)
    if how == "kill":
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and anything in its process group
        proc.wait()
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130 and "interrupted" in err
        assert not list(study.directory.glob("*.failed.json"))  # interrupted is not failed
    time.sleep(2)  # no orphan worker goes on writing after the sweep is gone
    before = {k: (study.directory / f"{k}.json").stat().st_mtime for k in records(study.directory)}
    time.sleep(2)
    assert {k: (study.directory / f"{k}.json").stat().st_mtime for k in records(study.directory)} == before
    # Done: a finished record with its notebook (a record whose notebook did not land is made again).
    done_before = sum(r["status"] in ("completed", "diverged") and (study.directory / f"{k}.ipynb").exists()
                      for k, r in records(study.directory).items())
    s = sweep(study, workers=2, progress=False)
    assert s.skipped_done == done_before and len(s.outcomes) == 8 - done_before
    recs = records(study.directory)
    errors = [(o.run.name, o.status, o.error) for o in s.outcomes if o.status not in ("completed", "diverged")]
    assert len(recs) == 8 and all(r["status"] in ("completed", "diverged") for r in recs.values()), errors
    assert not list(study.directory.glob(".*.partial"))


@pytest.mark.parametrize("preset", ["smoke", "cpu", "gpu", "paper", "paper-svhn"])
def test_dry_run_of_each_preset_prints_run_count_and_cost(preset):
    r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(ROOT / "runs" / preset / "study.yaml"),
                        "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"study {preset}:" in r.stdout and "total:" in r.stdout and "examples" in r.stdout


def test_dry_run_cost_model_separates_per_step_and_per_example_time():
    from kfaclab.sweep.estimate import _fit_cost

    # K-FAC-like: 10 ms of preconditioning per step plus 50 us per example
    points = [(it, it * b, 0.01 * it + 5e-5 * it * b) for it, b in [(3000, 32), (1500, 128), (300, 2048)]]
    a, b = _fit_cost(points)
    assert a == pytest.approx(0.01, rel=1e-6) and b == pytest.approx(5e-5, rel=1e-6)
    # one batch size: per-step and per-example time cannot be told apart; seconds per example
    assert _fit_cost([(100, 3200, 4.0), (200, 6400, 8.0)]) == (0.0, pytest.approx(4.0 / 3200))
    # a fit that would need a negative coefficient keeps the better one alone
    a, b = _fit_cost([(100, 100 * 32, 1.0), (50, 50 * 64, 0.3)])
    assert min(a, b) == 0.0 and max(a, b) > 0


def test_gpu_preset_dry_run_uses_its_stated_throughput_model():
    study = load_study(ROOT / "runs" / "gpu" / "study.yaml")
    text = dry_run(study)
    tp = study.throughput
    epochs = {}
    for r in study.runs:
        c = r.config
        iters = (50000 // c.batch_size) * (int(round(__import__("math").log2(c.batch_size / 128))) + 1) * 3
        epochs[c.optimizer] = epochs.get(c.optimizer, 0) + iters * c.batch_size / 50000
    minutes = sum(e / tp["epochs_per_second"][o] for o, e in epochs.items()) / 60
    assert f"estimated time: {minutes:.1f} min on one device with {tp['runs_sharing']} runs sharing it" in text
    assert "from the spec's throughput model (assumed, not yet measured)" in text


def test_loss_targets_leave_run_ids_as_they_were(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    spec = yaml.safe_load(SMOKE.read_text())
    spec.pop("loss_targets", None)
    (tmp_path / "a" / "smoke").mkdir()
    (tmp_path / "a" / "smoke" / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    plain = load_study(tmp_path / "a" / "smoke" / "study.yaml")
    with_loss = load_study(smoke_spec(tmp_path / "b", loss_targets=[2.0, 1.5]))
    assert [r.run_id for r in plain.runs] == [r.run_id for r in with_loss.runs]
    assert with_loss.loss_targets == [2.0, 1.5] and plain.loss_targets == []


def test_dry_run_refuses_a_bad_model_in_one_line_before_anything_runs(tmp_path):
    path = smoke_spec(tmp_path, fixed={"dataset": "synthetic", "model": "vgg11", "device": "cpu"})
    r = subprocess.run([sys.executable, "-m", "kfaclab", "sweep", str(path), "--dry-run"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "unknown model 'vgg11'" in r.stderr and not list(path.parent.glob("*.json"))


def test_the_dataset_sizes_the_specs_are_checked_against_are_the_integrity_counts():
    from kfaclab.data.integrity import EXPECTED_COUNTS
    from kfaclab.train.config import DATASET_SIZES

    for name, counts in EXPECTED_COUNTS.items():
        for split, k in (("train", 0), ("test", 1)):
            c = counts[split]
            assert DATASET_SIZES[name][k] == c.get("total", c.get("per_class", 0) * c["classes"])
    assert DATASET_SIZES["cifar10-jpeg"] == DATASET_SIZES["cifar10"]


def test_dry_run_estimates_adam_at_sgds_measured_cost_until_adam_has_run(tmp_path):
    """A study whose SGD runs have finished but none of Adam's: the dry run's cost model prices
    Adam's runs at SGD's rate (its step costs what SGD's does) and says so, not "no estimate"."""
    import shutil

    from kfaclab.sweep.estimate import dry_run

    src = ROOT / "runs" / "resnet-cpu"
    shutil.copy(src / "study.yaml", tmp_path / "study.yaml")
    for b in (32, 256, 2048):
        for p in sorted(src.glob(f"sgd-b{b}-*.json"))[:2]:
            shutil.copy(p, tmp_path / p.name)
    text = dry_run(load_study(tmp_path / "study.yaml"), only="adam-*")
    line = next(x for x in text.splitlines() if x.startswith("estimated time"))
    assert "adam (resnet8) at SGD's measured cost" in line and "no estimate yet" not in line
    assert float(line.split("estimated time: ")[1].split(" min")[0]) > 0
    text = dry_run(load_study(tmp_path / "study.yaml"), only="kfac-*")  # K-FAC's cost is not SGD's
    assert "no estimate yet for kfac (resnet8)" in text
