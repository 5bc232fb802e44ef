"""The budget-aware training loop: config in, run record out.

It owns budgets, the learning-rate schedule, the evaluation cadence, racing to targets and
divergence handling; it calls optimizers only through `TrainingOptimizer.step`.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections import OrderedDict
from datetime import UTC, datetime

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kfaclab.data import DeviceLoader, load_dataset
from kfaclab.data.loader import downsample
from kfaclab.data.split import Dataset, Split
from kfaclab.distributed import (
    SINGLE,
    Context,
    all_reduce_sum,
    device_for,
    shard_bounds,
)
from kfaclab.errors import UsageError
from kfaclab.hessian import fixed_batch, top_eigenvalue
from kfaclab.models import build_model, count_parameters, fold_batchnorm
from kfaclab.optim import (
    build_optimizer,
    hyperparameters_for_run,
    resolve_hyperparameters,
)
from kfaclab.train import record as rec
from kfaclab.train.adaptive import resolve_options, run_adaptive
from kfaclab.train.budget import (
    evaluation_iterations,
    stopping_rule_epochs,
    total_iterations,
)
from kfaclab.train.config import RunConfig
from kfaclab.train.noise_scale import NOISE_EPOCH_OFFSET
from kfaclab.train.noise_scale import measure as measure_noise
from kfaclab.train.precision import emulation_note
from kfaclab.train.schedule import LRSchedule, scaled_lr
from kfaclab.train.sequential_eval import evaluate_sequential, interleaved_order, targets_left
from kfaclab.train.targets import race_to_targets


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' asked for but CUDA is not available here; use --device cpu")
    return torch.device(name)


# A warm kernel (a sweep worker) trains many configs on the same data one after another; the
# last few loaded datasets and prepared splits stay in memory, keyed by what determines them,
# so that each run does not decode, downsample and measure the data again (2-3 s per run for
# CIFAR-10 at 16x16 on a CPU core). Entries hold their dataset, so an id is never reused.
_RECENT_DATASETS: OrderedDict = OrderedDict()
_RECENT_SPLITS: OrderedDict = OrderedDict()
_KEEP = 2


def _remember(memo: OrderedDict, key, make):
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    value = make()
    memo[key] = value
    while len(memo) > _KEEP:
        memo.popitem(last=False)
    return value


def dataset_for(cfg: RunConfig) -> Dataset:
    key = (cfg.dataset, cfg.data_root, cfg.data_archive, cfg.cache_dir, cfg.download)
    return _remember(_RECENT_DATASETS, key, lambda: load_dataset(
        cfg.dataset, data_root=cfg.data_root, archive=cfg.data_archive, cache_dir=cfg.cache_dir, download=cfg.download))


def _prepared(ds: Dataset, cfg: RunConfig):
    """Subsets, downsampled to the run's resolution, and the normalisation statistics."""
    def make():
        train = ds.train.subset(cfg.train_subset) if cfg.train_subset else ds.train
        test = ds.test.subset(cfg.test_subset) if cfg.test_subset else ds.test
        if cfg.resolution:
            train, test = downsample(train, cfg.resolution), downsample(test, cfg.resolution)
        return ds, train, test, ds.channel_stats()

    return _remember(_RECENT_SPLITS, (id(ds), cfg.train_subset, cfg.test_subset, cfg.resolution), make)[1:]


def make_loaders(cfg: RunConfig, ds: Dataset, device, ctx: Context = SINGLE) -> tuple[DeviceLoader, DeviceLoader]:
    """The training loader (shuffled, augmented, drop-last) and the test loader; under data
    parallelism, this rank's slice of every global batch and its contiguous part of the test set."""
    train, test, (mean, std) = _prepared(ds, cfg)
    if cfg.batch_size > len(train):
        raise UsageError(f"batch size {cfg.batch_size} is larger than the {len(train)} training examples; "
                         "lower --batch-size or raise --train-subset")
    if cfg.batch_size % ctx.world_size:
        raise UsageError(f"batch size {cfg.batch_size} does not split evenly over {ctx.world_size} processes; "
                         "choose a multiple of the world size")
    if ctx.active:
        start, stop = shard_bounds(len(test), ctx)
        test = Split(test.images[start:stop], test.labels[start:stop])
    if cfg.eval_mode == "sequential":  # prefixes of the test set must be fair samples of it
        order = interleaved_order(test.labels)
        test = Split(test.images[order], test.labels[order])
    common = dict(mean=mean, std=std, device=device, channels_last=cfg.channels_last)
    return (DeviceLoader(train, cfg.batch_size, shuffle=True, augment=cfg.augment, drop_last=True,
                         seed=cfg.seed, crop_padding=cfg.crop_padding, part=(ctx.rank, ctx.world_size), **common),
            DeviceLoader(test, cfg.eval_batch_size, **common))


@torch.no_grad()
def evaluate(model, loader: DeviceLoader, ctx: Context = SINGLE, autocast_dtype=None) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole split, in eval mode (under bf16 autocast when the run
    trains so); under data parallelism each rank evaluates its part of the split and the sums
    are reduced."""
    was_training = model.training
    model.eval()
    net = fold_batchnorm(model)  # a ResNet's BatchNorm folded into its convolutions: the same function, faster
    loss_sum = torch.zeros((), device=loader.device, dtype=torch.float64)
    correct = torch.zeros((), device=loader.device, dtype=torch.int64)
    for x, y in loader:
        with torch.autocast(loader.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            out = net(x)
        loss_sum += F.cross_entropy(out.to(torch.promote_types(out.dtype, torch.float32)), y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    model.train(was_training)
    loss, right, n = all_reduce_sum([loss_sum.item(), float(correct.item()), float(loader.num_examples)], ctx,
                                    loader.device)
    return loss / n, right / n


def classifier_hyperparameters(optimizer: str, given: dict) -> dict:
    """The optimizer's resolved hyperparameters for training a classifier with cross-entropy."""
    hp = resolve_hyperparameters(optimizer, given)
    if hp.get("likelihood", "categorical") != "categorical":
        raise UsageError(f"likelihood {hp['likelihood']} does not match the training loss: kfaclab trains "
                         "classifiers with cross-entropy; use likelihood categorical")
    return hp


def plan(cfg: RunConfig, steps_per_epoch: int) -> dict:
    """What the config resolves to for this data: iteration budget, peak lr, warmup, evaluations."""
    iters = total_iterations(cfg.budget, cfg.budget_value, cfg.batch_size, steps_per_epoch, cfg.rule_b0, cfg.rule_e0)
    if cfg.noise_scale_batches > steps_per_epoch:
        raise UsageError(f"noise_scale_batches {cfg.noise_scale_batches} needs that many batches of "
                         f"{cfg.batch_size} per epoch; the training split has {steps_per_epoch}: lower it")
    hp = hyperparameters_for_run(cfg.optimizer, classifier_hyperparameters(cfg.optimizer, cfg.hparams), iters)
    # A trust region has no learning rate: then there is no schedule either.
    peak = scaled_lr(hp["lr"], cfg.batch_size, cfg.lr_base_batch_size, cfg.lr_scaling) if "lr" in hp else None
    return {
        "iterations": iters,
        "epochs": iters / steps_per_epoch,
        "examples": iters * cfg.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "rule_epochs": stopping_rule_epochs(cfg.batch_size, cfg.rule_b0, cfg.rule_e0) if cfg.budget == "rule" else None,
        "peak_lr": peak,
        "warmup_iterations": min(iters, round(cfg.warmup_epochs * steps_per_epoch)),
        "evaluation_iterations": evaluation_iterations(iters, steps_per_epoch, cfg.eval_every_epochs, cfg.min_evals),
        "hparams": {**hp, "lr": peak} if peak is not None else hp,
    }


def train(cfg: RunConfig, *, dataset: Dataset | None = None, progress: bool = True,
          ctx: Context | None = None) -> dict:
    """Run one experiment; returns its record (also written to cfg.output if set).

    A run that diverges ends early with status `diverged`; Ctrl-C or an error writes a record
    with status `interrupted` or `failed` before re-raising, so nothing already measured is lost.
    """
    cfg.validate()
    ctx = ctx or SINGLE
    started = _now()
    device = resolve_device(device_for(ctx, cfg.device))
    if ctx.active and cfg.noise_scale_batches:
        raise UsageError("noise_scale_batches is measured in single-process runs only; drop it under torchrun")
    if ctx.active and (cfg.batch_schedule != "fixed" or cfg.micro_batch or cfg.measure_top_eigenvalue):
        raise UsageError("adaptive batch sizes, gradient accumulation and eigenvalue measurements run in "
                         "single-process runs only; drop them or run without torchrun")
    ds = dataset or dataset_for(cfg)
    train_loader, test_loader = make_loaders(cfg, ds, device, ctx)
    p = plan(cfg, len(train_loader))
    if cfg.batch_schedule != "fixed" and p["peak_lr"] is None:
        raise UsageError(f"batch_schedule {cfg.batch_schedule} doubles the learning rate with the batch, and "
                         f"{cfg.optimizer} has no learning rate; use sgd, adam or kfac")
    torch.manual_seed(cfg.seed)  # model initialisation: the same on every rank
    model = build_model(cfg.model, train_loader.input_shape, ds.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        # DDP all-reduces (averages) the loss gradients in backward; ranks hold equal shards,
        # so the average is the gradient of the global batch.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = build_optimizer(cfg.optimizer, model, F.cross_entropy, p["hparams"])
    opt.attach_distributed(ctx)
    opt.attach_training_data(train_loader)
    opt.set_micro_batch(cfg.micro_batch)
    opt.set_precision(cfg.precision)
    slow = emulation_note(cfg.precision, device)  # bf16 where the hardware only emulates it
    if slow and ctx.is_main:
        print(slow, file=sys.stderr)
    if p["peak_lr"] is None:
        schedule = lambda t: None  # noqa: E731
    else:
        schedule = LRSchedule(p["peak_lr"], p["iterations"], p["warmup_iterations"], cfg.lr_decay,
                              cfg.lr_milestones, cfg.lr_gamma)
    resolved = {
        **p, "train_examples": train_loader.num_examples,
        "test_examples": int(all_reduce_sum([test_loader.num_examples], ctx, device)[0]),
        "input_shape": list(train_loader.input_shape),
        "num_classes": ds.num_classes, "num_parameters": count_parameters(model), "device": str(device),
        "dataset_source": ds.source, "world_size": ctx.world_size,
    }
    if slow:
        resolved["arithmetic_note"] = slow
    if cfg.output and ctx.is_main:  # the finished run must have room for its record (and notebook)
        rec.check_room(cfg.output, rec.record_size_bound(len(p["evaluation_iterations"])))
    state = _LoopState()
    record_eval = _evaluator(cfg, model, opt, schedule, train_loader, test_loader, state, ctx, ds, p["iterations"])
    try:
        if cfg.batch_schedule == "fixed":
            _run(cfg, model, opt, schedule, train_loader, test_loader, p, state, progress and ctx.is_main, ctx,
                 record_eval)
        else:
            options = resolve_options(cfg.batch_schedule, cfg.schedule_options)
            resolved["adaptive_options"] = options
            run_adaptive(cfg, model, opt, schedule, train_loader, test_loader, p, state, progress, options,
                         record_eval, _prepared(ds, cfg)[2])
    except KeyboardInterrupt:
        state.status = "interrupted"
        _finish(cfg, state, resolved, opt, device, started, ctx)
        raise
    except Exception as e:
        if overflowed(e):  # a learning rate (or update) beyond float32: the run diverged, it did not fail
            state.status = "diverged"
            state.divergence = {"iteration": state.iteration, "reason": f"the update overflowed ({type(e).__name__}: "
                                f"{e})"}
            return _finish(cfg, state, resolved, opt, device, started, ctx)
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        _finish(cfg, state, resolved, opt, device, started, ctx)
        raise
    return _finish(cfg, state, resolved, opt, device, started, ctx)


def overflowed(e: BaseException) -> bool:
    """Whether an exception is arithmetic overflow of the update: Python's OverflowError (K-FAC's
    lr^2 in its KL clip), or torch refusing to turn an overflowing scalar into float32 (a
    learning rate of 1e300 in SGD's or Adam's update)."""
    if isinstance(e, (OverflowError, FloatingPointError)):
        return True
    return isinstance(e, RuntimeError) and "without overflow" in str(e)


class _LoopState:
    def __init__(self):
        self.history: list[dict] = []
        self.status = "completed"
        self.divergence = None
        self.error = None
        self.iteration = 0
        self.examples = 0
        self.train_seconds = 0.0
        self.adaptive = None  # ABS/ABSA: the schedule's per-epoch log
        self.epoch = None  # ABS/ABSA: epochs done (batches per epoch change with the batch size)
        self.eval_seconds = 0.0


def _evaluator(cfg, model, opt, schedule, train_loader, test_loader, st: _LoopState, ctx: Context, ds,
               last_iteration: int):
    """record_eval(train_loss, extra=None): evaluate on the test split (plus the optional
    measurements), append a history entry (`extra` overrides or adds fields) and return the
    test accuracy. Its time counts as evaluation, not training. Sequential evaluation reads the
    whole split at the run's last iteration and wherever a target could be crossed."""
    device = train_loader.device
    spe = len(train_loader)
    eig_batch = fixed_batch(train_loader, min(128, train_loader.num_examples), cfg.seed) \
        if cfg.measure_top_eigenvalue and cfg.batch_schedule == "fixed" else None

    def record_eval(train_loss, extra=None):
        extra = extra or {}
        _sync(device)
        t0 = time.perf_counter()
        seen = {}
        if cfg.eval_mode == "sequential" and st.iteration < last_iteration:
            left = targets_left(st.history, cfg.targets, cfg.target_loss)
            can_meet = cfg.target_loss is None or (train_loss is not None and train_loss <= cfg.target_loss)
            test_loss, test_acc, n = evaluate_sequential(model, test_loader, left[0] if left and can_meet else None,
                                                         opt.autocast_dtype)
            seen = {"test_examples": n}
        else:
            test_loss, test_acc = evaluate(model, test_loader, ctx, opt.autocast_dtype)
            if cfg.eval_mode == "sequential":
                seen = {"test_examples": test_loader.num_examples}
        entry = {
            "iteration": st.iteration, "epoch": st.iteration / spe, "examples": st.examples,
            "seconds": st.train_seconds, "propagations": opt.counters["propagations"],
            "lr": schedule(st.iteration - 1) if st.iteration else None,
            "train_loss": train_loss, "test_loss": test_loss, "test_accuracy": test_acc, **seen, **extra,
        }
        if cfg.noise_scale_batches:
            batches = itertools.islice(train_loader.epoch(NOISE_EPOCH_OFFSET + len(st.history)),
                                       cfg.noise_scale_batches)
            entry["noise"] = measure_noise(model, F.cross_entropy, batches)
        if eig_batch is not None:
            entry["top_eigenvalue"] = top_eigenvalue(model, F.cross_entropy, *eig_batch, seed=cfg.seed).value
        _sync(device)
        st.eval_seconds += time.perf_counter() - t0
        st.history.append(entry)
        return test_acc

    return record_eval


def _run(cfg, model, opt, schedule, train_loader, test_loader, p, st: _LoopState, progress: bool,
         ctx: Context, record_eval):
    device = train_loader.device
    total = p["iterations"]
    evals = set(p["evaluation_iterations"])
    # A divergence check syncs the GPU, and under data parallelism all ranks (they must agree
    # on stopping): there it looks at the loss averaged over ranks, every 10 steps.
    check_every = 1 if device.type == "cpu" and not ctx.active else 10
    loss_sum = torch.zeros((), device=device)
    losses_since_eval = 0
    reference_loss = None

    model.train()
    record_eval(None)
    bar = tqdm(total=total, disable=not progress, unit="it", dynamic_ncols=True, leave=True)
    epoch, batches = 0, train_loader.epoch(0)
    t_start = time.perf_counter()
    while st.iteration < total:
        batch = next(batches, None)
        if batch is None:  # end of an epoch: a new permutation
            epoch += 1
            batches = train_loader.epoch(epoch)
            continue
        opt.set_lr(schedule(st.iteration))
        loss = opt.step(*batch)
        st.iteration += 1
        st.examples += cfg.batch_size
        loss_sum += loss
        losses_since_eval += 1
        bar.update(1)
        if reference_loss is None:
            reference_loss = all_reduce_sum([loss.item()], ctx, device)[0] / ctx.world_size
        if st.iteration % check_every == 0 or st.iteration in evals:
            value = all_reduce_sum([loss.item()], ctx, device)[0] / ctx.world_size
            if not math.isfinite(value) or value > cfg.divergence_factor * max(reference_loss, 1e-8):
                st.train_seconds += time.perf_counter() - t_start
                st.status = "diverged"
                st.divergence = {"iteration": st.iteration, "reason": "non-finite loss" if not math.isfinite(value)
                                 else f"loss {value:.4g} > {cfg.divergence_factor} x initial {reference_loss:.4g}"}
                break
        if st.iteration in evals:
            _sync(device)
            st.train_seconds += time.perf_counter() - t_start
            mean_loss = all_reduce_sum([loss_sum.item()], ctx, device)[0] / ctx.world_size
            acc = record_eval(mean_loss / losses_since_eval)
            bar.set_postfix(loss=f"{st.history[-1]['train_loss']:.3f}", acc=f"{acc:.3f}")
            loss_sum.zero_()
            losses_since_eval = 0
            t_start = time.perf_counter()
    bar.close()


def _safely(what: str, make, fallback, notes: list):
    """`make()`, or `fallback` with a note: whatever fails after training (a mismatched torchvision
    in the environment's versions, say) must not cost the run its record."""
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - any failure here is reported in the record, not raised
        notes.append(f"{what}: {type(e).__name__}: {e}")
        return fallback


def _finish(cfg, st: _LoopState, resolved, opt, device, started, ctx: Context = SINGLE) -> dict:
    last = st.history[-1] if st.history else {}
    notes: list = []
    environment = _safely("environment", lambda: rec.environment(device), {}, notes)
    if notes:
        environment = {"error": notes[-1]}
    targets = _safely("targets", lambda: race_to_targets(st.history, cfg.targets, cfg.target_loss), [], notes)
    report = _safely("optimizer report", opt.report, dict(opt.counters), notes)
    record = {
        "schema_version": rec.SCHEMA_VERSION, "kind": "kfaclab.run", "run_id": cfg.run_id(), "status": st.status,
        "config": cfg.to_dict(), "resolved": resolved, "environment": environment,
        "history": st.history, "targets": targets,
        "final": {
            "iteration": st.iteration,
            "epoch": st.epoch if st.epoch is not None else st.iteration / resolved["steps_per_epoch"],
            "examples": st.examples, "seconds": st.train_seconds, "eval_seconds": st.eval_seconds,
            "train_loss": last.get("train_loss"), "test_loss": last.get("test_loss"),
            "test_accuracy": last.get("test_accuracy"),
            # The iteration of the evaluation the accuracy and loss above come from: a run that
            # diverged between evaluations ends after it (final.iteration is where it stopped).
            "evaluated_at": last.get("iteration"),
        },
        "optimizer": {"name": opt.name, **report},
        "divergence": st.divergence, "error": st.error, "started_at": started, "finished_at": _now(),
    }
    if notes:  # what could not be measured after training: the run's result stands
        record["finish_notes"] = notes
    if st.adaptive is not None:
        record["adaptive"] = st.adaptive
    if cfg.output and ctx.is_main:  # one record per run, however many processes
        rec.save_record(cfg.output, record)
    return record


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _now() -> str:
    # Milliseconds: a run's wall time (finished_at - started_at) is read back, and short runs
    # would otherwise measure 0 s.
    return datetime.now(UTC).isoformat(timespec="milliseconds")
