"""SGD with momentum and weight decay, from torch, behind the loop's optimizer interface."""

from __future__ import annotations

import torch

from kfaclab.optim.base import TrainingOptimizer


class SGD(TrainingOptimizer):
    name = "sgd"
    data_parallel = True  # DDP's gradient all-reduce is all it needs
    defaults = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}

    def __init__(self, model, loss_fn, hyperparameters):
        super().__init__(model, loss_fn, hyperparameters)
        h = self.hyperparameters
        self.torch_optimizer = torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"],
                                               weight_decay=h["weight_decay"], nesterov=h["nesterov"])

    def step(self, inputs, targets):
        return self.gradient_step(inputs, targets)
