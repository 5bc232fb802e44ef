"""`kfaclab nqm`: the noisy quadratic model's tuned steps to target and critical batch sizes, exactly."""

from __future__ import annotations

from kfaclab.cli.args import numbers
from kfaclab.errors import UsageError


def add_parsers(sub) -> dict:
    """The parsers of this family's commands, under `sub`; returns each command's body by name."""
    q = sub.add_parser("nqm", help="the noisy quadratic model (Zhang et al.): tuned steps to target per batch size "
                                   "and the critical batch size per preconditioning power, exactly")
    q.add_argument("--decay", type=float, default=1.0,
                   help="curvature spectrum h_i = i^-decay (default 1, the paper's)")
    q.add_argument("--dim", type=int, default=10_000, help="coordinates (default 10,000)")
    q.add_argument("--powers", default="0,0.5,1", help="preconditioning powers p, comma-separated (0: SGD, 1: exact "
                                                       "curvature; default 0,0.5,1)")
    q.add_argument("--momenta", default="0,0.5,0.9,0.99", help="momenta the tuning picks from, comma-separated (one "
                                                                "value: fixed; default 0,0.5,0.9,0.99)")
    q.add_argument("--target-fraction", type=float, default=0.01, help="target loss as a fraction of the initial "
                                                                       "loss (default 0.01)")
    q.add_argument("--max-batch-log2", type=int, default=20, help="batch sizes 1, 2, 4, ... 2^this (default 20)")
    q.add_argument("--count", choices=["first", "stays"], default="first",
                   help="steps to the target: the first step at or below it (first, the default), or the first "
                        "from which the expected loss stays at or below it (stays)")
    q.add_argument("--csv", metavar="PATH", help="also write the steps per power and batch size as CSV")
    return {"nqm": cmd_nqm}



def cmd_nqm(args) -> int:
    import numpy as np
    import pandas as pd

    from kfaclab import nqm
    from kfaclab.train.record import write_bytes_atomic

    powers, momenta = numbers("--powers", args.powers), numbers("--momenta", args.momenta)
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
        r = nqm.tuned_steps(spec, bs, p, momenta, target, count=args.count)
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
          f"{', '.join(f'{m:g}' for m in momenta)}; steps counted as "
          + ("the first crossing" if args.count == "first" else "the first step from which the loss stays below"))
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
