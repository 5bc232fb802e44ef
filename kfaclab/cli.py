"""`python -m kfaclab {train,bench,sweep,harvest,harvest-merge,results,nqm}`: argument parsing and error
reporting only.

Bad input is one line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kfaclab.errors import UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def _hparam(s):
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, true/false), else a string."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"'{s}' is not KEY=VALUE")
    k, v = s.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


# Optimizer hyperparameters with a flag of their own (all others: --hparam KEY=VALUE): the
# flag's name is the hyperparameter's with dashes.
OPTIMIZER_FLAGS = (
    ("--lr", _positive_float, "base learning rate (at --lr-base-batch-size)"),
    ("--momentum", float, None),
    ("--weight-decay", float, None),
    ("--damping", _positive_float, "K-FAC damping"),
    ("--kl-clip", float, "K-FAC KL clipping magnitude (0: off)"),
    ("--cov-update-freq", _positive_int, "K-FAC factor update every T_cov steps"),
    ("--inv-update-freq", _positive_int, "K-FAC decomposition every T_inv steps"),
    ("--stat-decay", float, "K-FAC running-average decay of the factors"),
    ("--fisher-type", str, "K-FAC: mc | empirical | exact"),
    ("--inverse-method", str, "K-FAC: eigen | inverse"),
    ("--radius", _positive_float, "TRCG: initial trust-region radius"),
    ("--max-radius", _positive_float, "TRCG: largest trust-region radius"),
    ("--cg-max-iters", _positive_int, "TRCG: CG iterations per step at most"),
    ("--cg-tol", _positive_float, "TRCG: relative CG residual tolerance"),
    ("--hessian-fraction", _positive_float, "TRCG: Hessian sample, fraction of the data"),
    ("--gradient-fraction", _positive_float, "TRCG: gradient sample, fraction of the data"),
    ("--curvature", str, "TRCG: hessian | gauss-newton"),
)


def _add_data_model_args(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic",
                   help="cifar10 | svhn | cifar10-jpeg | imagefolder:PATH | synthetic (default: synthetic)")
    g.add_argument("--data-root", help="where torchvision datasets are (or are downloaded to)")
    g.add_argument("--data-archive", help="cifar10-jpeg archive (default: ../shared/data/cifar10-jpeg.tar.gz)")
    g.add_argument("--cache-dir", help="decoded-array cache (default: $KFACLAB_CACHE or ~/.cache/kfaclab)")
    g.add_argument("--no-download", dest="download", action="store_false", help="never download datasets")
    g.add_argument("--train-subset", type=_positive_int, help="use a class-stratified subset of N training images")
    g.add_argument("--test-subset", type=_positive_int, help="evaluate on a stratified subset of N test images")
    g.add_argument("--resolution", type=_positive_int, help="downsample images to R x R (CPU presets)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    m = p.add_argument_group("model and optimizer")
    m.add_argument("--model", default="mlp", help="resnet20 | resnet32 | resnet56 | c1 | mlp | mlp:W1,W2,...")
    m.add_argument("--batch-size", type=_positive_int, default=128)
    for flag, kind, text in OPTIMIZER_FLAGS:
        m.add_argument(flag, type=kind, help=text)
    m.add_argument("--hparam", type=_hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="any other optimizer hyperparameter (repeatable)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: all cores)")


def build_parser():
    from kfaclab.optim import OPTIMIZERS

    # `kfaclab` (the console command of the installed package) and `python -m kfaclab` are one program.
    prog = "kfaclab" if Path(sys.argv[0]).name == "kfaclab" else "python -m kfaclab"
    parser = _Parser(prog=prog, description="kfaclab: large-batch second-order optimization")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    t = sub.add_parser("train", help="train one model and write its run record (JSON)")
    _add_data_model_args(t)
    t.add_argument("--optimizer", default="sgd", help=f"{' | '.join(OPTIMIZERS)} (default: sgd)")
    b = t.add_argument_group("budget (one of)").add_mutually_exclusive_group()
    b.add_argument("--epochs", type=_positive_float)
    b.add_argument("--iterations", type=_positive_int)
    b.add_argument("--examples", type=_positive_int)
    b.add_argument("--stopping-rule", action="store_true",
                   help="the study's rule: epochs = (log2(B/B0) + 1) x E0")
    t.add_argument("--rule-b0", type=_positive_int, default=128)
    t.add_argument("--rule-e0", type=_positive_float, default=100.0)
    s = t.add_argument_group("learning-rate schedule")
    s.add_argument("--lr-scaling", default="none", help="none | linear | sqrt, from --lr-base-batch-size")
    s.add_argument("--lr-base-batch-size", type=_positive_int, default=128)
    s.add_argument("--warmup-epochs", type=float, default=0.0)
    s.add_argument("--lr-decay", default="cosine", help="constant | cosine | step")
    s.add_argument("--lr-milestones", type=float, nargs="+", default=[0.5, 0.75], help="fractions of the budget")
    s.add_argument("--lr-gamma", type=float, default=0.1)
    e = t.add_argument_group("evaluation and targets")
    e.add_argument("--eval-every-epochs", type=float, default=1.0)
    e.add_argument("--min-evals", type=_positive_int, default=20)
    e.add_argument("--eval-batch-size", type=_positive_int, default=1000)
    e.add_argument("--target-acc", type=float, nargs="+", default=[], help="target test accuracies in (0, 1]")
    e.add_argument("--target-loss", type=float, help="also require this running training loss")
    e.add_argument("--divergence-factor", type=float, default=10.0)
    e.add_argument("--noise-scale-batches", type=int, default=0, metavar="M",
                   help="at each evaluation, estimate the gradient noise scale from M batches (0: off)")
    a = t.add_argument_group("batch-size schedule (Yao et al. 2018) and gradient accumulation")
    a.add_argument("--batch-schedule", default="fixed",
                   help="fixed | abs (batch doubles as the Hessian's top eigenvalue halves) | absa (abs + FGSM "
                        "adversarial examples); --batch-size is then the base batch, the budget whole --epochs")
    a.add_argument("--schedule-option", type=_hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="an abs/absa option, e.g. max_batch_multiple=16, patience_epochs=10, adv_eps=0.005")
    a.add_argument("--micro-batch", type=_positive_int,
                   help="accumulate gradients over chunks of at most this many examples (large batches)")
    a.add_argument("--measure-top-eigenvalue", action="store_true",
                   help="record the Hessian's top eigenvalue (power iteration, 128 examples) at each evaluation")
    t.add_argument("--nproc", type=_positive_int, default=1,
                   help="data-parallel processes on this machine: launches torchrun (gloo on CPUs, NCCL on GPUs); "
                        "for several machines run torchrun yourself")
    t.add_argument("--config", metavar="JSON", help="a RunConfig as JSON (a record's 'config'): replaces the flags "
                                                  "above, except --out")
    t.add_argument("--out", help="run record path (default: kfaclab-run-<run id>.json)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    k = sub.add_parser("bench", help="time training steps and the data pipeline")
    _add_data_model_args(k)
    k.add_argument("--optimizers", default="sgd", help="comma-separated, e.g. sgd,kfac (ratios to the first); a "
                   "variant with its own hyperparameters: kfac[low_rank=false;inverse_method=inverse]")
    k.add_argument("--steps", type=_positive_int, default=20, help="timed steps per round")
    k.add_argument("--rounds", type=_positive_int, default=3)
    k.add_argument("--warmup", type=_positive_int, default=5)
    k.add_argument("--amortize", type=_positive_int, default=100,
                   help="steps per block of the amortized step time (a multiple of T_inv)")
    k.add_argument("--amortize-rounds", type=_positive_int, default=2,
                   help="blocks per optimizer, interleaved across optimizers (default 2)")
    k.add_argument("--json", help="also write the results here")
    w = sub.add_parser("sweep", help="run a study (runs/<study>/study.yaml) as papermill notebooks, resumably")
    w.add_argument("spec", help="the study spec, e.g. runs/smoke/study.yaml")
    w.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: one Ray task per run")
    w.add_argument("--workers", type=_positive_int, help="runs in parallel (CPU; default 1)")
    w.add_argument("--gpus", help="GPU indices, e.g. 0,1: one worker per GPU x --runs-per-gpu")
    w.add_argument("--runs-per-gpu", type=_positive_int, default=1, help="runs sharing one GPU")
    w.add_argument("--threads", type=_positive_int, help="CPU threads per run (default: cores / workers)")
    w.add_argument("--address", help="with --backend ray: an existing cluster ('auto', or host:port); "
                                     "default: start a local Ray instance")
    w.add_argument("--cpus-per-run", type=_positive_float, help="with --backend ray: CPUs per task (default 1)")
    w.add_argument("--gpus-per-run", type=_positive_float,
                   help="with --backend ray: GPUs per task, a fraction shares a GPU (default 1/--runs-per-gpu "
                        "where the cluster has GPUs)")
    w.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    w.add_argument("--kernel-per-run", action="store_true",
                   help="a fresh kernel for every run (default: one per worker, restarted after a failure)")
    w.add_argument("--dry-run", action="store_true", help="list what would run and its estimated cost")
    w.add_argument("--only", metavar="PATTERN", help="only runs whose name matches (fnmatch), e.g. 'kfac-b128-*'")
    w.add_argument("--limit", type=_positive_int, help="at most N of the pending runs")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    h = sub.add_parser("harvest", help="as much of a study as fits before a deadline (a borrowed GPU), packed "
                                       "into one archive: smoke check, bench, then the pending runs")
    h.add_argument("spec", help="the study spec, e.g. runs/gpu/study.yaml")
    h.add_argument("--out", required=True, help="folder for the archive, the report and the bench (three files)")
    h.add_argument("--deadline-s", type=_positive_float, required=True,
                   help="seconds from now by which the harvest has stopped (runs in flight at the deadline are "
                        "interrupted and stay pending)")
    h.add_argument("--workers", type=_positive_int, help="runs in parallel on the CPU (default 1)")
    h.add_argument("--gpus", help="GPU indices, e.g. 0: one worker per GPU x --runs-per-gpu")
    h.add_argument("--runs-per-gpu", type=_positive_int, default=1, help="runs sharing one GPU")
    h.add_argument("--threads", type=_positive_int, help="CPU threads per run (default: cores / workers)")
    h.add_argument("--bench", choices=("auto", "always", "never"), default="auto",
                   help="auto: only when the study has no bench from this kind of device (default)")
    h.add_argument("--bench-batch-sizes", default="128,512,2048", help="batch sizes of the step-time bench")
    h.add_argument("--bench-steps", type=_positive_int, default=100, help="steps per amortized step time")
    h.add_argument("--throughput-runs", default="2,4,8", help="numbers of runs sharing the device to measure")
    h.add_argument("--throughput-seconds", type=_positive_float, default=5.0)
    h.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip the smoke check")
    h.add_argument("--smoke-limit-s", type=_positive_float, default=60.0)
    h.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    h.add_argument("--work", help="where runs execute (default: a new temporary folder)")
    h.add_argument("--quiet", action="store_true")
    m = sub.add_parser("harvest-merge", help="validate a harvest archive and add its runs to the study")
    m.add_argument("archive", help="harvest-<study>.tar.gz")
    m.add_argument("study", help="the study folder or its spec, e.g. runs/gpu")
    r = sub.add_parser("results", help="summarize a study's results: runs by status, steps to each target, B_crit")
    r.add_argument("study", help="the study folder or its spec, e.g. runs/cpu")
    r.add_argument("--unit", choices=("iterations", "epochs", "examples", "seconds", "propagations"),
                   default="iterations", help="unit of steps to target")
    r.add_argument("--csv", metavar="DIR", help="also write the study's tidy tables as CSV files into DIR (runs, "
                                                "evaluations, steps to target, verdicts)")
    r.add_argument("--verdicts", action="store_true", help="also judge the papers' claims (book/verdicts.md)")
    q = sub.add_parser("nqm", help="the noisy quadratic model (Zhang et al.): tuned steps to target per batch size "
                                   "and the critical batch size per preconditioning power, exactly")
    q.add_argument("--decay", type=float, default=1.0, help="curvature spectrum h_i = i^-decay (default 1, the paper's)")
    q.add_argument("--dim", type=int, default=10_000, help="coordinates (default 10,000)")
    q.add_argument("--powers", default="0,0.5,1", help="preconditioning powers p, comma-separated (0: SGD, 1: exact "
                                                       "curvature; default 0,0.5,1)")
    q.add_argument("--momenta", default="0,0.5,0.9,0.99", help="momenta the tuning picks from, comma-separated (one "
                                                                "value: fixed; default 0,0.5,0.9,0.99)")
    q.add_argument("--target-fraction", type=float, default=0.01, help="target loss as a fraction of the initial "
                                                                       "loss (default 0.01)")
    q.add_argument("--max-batch-log2", type=int, default=20, help="batch sizes 1, 2, 4, ... 2^this (default 20)")
    q.add_argument("--csv", metavar="PATH", help="also write the steps per power and batch size as CSV")
    return parser


def _numbers(flag: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: give comma-separated numbers, e.g. 0,0.5,1; got {text!r}") from None
    if not values:
        raise UsageError(f"{flag}: give at least one number")
    return values


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
        cfg = RunConfig.from_dict(data, where=args.config)
        cfg.output = args.out or cfg.output
        return cfg
    return RunConfig(**_data_fields(args), optimizer=args.optimizer, budget=budget, budget_value=value, nproc=args.nproc,
                     rule_b0=args.rule_b0, rule_e0=args.rule_e0, lr_scaling=args.lr_scaling,
                     lr_base_batch_size=args.lr_base_batch_size, warmup_epochs=args.warmup_epochs,
                     lr_decay=args.lr_decay, lr_milestones=tuple(args.lr_milestones), lr_gamma=args.lr_gamma,
                     eval_every_epochs=args.eval_every_epochs, min_evals=args.min_evals,
                     eval_batch_size=args.eval_batch_size, targets=tuple(args.target_acc),
                     target_loss=args.target_loss, divergence_factor=args.divergence_factor,
                     noise_scale_batches=args.noise_scale_batches, batch_schedule=args.batch_schedule,
                     schedule_options=dict(args.schedule_option), micro_batch=args.micro_batch,
                     measure_top_eigenvalue=args.measure_top_eigenvalue, output=args.out)


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
    reached = ", ".join(f"{t['test_accuracy']:.3g}@it{t['iteration']}" if t["reached"] else f"{t['test_accuracy']:.3g}:no"
                        for t in record["targets"])
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

    cfg = RunConfig(**_data_fields(args))
    cfg.validate("arguments")
    from kfaclab.bench import parse_variant

    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    variants = [parse_variant(o) for o in optimizers]
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


def cmd_sweep(args) -> int:
    from kfaclab.sweep.bracket import load_grown
    from kfaclab.sweep.runner import dry_run, parse_gpus, sweep

    study = load_grown(args.spec)
    gpus = parse_gpus(args.gpus)
    if args.dry_run:
        print(dry_run(study, args.retry_failed, args.only, args.limit))
        return 0
    if args.backend == "ray":
        from kfaclab.sweep.ray_backend import sweep_ray

        for flag, value in (("--workers", args.workers), ("--gpus", args.gpus), ("--kernel-per-run", args.kernel_per_run)):
            if value:
                raise UsageError(f"{flag} is for the local backend; with --backend ray, Ray places the runs "
                                 f"(use --cpus-per-run and --gpus-per-run)")
        summary = sweep_ray(study, address=args.address, cpus_per_run=args.cpus_per_run or 1.0,
                            gpus_per_run=args.gpus_per_run, runs_per_gpu=args.runs_per_gpu, threads=args.threads,
                            retry_failed=args.retry_failed, only=args.only, limit=args.limit,
                            progress=not args.quiet)
    else:
        for flag, value in (("--address", args.address), ("--cpus-per-run", args.cpus_per_run),
                            ("--gpus-per-run", args.gpus_per_run)):
            if value is not None:
                raise UsageError(f"{flag} is for --backend ray; the local backend uses --workers, --gpus, "
                                 f"--runs-per-gpu and --threads")
        summary = sweep(study, workers=args.workers or 1, gpus=gpus, runs_per_gpu=args.runs_per_gpu,
                        threads=args.threads, retry_failed=args.retry_failed, only=args.only, limit=args.limit,
                        progress=not args.quiet, kernel_per_run=args.kernel_per_run)
    print(f"study {study.name} ({study.directory}):")
    print(summary.table())
    if summary.interrupted:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if summary.count("failed") else 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} must be whole numbers separated by commas, got '{text}'") from None
    if not values or min(values) <= 0:
        raise UsageError(f"{flag} must be positive whole numbers separated by commas, got '{text}'")
    return values


def cmd_harvest(args) -> int:
    from kfaclab.sweep.harvest import Options, harvest
    from kfaclab.sweep.runner import parse_gpus

    if args.workers and args.gpus:
        raise UsageError("--workers is for the CPU; with --gpus, the workers are --runs-per-gpu per GPU")
    opts = Options(out=Path(args.out), deadline_s=args.deadline_s, workers=args.workers or 1,
                   gpus=parse_gpus(args.gpus), runs_per_gpu=args.runs_per_gpu, threads=args.threads,
                   bench=args.bench, bench_batch_sizes=_int_list(args.bench_batch_sizes, "--bench-batch-sizes"),
                   bench_steps=args.bench_steps, throughput_runs=_int_list(args.throughput_runs, "--throughput-runs"),
                   throughput_seconds=args.throughput_seconds, smoke=args.smoke, smoke_limit_s=args.smoke_limit_s,
                   retry_failed=args.retry_failed, work=Path(args.work) if args.work else None,
                   progress=not args.quiet)
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        probe = Path(args.out) / ".kfaclab-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to --out {args.out} ({e.strerror}); give a writable folder") from None
    return harvest(args.spec, opts)


def cmd_harvest_merge(args) -> int:
    from kfaclab.sweep.merge import merge

    print(merge(args.archive, args.study).line())
    return 0


def cmd_results(args) -> int:
    import pandas as pd

    from kfaclab.results import critical_batch_size, load_results, status_counts, steps_to_target, with_ideal_scaling
    from kfaclab.results.study import complete_cells

    res = load_results(args.study)
    if args.csv:
        from kfaclab.results.export import write_csv

        for path in write_csv(res, args.csv):
            print(f"wrote {path}")
    if args.verdicts:
        from kfaclab.results import judged_v3
        from kfaclab.results.verdicts import verdict_display, verdicts

        left = int(res.runs["status"].isin(["pending", "interrupted"]).sum())
        if left:
            print(f"verdicts: {left} runs of {len(res.runs)} have not finished; a verdict is drawn only from a "
                  "finished study (these are provisional)")
        if judged_v3.is_v3(res):  # rules version 3 judge the study with its siblings
            from kfaclab.nqm import study_prediction
            from kfaclab.results.verdicts_v3 import verdicts_v3

            j = judged_v3.judged_for(res)
            print(f"rules version 3, on {', '.join(s.name for s in j.studies())}")
            vs = verdicts_v3(j.main, j.epochs, j.iterations, prediction=study_prediction(), claims="abcdeghijk")
        else:
            vs = verdicts(res)
        with pd.option_context("display.width", 200, "display.max_colwidth", 70):
            print(verdict_display(vs).to_string(index=False))
        print()
    print(f"study {res.name} ({res.directory}): {len(res.runs)} runs")
    for name, problem in res.malformed:
        print(f"  malformed: {name} {problem} (counted as not run; a sweep moves it aside and runs it again)")
    print(status_counts(res).to_string())
    if res.bracket_cells:
        from kfaclab.results.study import bracket_table

        print("\nbracketing: does each (optimizer, batch size) grid hold its optimum inside?")
        print(bracket_table(res).to_string(index=False))
    partial = bool(res.runs["status"].isin(["pending", "interrupted"]).any())

    def steps(kind):
        # A grid with runs still to come gives its minimum so far, marked '*' ('-*': none
        # reached it yet); '-': no run of a finished grid reached the target.
        t = with_ideal_scaling(steps_to_target(res, kind=kind), args.unit)
        t["cell"] = [("-" if v != v else f"{v:,.4g}") + ("*" if p else "") for v, p in zip(t[args.unit], t["pending"])]
        return t.pivot(index="batch_size", columns=["target", "optimizer"], values="cell").sort_index(axis=1).to_string()

    note = "; *: best so far, the grid has runs still to come" if partial else ""
    print(f"\n{args.unit} to each target (minimum over the grid; -: no run reached it{note})")
    print(steps("accuracy"))
    if res.loss_targets:
        print(f"\n{args.unit} to each training-loss target (running training loss at or below it{note})")
        print(steps("loss"))
    if (res.runs["batch_schedule"] != "fixed").any():
        from kfaclab.results.adaptive import comparison

        cols = ["method", "target", "iterations_to_target", "fewer_iterations", "total_iterations", "final_accuracy",
                "accuracy_change"]
        print("\nadaptive batch schedules against the same optimizer at a fixed batch (best learning rate each):")
        with pd.option_context("display.float_format", "{:,.4g}".format, "display.width", 160):
            print(comparison(res).reindex(columns=cols).to_string(index=False))
    if len(res.batch_sizes()) < 3:
        return 0  # a fit of S(B) needs batch sizes to fit
    done = complete_cells(res)
    print("\nfit S(B) = S_min (1 + B_crit / B), 68% bootstrap interval over grid points"
          + (" (batch sizes whose grid has finished)" if partial else "") + ":")
    for opt in res.optimizers():
        for t in res.targets:
            try:
                f = critical_batch_size(done, opt, t, args.unit, n_boot=200)
            except ValueError as e:
                print(f"  {opt} {t:g}: {e}")
                continue
            lo, hi = f["b_crit_interval"]
            print(f"  {opt} {t:g}: B_crit {f['b_crit']:,.0f} [{lo:,.0f}, {hi:,.0f}], S_min {f['s_min']:,.4g}"
                  f"{' (at the edge of the search: not identified)' if f['at_edge'] else ''}")
    return 0


def cmd_nqm(args) -> int:
    import numpy as np
    import pandas as pd

    from kfaclab import nqm
    from kfaclab.train.record import write_bytes_atomic

    powers, momenta = _numbers("--powers", args.powers), _numbers("--momenta", args.momenta)
    if any(not 0 <= m < 1 for m in momenta):
        raise UsageError(f"--momenta: each must be in [0, 1), got {args.momenta}")
    if not 0 < args.target_fraction < 1:
        raise UsageError(f"--target-fraction: must be in (0, 1), got {args.target_fraction}")
    if not 0 <= args.max_batch_log2 <= 40:
        raise UsageError(f"--max-batch-log2: must be in 0..40, got {args.max_batch_log2}")
    spec = nqm.Spectrum(decay=args.decay, dim=args.dim)
    target = args.target_fraction * spec.initial_loss()
    bs = 2.0 ** np.arange(0, args.max_batch_log2 + 1)
    rows, summary = [], []
    for p in powers:
        r = nqm.tuned_steps(spec, bs, p, momenta, target)
        try:
            fit = nqm.critical_batch_size(bs, r["steps"])
            b_crit = fit["b_crit"]
            note = " (beyond the largest batch size: not identified)" if b_crit > bs[-1] or fit["at_edge"] else ""
        except ValueError as e:
            b_crit, note = float("nan"), f" ({e})"
        summary.append(f"p = {p:g}: B_crit {b_crit:,.0f}{note}; steps at batch 1: {r['steps'][0]:,.0f}, "
                       f"at {bs[-1]:,.0f}: {r['steps'][-1]:,.0f}")
        for b, s, lr, m, edge in zip(bs, r["steps"], r["lr"], r["momentum"], r["lr_at_edge"]):
            rows.append({"power": p, "batch_size": b, "steps": s, "lr": lr, "momentum": m, "lr_at_edge": bool(edge)})
    table = pd.DataFrame(rows)
    print(f"NQM: h_i = i^-{args.decay:g}, {args.dim:,} coordinates, noise covariance H / B, target "
          f"{args.target_fraction:g} x the initial loss {spec.initial_loss():.4g}; learning rate tuned, momentum from "
          f"{', '.join(f'{m:g}' for m in momenta)}")
    wide = table.pivot(index="batch_size", columns="power", values="steps")
    with pd.option_context("display.float_format", "{:,.0f}".format, "display.width", 160):
        print(wide.rename(columns=lambda p: f"p={p:g}").to_string())
    print("\n".join(summary))
    if table["lr_at_edge"].any():
        print(f"warning: the best learning rate lies on the grid's edge at {int(table['lr_at_edge'].sum())} points")
    if args.csv:
        write_bytes_atomic(args.csv, table.to_csv(index=False).encode())
        print(f"wrote {args.csv}")
    return 0


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        return {"train": cmd_train, "bench": cmd_bench, "sweep": cmd_sweep, "harvest": cmd_harvest,
                "harvest-merge": cmd_harvest_merge, "results": cmd_results, "nqm": cmd_nqm}[args.command](args)
    except UsageError as e:
        print(f"kfaclab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`kfaclab results ... | head`): not an error of ours. Python would
        # still try to flush stdout at exit and print a second traceback; point it at devnull.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
