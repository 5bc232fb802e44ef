"""Learning-rate schedule: scaling with the batch size, linear warmup, then decay over the budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kfaclab.errors import UsageError

LR_SCALINGS = ("none", "linear", "sqrt")
LR_DECAYS = ("constant", "cosine", "step")


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, scaling: str) -> float:
    """The peak learning rate at `batch_size` given `base_lr` at `base_batch_size`."""
    ratio = batch_size / base_batch_size
    if scaling == "none":
        return base_lr
    if scaling == "linear":
        return base_lr * ratio
    if scaling == "sqrt":
        return base_lr * math.sqrt(ratio)
    raise UsageError(f"unknown learning-rate scaling '{scaling}'; choose from {', '.join(LR_SCALINGS)}")


@dataclass(frozen=True)
class LRSchedule:
    """lr(t) for iteration t = 0 .. total-1 (the rate used by the t-th update).

    Warmup rises linearly to `peak_lr` over `warmup_iterations`; then `constant`, `cosine`
    (to 0 at the end of the budget) or `step` (x gamma at each milestone, given as fractions
    of the total iterations).
    """

    peak_lr: float
    total_iterations: int
    warmup_iterations: int = 0
    decay: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __post_init__(self):
        if self.decay not in LR_DECAYS:
            raise UsageError(f"unknown learning-rate decay '{self.decay}'; choose from {', '.join(LR_DECAYS)}")

    def __call__(self, t: int) -> float:
        w = self.warmup_iterations
        if t < w:
            return self.peak_lr * (t + 1) / w
        if self.decay == "cosine":
            progress = (t - w) / max(1, self.total_iterations - w)
            return self.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.decay == "step":
            passed = sum(t >= m * self.total_iterations for m in self.milestones)
            return self.peak_lr * self.gamma**passed
        return self.peak_lr
