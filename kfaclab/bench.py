"""`python -m kfaclab bench`: what a training step costs, and what the data pipeline adds.

First the amortized step time of each optimizer: the mean over `amortize_rounds` blocks of
`amortize` consecutive steps on pre-made batches (K-FAC's factor updates every T_cov and
decompositions every T_inv steps fall inside them at their real frequency; a median would hide
them), the optimizers' blocks interleaved so that drift of the machine hits all alike. Then,
per optimizer, K-FAC's per-phase breakdown (a profiled pass of its own) and three timings,
medians over repeated steps, interleaved step by step so that drift of the machine hits all
alike:
  - a training step on pre-made batches (already on the device, normalised);
  - a training step that draws its batch from the device-resident loader (shuffle indices,
    gather, crop, flip, normalise);
  - the loader alone, per batch.

A variant may also set how the step runs: `sgd[precision=bf16;channels_last=true]` is SGD on the
fast path (bf16 autocast of the forward passes, model and batches in channels-last order; K-FAC's
factors and decompositions stay in float32). `fast_path_variants` adds that twin to each entry,
and the table then gives each twin's speed-up over its float32 self.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from kfaclab.data import load_dataset
from kfaclab.errors import UsageError
from kfaclab.models import build_model
from kfaclab.optim import OPTIMIZERS, build_optimizer
from kfaclab.train.config import RunConfig
from kfaclab.train.loop import make_loaders, resolve_device
from kfaclab.train.record import environment


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def parse_variant(entry: str) -> tuple[str, str, dict]:
    """An --optimizers entry: a name ("kfac") or a name with hyperparameters of its own
    ("kfac[low_rank=false;inverse_method=inverse]"), so that variants of one optimizer are timed
    side by side in one process. Returns (label, name, overrides)."""
    import yaml

    entry = entry.strip()
    if "[" not in entry:
        return entry, entry, {}
    name, _, rest = entry.partition("[")
    if not rest.endswith("]"):
        raise UsageError(f"optimizer variant '{entry}' must end with ']', e.g. kfac[low_rank=false]")
    overrides = {}
    for item in filter(None, (p.strip() for p in rest[:-1].split(";"))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"optimizer variant '{entry}': '{item}' is not KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return entry, name.strip(), overrides


# Run-level settings a variant may carry besides its optimizer's hyperparameters.
RUN_LEVEL = ("precision", "channels_last")
FAST_PATH = "precision=bf16;channels_last=true"


def fast_path_variants(entries: list[str]) -> list[str]:
    """Each entry followed by its fast-path twin (the same optimizer and hyperparameters, with
    bf16 autocast and channels-last), unless the entry already sets how it runs."""
    out = []
    for entry in entries:
        out.append(entry)
        label, name, overrides = parse_variant(entry)
        if not set(overrides) & set(RUN_LEVEL):
            inner = ";".join(f"{k}={v}" for k, v in overrides.items())
            out.append(f"{name}[{inner + ';' if inner else ''}{FAST_PATH}]")
    return out


def _split_run_level(entry: str, overrides: dict) -> tuple[str, bool, dict]:
    """(precision, channels_last, the optimizer's own overrides) of a variant. An entry that does not
    say how it runs runs in float32 without channels-last, whatever the config's `auto` picked
    here: it is the float32 self its fast-path twin is compared with."""
    from kfaclab.train.config import PRECISIONS

    precision = overrides.get("precision", "fp32")
    channels_last = overrides.get("channels_last", False)
    if precision not in PRECISIONS:
        raise UsageError(f"optimizer variant '{entry}': precision must be one of {', '.join(PRECISIONS)}")
    if not isinstance(channels_last, bool):
        raise UsageError(f"optimizer variant '{entry}': channels_last must be true or false")
    return precision, channels_last, {k: v for k, v in overrides.items() if k not in RUN_LEVEL}


def _fp32_twin(label: str) -> str:
    """The label of a fast-path variant's float32 self: its entry without the run-level settings."""
    _, name, overrides = parse_variant(label)
    own = {k: v for k, v in overrides.items() if k not in RUN_LEVEL}
    if len(own) == len(overrides):
        return label
    inner = ";".join(f"{k}={v}" for k, v in own.items())
    return f"{name}[{inner}]" if inner else name


def _channels_last(batches, on: bool):
    for x, y in batches:
        yield (x.contiguous(memory_format=torch.channels_last) if on and x.dim() == 4 else x), y


def run_bench(cfg: RunConfig, optimizers=("sgd",), steps: int = 20, warmup: int = 5, rounds: int = 3,
              amortize: int = 100, amortize_rounds: int = 2, progress: bool = True) -> dict:
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, data_root=cfg.data_root, archive=cfg.data_archive, cache_dir=cfg.cache_dir,
                      download=cfg.download)
    loader, _ = make_loaders(cfg, ds, device)
    premade = [b for b, _ in zip(loader.epoch(0), range(8))]
    stream = _forever(loader)
    entries = []
    for entry in optimizers:
        label, name, overrides = parse_variant(entry)
        precision, channels_last, overrides = _split_run_level(entry, overrides)
        if precision != "fp32" and name in ("trcg", "strcg"):
            raise UsageError(f"optimizer variant '{entry}': {name} runs in fp32 only")
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, loader.input_shape, ds.num_classes).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        known = OPTIMIZERS[name].defaults  # shared flags (lr, ...) go to every optimizer that has them
        opt = build_optimizer(name, model, F.cross_entropy,
                              {**{k: v for k, v in cfg.hparams.items() if k in known}, **overrides})
        opt.set_precision(precision)
        opt.attach_training_data(loader)
        batches = list(_channels_last(premade, channels_last))
        for i in range(warmup):
            opt.step(*batches[i % len(batches)])
        entries.append({"label": label, "opt": opt, "seconds": 0.0, "props0": opt.counters["propagations"],
                        "peak": 0, "premade": batches, "stream": _channels_last(stream, channels_last),
                        "precision": precision, "channels_last": channels_last})
    # Amortized: blocks of `amortize` consecutive steps (K-FAC's factor and decomposition updates
    # fall inside at their real frequency), the optimizers' blocks interleaved round by round so
    # that drift of the machine hits all alike; the mean over all blocks.
    for r in range(amortize_rounds):
        for e in entries:
            opt, premade = e["opt"], e["premade"]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            e["seconds"] += _timed(lambda: [opt.step(*premade[i % len(premade)]) for i in range(amortize)], device)  # noqa: B023 (called in this iteration)
            if device.type == "cuda":
                e["peak"] = max(e["peak"], torch.cuda.max_memory_allocated(device))
        if progress:
            print(f"  amortized round {r + 1}/{amortize_rounds}: " + ", ".join(
                f"{e['label']} {1e3 * e['seconds'] / ((r + 1) * amortize):.1f} ms/step" for e in entries), flush=True)
    results = []
    for e in entries:
        label, opt, premade, stream = e["label"], e["opt"], e["premade"], e["stream"]
        n = amortize * amortize_rounds
        amortized = e["seconds"] / n
        props = (opt.counters["propagations"] - e["props0"]) / n
        phases = None
        if hasattr(opt, "phase_seconds"):  # K-FAC: where its amortized step goes, in a pass of its own
            opt.profile = True           # (timing each phase waits for the device, so not above)
            opt.phase_seconds = dict.fromkeys(opt.phase_seconds, 0.0)
            profiled = _timed(lambda: [opt.step(*premade[i % len(premade)]) for i in range(amortize)], device)  # noqa: B023 (called in this iteration)
            opt.profile = False
            phases = {k: v / amortize for k, v in opt.phase_seconds.items()}
            phases["other"] = max(0.0, profiled / amortize - sum(phases.values()))  # Python and bookkeeping
        # The most device memory a training step of this optimizer held (what runs sharing a GPU
        # must fit beside each other); None on the CPU.
        peak = e["peak"] if device.type == "cuda" else None
        # Interleaved step by step: drift of the machine hits the three timings alike.
        t_pre, t_load, t_data = [], [], []
        for r in range(rounds):
            for i in range(steps):
                t_pre.append(_timed(lambda: opt.step(*premade[i % len(premade)]), device))  # noqa: B023 (called in this iteration)
                t_load.append(_timed(lambda: opt.step(*next(stream)), device))  # noqa: B023 (called in this iteration)
                t_data.append(_timed(lambda: next(stream), device))  # noqa: B023 (called in this iteration)
            if progress:
                print(f"  {label}: medians, round {r + 1}/{rounds} done", flush=True)
        pre, load, data = (statistics.median(t) for t in (t_pre, t_load, t_data))
        results.append({"optimizer": label, "precision": e["precision"], "channels_last": e["channels_last"],
                        "amortized_step_s": amortized, "phases_s": phases,
                        "propagations_per_step": props,
                        "peak_memory_bytes": peak, "step_premade_s": pre, "step_loader_s": load, "loader_only_s": data,
                        "overhead_step_diff": load / pre - 1.0, "overhead_loader_share": data / pre})
    base = results[0]["amortized_step_s"]
    by_label = {r["optimizer"]: r for r in results}
    for r in results:
        r["ratio_to_first"] = r["amortized_step_s"] / base
        twin = by_label.get(_fp32_twin(r["optimizer"]))
        # the fast path's speed-up: the float32 self's step time over this one's
        r["speedup_over_fp32"] = (twin["amortized_step_s"] / r["amortized_step_s"]
                                  if twin is not None and twin is not r else None)
    return {"model": cfg.model, "batch_size": cfg.batch_size, "dataset": cfg.dataset, "device": str(device),
            "threads": torch.get_num_threads(), "steps": steps * rounds, "warmup": warmup, "amortize": amortize,
            "amortize_rounds": amortize_rounds, "resolution": list(loader.input_shape), "results": results,
            "environment": environment(device)}


def _forever(loader):
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def format_table(b: dict) -> str:
    w = max([10] + [len(r["optimizer"]) for r in b["results"]])  # variants have long labels
    lines = [f"kfaclab bench: model={b['model']} batch={b['batch_size']} input={'x'.join(map(str, b['resolution']))} "
             f"data={b['dataset']} device={b['device']} threads={b['threads']} "
             f"(amortized: mean of {b.get('amortize_rounds', 1)} interleaved blocks of {b['amortize']} steps; "
             f"others: medians of {b['steps']} steps)",
             f"{'optimizer':<{w}} {'amortized ms':>13} {'vs first':>9} {'props/step':>11} {'median ms':>10} "
             f"{'w/ loader ms':>13} "
             f"{'loader ms':>10} {'data overhead':>14} {'loader/step':>12}"]
    for r in b["results"]:
        lines.append(f"{r['optimizer']:<{w}} {1e3 * r['amortized_step_s']:>13.2f} {r['ratio_to_first']:>8.2f}x "
                     f"{r['propagations_per_step']:>11.0f} "
                     f"{1e3 * r['step_premade_s']:>10.2f} {1e3 * r['step_loader_s']:>13.2f} "
                     f"{1e3 * r['loader_only_s']:>10.3f} {100 * r['overhead_step_diff']:>+13.1f}% "
                     f"{100 * r['overhead_loader_share']:>11.1f}%")
    phased = [r for r in b["results"] if r.get("phases_s")]
    if phased:
        names = list(phased[0]["phases_s"])
        lines.append("where the amortized step goes (ms per step, a profiled pass of its own):")
        lines.append(f"{'optimizer':<{w}} " + " ".join(f"{n:>{max(9, len(n))}}" for n in names))
        for r in phased:
            lines.append(f"{r['optimizer']:<{w}} " + " ".join(
                f"{1e3 * r['phases_s'][n]:>{max(9, len(n))}.2f}" for n in names))
    lines += fast_path_lines(b)
    lines.append("vs first = amortized step time / the first optimizer's; props/step = propagations per step "
                 "(forward+backward over n examples = 2n; a Hessian-vector product over S = 2|S|); "
                 "data overhead = median step with loader / "
                 "median step on pre-made batches - 1; loader/step = loader alone / median step")
    return "\n".join(lines)


def fast_path_lines(b: dict) -> list[str]:
    """The fast path's speed-up over float32 per optimizer, and K-FAC's step time over SGD's on
    each path, where the bench timed both."""
    twins = [r for r in b["results"] if r.get("speedup_over_fp32")]
    if not twins:
        return []
    lines = ["fast path (bf16 autocast, channels-last) over float32, amortized step: " + ", ".join(
        f"{_fp32_twin(r['optimizer'])} {r['speedup_over_fp32']:.2f}x" for r in twins)]
    by_label = {r["optimizer"]: r for r in b["results"]}
    fast = {parse_variant(r["optimizer"])[1]: r for r in twins}
    if "sgd" in by_label and "kfac" in by_label and {"sgd", "kfac"} <= set(fast):
        lines.append(f"K-FAC's step over SGD's: float32 {by_label['kfac']['amortized_step_s'] / by_label['sgd']['amortized_step_s']:.2f}x, "  # noqa: E501
                     f"fast path {fast['kfac']['amortized_step_s'] / fast['sgd']['amortized_step_s']:.2f}x")
    return lines


# ---------------------------------------------------------------------- reading benches back

def phase_table(benches: dict[str, list[str | Path]]) -> pd.DataFrame:
    """Per-phase milliseconds of every K-FAC variant in bench JSONs, one row per (version,
    model, batch, optimizer, phase): `benches` maps a version label ("before", "after") to its
    files. SGD's amortized step and the K-FAC variant's ratio to it ride along on each row, so
    a chart can show the phases against the cost of an SGD step."""
    rows = []
    for version, paths in benches.items():
        for path in paths:
            b = json.loads(Path(path).read_text())
            if "world_size" in b:
                continue  # data-parallel benches have no phases
            first = b["results"][0]
            for r in b["results"]:
                for phase, seconds in (r.get("phases_s") or {}).items():
                    rows.append({"version": version, "model": b["model"], "batch_size": b["batch_size"],
                                 "optimizer": r["optimizer"], "phase": phase, "ms": 1e3 * seconds,
                                 "step_ms": 1e3 * r["amortized_step_s"], "ratio_to_sgd": r["ratio_to_first"],
                                 "sgd_ms": 1e3 * first["amortized_step_s"] if first["optimizer"] == "sgd" else None,
                                 "hardware": f"{b['environment']['cpu']}, {b['threads']} threads"
                                 if b["device"] == "cpu" else b["environment"].get("gpu")})
    return pd.DataFrame(rows, columns=["version", "model", "batch_size", "optimizer", "phase", "ms", "step_ms",
                                       "ratio_to_sgd", "sgd_ms", "hardware"])
