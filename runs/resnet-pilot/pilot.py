"""The ResNet study's pilot, part one: what each candidate model costs on this CPU (issue 29).

For each candidate (CIFAR ResNet depth, width, resolution): the amortized training step of SGD
and K-FAC (K-FAC at the study's cadence: factors every 10 steps, inverses every 100) in float32
and on the fast path (bf16 autocast + channels-last), from `kfaclab.bench.run_bench`; and one
evaluation of the full 10,000-image test set on each path. From these: seconds per 50,000-image
epoch and the cost of one evaluation in epochs. Run on an otherwise idle machine:

    .venv/bin/python runs/resnet-pilot/pilot.py runs/resnet-pilot/timings.json
"""

import json
import sys
import time

import torch

from kfaclab.bench import fast_path_variants, run_bench
from kfaclab.data import load_dataset
from kfaclab.models import build_model, count_parameters
from kfaclab.train import RunConfig
from kfaclab.train.loop import evaluate, make_loaders
from kfaclab.train.record import environment, write_atomic

CANDIDATES = [("resnet8", 16), ("resnet14", 16), ("resnet20", 16), ("resnet8", 32), ("resnet20", 32)]
BATCH = 128
KFAC = "kfac[cov_update_freq=10;inv_update_freq=100]"


def eval_seconds(cfg: RunConfig, fast: bool, repeats: int = 2) -> float:
    ds = load_dataset(cfg.dataset, archive=cfg.data_archive, cache_dir=cfg.cache_dir, download=False)
    c = RunConfig(**{**cfg.to_dict(), "precision": "bf16" if fast else "fp32", "channels_last": fast})
    _, test = make_loaders(c, ds, torch.device("cpu"))
    model = build_model(c.model, test.input_shape, ds.num_classes)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate(model, test, autocast_dtype=torch.bfloat16 if fast else None)
        best = min(best, time.perf_counter() - t0)
    return best


def main(out: str) -> int:
    rows = []
    for model, resolution in CANDIDATES:
        cfg = RunConfig(dataset="cifar10-jpeg", model=model, resolution=resolution, batch_size=BATCH, device="cpu",
                        eval_batch_size=2000, hparams={"lr": 0.1})
        bench = run_bench(cfg, fast_path_variants(["sgd", KFAC]), steps=5, warmup=3, rounds=2, amortize=100,
                          amortize_rounds=1, progress=False)
        steps = {r["optimizer"]: r["amortized_step_s"] for r in bench["results"]}
        per_epoch = {k: v * 50_000 / BATCH for k, v in steps.items()}
        ev = {"fp32": eval_seconds(cfg, False), "fast": eval_seconds(cfg, True)}
        params = count_parameters(build_model(model, (3, resolution, resolution), 10))
        row = {"model": model, "resolution": resolution, "parameters": params, "batch_size": BATCH,
               "epoch_seconds": per_epoch, "eval_seconds": ev,
               "speedup_sgd": per_epoch["sgd"] / per_epoch["sgd[precision=bf16;channels_last=true]"],
               "speedup_kfac": per_epoch[KFAC] / per_epoch[KFAC[:-1] + ";precision=bf16;channels_last=true]"],
               "eval_in_epochs_fast": ev["fast"] / per_epoch["sgd[precision=bf16;channels_last=true]"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_atomic(out, {"kind": "kfaclab.resnet-pilot-timings", "threads": torch.get_num_threads(),
                       "environment": environment(torch.device("cpu")), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
