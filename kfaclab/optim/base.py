"""The one small interface between the training loop and an optimizer.

The loop hands an optimizer a batch and asks for one step; the optimizer owns the forward
and backward passes it needs (one for SGD, an extra one for K-FAC's MC Fisher, many
Hessian-vector products for TRCG). It reports work done as counters, among them
`propagations`: a forward+backward over n examples counts 2n (the unit of Xu et al.).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainingOptimizer:
    """Base class: subclasses implement `step`; the learning rate is set by the loop's schedule."""

    name = "base"

    def __init__(self, model: nn.Module, loss_fn: LossFn, hyperparameters: dict):
        self.model, self.loss_fn = model, loss_fn
        self.hyperparameters = dict(hyperparameters)  # recorded in the run JSON as given
        self.counters: dict[str, float] = {"steps": 0, "propagations": 0}
        self.torch_optimizer: torch.optim.Optimizer | None = None

    def attach_training_data(self, loader) -> None:
        """Optimizers that need more than the batch (TRCG: the full gradient, Hessian samples)
        keep the loop's training loader here; the others ignore it."""

    # Whether the optimizer trains data-parallel: its model is then a DistributedDataParallel
    # wrapper, which all-reduces the loss gradients in backward.
    data_parallel = False

    def attach_distributed(self, ctx) -> None:
        """Called with the kfaclab.distributed.Context when the run has more than one process;
        optimizers with work of their own to spread (K-FAC) override it."""
        if ctx.active and not self.data_parallel:
            from kfaclab.errors import UsageError

            raise UsageError(f"{self.name} does not train data-parallel; use sgd or kfac under torchrun")

    def set_lr(self, lr: float) -> None:
        for group in self.torch_optimizer.param_groups:
            group["lr"] = lr

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One update on this batch; returns the batch loss before the update (detached)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"torch_optimizer": self.torch_optimizer.state_dict(), "counters": dict(self.counters)}

    def load_state_dict(self, state: dict) -> None:
        self.torch_optimizer.load_state_dict(state["torch_optimizer"])
        self.counters = dict(state["counters"])
