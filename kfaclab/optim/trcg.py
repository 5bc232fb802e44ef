"""Trust-region Newton-CG (Xu, Roosta & Mahoney 2017) as the study's second second-order method.

One step (one iteration of the loop):
  1. f and its gradient g on the gradient sample: the whole training set for TRCG (or a fresh
     random fraction of it), the loop's mini-batch for stochastic TRCG (STRCG);
  2. Steihaug CG on m(p) = g'p + p'Hp/2, |p| <= radius, with H on a fresh random sub-sample of
     the training set (default 5%): exact Hessian products by double backpropagation, or
     Gauss-Newton products;
  3. rho = (f(x) - f(x + p)) / (-m(p)) on the gradient sample; the step is kept only when
     rho > eta2; the radius then changes by the rule in `update_radius`.

The gradient and Hessian samples are un-augmented training images: a trust region needs the
same function at x and x + p. The loop's batch is used only by STRCG.

Cost in propagations (Xu et al.): a forward+backward over n examples is 2n, a forward alone n,
a Hessian-vector product over S examples 2|S|. When the Hessian sample fits in one chunk its
graph is built once per step (2|S|) and reused by every product; otherwise each product
recomputes the forward and backward passes too, and counts 4|S|.

BatchNorm layers normalise with the statistics of the chunk they see (train mode, as in the
training pass), but their running statistics are restored after the Hessian products and the
ratio test: only the gradient pass, the one a first-order method would also do, moves them.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab.optim.base import TrainingOptimizer
from kfaclab.optim.steihaug import steihaug_cg

CURVATURES = ("hessian", "gauss-newton")
CG_TOL_RULES = ("relative", "scipy")


def update_radius(radius: float, rho: float, hits_boundary: bool, h: dict) -> float:
    """The trust-region radius rule.

    rho < shrink_below (default eta2): the model was poor, radius / gamma1;
    rho > eta1 (on the boundary only, if expand_on_boundary_only): radius x gamma2, capped at
    max_radius; otherwise unchanged. Our reading of Xu et al.'s constants (eta1 0.8, eta2 1e-4,
    gamma1 2, gamma2 1.2): shrink fast on failure, grow gently on success. scipy's trust-ncg
    is eta1 0.75, eta2 0.15, gamma1 4, gamma2 2, shrink_below 0.25, boundary-only expansion.
    """
    if not rho >= h["shrink_below"]:  # also catches NaN
        return radius / h["gamma1"]
    if rho > h["eta1"] and (hits_boundary or not h["expand_on_boundary_only"]):
        return min(radius * h["gamma2"], h["max_radius"])
    return radius


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module):
    """Restore every BatchNorm layer's running statistics on exit."""
    saved = [(m, {k: v.clone() for k, v in m.named_buffers(recurse=False)})
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        for m, buffers in saved:
            for k, v in buffers.items():
                getattr(m, k).copy_(v)


class TRCG(TrainingOptimizer):
    name = "trcg"
    stochastic_gradient = False
    defaults = {
        "radius": 1.0, "max_radius": 100.0,
        "eta1": 0.8, "eta2": 1e-4, "gamma1": 2.0, "gamma2": 1.2,
        "shrink_below": 1e-4, "expand_on_boundary_only": False,
        "cg_max_iters": 250, "cg_tol": 1e-2,  # relative: stop when |r| < cg_tol |g|
        "cg_tol_rule": "relative",  # or scipy's min(0.5, sqrt|g|) |g|
        "curvature": "hessian",
        "hessian_fraction": 0.05,  # of the training set, fresh each step
        "gradient_fraction": 1.0,  # TRCG only; STRCG uses the loop's mini-batch
        "weight_decay": 0.0,  # f + weight_decay |x|^2 / 2, in f, g, H and the ratio test
        "chunk_size": 1024,  # examples per forward pass
        "seed": 0,
    }
    choices = {"curvature": CURVATURES, "cg_tol_rule": CG_TOL_RULES}

    @staticmethod
    def check(h: dict) -> list[str]:
        problems = []
        if not h["radius"] > 0:
            problems.append("radius must be positive")
        if not h["max_radius"] >= h["radius"]:
            problems.append("max_radius must be >= radius")
        if not h["eta2"] <= h["eta1"] < 1:
            problems.append("eta1 and eta2 must satisfy eta2 <= eta1 < 1")
        if not (h["gamma1"] > 1 and h["gamma2"] >= 1):
            problems.append("gamma1 must be > 1 and gamma2 >= 1")
        for k in ("hessian_fraction", "gradient_fraction"):
            if not 0 < h[k] <= 1:
                problems.append(f"{k} must be in (0, 1]")
        for k in ("cg_max_iters", "chunk_size"):
            if not h[k] >= 1:
                problems.append(f"{k} must be >= 1")
        if not h["cg_tol"] > 0:
            problems.append("cg_tol must be positive")
        return problems

    def __init__(self, model, loss_fn, hyperparameters):
        super().__init__(model, loss_fn, hyperparameters)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.radius = float(self.hyperparameters["radius"])
        self.counters.update({"accepted_steps": 0, "rejected_steps": 0, "cg_iterations": 0, "hessian_products": 0,
                              "boundary_steps": 0, "negative_curvature_steps": 0, "radius": self.radius})
        self.generator = torch.Generator(device="cpu")  # the same samples on every device
        self.generator.manual_seed(self.hyperparameters["seed"])
        self.data = None
        self.last = {}  # the last step's diagnostics: rho, step norm, predicted decrease, ...

    def attach_training_data(self, loader) -> None:
        self.data = loader

    def set_lr(self, lr) -> None:
        """A trust region sets its own step length: there is no learning rate."""

    def set_micro_batch(self, size) -> None:
        if size:
            from kfaclab.errors import UsageError

            raise UsageError(f"{self.name} passes over its samples in chunks of its own: set its chunk_size "
                             "hyperparameter instead of micro_batch")

    # ------------------------------------------------------------------ samples and passes

    def _random_sample(self, fraction: float) -> torch.Tensor:
        n = self.data.num_examples
        size = max(1, round(fraction * n))
        if size >= n:
            return torch.arange(n, device=self.data.device)
        return torch.randperm(n, generator=self.generator)[:size].to(self.data.device)

    def _chunks(self, sample):
        """(inputs, targets, weight) chunks of a sample, which is indices into the training split
        or an (inputs, targets) pair; weight = the chunk's share of the sample, for the mean loss."""
        k, n = self.hyperparameters["chunk_size"], self._size(sample)
        for i in range(0, n, k):
            if isinstance(sample, torch.Tensor):
                idx = sample[i : i + k]
                x, y = self.data.normalize(self.data.images[idx]), self.data.labels[idx]
            else:
                x, y = sample[0][i : i + k], sample[1][i : i + k]
            yield x, y, len(y) / n

    @staticmethod
    def _size(sample) -> int:
        return len(sample) if isinstance(sample, torch.Tensor) else len(sample[0])

    def _flat_grad(self, outputs, inputs, grad_outputs=None, **kw) -> torch.Tensor:
        grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, **kw)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, inputs)])

    def _flat_params(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _set_params(self, flat: torch.Tensor) -> None:
        i = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(flat[i : i + p.numel()].view_as(p))
                i += p.numel()

    def _loss_and_gradient(self, sample) -> tuple[torch.Tensor, torch.Tensor]:
        loss = torch.zeros((), device=self.params[0].device, dtype=self.params[0].dtype)
        grad = torch.zeros_like(self._flat_params())
        for x, y, w in self._chunks(sample):
            chunk_loss = self.loss_fn(self.model(x), y) * w
            grad += self._flat_grad(chunk_loss, self.params)
            loss += chunk_loss.detach()
        self.counters["propagations"] += 2 * self._size(sample)
        return loss, grad

    @torch.no_grad()
    def _loss(self, sample) -> torch.Tensor:
        loss = sum(self.loss_fn(self.model(x), y) * w for x, y, w in self._chunks(sample))
        self.counters["propagations"] += self._size(sample)
        return loss

    def _regulariser(self, flat: torch.Tensor) -> float:
        return 0.5 * self.hyperparameters["weight_decay"] * float(flat @ flat)

    # ------------------------------------------------------------------ curvature products

    def _curvature_products(self, sample):
        """A function v -> H v (mean over the sample, plus weight decay) and the sample size."""
        h, size = self.hyperparameters, self._size(sample)
        product = self._gauss_newton_chunk if h["curvature"] == "gauss-newton" else self._hessian_chunk
        chunks = list(self._chunks(sample))
        if len(chunks) == 1:  # build the graph once, reuse it in every product
            self.counters["propagations"] += 2 * size
            one = product(*chunks[0])

            def hvp(v):
                self.counters["propagations"] += 2 * size
                self.counters["hessian_products"] += 1
                return one(v) + h["weight_decay"] * v
        else:
            def hvp(v):
                self.counters["propagations"] += 4 * size  # forward + backward again, then the product
                self.counters["hessian_products"] += 1
                return sum(product(*c)(v) for c in chunks) + h["weight_decay"] * v
        return hvp

    def _hessian_chunk(self, x, y, w):
        """Pearlmutter's trick by double backpropagation: H v = d(g'v)/dx."""
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(self.loss_fn(self.model(x), y) * w, self.params,
                                                                   create_graph=True)])
        return lambda v: self._flat_grad(g, self.params, v, retain_graph=True)

    def _gauss_newton_chunk(self, x, y, w):
        """G v = J' H_loss J v: J v by the double-vjp trick (backward of a backward with respect
        to a dummy cotangent u), the softmax cross-entropy Hessian on the outputs, then J'."""
        out = self.model(x)
        u = torch.zeros_like(out, requires_grad=True)
        Ju_t = torch.autograd.grad(out, self.params, u, create_graph=True, materialize_grads=True)  # J' u, linear in u
        probs = F.softmax(out.detach(), dim=1)
        scale = w / len(x)  # the mean loss over the chunk, times its share of the sample

        def gvp(v):
            vs = list(torch.split(v, [p.numel() for p in self.params]))
            Jv = torch.autograd.grad(Ju_t, u, [s.view_as(p) for s, p in zip(vs, self.params)], retain_graph=True)[0]
            HJv = probs * Jv - probs * (probs * Jv).sum(1, keepdim=True)
            return self._flat_grad(out, self.params, HJv * scale, retain_graph=True)
        return gvp

    # ------------------------------------------------------------------ the step

    def _gradient_sample(self, inputs, targets):
        if self.stochastic_gradient:
            return (inputs, targets)
        return self._random_sample(self.hyperparameters["gradient_fraction"])

    def step(self, inputs, targets):
        if self.data is None:
            raise RuntimeError(f"{self.name} needs the training split: call attach_training_data(loader) first")
        h = self.hyperparameters
        sample = self._gradient_sample(inputs, targets)
        x0 = self._flat_params()
        data_loss, g = self._loss_and_gradient(sample)
        g = g + h["weight_decay"] * x0
        f0 = float(data_loss) + self._regulariser(x0)
        g_norm = float(g.norm())
        tol = h["cg_tol"] * g_norm if h["cg_tol_rule"] == "relative" else min(0.5, math.sqrt(g_norm)) * g_norm
        with frozen_batchnorm_statistics(self.model):
            hvp = self._curvature_products(self._random_sample(h["hessian_fraction"]))
            result = steihaug_cg(g, hvp, self.radius, h["cg_max_iters"], tol)
            del hvp  # frees the retained graph
            predicted = -result.model_value(g)
            x1 = x0 + result.step
            self._set_params(x1)
            f1 = float(self._loss(sample)) + self._regulariser(x1)
        rho = (f0 - f1) / predicted if predicted > 0 and math.isfinite(f1) else -math.inf
        accepted = rho > h["eta2"]
        if not accepted:
            self._set_params(x0)
        self.last = {"rho": rho, "f0": f0, "f1": f1, "predicted_decrease": predicted,
                     "step_norm": float(result.step.norm()),
                     "radius": self.radius, "cg_iterations": result.iterations, "accepted": accepted}
        self.radius = update_radius(self.radius, rho, result.hits_boundary, h)
        c = self.counters
        c["steps"] += 1
        c["accepted_steps" if accepted else "rejected_steps"] += 1
        c["cg_iterations"] += result.iterations
        c["boundary_steps"] += int(result.hits_boundary)
        c["negative_curvature_steps"] += int(result.negative_curvature)
        c["radius"] = self.radius
        return data_loss.detach()

    def state_dict(self) -> dict:
        return {"counters": dict(self.counters), "radius": self.radius, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.counters = dict(state["counters"])
        self.radius = state["radius"]
        self.generator.set_state(state["generator"])


class STRCG(TRCG):
    """Stochastic TRCG: the gradient and the ratio test on the loop's mini-batch."""

    name = "strcg"
    stochastic_gradient = True
