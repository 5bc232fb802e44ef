"""The training loss's Hessian through Hessian-vector products: its top eigenvalue by power
iteration (Yao et al. 2018; the public HessianFlow code), without ever forming the Hessian.

Used by the adaptive batch size schedule (ABS/ABSA) once per epoch and, on its own, to
measure how sharp the minimum a run ended in is (the sharp-minima picture of large batches).

The measurement never changes the model: it runs in eval mode (BatchNorm uses and keeps its
running statistics), restores the model's mode, and leaves parameters' `.grad` untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Eigenvalue:
    value: float  # the Rayleigh quotient v^T H v at the last iterate
    iterations: int  # Hessian-vector products computed
    converged: bool  # the relative change fell below the tolerance

    def to_dict(self) -> dict:
        return {"value": self.value, "iterations": self.iterations, "converged": self.converged}


class HessianOperator:
    """v -> H v for the loss of one batch, H the Hessian with respect to the trainable
    parameters (flattened, in `model.parameters()` order). The gradient graph is built once;
    each product is one more backward pass through it."""

    def __init__(self, model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor):
        self.params = [p for p in model.parameters() if p.requires_grad]
        loss = loss_fn(model(inputs), targets)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)
        self.dim = sum(p.numel() for p in self.params)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        parts = v.split([p.numel() for p in self.params])
        dot = sum((g * u.view_as(g)).sum() for g, u in zip(self.grads, parts))
        hv = torch.autograd.grad(dot, self.params, retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv])


def top_eigenvalue(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, *,
                   max_iterations: int = 10, tolerance: float = 1e-2, seed: int = 0) -> Eigenvalue:
    """The eigenvalue of largest magnitude of the Hessian of `loss_fn(model(inputs), targets)`
    by power iteration from a random unit vector: stop when |lambda_k - lambda_{k-1}| <=
    tolerance |lambda_{k-1}| or after `max_iterations` products (ABS: 10 and 1e-2).

    Power iteration converges to the eigenvalue of largest |lambda|; near a minimum that is the
    top (positive) one. The start vector comes from its own generator (`seed`), so the
    measurement neither uses nor moves the global random stream.
    """
    if max_iterations < 1 or not tolerance >= 0:
        raise ValueError(f"need max_iterations >= 1 and tolerance >= 0, got {max_iterations}, {tolerance}")
    was_training = model.training
    model.eval()
    try:
        H = HessianOperator(model, loss_fn, inputs, targets)
        dtype, device = H.params[0].dtype, H.params[0].device
        g = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(H.dim, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        v /= v.norm()
        value, previous = math.nan, None
        for k in range(1, max_iterations + 1):
            hv = H @ v
            value = float(v.double() @ hv.double())
            norm = hv.norm()
            if previous is not None and abs(value - previous) <= tolerance * abs(previous):
                return Eigenvalue(value, k, True)
            if not torch.isfinite(norm) or norm == 0:
                return Eigenvalue(value, k, False)
            v = hv / norm
            previous = value
        return Eigenvalue(value, max_iterations, False)
    finally:
        model.train(was_training)


def fixed_batch(loader, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` training examples drawn once (seeded), normalised, not augmented: the batch on
    which a run measures its top eigenvalue every time, so changes in the measurement reflect
    the landscape rather than the sample."""
    n = loader.num_examples
    if size > n:
        raise ValueError(f"an eigenvalue batch of {size} needs that many training examples; the split has {n}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:size].to(loader.device)
    return loader.normalize(loader.images[idx]), loader.labels[idx]
