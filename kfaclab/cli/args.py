"""What every command's parser shares: one-line errors, checked numbers, hyperparameters, data and model flags."""

from __future__ import annotations

import argparse
import json

from kfaclab.errors import UsageError

EXIT_USAGE = 2  # bad input: one line on stderr, no traceback
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; what finished is kept


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see '{self.prog} --help')")


def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {s}")
    return v


def hparam(s):
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
    ("--lr", positive_float, "base learning rate (at --lr-base-batch-size)"),
    ("--momentum", float, None),
    ("--weight-decay", float, None),
    ("--damping", positive_float, "K-FAC damping"),
    ("--kl-clip", float, "K-FAC KL clipping magnitude (0: off)"),
    ("--cov-update-freq", positive_int, "K-FAC factor update every T_cov steps"),
    ("--inv-update-freq", positive_int, "K-FAC decomposition every T_inv steps"),
    ("--stat-decay", float, "K-FAC running-average decay of the factors"),
    ("--fisher-type", str, "K-FAC: mc | empirical | exact"),
    ("--inverse-method", str, "K-FAC: eigen | inverse"),
    ("--radius", positive_float, "TRCG: initial trust-region radius"),
    ("--max-radius", positive_float, "TRCG: largest trust-region radius"),
    ("--cg-max-iters", positive_int, "TRCG: CG iterations per step at most"),
    ("--cg-tol", positive_float, "TRCG: relative CG residual tolerance"),
    ("--hessian-fraction", positive_float, "TRCG: Hessian sample, fraction of the data"),
    ("--gradient-fraction", positive_float, "TRCG: gradient sample, fraction of the data"),
    ("--curvature", str, "TRCG: hessian | gauss-newton"),
)


def add_data_model_args(p):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="synthetic",
                   help="cifar10 | svhn | cifar10-jpeg | imagefolder:PATH | synthetic (default: synthetic)")
    g.add_argument("--data-root", help="where torchvision datasets are (or are downloaded to)")
    g.add_argument("--data-archive", help="cifar10-jpeg archive (default: ../shared/data/cifar10-jpeg.tar.gz)")
    g.add_argument("--cache-dir", help="decoded-array cache (default: $KFACLAB_CACHE or ~/.cache/kfaclab)")
    g.add_argument("--no-download", dest="download", action="store_false", help="never download datasets")
    g.add_argument("--train-subset", type=positive_int, help="use a class-stratified subset of N training images")
    g.add_argument("--test-subset", type=positive_int, help="evaluate on a stratified subset of N test images")
    g.add_argument("--resolution", type=positive_int, help="downsample images to R x R (CPU presets)")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    m = p.add_argument_group("model and optimizer")
    m.add_argument("--model", default="mlp", help="resnetD (any depth 6n+2: resnet8, resnet14, resnet20, ...) | "
                   "resnetDxK (K x the channels, e.g. resnet14x0.5) | c1 | mlp | mlp:W1,W2,...")
    m.add_argument("--batch-size", type=positive_int, default=128)
    for flag, kind, text in OPTIMIZER_FLAGS:
        m.add_argument(flag, type=kind, help=text)
    m.add_argument("--hparam", type=hparam, action="append", default=[], metavar="KEY=VALUE",
                   help="any other optimizer hyperparameter (repeatable)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    m.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: all cores)")


def numbers(flag: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag}: give comma-separated numbers, e.g. 0,0.5,1; got {text!r}") from None
    if not values:
        raise UsageError(f"{flag}: give at least one number")
    return values


def int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} must be whole numbers separated by commas, got '{text}'") from None
    if not values or min(values) <= 0:
        raise UsageError(f"{flag} must be positive whole numbers separated by commas, got '{text}'")
    return values
