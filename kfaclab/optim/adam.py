"""Adam with decoupled weight decay (torch's AdamW), behind the loop's optimizer interface.

Zhang et al. (2019) count Adam among the preconditioned optimizers whose critical batch size
exceeds SGD's: its per-coordinate scale 1 / (sqrt(v) + eps) is a diagonal curvature estimate,
and eps sets how far it is from SGD (eps much larger than sqrt(v): SGD with momentum at rate
lr (1 - beta1) / eps). The update is torch's own; this class only adapts the interface.
"""

from __future__ import annotations

import torch

from kfaclab.optim.base import TrainingOptimizer


class Adam(TrainingOptimizer):
    name = "adam"
    data_parallel = True  # DDP's gradient all-reduce is all it needs
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}

    @staticmethod
    def check(h: dict) -> list[str]:
        problems = [f"{k} must be in [0, 1), got {h[k]}" for k in ("beta1", "beta2") if not 0 <= h[k] < 1]
        if h["eps"] <= 0:
            problems.append(f"eps must be positive (it bounds the step where the second moment is zero), "
                            f"got {h['eps']}")
        return problems

    def __init__(self, model, loss_fn, hyperparameters):
        super().__init__(model, loss_fn, hyperparameters)
        h = self.hyperparameters
        self.torch_optimizer = torch.optim.AdamW(model.parameters(), lr=h["lr"], betas=(h["beta1"], h["beta2"]),
                                                 eps=h["eps"], weight_decay=h["weight_decay"],
                                                 amsgrad=h["amsgrad"])

    def step(self, inputs, targets):
        return self.gradient_step(inputs, targets)
