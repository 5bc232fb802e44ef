"""FGSM adversarial examples (Goodfellow et al. 2015) for ABSA (Yao et al. 2018).

The step is eps * sign(gradient) on the [0, 1] pixel scale, clipped to valid pixels. The
model sees normalised inputs x = (p - mean) / std, so in its space the step is eps / std per
channel (the sign is the same: std > 0) and the valid range is [(0 - mean) / std,
(1 - mean) / std]. Applying eps in normalised space instead, as the public code does, makes
the attack's strength depend on each channel's spread.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def fgsm(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor, eps: float,
         mean, std) -> torch.Tensor:
    """Adversarial versions of normalised `inputs` (N, C, H, W), eps on the [0, 1] pixel scale.

    The gradient is taken in eval mode, so BatchNorm neither normalises with the attack batch
    nor moves its running statistics; the model's mode and its parameters' `.grad` are left
    as they were. Returns a new tensor without a graph.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    shape = (1, -1) + (1,) * (inputs.dim() - 2)
    std_t = torch.as_tensor(std, dtype=inputs.dtype, device=inputs.device).view(shape)
    mean_t = torch.as_tensor(mean, dtype=inputs.dtype, device=inputs.device).view(shape)
    was_training = model.training
    model.eval()
    try:
        x = inputs.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x), targets), x)
    finally:
        model.train(was_training)
    low, high = (0.0 - mean_t) / std_t, (1.0 - mean_t) / std_t
    adv = inputs.detach() + (eps / std_t) * grad.sign()
    return torch.maximum(torch.minimum(adv, high), low)


def with_adversarial(model, loss_fn, inputs, targets, ratio: float, eps: float, mean, std):
    """The batch with its first round(ratio x N) examples replaced by their FGSM versions (the
    batch is already shuffled, so the first ones are a random subset); also returns how many."""
    k = int(round(ratio * len(inputs)))
    if k == 0 or eps == 0:
        return inputs, 0
    adv = fgsm(model, loss_fn, inputs[:k], targets[:k], eps, mean, std)
    return torch.cat([adv, inputs[k:]]), k
