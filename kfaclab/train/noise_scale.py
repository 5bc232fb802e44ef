"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, appendix A).

G is the full-batch gradient and Sigma the covariance of per-example gradients. A gradient
over a batch of B examples drawn from the training set has E|G_B|^2 = |G|^2 + tr(Sigma) / B,
so squared norms at two batch sizes b < B' give unbiased estimates of both terms:

    |G|^2      ~ (B' |G_B'|^2 - b |G_b|^2) / (B' - b)
    tr(Sigma)  ~ (|G_b|^2 - |G_B'|^2) / (1/b - 1/B')

Single estimates are noisy (the first can even be negative); McCandlish et al. average the
two terms separately over many measurements and take the ratio of the averages, which
`kfaclab.results` does from the per-evaluation values the training loop records here.

The measurement: m independent batches of the run's batch size b, each gradient g_i on its
own (b_small = b), and their mean, the gradient over m b examples (b_big = m b). The
optimizer, its statistics, the training data stream, BatchNorm buffers and the global RNG are
left exactly as they were, so turning the measurement on does not change training.
"""

from __future__ import annotations

import torch

# The measurement's batches come from loader epochs far beyond any training epoch.
NOISE_EPOCH_OFFSET = 1 << 20


def unbiased_terms(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from the mean squared norm of gradients over b_small examples and the
    squared norm of a gradient over b_big examples."""
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small}, {b_big}")
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return grad_sq, trace


def noise_scale(grad_sq_values, trace_values) -> float:
    """B_simple from many measurements: the ratio of the averages (not the average of ratios,
    which the noisy and sometimes negative |G|^2 estimates would ruin)."""
    g = sum(grad_sq_values) / len(grad_sq_values)
    s = sum(trace_values) / len(trace_values)
    return s / g if g > 0 else float("inf")


def measure(model: torch.nn.Module, loss_fn, batches) -> dict:
    """Gradients of `loss_fn` (a batch mean) on each of the given batches, at the model's
    current parameters; returns b_small, b_big, the two squared norms and the unbiased terms."""
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in dict(model.named_parameters())}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    total, small_sq, sizes = None, 0.0, []
    try:
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y), params)
            flat = torch.cat([g.reshape(-1) for g in grads]).double()
            small_sq += float(flat @ flat)
            total = flat * len(x) if total is None else total + flat * len(x)
            sizes.append(len(x))
    finally:
        model.load_state_dict(buffers, strict=False)  # BatchNorm running statistics as they were
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    if len(sizes) < 2 or len(set(sizes)) != 1:
        raise ValueError(f"need at least two batches of one size, got sizes {sizes}")
    b_small, b_big = sizes[0], sum(sizes)
    mean = total / b_big
    small_sq /= len(sizes)
    big_sq = float(mean @ mean)
    grad_sq, trace = unbiased_terms(small_sq, big_sq, b_small, b_big)
    return {"b_small": b_small, "b_big": b_big, "small_sq": small_sq, "big_sq": big_sq, "grad_sq": grad_sq,
            "trace": trace}
