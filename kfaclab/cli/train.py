"""`kfaclab train` (one run, its record) and `kfaclab bench` (step times and their ratios)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kfaclab.cli.args import (
    EXIT_INTERRUPTED,
    OPTIMIZER_FLAGS,
    add_data_model_args,
    hparam,
    positive_float,
    positive_int,
)
from kfaclab.errors import UsageError


def add_parsers(sub) -> dict:
    """The parsers of this family's commands, under `sub`; returns each command's body by name."""
    from kfaclab.optim import OPTIMIZERS

    t = sub.add_parser("train", help="train one model and write its run record (JSON)")
    add_data_model_args(t)
    t.add_argument("--optimizer", default="sgd", help=f"{' | '.join(OPTIMIZERS)} (default: sgd)")
    b = t.add_argument_group("budget (one of)").add_mutually_exclusive_group()
    b.add_argument("--epochs", type=positive_float)
    b.add_argument("--iterations", type=positive_int)
    b.add_argument("--examples", type=positive_int)
    b.add_argument("--stopping-rule", action="store_true",
                   help="the study's rule: epochs = (log2(B/B0) + 1) x E0")
    t.add_argument("--rule-b0", type=positive_int, default=128)
    t.add_argument("--rule-e0", type=positive_float, default=100.0)
    s = t.add_argument_group("learning-rate schedule")
    s.add_argument("--lr-scaling", default="none", help="none | linear | sqrt, from --lr-base-batch-size")
    s.add_argument("--lr-base-batch-size", type=positive_int, default=128)
    s.add_argument("--warmup-epochs", type=float, default=0.0)
    s.add_argument("--lr-decay", default="cosine", help="constant | cosine | step")
    s.add_argument("--lr-milestones", type=float, nargs="+", default=[0.5, 0.75], help="fractions of the budget")
    s.add_argument("--lr-gamma", type=float, default=0.1)
    e = t.add_argument_group("evaluation and targets")
    e.add_argument("--eval-every-epochs", type=float, default=1.0)
    e.add_argument("--min-evals", type=positive_int, default=20)
    e.add_argument("--eval-batch-size", type=positive_int, default=1000)
    e.add_argument("--target-acc", type=float, nargs="+", default=[], help="target test accuracies in (0, 1]")
    e.add_argument("--target-loss", type=float, help="also require this running training loss")
    e.add_argument("--divergence-factor", type=float, default=10.0)
    e.add_argument("--noise-scale-batches", type=int, default=0, metavar="M",
                   help="at each evaluation, estimate the gradient noise scale from M batches (0: off)")
    a = t.add_argument_group("batch-size schedule (Yao et al. 2018) and gradient accumulation")
    a.add_argument("--batch-schedule", default="fixed",
                   help="fixed | abs (batch doubles as the Hessian's top eigenvalue halves) | absa (abs + FGSM "
                        "adversarial examples) | doubling, doubling-adv (their controls: the batch doubles every "
                        "patience_epochs, no eigenvalue); --batch-size is then the base batch, the budget whole "
                        "--epochs")
    a.add_argument("--schedule-option", type=hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="an adaptive schedule's option, e.g. max_batch_multiple=16, patience_epochs=10, adv_eps=0.005")
    a.add_argument("--micro-batch", type=positive_int,
                   help="accumulate gradients over chunks of at most this many examples (large batches)")
    a.add_argument("--measure-top-eigenvalue", action="store_true",
                   help="record the Hessian's top eigenvalue (power iteration, 128 examples) at each evaluation")
    x = t.add_argument_group("arithmetic")
    x.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bf16: autocast of forward passes (state and K-FAC's factors stay float32); auto (default): "
                        "bf16 for convolutional models where the device has native bf16, else fp32")
    x.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="model and batches in channels-last memory order (auto: with auto's bf16)")
    t.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel processes on this machine: launches torchrun (gloo on CPUs, NCCL on GPUs); "
                        "for several machines run torchrun yourself")
    t.add_argument("--config", metavar="JSON", help="a RunConfig as JSON (a record's 'config'; a field it lacks takes "
                                                  "its value from before that field existed): replaces the flags "
                                                  "above, except --out")
    t.add_argument("--out", help="run record path (default: kfaclab-run-<run id>.json)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    k = sub.add_parser("bench", help="time training steps and the data pipeline")
    add_data_model_args(k)
    k.add_argument("--optimizers", default="sgd", help="comma-separated, e.g. sgd,kfac (ratios to the first); a "
                   "variant with its own hyperparameters: kfac[low_rank=false;inverse_method=inverse]")
    k.add_argument("--steps", type=positive_int, default=20, help="timed steps per round")
    k.add_argument("--rounds", type=positive_int, default=3)
    k.add_argument("--warmup", type=positive_int, default=5)
    k.add_argument("--amortize", type=positive_int, default=100,
                   help="steps per block of the amortized step time (a multiple of T_inv)")
    k.add_argument("--amortize-rounds", type=positive_int, default=2,
                   help="blocks per optimizer, interleaved across optimizers (default 2)")
    k.add_argument("--fast-path", action="store_true",
                   help="also time each optimizer on the fast path (bf16 autocast, channels-last) beside its "
                        "float32 self: the same as adding opt[precision=bf16;channels_last=true]")
    k.add_argument("--json", help="also write the results here")
    return {"train": cmd_train, "bench": cmd_bench}



def _hparams(args) -> dict:
    h = dict(args.hparam)
    for flag, _, _ in OPTIMIZER_FLAGS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            h[key] = getattr(args, key)
    return h


def _data_fields(args) -> dict:
    return dict(dataset=args.dataset, data_root=args.data_root, data_archive=args.data_archive,
                cache_dir=args.cache_dir, download=args.download, train_subset=args.train_subset,
                test_subset=args.test_subset, resolution=args.resolution, augment=args.augment, model=args.model,
                batch_size=args.batch_size, hparams=_hparams(args), seed=args.seed, device=args.device)


def _train_config(args):
    from kfaclab.train import RunConfig

    if args.stopping_rule:
        budget, value = "rule", None
    elif args.iterations:
        budget, value = "iterations", float(args.iterations)
    elif args.examples:
        budget, value = "examples", float(args.examples)
    else:
        budget, value = "epochs", args.epochs or 1.0
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the config {args.config}: {e}") from None
        cfg = RunConfig.from_record(data, where=args.config)
        cfg.output = args.out or cfg.output
        return cfg
    return RunConfig(**_data_fields(args), optimizer=args.optimizer, budget=budget, budget_value=value,
                     nproc=args.nproc,
                     rule_b0=args.rule_b0, rule_e0=args.rule_e0, lr_scaling=args.lr_scaling,
                     lr_base_batch_size=args.lr_base_batch_size, warmup_epochs=args.warmup_epochs,
                     lr_decay=args.lr_decay, lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma,
                     eval_every_epochs=args.eval_every_epochs, min_evals=args.min_evals,
                     eval_batch_size=args.eval_batch_size, targets=tuple(args.target_acc),
                     target_loss=args.target_loss, divergence_factor=args.divergence_factor,
                     noise_scale_batches=args.noise_scale_batches, batch_schedule=args.batch_schedule,
                     schedule_options=dict(args.schedule_option), micro_batch=args.micro_batch,
                     measure_top_eigenvalue=args.measure_top_eigenvalue, precision=args.precision,
                     channels_last={"auto": None, "on": True, "off": False}[args.channels_last], output=args.out)


def cmd_train(args) -> int:
    from kfaclab.interrupts import catch_interrupts, restore_signals
    from kfaclab.train import train
    from kfaclab.train.loop import classifier_hyperparameters
    from kfaclab.train.record import check_writable

    cfg = _train_config(args)
    cfg.validate("arguments")
    classifier_hyperparameters(cfg.optimizer, cfg.hparams)  # bad names fail before any data is loaded
    from kfaclab.distributed import from_environment, launch

    ctx = from_environment(cfg.device)  # torchrun: data-parallel over WORLD_SIZE processes
    if ctx.active and cfg.nproc not in (1, ctx.world_size):
        raise UsageError(f"the config asks for {cfg.nproc} processes but torchrun started {ctx.world_size}")
    if ctx.active:
        cfg.nproc = ctx.world_size  # the record says how many processes trained it
    if cfg.output is None:
        cfg.output = f"kfaclab-run-{cfg.run_id()}.json"
    check_writable(cfg.output)  # before any training: not an error after an hour of it
    if not ctx.active and cfg.nproc > 1:
        return launch(cfg, quiet=args.quiet)  # this config again under torchrun, nproc processes
    previous = catch_interrupts()  # SIGTERM (timeout, schedulers) saves the record as Ctrl-C does
    try:
        record = train(cfg, progress=not args.quiet, ctx=ctx)
    except KeyboardInterrupt:
        print(f"interrupted; the partial record (status 'interrupted') is in {cfg.output}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        restore_signals(previous)
        if ctx.active:
            import torch.distributed as dist

            dist.destroy_process_group()
    if not ctx.is_main:
        return 0 if record["status"] in ("completed", "diverged") else 1
    f = record["final"]
    reached = ", ".join(f"{t['test_accuracy']:.3g}@it{t['iteration']}" if t["reached"]
                        else f"{t['test_accuracy']:.3g}:no" for t in record["targets"])
    print(f"{record['status']}: {f['iteration']} iterations ({f['epoch']:.2f} epochs) in {f['seconds']:.1f}s, "
          f"test accuracy {f['test_accuracy']:.4f}, test loss {f['test_loss']:.4f}"
          + (f", targets {reached}" if reached else "") + f"; record: {cfg.output}")
    return 0 if record["status"] in ("completed", "diverged") else 1


def cmd_bench(args) -> int:
    from kfaclab.bench import format_table, run_bench
    from kfaclab.optim import OPTIMIZERS, resolve_hyperparameters
    from kfaclab.train import RunConfig
    from kfaclab.train.loop import classifier_hyperparameters
    from kfaclab.train.record import write_atomic

    # the bench's own entries say how each runs (--fast-path adds the bf16 twins): the base is float32
    cfg = RunConfig(**_data_fields(args), precision="fp32", channels_last=False)
    cfg.validate("arguments")
    from kfaclab.bench import parse_variant

    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    if args.fast_path:
        from kfaclab.bench import fast_path_variants

        optimizers = fast_path_variants(optimizers)
    variants = [parse_variant(o) for o in optimizers]
    from kfaclab.bench import RUN_LEVEL

    variants = [(label, n, {k: v for k, v in extra.items() if k not in RUN_LEVEL}) for label, n, extra in variants]
    known = set().union(*(resolve_hyperparameters(n, extra) for _, n, extra in variants))  # bad names fail here
    if set(cfg.hparams) - known:
        raise UsageError(f"no optimizer of {', '.join(optimizers)} has hyperparameter "
                         f"{', '.join(sorted(set(cfg.hparams) - known))}")
    for _, n, extra in variants:
        classifier_hyperparameters(n, {**{k: v for k, v in cfg.hparams.items() if k in OPTIMIZERS[n].defaults},
                                       **extra})
    from kfaclab.distributed import from_environment

    ctx = from_environment(cfg.device)
    if ctx.active:  # under torchrun: the data-parallel bench, per way of spreading K-FAC's work
        import torch.distributed as dist

        from kfaclab.bench_distributed import format_distributed, run_distributed_bench

        try:
            result = run_distributed_bench(cfg, optimizers, ctx, warmup=args.warmup, amortize=args.amortize)
        finally:
            dist.destroy_process_group()
        if ctx.is_main:
            print(format_distributed(result))
            if args.json:
                write_atomic(args.json, result)
        return 0
    result = run_bench(cfg, optimizers, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                       amortize=args.amortize, amortize_rounds=args.amortize_rounds)
    print(format_table(result))
    if args.json:
        write_atomic(args.json, result)
    return 0
