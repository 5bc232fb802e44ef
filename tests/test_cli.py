import json
import subprocess
import sys
from pathlib import Path

import pytest

from kfaclab.train import validate_record

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "kfaclab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,says", [
    (["train", "--model", "vgg11"], "unknown model 'vgg11'; choose from resnet20"),
    (["train", "--model", "resnet99"], "depth is 6n+2 with n >= 1 (8, 14, 20, 26, 32, ...), got 99"),
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'; choose from cifar10"),
    (["train", "--optimizer", "adamw"], "unknown optimizer 'adamw'; choose from sgd, kfac, adam"),
    (["train", "--optimizer", "adam", "--hparam", "beta1=1"], "adam hyperparameter beta1 must be in [0, 1), got 1.0"),
    (["train", "--optimizer", "adam", "--hparam", "beta2=1.5"], "adam hyperparameter beta2 must be in [0, 1)"),
    (["train", "--optimizer", "adam", "--hparam", "eps=0"], "adam hyperparameter eps must be positive"),
    (["train", "--optimizer", "adam", "--hparam", "eps=-1e-8"], "adam hyperparameter eps must be a non-negative"),
    (["train", "--optimizer", "adam", "--damping", "0.1"], "optimizer 'adam' has no hyperparameter damping"),
    (["nqm", "--powers", "a,b"], "--powers: give comma-separated numbers"),
    (["nqm", "--momenta", "1"], "--momenta: each must be in [0, 1)"),
    (["nqm", "--decay", "-1"], "NQM spectrum decay must be a non-negative number"),
    (["nqm", "--target-fraction", "0"], "--target-fraction: must be in (0, 1)"),
    (["train", "--optimizer", "kfac", "--fisher-type", "true"], "fisher_type must be one of mc, empirical, exact"),
    (["train", "--optimizer", "kfac", "--stat-decay", "1"], "stat_decay must be in [0, 1)"),
    (["train", "--optimizer", "trcg", "--curvature", "fisher"], "curvature must be one of hessian, gauss-newton"),
    (["train", "--optimizer", "trcg", "--lr", "0.1"], "optimizer 'trcg' has no hyperparameter lr"),
    (["train", "--optimizer", "kfac", "--hparam", "likelihood=gaussian"],
     "likelihood gaussian does not match the training loss"),
    (["train", "--batch-size", "0"], "--batch-size: must be positive"),
    (["train", "--batch-size", "-8"], "--batch-size: must be positive"),
    (["train", "--epochs", "0"], "--epochs: must be positive"),
    (["train", "--target-acc", "1.5"], "targets must be accuracies in (0, 1]"),
    (["train", "--target-acc", "0"], "targets must be accuracies in (0, 1]"),
    (["train", "--lr-decay", "linear"], "lr_decay must be one of constant, cosine, step"),
    (["train", "--hparam", "damping=0.1"], "optimizer 'sgd' has no hyperparameter damping"),
    (["train", "--momentum", "-1"], "momentum must be a non-negative number"),
    (["train", "--stopping-rule", "--batch-size", "64"], "lower --rule-b0"),
    (["train", "--epochs", "1", "--iterations", "5"], "not allowed with argument"),
    (["train", "--dataset", "cifar10-jpeg", "--data-archive", "/nonexistent/c.tar.gz"], "--data-archive"),
    (["train", "--dataset", "imagefolder:/nonexistent"], "does not exist"),
    (["train", "--device", "tpu"], "device must be auto, cpu, cuda"),
    (["train", "--device", "cuda"], "CUDA is not available"),
    (["bench", "--optimizers", "sgd,lbfgs"], "unknown optimizer 'lbfgs'"),
    (["fly"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, says, tmp_path):
    if args[-1] == "cuda":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    r = run(*args, "--cache-dir", str(tmp_path)) if args[0] in ("train", "bench") else run(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kfaclab: error:"), r.stderr
    assert says in lines[0]
    assert "Traceback" not in r.stderr


def test_torchvision_dataset_missing_offline(tmp_path):
    r = run("train", "--dataset", "svhn", "--no-download", "--data-root", str(tmp_path / "none"),
            "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--data-root" in r.stderr and "cifar10-jpeg" in r.stderr


def test_train_writes_a_complete_record(tmp_path):
    out = tmp_path / "r.json"
    r = run("train", "--model", "mlp:16", "--batch-size", "100", "--iterations", "12", "--lr", "0.05",
            "--target-acc", "0.15", "--out", str(out), "--cache-dir", str(tmp_path), "--device", "cpu",
            "--train-subset", "1000", "--test-subset", "300")
    assert r.returncode == 0, r.stderr
    assert "completed: 12 iterations" in r.stdout and str(out) in r.stdout
    rec = json.loads(out.read_text())
    assert validate_record(rec) == [] and rec["final"]["iteration"] == 12
    assert rec["resolved"]["train_examples"] == 1000 and rec["resolved"]["test_examples"] == 300
    assert rec["config"]["hparams"] == {"lr": 0.05}
    assert "it/s" in r.stderr  # the tqdm progress bar


def test_real_cifar10_jpeg_run_from_the_cli(cifar10_jpeg, tmp_path):
    _, archive, cache = cifar10_jpeg
    out = tmp_path / "cifar.json"
    r = run("train", "--dataset", "cifar10-jpeg", "--data-archive", str(archive), "--cache-dir", str(cache),
            "--model", "mlp:128", "--train-subset", "5000", "--test-subset", "1000", "--epochs", "2",
            "--lr", "0.02", "--quiet", "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rec = json.loads(out.read_text())
    assert validate_record(rec) == []
    assert rec["resolved"]["steps_per_epoch"] == 5000 // 128 and rec["status"] == "completed"
    assert rec["final"]["test_accuracy"] > 0.2  # 10 classes: chance is 0.1


def test_bench_prints_its_table(tmp_path):
    js = tmp_path / "bench.json"
    r = run("bench", "--model", "mlp:16", "--batch-size", "32", "--steps", "3", "--rounds", "1", "--warmup", "1",
            "--device", "cpu", "--json", str(js), "--amortize", "3")
    assert r.returncode == 0, r.stderr
    assert "data overhead" in r.stdout and "sgd" in r.stdout
    res = json.loads(js.read_text())["results"][0]
    assert res["step_premade_s"] > 0 and res["loader_only_s"] > 0 and res["ratio_to_first"] == 1.0
    assert res["propagations_per_step"] == 2 * 32


def test_bench_times_trcg_and_counts_its_propagations(tmp_path):
    js = tmp_path / "bench.json"
    r = run("bench", "--model", "mlp:16", "--batch-size", "32", "--steps", "2", "--rounds", "1", "--warmup", "1",
            "--device", "cpu", "--json", str(js), "--amortize", "10", "--optimizers", "sgd,strcg",
            "--hessian-fraction", "0.05", "--cg-max-iters", "3")
    assert r.returncode == 0, r.stderr
    sgd, strcg = json.loads(js.read_text())["results"]
    # The Hessian sample is 5% of the synthetic split's 5000 images; a product over it costs 2 x 250.
    assert strcg["propagations_per_step"] >= 2 * 32 + 32 + 2 * 250 + 2 * 250
    assert strcg["ratio_to_first"] > 1


def test_bench_breaks_kfacs_step_into_phases_and_times_variants_side_by_side(tmp_path):
    js = tmp_path / "bench.json"
    r = run("bench", "--model", "mlp:64", "--batch-size", "32", "--steps", "2", "--rounds", "1", "--warmup", "1",
            "--device", "cpu", "--json", str(js), "--amortize", "10", "--hparam", "cov_update_freq=2",
            "--hparam", "inv_update_freq=5", "--optimizers",
            "sgd,kfac[fisher_type=empirical],kfac[fisher_type=mc;inverse_method=inverse]")
    assert r.returncode == 0, r.stderr
    assert "where the amortized step goes" in r.stdout and "kfac[fisher_type=empirical]" in r.stdout
    sgd, emp, mc = json.loads(js.read_text())["results"]
    assert sgd["phases_s"] is None and mc["optimizer"] == "kfac[fisher_type=mc;inverse_method=inverse]"
    for res in (emp, mc):
        phases = res["phases_s"]
        assert set(phases) == {"forward_backward", "curvature_backward", "factor_statistics", "factor_update",
                               "decompositions", "preconditioning", "sgd_update", "other"}
        assert all(v >= 0 for v in phases.values())
        assert phases["forward_backward"] > 0 and phases["decompositions"] > 0 and phases["factor_statistics"] > 0
    assert emp["phases_s"]["curvature_backward"] == 0  # the empirical Fisher has no backward of its own
    assert emp["propagations_per_step"] == 2 * 32  # counted over the timed steps only, not the profiled ones
    assert mc["phases_s"]["curvature_backward"] > 0
    bench = json.loads(js.read_text())
    assert bench["amortize"] == 10 and bench["amortize_rounds"] == 2  # the default: two interleaved blocks
    from kfaclab.bench import phase_table

    table = phase_table({"after": [js]})
    assert set(table["optimizer"]) == {"kfac[fisher_type=empirical]", "kfac[fisher_type=mc;inverse_method=inverse]"}
    per_step = table.groupby("optimizer")["ms"].sum()  # the phases add up to the profiled step
    assert (per_step > 0).all() and table["sgd_ms"].notna().all()
    r = run("bench", "--model", "mlp:16", "--optimizers", "sgd,kfac[low_rank]", "--device", "cpu")
    assert r.returncode == 2 and "is not KEY=VALUE" in r.stderr


def test_nqm_prints_the_curves_and_writes_what_the_module_computes(tmp_path):
    import numpy as np
    import pandas as pd

    from kfaclab import nqm

    out = tmp_path / "nqm.csv"
    r = run("nqm", "--powers", "0,1", "--momenta", "0.9", "--max-batch-log2", "6", "--csv", str(out))
    assert r.returncode == 0, r.stderr
    assert "p = 0: B_crit" in r.stdout and "p = 1: B_crit" in r.stdout and "wrote" in r.stdout
    table = pd.read_csv(out)
    spec = nqm.Spectrum()
    expected = nqm.tuned_steps(spec, 2.0 ** np.arange(7), 1.0, [0.9], 0.01 * spec.initial_loss())["steps"]
    assert table[table["power"] == 1.0]["steps"].tolist() == expected.tolist()
    # Counted until the loss stays below the target: at batch 2^12 the first crossing is a dip.
    r = run("nqm", "--powers", "1", "--momenta", "0.9", "--max-batch-log2", "12", "--count", "stays",
            "--csv", str(out))
    assert r.returncode == 0 and "stays below" in r.stdout, r.stderr
    bs, target = 2.0 ** np.arange(13), 0.01 * spec.initial_loss()
    stays = nqm.tuned_steps(spec, bs, 1.0, [0.9], target, count="stays")["steps"]
    assert pd.read_csv(out)["steps"].tolist() == stays.tolist()
    assert stays[-1] > nqm.tuned_steps(spec, bs, 1.0, [0.9], target)["steps"][-1]


@pytest.mark.parametrize("args", [["results", "runs/miniature"], ["sweep", "runs/paper/study.yaml", "--dry-run"]])
def test_a_closed_pipe_ends_quietly(args):
    """`kfaclab results ... | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    root = Path(__file__).resolve().parents[1]
    p = subprocess.Popen([sys.executable, "-m", "kfaclab", *args], cwd=root, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # as `head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=600) == 0
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
