"""Aggregate training throughput with N runs sharing one device.

Many short runs share a GPU in the gpu study: one run alone leaves it mostly idle at small
batch sizes, where each step is a few hundred small kernels. This measures what sharing buys:
`measure(configs, counts, seconds)` starts one process per config (`python -m
kfaclab.sweep.throughput`, a sweep worker's environment), each with its model, optimizer and
device-resident loader ready and warmed up; then for each N in `counts` the first N train
together for `seconds` on batches drawn from their loaders, and report their steps. The result
per N: examples per second over all N processes, in epochs of the training split per second,
and each optimizer's slowdown per process against running alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PROTOCOL_PREFIX = "kfaclab-throughput "


def _child(config: dict) -> None:
    """Set up one run's training, then train on command: 'go SECONDS' -> a JSON line of counts."""
    import torch
    import torch.nn.functional as F

    from kfaclab.models import build_model
    from kfaclab.optim import build_optimizer
    from kfaclab.train import RunConfig
    from kfaclab.train.loop import dataset_for, make_loaders, plan, resolve_device

    cfg = RunConfig.from_dict(config, where="throughput config")
    device = resolve_device(cfg.device)
    ds = dataset_for(cfg)
    loader, _ = make_loaders(cfg, ds, device)
    p = plan(cfg, len(loader))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, loader.input_shape, ds.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg.optimizer, model, F.cross_entropy, p["hparams"])
    opt.attach_training_data(loader)
    opt.set_precision(cfg.precision)
    opt.set_lr(p["peak_lr"] or 0.0)

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    stream = batches()
    for _ in range(12):  # warm-up: allocator, cuDNN's algorithm choice, one K-FAC factor update
        opt.step(*next(stream))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    print(PROTOCOL_PREFIX + json.dumps({"ready": True, "train_examples": loader.num_examples}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "go":
            break
        seconds = float(words[1])
        steps = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(5):
                opt.step(*next(stream))
            sync()
            steps += 5
        elapsed = time.perf_counter() - t0
        print(PROTOCOL_PREFIX + json.dumps({"steps": steps, "examples": steps * cfg.batch_size, "seconds": elapsed}),
              flush=True)


def _read(proc) -> dict:
    """The next protocol line of a child (libraries may print other lines to stdout)."""
    for line in proc.stdout:
        if line.startswith(PROTOCOL_PREFIX):
            return json.loads(line[len(PROTOCOL_PREFIX):])
    raise RuntimeError(f"a throughput process exited (status {proc.wait()}) before answering")


def _round(procs, configs, members, seconds, train_examples) -> dict:
    for i in members:
        procs[i].stdin.write(f"go {seconds}\n")
        procs[i].stdin.flush()
    answers = {i: _read(procs[i]) for i in members}
    wall = max(a["seconds"] for a in answers.values())
    examples = sum(a["examples"] for a in answers.values())
    per_run = [{"optimizer": configs[i]["optimizer"], "batch_size": configs[i]["batch_size"],
                "steps_per_s": a["steps"] / a["seconds"]} for i, a in answers.items()]
    return {"runs": len(members), "seconds": wall, "examples_per_s": examples / wall,
            "epochs_per_s": examples / wall / train_examples, "per_run": per_run}


def measure(configs: list[dict], counts: list[int], seconds: float, env: dict | None = None) -> dict:
    """`configs`: RunConfig dicts, one per process (len >= max(counts)); see the module's text.
    Each optimizer first trains alone (its baseline), then the first N processes together for
    each N >= 2 in `counts`."""
    counts = sorted({n for n in counts if 2 <= n <= len(configs)})
    n_procs = max(counts + [1])
    first_of = {}
    for i, c in enumerate(configs[:n_procs]):
        first_of.setdefault(c["optimizer"], i)
    procs = []
    try:
        for cfg in configs[:n_procs]:
            procs.append(subprocess.Popen([sys.executable, "-m", "kfaclab.sweep.throughput", json.dumps(cfg)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                          env={**os.environ, **(env or {})}))
        train_examples = [_read(p)["train_examples"] for p in procs][0]
        alone = [_round(procs, configs, [i], seconds, train_examples) for i in first_of.values()]
        rows = [_round(procs, configs, list(range(n)), seconds, train_examples) for n in counts]
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    base = {r["per_run"][0]["optimizer"]: r["per_run"][0]["steps_per_s"] for r in alone}
    for r in alone + rows:
        for pr in r["per_run"]:
            pr["slowdown"] = base[pr["optimizer"]] / pr["steps_per_s"]
    return {"seconds_per_measurement": seconds, "train_examples": train_examples, "alone": alone, "rows": rows}


def slowdown(result: dict, optimizer: str, runs: int) -> float:
    """How much slower one run of `optimizer` trains with `runs` sharing the device than alone:
    from the measured N nearest to `runs` (never below 1)."""
    if runs <= 1 or not result["rows"]:
        return 1.0
    rows = result["rows"]
    row = min(rows, key=lambda r: (abs(r["runs"] - runs), -r["runs"]))
    values = [pr["slowdown"] for pr in row["per_run"] if pr["optimizer"] == optimizer] or \
             [pr["slowdown"] for pr in row["per_run"]]
    factor = sum(values) / len(values)
    if row["runs"] != runs:  # scale linearly in the number of runs beyond what was measured
        factor *= max(runs, 1) / max(row["runs"], 1) if runs > row["runs"] else 1.0
    return max(1.0, factor)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
