"""Optimizers behind one interface (`TrainingOptimizer`), built by name.

Pure optimizer math: no I/O and no loops here. SGD and Adam (AdamW) come from torch; K-FAC and
TRCG live in their own modules.
"""

from __future__ import annotations

from kfaclab.errors import UsageError
from kfaclab.optim.adam import Adam
from kfaclab.optim.base import LossFn, TrainingOptimizer
from kfaclab.optim.kfac import KFAC
from kfaclab.optim.sgd import SGD
from kfaclab.optim.trcg import STRCG, TRCG

OPTIMIZERS: dict[str, type[TrainingOptimizer]] = {"sgd": SGD, "kfac": KFAC, "adam": Adam, "trcg": TRCG,
                                               "strcg": STRCG}

__all__ = ["OPTIMIZERS", "TrainingOptimizer", "build_optimizer", "hyperparameters_for_run", "resolve_hyperparameters"]


def resolve_hyperparameters(name: str, given: dict) -> dict:
    """The optimizer's defaults overridden by `given`; unknown names and bad values are errors."""
    cls = _lookup(name)
    unknown = sorted(set(given) - set(cls.defaults))
    if unknown:
        raise UsageError(f"optimizer '{name}' has no hyperparameter {', '.join(unknown)}; "
                         f"it takes {', '.join(cls.defaults)}")
    h = {**cls.defaults, **given}
    choices = getattr(cls, "choices", {})
    for key, default in cls.defaults.items():
        value = h[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UsageError(f"{name} hyperparameter {key} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                raise UsageError(f"{name} hyperparameter {key} must be a non-negative number, got {value!r}")
            if isinstance(default, int) and value != int(value):
                raise UsageError(f"{name} hyperparameter {key} must be a whole number, got {value!r}")
            h[key] = type(default)(value)
        elif isinstance(default, str) and value not in choices.get(key, ()):
            raise UsageError(f"{name} hyperparameter {key} must be one of {', '.join(choices[key])}, got {value!r}")
        elif isinstance(default, list):
            if isinstance(value, str):
                value = h[key] = [value]
            if not all(isinstance(v, str) for v in value):
                raise UsageError(f"{name} hyperparameter {key} must be a list of names, got {value!r}")
    if "momentum" in h and h["momentum"] >= 1:
        raise UsageError(f"{name} momentum must be in [0, 1), got {h['momentum']}")
    if "lr" in h and h["lr"] <= 0:
        raise UsageError(f"{name} learning rate must be positive, got {h['lr']}")
    problems = cls.check(h) if hasattr(cls, "check") else []
    if problems:
        raise UsageError(f"{name} hyperparameter {problems[0]}")
    return h


def hyperparameters_for_run(name: str, given: dict, iterations: int) -> dict:
    """The resolved hyperparameters as a run of `iterations` steps uses them (K-FAC's cadence
    scaled to the run where asked): what the run record states under resolved.hparams."""
    return _lookup(name).for_run(resolve_hyperparameters(name, given), iterations)


def build_optimizer(name: str, model, loss_fn: LossFn, hyperparameters: dict) -> TrainingOptimizer:
    return _lookup(name)(model, loss_fn, resolve_hyperparameters(name, hyperparameters))


def _lookup(name: str) -> type[TrainingOptimizer]:
    if name not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer '{name}'; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]
