"""How exact K-FAC is: the cosine between K-FAC's step and the exact natural-gradient step.

K-FAC replaces the Fisher F of a network by a block diagonal of Kronecker products, one block
per layer (Martens & Grosse 2015; for convolutions KFC, Grosse & Martens 2016, which also
assumes the spatial positions independent). How much that changes the step depends on the
model: on an MLP the blocks are exact up to the independence of activations and
back-propagated gradients; convolutions, BatchNorm (which couples the examples of a batch and
is left to the plain gradient) and residual paths add approximations of their own.

On networks small enough for a dense Fisher in float64 (a few thousand parameters), this
module computes, on one batch,

- the exact damped natural-gradient step d* = (F + lambda I)^-1 g, with F the exact Fisher
  (for softmax cross-entropy, the generalized Gauss-Newton matrix) of the whole batch function,
  BatchNorm's coupling of the examples included, over all parameters;
- K-FAC's step: kfaclab's own KFAC, one step from the same parameters on the same batch with
  that batch's factors (stat_decay 0, updates every step, eigen-basis damping lambda, no KL
  clip, float64), with the exact Fisher's factors ("exact") or sampled labels ("mc");

and reports their cosine per preconditioned layer and over all of K-FAC's layers together, with
the plain gradient's cosine to d* beside it (what no preconditioning gives).

    python -m kfaclab.exactness --out runs/exactness/exactness.json
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, jacrev

from kfaclab.errors import UsageError
from kfaclab.models import CifarResNet, build_model
from kfaclab.optim import build_optimizer
from kfaclab.optim.kfac import supported

MODELS = {
    "mlp": "MLP 192-24-10 (ReLU)",
    "resnet-bn": "ResNet-8 at 0.25x width (4/8/16 channels), BatchNorm",
    "resnet-nobn": "ResNet-8 at 0.25x width, BatchNorm removed",
}
INPUT = (3, 8, 8)
CLASSES = 10
BATCH_SIZES = (8, 32, 128)
DAMPINGS = (1e-3, 1e-2, 1e-1)
FISHERS = ("exact", "mc")
TRAIN_STEPS = 300  # "after training": SGD steps on the synthetic task before measuring


def make_model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        model = build_model("mlp:24", INPUT, CLASSES)
    elif kind in ("resnet-bn", "resnet-nobn"):
        model = CifarResNet(8, INPUT[0], CLASSES, width=0.25)
        if kind == "resnet-nobn":
            for name, module in list(model.named_modules()):
                if isinstance(module, nn.BatchNorm2d):
                    parent, _, attr = name.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    else:
        raise UsageError(f"unknown model '{kind}'; choose from {', '.join(MODELS)}")
    return model.double()


@functools.cache
def _pool() -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic task's 2,048 training images (kfaclab.data.sources.make_synthetic), normalised."""
    from kfaclab.data.sources import make_synthetic

    train, _, _ = make_synthetic(n_train=2048, n_test=10, size=INPUT[1], contrast=60.0, seed=1)
    x = torch.as_tensor(train.images, dtype=torch.float64) / 255.0  # (N, C, H, W)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, torch.as_tensor(train.labels, dtype=torch.long)


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `n` images of the synthetic task, float64, drawn by `seed`."""
    x, y = _pool()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(y), generator=g)[:n]
    return x[pick].contiguous(), y[pick].contiguous()


def trained(model: nn.Module, steps: int = TRAIN_STEPS, seed: int = 0) -> nn.Module:
    """The model after `steps` of SGD (lr 0.05, momentum 0.9, batch 64) on the synthetic task."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for t in range(steps):
        x, y = data(64, seed=1000 * seed + t)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _batch_function(model: nn.Module):
    """logits(params) of the whole batch: BatchNorm normalises with the batch's statistics (as in
    training) and keeps no running statistics, so the function has no side effects."""
    model = copy.deepcopy(model).train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    return lambda params, x: functional_call(model, params, (x,))


def exact_fisher(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The exact Fisher of the mean cross-entropy over the batch, F = 1/N sum_n J_n^T (diag p_n -
    p_n p_n^T) J_n with J_n the Jacobian of example n's logits with respect to every parameter
    (through BatchNorm's batch statistics), as a dense float64 matrix; and the parameters' names
    in its order."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    f = _batch_function(model)
    logits = f(params, x)
    jac = jacrev(f)(params, x)  # name -> (N, C, *shape)
    names = list(params)
    J = torch.cat([jac[k].reshape(*logits.shape, -1) for k in names], dim=2)  # (N, C, P)
    p = torch.softmax(logits, dim=1).detach()
    root = J * p.sqrt()[:, :, None]
    u = torch.einsum("ncp,nc->np", J, p)
    fisher = (torch.einsum("ncp,ncq->pq", root, root) - u.T @ u) / len(x)
    return fisher, names


def kfac_step(model: nn.Module, x, y, damping: float, fisher: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """K-FAC's preconditioned gradient per parameter name: one step of kfaclab's KFAC from the
    model's parameters on this batch, with this batch's factors."""
    twin = copy.deepcopy(model)
    opt = build_optimizer("kfac", twin, F.cross_entropy, {
        "lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0, "damping": damping, "kl_clip": 0.0,
        "cov_update_freq": 1, "inv_update_freq": 1, "stat_decay": 0.0, "fisher_type": fisher,
        "inverse_method": "eigen", "factor_dtype": "float64", "low_rank": False, "seed": seed})
    opt.step(x, y)
    return {k: p.grad.detach().clone() for k, p in twin.named_parameters()}


def preconditioned_names(model: nn.Module) -> dict[str, list[str]]:
    """K-FAC's layers (Linear and Conv2d) and the names of their parameters."""
    return {name: [f"{name}.{k}" for k, _ in m.named_parameters()]
            for name, m in model.named_modules() if supported(m)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def measure(kind: str, state: str, batch_size: int, dampings=DAMPINGS, fishers=FISHERS, seed: int = 0) -> list[dict]:
    """Rows of cosines for one model in one state at one batch size, every damping and Fisher."""
    model = make_model(kind, seed)
    if state == "trained":
        model = trained(model, seed=seed)
    x, y = data(batch_size, seed=10_000 + batch_size)
    base = {"model": kind, "state": state, "batch_size": batch_size}
    return [{**base, **row} for row in cosines(model, x, y, dampings, fishers, seed)]


def cosines(model: nn.Module, x, y, dampings=DAMPINGS, fishers=FISHERS, seed: int = 0) -> list[dict]:
    """For a float64 model and one batch: per damping and Fisher, the cosine of K-FAC's step and of
    the plain gradient with the exact natural-gradient step, per K-FAC layer and over all of them."""
    fisher, names = exact_fisher(model, x)
    sizes = [p.numel() for _, p in model.named_parameters()]
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    g = torch.cat([t.reshape(-1) for t in grads]).detach()
    evals, evecs = torch.linalg.eigh(fisher)
    layers = preconditioned_names(model)
    offsets = dict(zip(names, torch.tensor([0] + sizes).cumsum(0).tolist()))

    def pick(vec, keys):
        return torch.cat([vec[offsets[k]:offsets[k] + params[k].numel()] for k in keys])

    rows = []
    for damping in dampings:
        exact = evecs @ ((evecs.T @ g) / (evals.clamp(min=0) + damping))  # (F + lambda I)^-1 g
        for fisher_type in fishers:
            step = kfac_step(model, x, y, damping, fisher_type, seed)
            kfac = torch.cat([step[k].reshape(-1) for k in names])
            base = {"damping": damping, "fisher": fisher_type, "parameters": int(sum(sizes))}
            for layer, keys in layers.items():
                rows.append({**base, "layer": layer, "kfac_cosine": _cos(pick(kfac, keys), pick(exact, keys)),
                             "gradient_cosine": _cos(pick(g, keys), pick(exact, keys))})
            every = [k for keys in layers.values() for k in keys]
            rows.append({**base, "layer": "all K-FAC layers",
                         "kfac_cosine": _cos(pick(kfac, every), pick(exact, every)),
                         "gradient_cosine": _cos(pick(g, every), pick(exact, every))})
    return rows


def run(models=tuple(MODELS), states=("init", "trained"), batch_sizes=BATCH_SIZES, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    torch.set_default_dtype(torch.float64)
    try:
        cases = [(m, s, b) for m in models for s in states for b in batch_sizes]
        rows = []
        for m, s, b in tqdm(cases, desc="exactness", disable=not progress):
            rows += measure(m, s, b)
    finally:
        torch.set_default_dtype(torch.float32)
    return {"kind": "kfaclab.exactness", "version": 1, "models": {m: MODELS[m] for m in models},
            "input": list(INPUT), "classes": CLASSES, "train_steps": TRAIN_STEPS,
            "dampings": list(DAMPINGS), "fishers": list(FISHERS), "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kfaclab.exactness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the JSON file to write, e.g. runs/exactness/exactness.json")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        print(f"error: unknown model {', '.join(bad)}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    from kfaclab.train.record import write_atomic

    result = run(models)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, result)
    print(f"wrote {args.out}: {len(result['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
