"""The harvest's measurement phase: step times and throughput on the borrowed device.

Before any run of a GPU window, the harvest times a few steps of each optimizer at the study's
batch sizes (kfaclab.bench) and measures how many runs share the device well
(kfaclab.sweep.throughput); the Predictor plans the window from these numbers.
"""

from __future__ import annotations

import dataclasses

from kfaclab.errors import UsageError
from kfaclab.sweep.archive import now
from kfaclab.sweep.spec import Study
from kfaclab.train.budget import TRAIN_SIZES


def release_device_memory():
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_harvest_bench(study: Study, batch_sizes, steps: int, slots, throughput_runs, throughput_seconds,
                      say=print) -> dict:
    """Amortized step times per optimizer of the study at each batch size (one process, the
    device alone), then the aggregate throughput of N runs sharing it."""
    from kfaclab.bench import run_bench
    from kfaclab.sweep.throughput import measure

    firsts = {}
    for r in study.runs:
        if r.config.optimizer not in ("trcg", "strcg"):  # a trust region has no comparable step
            firsts.setdefault(r.config.optimizer, r)
    if not firsts:
        raise UsageError(f"{study.path}: the bench times optimizers with a training step (sgd, kfac); "
                         "the study has none: run it with --bench never")
    base = next(iter(firsts.values())).config
    n_train = base.train_subset or TRAIN_SIZES.get(base.dataset, 0)
    sizes = [b for b in batch_sizes if b <= n_train] or [min(r.config.batch_size for r in study.runs)]
    hparams = {}
    for r in firsts.values():
        hparams.update(r.config.hparams)
    step_times, env = [], None
    for b in sizes:
        cfg = dataclasses.replace(base, batch_size=b, hparams=hparams)
        say(f"bench: batch {b}, {', '.join(firsts)}, {steps} steps each")
        result = run_bench(cfg, list(firsts), steps=5, warmup=5, rounds=1, amortize=steps, amortize_rounds=1,
                           progress=False)
        step_times.append({"batch_size": b, "results": result["results"]})
        env = result.get("environment")
    n_sharing = len(slots) if not any(slots) else sum(1 for s in slots if s == slots[0])
    result = {"kind": "kfaclab.harvest-bench", "study": study.name, "created": now(), "amortized_steps": steps,
              "model": base.model, "environment": env, "step_times": step_times, "throughput": None}
    if n_sharing < 2:
        return result  # one run at a time: nothing shares the device
    counts = sorted({n for n in list(throughput_runs) + [n_sharing] if 2 <= n <= n_sharing})
    smallest = min(r.config.batch_size for r in study.runs)
    configs = []
    names = list(firsts)
    for i in range(max(counts + [1])):
        r = firsts[names[i % len(names)]]
        configs.append(dataclasses.replace(r.config, batch_size=smallest, output=None).to_dict())
    say(f"throughput: {', '.join(names)} alone, then {', '.join(map(str, counts)) or 'no'} runs sharing the device, "
        f"batch {smallest}, {throughput_seconds:g}s each")
    env = {"CUDA_VISIBLE_DEVICES": slots[0]} if slots and slots[0] is not None else None
    result["throughput"] = measure(configs, counts, throughput_seconds, env)
    return result


def bench_summary(b: dict) -> list[str]:
    lines = []
    for row in b.get("step_times", []):
        res = {r["optimizer"]: r for r in row["results"]}
        parts = [f"{o} {1e3 * r['amortized_step_s']:.1f} ms" for o, r in res.items()]
        if "sgd" in res and "kfac" in res:
            parts.append(f"kfac/sgd {res['kfac']['amortized_step_s'] / res['sgd']['amortized_step_s']:.2f}x")
        lines.append(f"batch {row['batch_size']}: " + ", ".join(parts))
    tp = b.get("throughput") or {}
    for row in tp.get("alone", []) + tp.get("rows", []):
        lines.append(f"{row['runs']} run(s) sharing: {row['epochs_per_s']:.3g} epochs/s in all "
                     f"({', '.join(sorted({p['optimizer'] for p in row['per_run']}))})")
    return lines
