"""`torchrun --nproc_per_node N -m kfaclab bench ...`: data-parallel step time and where it goes.

For SGD and for K-FAC under each way of spreading its work (decompositions replicated on every
rank, distributed by cost, distributed with stale inverses computed in the background), the
mean step time over `amortize` consecutive steps on pre-made shards of the global batch (the
slowest rank's: it sets the pace), split into:
  - gradient all-reduce: DDP's averaging of the loss gradients, measured as the median of
    all-reduces of one flat buffer of the model's size (DDP buckets it and overlaps it with
    backward, so this bounds what it adds from above);
  - K-FAC collectives: the factor all-reduce and the decomposition broadcasts, timed inside
    the optimizer;
  - decompositions in the foreground (for stale inverses: only the time a step waited);
the rest is computation.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from kfaclab.data import load_dataset
from kfaclab.distributed import Context
from kfaclab.errors import UsageError
from kfaclab.models import build_model
from kfaclab.optim import OPTIMIZERS, build_optimizer
from kfaclab.train.config import RunConfig
from kfaclab.train.loop import make_loaders, resolve_device
from kfaclab.train.record import environment

# (label, optimizer, extra hyperparameters)
VARIANTS = {
    "sgd": [("sgd", "sgd", {})],
    "kfac": [("kfac replicated", "kfac", {"inverse_strategy": "replicated"}),
             ("kfac distributed", "kfac", {"inverse_strategy": "distributed"}),
             ("kfac distributed, stale inverses", "kfac", {"inverse_strategy": "distributed", "stale_inverses": True})],
}


def _max_over_ranks(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _timed_steps(fn, n: int, device) -> float:
    """Seconds per call over n calls, all ranks starting together; the slowest rank's."""
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return _max_over_ranks((time.perf_counter() - t0) / n, device)


def _median_call(fn, n: int, device) -> float:
    """The median over n calls, each timed alone after a barrier (collectives are noisy)."""
    times = []
    for _ in range(n):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return _max_over_ranks(statistics.median(times), device)


def run_distributed_bench(cfg: RunConfig, optimizers, ctx: Context, warmup: int = 5, amortize: int = 100,
                          progress: bool = True) -> dict:
    if not ctx.active:
        raise UsageError("the distributed bench runs under torchrun with --nproc_per_node >= 2")
    device = resolve_device(cfg.device if ctx.backend == "gloo" else f"cuda:{ctx.local_rank}")
    ds = load_dataset(cfg.dataset, data_root=cfg.data_root, archive=cfg.data_archive, cache_dir=cfg.cache_dir,
                      download=cfg.download)
    loader, _ = make_loaders(cfg, ds, device, ctx)
    premade = [b for b, _ in zip(loader.epoch(0), range(8))]
    results = []
    for name in optimizers:
        if name not in VARIANTS:
            raise UsageError(f"the distributed bench knows {', '.join(VARIANTS)}, not '{name}'")
        for label, opt_name, extra in VARIANTS[name]:
            torch.manual_seed(cfg.seed)
            model = DistributedDataParallel(build_model(cfg.model, loader.input_shape, ds.num_classes).to(device),
                                            device_ids=[device.index] if device.type == "cuda" else None)
            known = OPTIMIZERS[opt_name].defaults
            hp = {**{k: v for k, v in cfg.hparams.items() if k in known}, **extra}
            opt = build_optimizer(opt_name, model, F.cross_entropy, hp)
            opt.attach_distributed(ctx)
            for i in range(warmup):
                opt.step(*premade[i % len(premade)])
            timings0 = dict(getattr(opt, "timings", {}))
            state = {"i": 0}

            def step():
                opt.step(*premade[state["i"] % len(premade)])  # noqa: B023 (called in this iteration)
                state["i"] += 1  # noqa: B023 (called in this iteration)

            step_s = _timed_steps(step, amortize, device)
            timings = {k: (v - timings0.get(k, 0.0)) / amortize for k, v in getattr(opt, "timings", {}).items()}
            kfac_comm = _max_over_ranks(timings.get("communication_s", 0.0), device)
            decomposition = _max_over_ranks(timings.get("decomposition_s", 0.0), device)
            flat = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
            grad_comm = _median_call(lambda: dist.all_reduce(flat), amortize, device)  # noqa: B023 (called in this iteration)
            results.append({"variant": label, "optimizer": opt_name, "step_s": step_s,
                            "gradient_allreduce_s": grad_comm,
                            "kfac_communication_s": kfac_comm, "decomposition_s": decomposition,
                            "communication_share": (grad_comm + kfac_comm) / step_s})
            if progress and ctx.is_main:
                print(f"  {label}: {1e3 * step_s:.1f} ms/step", flush=True)
    return {"model": cfg.model, "global_batch_size": cfg.batch_size, "dataset": cfg.dataset,
            "world_size": ctx.world_size, "backend": ctx.backend, "device": str(device),
            "threads": torch.get_num_threads(), "amortize": amortize, "results": results,
            "environment": environment(device)}


def format_distributed(result: dict) -> str:
    lines = [f"kfaclab bench (data-parallel): model={result['model']} global batch={result['global_batch_size']} "
             f"world={result['world_size']} backend={result['backend']} device={result['device']} "
             f"threads/rank={result['threads']} (mean of {result['amortize']} steps; slowest rank)",
             f"{'variant':<34} {'ms/step':>8} {'grad allreduce':>15} {'K-FAC comm':>11} {'decomp':>8} "
             f"{'comm share':>11}"]
    for r in result["results"]:
        lines.append(f"{r['variant']:<34} {1e3 * r['step_s']:>8.2f} {1e3 * r['gradient_allreduce_s']:>15.2f} "
                     f"{1e3 * r['kfac_communication_s']:>11.2f} {1e3 * r['decomposition_s']:>8.2f} "
                     f"{100 * r['communication_share']:>10.1f}%")
    lines.append("ms per step; grad allreduce: one all-reduce of the model's size (an upper bound of DDP's, which "
                 "overlaps backward); K-FAC comm: factor all-reduce + decomposition broadcasts; decomp: "
                 "decompositions in the foreground")
    return "\n".join(lines)
