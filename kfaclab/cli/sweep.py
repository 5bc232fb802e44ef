"""`kfaclab sweep` (a study, resumably), `kfaclab harvest` (as much as fits before a deadline), and
`kfaclab harvest-merge` (a harvest's archive into the study)."""

from __future__ import annotations

import sys
from pathlib import Path

from kfaclab.cli.args import EXIT_INTERRUPTED, int_list, positive_float, positive_int
from kfaclab.errors import UsageError


def add_parsers(sub) -> dict:
    """The parsers of this family's commands, under `sub`; returns each command's body by name."""
    w = sub.add_parser("sweep", help="run a study (runs/<study>/study.yaml) as papermill notebooks, resumably")
    w.add_argument("spec", help="the study spec, e.g. runs/smoke/study.yaml")
    w.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: one Ray task per run")
    w.add_argument("--workers", type=positive_int, help="runs in parallel (CPU; default 1)")
    w.add_argument("--gpus", help="GPU indices, e.g. 0,1: one worker per GPU x --runs-per-gpu")
    w.add_argument("--runs-per-gpu", type=positive_int, default=1, help="runs sharing one GPU")
    w.add_argument("--threads", type=positive_int, help="CPU threads per run (default: cores / workers)")
    w.add_argument("--address", help="with --backend ray: an existing cluster ('auto', or host:port); "
                                     "default: start a local Ray instance")
    w.add_argument("--cpus-per-run", type=positive_float, help="with --backend ray: CPUs per task (default 1)")
    w.add_argument("--gpus-per-run", type=positive_float,
                   help="with --backend ray: GPUs per task, a fraction shares a GPU (default 1/--runs-per-gpu "
                        "where the cluster has GPUs)")
    w.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    w.add_argument("--kernel-per-run", action="store_true",
                   help="a fresh kernel for every run (default: one per worker, restarted after a failure)")
    w.add_argument("--dry-run", action="store_true", help="list what would run and its estimated cost")
    w.add_argument("--only", metavar="PATTERN", help="only runs whose name matches (fnmatch), e.g. 'kfac-b128-*'")
    w.add_argument("--limit", type=positive_int, help="at most N of the pending runs")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    h = sub.add_parser("harvest", help="as much of a study as fits before a deadline (a borrowed GPU), packed "
                                       "into one archive: smoke check, bench, then the pending runs")
    h.add_argument("spec", help="the study spec, e.g. runs/gpu/study.yaml")
    h.add_argument("--out", required=True, help="folder for the archive, the report and the bench (three files)")
    h.add_argument("--deadline-s", type=positive_float, required=True,
                   help="seconds from now by which the harvest has stopped (runs in flight at the deadline are "
                        "interrupted and stay pending)")
    h.add_argument("--workers", type=positive_int, help="runs in parallel on the CPU (default 1)")
    h.add_argument("--gpus", help="GPU indices, e.g. 0: one worker per GPU x --runs-per-gpu")
    h.add_argument("--runs-per-gpu", type=positive_int, default=1, help="runs sharing one GPU")
    h.add_argument("--threads", type=positive_int, help="CPU threads per run (default: cores / workers)")
    h.add_argument("--bench", choices=("auto", "always", "never"), default="auto",
                   help="auto: only when the study has no bench from this kind of device (default)")
    h.add_argument("--bench-batch-sizes", default="128,512,2048", help="batch sizes of the step-time bench")
    h.add_argument("--bench-steps", type=positive_int, default=100, help="steps per amortized step time")
    h.add_argument("--throughput-runs", default="2,4,8", help="numbers of runs sharing the device to measure")
    h.add_argument("--throughput-seconds", type=positive_float, default=5.0)
    h.add_argument("--no-smoke", dest="smoke", action="store_false", help="skip the smoke check")
    h.add_argument("--smoke-limit-s", type=positive_float, default=60.0)
    h.add_argument("--retry-failed", action="store_true", help="re-run runs that failed before")
    h.add_argument("--work", help="where runs execute (default: a new temporary folder)")
    h.add_argument("--quiet", action="store_true")
    m = sub.add_parser("harvest-merge", help="validate a harvest archive and add its runs to the study")
    m.add_argument("archive", help="harvest-<study>.tar.gz")
    m.add_argument("study", help="the study folder or its spec, e.g. runs/gpu")
    return {"sweep": cmd_sweep, "harvest": cmd_harvest, "harvest-merge": cmd_harvest_merge}



def cmd_sweep(args) -> int:
    from kfaclab.sweep.bracket import load_grown
    from kfaclab.sweep.estimate import dry_run
    from kfaclab.sweep.runner import parse_gpus, sweep

    study = load_grown(args.spec)
    gpus = parse_gpus(args.gpus)
    if args.dry_run:
        print(dry_run(study, args.retry_failed, args.only, args.limit))
        return 0
    if args.backend == "ray":
        from kfaclab.sweep.ray_backend import sweep_ray

        for flag, value in (("--workers", args.workers), ("--gpus", args.gpus), ("--kernel-per-run",
                                                                                 args.kernel_per_run)):
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


def cmd_harvest(args) -> int:
    from kfaclab.sweep.harvest import Options, harvest
    from kfaclab.sweep.runner import parse_gpus

    if args.workers and args.gpus:
        raise UsageError("--workers is for the CPU; with --gpus, the workers are --runs-per-gpu per GPU")
    opts = Options(out=Path(args.out), deadline_s=args.deadline_s, workers=args.workers or 1,
                   gpus=parse_gpus(args.gpus), runs_per_gpu=args.runs_per_gpu, threads=args.threads,
                   bench=args.bench, bench_batch_sizes=int_list(args.bench_batch_sizes, "--bench-batch-sizes"),
                   bench_steps=args.bench_steps, throughput_runs=int_list(args.throughput_runs, "--throughput-runs"),
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
