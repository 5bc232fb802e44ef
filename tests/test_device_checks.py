"""The device checks (kfaclab.device_checks): CUDA against the CPU, path by path.

Tests marked `gpu` run every check on CUDA and skip where there is none (`pytest -m gpu` lists
them). The others run the same checks with the CPU as the device (float32 against float64),
so that the checks themselves are proven here, and show that a check fails when the device's
result differs."""

import pytest
import torch

from kfaclab import device_checks as dc

CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("name", list(dc.CHECKS))
def test_cuda_computes_what_the_cpu_computes(name):
    result = dc.run_check(name, "cuda")
    assert result.ok, result


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
def test_cuda_run_records_say_which_gpu_trained_them(tmp_path, tiny_dataset):
    from kfaclab.train import RunConfig, train

    cfg = RunConfig(model="mlp:16", optimizer="kfac", budget="iterations", budget_value=20, device="cuda",
                    precision="bf16", channels_last=True, output=str(tmp_path / "r.json"))
    rec = train(cfg, dataset=tiny_dataset, progress=False)
    assert rec["status"] == "completed" and rec["resolved"]["device"].startswith("cuda")
    assert rec["environment"]["gpu"] and "tf32" in rec["environment"]
    assert rec["config"]["precision"] == "bf16" and rec["config"]["channels_last"] is True


@pytest.mark.parametrize("name", list(dc.CHECKS))
def test_each_check_passes_with_the_cpu_as_the_device(name):
    result = dc.run_check(name, "cpu")
    assert result.ok, result
    assert result.error <= result.tolerance and result.detail


def test_a_check_fails_when_the_device_result_differs(monkeypatch):
    real = dc._train

    def perturbed(device, dtype, *a, **k):
        model, opt, losses = real(device, dtype, *a, **k)
        if dtype == torch.float32:  # the "device" side
            with torch.no_grad():
                next(model.parameters()).mul_(1.2)
        return model, opt, losses

    monkeypatch.setattr(dc, "_train", perturbed)
    for name in ("sgd", "adam", "kfac-mc-eigen", "kfac-exact-inverse"):
        result = dc.run_check(name, "cpu")
        assert not result.ok and result.error > result.tolerance, result


def test_a_crashing_check_is_a_failed_check_with_its_reason(monkeypatch):
    def boom(device):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setitem(dc.CHECKS, "loader", boom)
    result = dc.run_check("loader", "cpu")
    assert not result.ok and "illegal memory access" in result.detail


def test_tf32_is_off_during_a_check_and_restored_after(monkeypatch):
    seen = []
    monkeypatch.setitem(dc.CHECKS, "loader", lambda device: (seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)), (0.0, 0.0, ""))[1])
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    dc.run_check("loader", "cpu")
    assert seen == [(False, False)]
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


CUDA_PATHS = {
    "sgd": dict(optimizer="sgd"),
    "kfac-mc-eigen": dict(optimizer="kfac", hparams={"cov_update_freq": 2, "inv_update_freq": 4}),
    "kfac-exact-inverse": dict(optimizer="kfac", hparams={"fisher_type": "exact", "inverse_method": "inverse",
                                                          "cov_update_freq": 2, "inv_update_freq": 4}),
    "kfac-accumulated": dict(optimizer="kfac", micro_batch=24, hparams={"cov_update_freq": 2}),
    "trcg": dict(optimizer="trcg", hparams={"hessian_fraction": 0.1, "cg_max_iters": 5}),
    "abs": dict(optimizer="sgd", batch_schedule="abs", budget="epochs", budget_value=2.0),
    "absa-kfac": dict(optimizer="kfac", batch_schedule="absa", budget="epochs", budget_value=2.0),
    "measurements": dict(optimizer="sgd", noise_scale_batches=2, measure_top_eigenvalue=True),
    "bf16-channels-last": dict(optimizer="kfac", precision="bf16", channels_last=True),
}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
@pytest.mark.parametrize("name", list(CUDA_PATHS))
def test_every_training_path_runs_on_cuda(name, tiny_dataset):
    from kfaclab.train import RunConfig, train, validate_record

    settings = {"model": "resnet20", "batch_size": 64, "budget": "iterations", "budget_value": 12.0, "min_evals": 2,
                "device": "cuda", "crop_padding": 1, **CUDA_PATHS[name]}
    rec = train(RunConfig(**settings), dataset=tiny_dataset, progress=False)
    assert validate_record(rec) == []
    assert rec["status"] in ("completed", "diverged") and rec["resolved"]["device"].startswith("cuda"), rec["error"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA device here")
def test_sweep_gives_its_workers_the_gpu(tmp_path):
    import json
    from pathlib import Path

    import yaml

    from kfaclab.sweep import load_study
    from kfaclab.sweep.runner import sweep

    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "runs" / "smoke" / "study.yaml").read_text())
    spec["fixed"]["device"] = "cuda"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    summary = sweep(load_study(tmp_path / "study.yaml"), gpus=["0"], runs_per_gpu=2, progress=False)
    assert summary.count("failed") == 0, summary.table()
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json") if not p.name.endswith(".failed.json")
               and p.name != "study.json"]
    assert records and all(r["environment"]["gpu"] and r["resolved"]["device"] == "cuda" for r in records)
