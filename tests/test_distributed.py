"""Data parallelism on torch.distributed with gloo: 2 CPU processes under torchrun against one.

- K-FAC with each decomposition strategy (replicated, distributed) and with stale inverses
  matches the single-process run on the same global batches: parameters after k steps agree
  to float64 round-off. The Fisher is `exact` or `empirical` here: the MC Fisher samples labels
  from one stream per rank, so it matches a single process in distribution, not bit for bit.
- Sharding: the ranks' parts of every global batch cover each epoch exactly once.
- `torchrun -m kfaclab train` writes one record, with the whole test set evaluated.
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kfaclab.data.loader import DeviceLoader
from kfaclab.data.sources import make_synthetic

HELPER = Path(__file__).parent / "helpers" / "kfac_steps.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**__import__("os").environ,
                                                                                   "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.mark.parametrize("strategy,stale,fisher", [("replicated", "fresh", "exact"),
                                                   ("distributed", "fresh", "exact"),
                                                   ("distributed", "stale", "empirical"),
                                                   ("replicated", "stale", "exact")])
def test_distributed_kfac_matches_one_process(tmp_path, strategy, stale, fisher):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    torchrun(1, str(HELPER), strategy, stale, fisher, "6", str(one))
    torchrun(2, str(HELPER), strategy, stale, fisher, "6", str(two))
    a, b = torch.load(one), torch.load(two)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-11), (k, (a[k] - b[k]).abs().max())
    torch.manual_seed(0)
    from kfaclab.models import build_model

    init = build_model("mlp:12,8", (3, 4, 4), 10).double().state_dict()
    assert all((init[k] - a[k]).abs().max() > 1e-4 for k in init)  # the steps moved every tensor


def test_shards_cover_every_example_of_an_epoch_once():
    train, _, _ = make_synthetic(n_train=200, n_test=10, size=4, contrast=5.0, seed=0)
    train.labels[:] = range(200)  # labels as example ids
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=True, seed=7, augment=True)
    whole = DeviceLoader(train, 48, **common)
    parts = [DeviceLoader(train, 48, part=(r, 3), **common) for r in range(3)]
    for epoch in (0, 1):
        seen = [torch.cat([y for _, y in p.epoch(epoch)]) for p in parts]
        everything = torch.cat(seen)
        assert len(everything) == len(whole) * 48 and len(set(everything.tolist())) == len(everything)  # no overlap
        reference = torch.cat([y for _, y in whole.epoch(epoch)])
        assert sorted(everything.tolist()) == sorted(reference.tolist())  # the same examples as one process
        # and each global batch is split in order, images augmented as in one process
        for (xw, yw), *ranks in zip(whole.epoch(epoch), *[p.epoch(epoch) for p in parts]):
            assert torch.equal(torch.cat([y for _, y in ranks]), yw)
            assert torch.equal(torch.cat([x for x, _ in ranks]), xw)
    with pytest.raises(ValueError, match="does not split evenly"):
        DeviceLoader(train, 50, part=(0, 3), **common)


def test_torchrun_train_writes_one_record_with_the_whole_test_set(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    common = ["-m", "kfaclab", "train", "--dataset", "synthetic", "--train-subset", "512", "--test-subset", "201",
              "--resolution", "8", "--no-augment", "--model", "mlp:16", "--batch-size", "64", "--epochs", "2",
              "--optimizer", "sgd", "--lr", "0.05", "--device", "cpu", "--min-evals", "3", "--quiet"]
    torchrun(2, *common, "--out", str(out / "two.json"))
    torchrun(1, *common, "--out", str(out / "one.json"))
    assert sorted(p.name for p in out.iterdir()) == ["one.json", "two.json"]  # one record per run
    two, one = (json.loads((out / n).read_text()) for n in ("two.json", "one.json"))
    assert two["resolved"]["world_size"] == 2 and one["resolved"]["world_size"] == 1
    assert two["resolved"]["test_examples"] == one["resolved"]["test_examples"] == 201
    assert two["config"]["nproc"] == 2 and one["config"]["nproc"] == 1  # part of the run id: numerics may differ
    for h2, h1 in zip(two["history"], one["history"]):
        assert h2["iteration"] == h1["iteration"]
        assert h2["test_accuracy"] == pytest.approx(h1["test_accuracy"], abs=1e-9)
        assert h2["test_loss"] == pytest.approx(h1["test_loss"], rel=1e-4)


def test_stale_inverses_use_the_decomposition_of_one_update_before():
    import torch.nn.functional as F

    from kfaclab.models import build_model
    from kfaclab.optim import build_optimizer

    train, _, _ = make_synthetic(n_train=128, n_test=8, size=4, contrast=5.0, seed=2)
    loader = DeviceLoader(train, 32, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = build_model("mlp:8", loader.input_shape, 10).double()
    opt = build_optimizer("kfac", model, F.cross_entropy, {
        "lr": 0.05, "damping": 0.05, "cov_update_freq": 1, "inv_update_freq": 1, "stat_decay": 0.5,
        "fisher_type": "exact", "factor_dtype": "float64", "stale_inverses": True})
    layer = next(iter(opt.layers.values()))
    factors = []
    for t, (x, y) in enumerate(loader.epoch(0)):
        opt.step(x.double(), y)
        factors.append(layer.A.clone())
        used = layer.decomposition["dA"]
        # step 0 decomposes in the foreground; from step 2 on, a step uses the factors of step t-1
        expected = factors[0] if t < 2 else factors[t - 1]
        assert torch.allclose(used, torch.linalg.eigvalsh(expected).clamp(min=0), atol=1e-12), t
        if t >= 2:
            assert not torch.allclose(used, torch.linalg.eigvalsh(factors[t]).clamp(min=0), atol=1e-12)


def test_a_sweep_runs_a_study_with_two_processes_per_run(tmp_path):
    import yaml

    from kfaclab.sweep import load_study
    from kfaclab.sweep.runner import sweep

    spec = yaml.safe_load((Path(__file__).parents[1] / "runs" / "smoke" / "study.yaml").read_text())
    spec["fixed"]["nproc"] = 2
    spec["batch_sizes"] = [64]
    spec["optimizers"]["sgd"]["grid"]["lr"] = [0.05]
    spec["optimizers"]["kfac"]["grid"]["lr"] = [0.05]
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    study = load_study(tmp_path / "study.yaml")
    summary = sweep(study, workers=1, progress=False)
    assert summary.count("failed") == 0, summary.table()
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(records) == 2 and all(r["resolved"]["world_size"] == 2 for r in records)
    assert sorted(r["run_id"] for r in records) == sorted(r.run_id for r in study.runs)


def test_nproc_that_does_not_divide_the_batch_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kfaclab", "train", "--dataset", "synthetic", "--model", "mlp:8",
                        "--batch-size", "63", "--nproc", "2", "--device", "cpu", "--quiet",
                        "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "does not split evenly over 2 processes" in (r.stdout + r.stderr)
    assert not (tmp_path / "x.json").exists()
