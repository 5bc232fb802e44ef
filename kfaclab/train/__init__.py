"""The budget-aware training loop and what it records."""

from kfaclab.train.budget import (
    BUDGET_KINDS,
    evaluation_iterations,
    stopping_rule_epochs,
    total_iterations,
)
from kfaclab.train.config import RunConfig
from kfaclab.train.loop import evaluate, make_loaders, plan, resolve_device, train
from kfaclab.train.record import SCHEMA_VERSION, validate_record, write_atomic
from kfaclab.train.schedule import LRSchedule, scaled_lr
from kfaclab.train.targets import race_to_targets

__all__ = [
    "BUDGET_KINDS", "LRSchedule", "RunConfig", "SCHEMA_VERSION", "evaluate", "evaluation_iterations",
    "make_loaders", "plan", "race_to_targets", "resolve_device", "scaled_lr", "stopping_rule_epochs",
    "total_iterations", "train", "validate_record", "write_atomic",
]
