"""Training budgets: how many iterations a run gets.

Time-limited users stop on iterations; money-limited users stop on epochs (examples).
The study's stopping rule gives larger batches more epochs: epochs(B) = (log2(B/B0) + 1) E0.
"""

from __future__ import annotations

import math

from kfaclab.errors import UsageError

BUDGET_KINDS = ("epochs", "iterations", "examples", "rule")
# Training-set sizes of the datasets, for budgets computed before a run loads its data.
TRAIN_SIZES = {"cifar10": 50000, "cifar10-jpeg": 50000, "svhn": 73257, "synthetic": 5000}


def stopping_rule_epochs(batch_size: int, b0: int = 128, e0: float = 100.0) -> float:
    """Epochs of the study's rule (Ma et al.: B0 = 128, E0 = 100): E0 at B0, +E0 per doubling."""
    if b0 <= 0 or e0 <= 0:
        raise UsageError(f"stopping rule needs positive B0 and E0, got B0={b0}, E0={e0}")
    if batch_size < b0:
        raise UsageError(f"the stopping rule is defined for batch sizes >= B0; batch {batch_size} < B0={b0}: "
                         "lower --rule-b0")
    return (math.log2(batch_size / b0) + 1.0) * e0


def rule_ratios(batch_sizes, rule: dict, reference: dict) -> dict[int, float]:
    """How many times more epochs the `reference` stopping rule (e.g. the paper's B0 = 128,
    E0 = 100) gives than `rule` (dicts with b0 and e0), at each batch size both rules define.
    With different B0 the ratio changes with the batch size, so prose quotes its range."""
    return {int(b): stopping_rule_epochs(b, reference["b0"], reference["e0"])
            / stopping_rule_epochs(b, rule["b0"], rule["e0"])
            for b in batch_sizes if b >= rule["b0"] and b >= reference["b0"]}


def total_iterations(kind: str, value: float | None, batch_size: int, steps_per_epoch: int,
                     b0: int = 128, e0: float = 100.0) -> int:
    """Iterations a budget allows. Epochs count whole batches (the loader drops the last
    partial one), so an epoch budget of E is E x steps_per_epoch iterations, rounded."""
    if kind not in BUDGET_KINDS:
        raise UsageError(f"unknown budget '{kind}'; choose from {', '.join(BUDGET_KINDS)}")
    if kind == "rule":
        value = stopping_rule_epochs(batch_size, b0, e0)
    elif value is None or not value > 0:
        raise UsageError(f"a budget in {kind} needs a positive value, got {value}")
    if kind in ("epochs", "rule"):
        return max(1, round(value * steps_per_epoch))
    if kind == "iterations":
        if value != int(value):
            raise UsageError(f"an iteration budget must be a whole number, got {value}")
        return int(value)
    return max(1, math.ceil(value / batch_size))  # examples


def evaluation_iterations(total: int, steps_per_epoch: int, every_epochs: float = 1.0,
                          min_evals: int = 20) -> list[int]:
    """When to evaluate: at 0, at least every `every_epochs` epochs, at least `min_evals` times
    (so a large-batch run with few iterations still has a curve), and at the end."""
    period = max(1, min(int(steps_per_epoch * every_epochs), total // max(1, min_evals)))
    points = list(range(0, total + 1, period))
    if points[-1] != total:
        points.append(total)
    return points


def run_iterations(config) -> tuple[int, int]:
    """(iterations, evaluations) a run of this RunConfig will take, from the dataset's size."""
    n_train = config.train_subset or TRAIN_SIZES.get(config.dataset)
    if n_train is None:
        return 0, 0
    spe = n_train // config.batch_size
    iters = total_iterations(config.budget, config.budget_value, config.batch_size, spe, config.rule_b0,
                             config.rule_e0)
    return iters, len(evaluation_iterations(iters, spe, config.eval_every_epochs, config.min_evals))
