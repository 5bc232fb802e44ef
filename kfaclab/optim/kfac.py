"""K-FAC (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) as a
preconditioner that rewrites the gradients of Linear and Conv2d layers, composed with torch's
SGD (momentum, weight decay), which then steps. Other parameters (BatchNorm, ...) keep their
plain gradient. The layer math lives in `kfac_layers`.

Schedule of the extra work: factors (running averages with decay `stat_decay`) every
`cov_update_freq` steps (T_cov), decompositions every `inv_update_freq` steps (T_inv),
preconditioning every step, with KL clipping of the update (Ba et al. 2017).
"""

from __future__ import annotations

import fnmatch
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab.optim import kfac_layers as kl
from kfaclab.optim.base import TrainingOptimizer

FISHER_TYPES = ("mc", "empirical", "exact")
INVERSE_METHODS = ("eigen", "inverse")
# The model's predictive distribution, which the mc and exact Fisher types need: categorical
# goes with F.cross_entropy on logits, gaussian with F.mse_loss (mean over batch and outputs).
LIKELIHOODS = ("categorical", "gaussian")
FACTOR_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def supported(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class _Layer:
    """Running factors and their decomposition for one layer."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.A = self.G = None  # running averages
        self.batch_A = self.batch_G = None  # this step's estimates
        self.decomposition: dict | None = None  # eigen: QA, dA, QG, dG; inverse: A_inv, G_inv


class KFAC(TrainingOptimizer):
    name = "kfac"
    defaults = {
        "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False,
        "damping": 1e-3, "damping_decay": 1.0, "damping_decay_steps": 1000, "damping_min": 0.0,
        "kl_clip": 1e-3,  # 0 switches KL clipping off
        "cov_update_freq": 10, "inv_update_freq": 100, "stat_decay": 0.95,
        "fisher_type": "mc", "likelihood": "categorical", "inverse_method": "eigen", "factor_dtype": "float32",
        "skip_layers": [],  # fnmatch patterns of module names left to the plain gradient
        "seed": 0,  # for the labels sampled by the MC Fisher
    }
    choices = {"fisher_type": FISHER_TYPES, "likelihood": LIKELIHOODS, "inverse_method": INVERSE_METHODS, "factor_dtype": tuple(FACTOR_DTYPES)}

    @staticmethod
    def check(h: dict) -> list[str]:
        problems = []
        if not h["damping"] > 0:
            problems.append("damping must be positive")
        if not 0 <= h["stat_decay"] < 1:
            problems.append("stat_decay must be in [0, 1)")
        if not 0 < h["damping_decay"] <= 1:
            problems.append("damping_decay must be in (0, 1]")
        for k in ("cov_update_freq", "inv_update_freq", "damping_decay_steps"):
            if not (isinstance(h[k], int) and h[k] >= 1):
                problems.append(f"{k} must be a whole number >= 1")
        return problems

    def __init__(self, model, loss_fn, hyperparameters):
        super().__init__(model, loss_fn, hyperparameters)
        h = self.hyperparameters
        self.torch_optimizer = torch.optim.SGD(model.parameters(), lr=h["lr"], momentum=h["momentum"],
                                               weight_decay=h["weight_decay"], nesterov=h["nesterov"])
        self.dtype = FACTOR_DTYPES[h["factor_dtype"]]
        self.layers = {name: _Layer(m) for name, m in model.named_modules() if supported(m)
                       and not any(fnmatch.fnmatchcase(name, p) for p in h["skip_layers"])}
        self.counters.update({"factor_updates": 0, "inverse_updates": 0, "decomposition_failures": 0,
                              "fallback_layer_steps": 0, "skipped_factor_updates": 0})
        self._capture_inputs = self._capture_grads = False
        self._batch_size = 0
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(h["seed"])
        for name, layer in self.layers.items():
            layer.module.register_forward_hook(self._forward_hook(layer))

    # ------------------------------------------------------------------ hooks

    def _forward_hook(self, layer: _Layer):
        def hook(module, inputs, output):
            if not self._capture_inputs:
                return
            layer.batch_A = kl.layer_factor_A(module, inputs[0].detach(), self.dtype)
            layer.batch_G = None
            output.register_hook(lambda g: self._on_output_grad(layer, g))
        return hook

    def _on_output_grad(self, layer: _Layer, g: torch.Tensor):
        if self._capture_grads:
            G = kl.factor_G(kl.output_rows(layer.module, g.detach()).to(self.dtype), self._batch_size)
            layer.batch_G = G if layer.batch_G is None else layer.batch_G + G

    # ------------------------------------------------------------------ the step

    @property
    def lr(self) -> float:
        return self.torch_optimizer.param_groups[0]["lr"]

    def damping_at(self, step: int) -> float:
        h = self.hyperparameters
        return max(h["damping_min"], h["damping"] * h["damping_decay"] ** (step // h["damping_decay_steps"]))

    def step(self, inputs, targets):
        h, t = self.hyperparameters, self.counters["steps"]
        update_factors = t % h["cov_update_freq"] == 0
        update_inverses = t % h["inv_update_freq"] == 0
        self.torch_optimizer.zero_grad(set_to_none=False)
        self._batch_size = len(inputs)
        self._capture_inputs = update_factors
        try:
            out = self.model(inputs)
            self._capture_inputs = False
            loss = self.loss_fn(out, targets)
            if update_factors and h["fisher_type"] != "empirical":
                self._curvature_backward(out)
                self.torch_optimizer.zero_grad(set_to_none=False)
            self._capture_grads = update_factors and h["fisher_type"] == "empirical"
            loss.backward()
        finally:
            self._capture_inputs = self._capture_grads = False
        n = len(inputs)
        self.counters["propagations"] += 2 * n
        if update_factors:
            self._update_factors()
        if update_inverses:
            self._decompose_all(self.damping_at(t))
        self._precondition(self.damping_at(t))
        self.torch_optimizer.step()
        self.counters["steps"] += 1
        return loss.detach()

    def _curvature_backward(self, out: torch.Tensor):
        """Backward passes that give G its meaning: one with targets sampled from the model's
        predictive distribution (mc), or one per output with the square root of the loss
        Hessian (exact: the type-2 Fisher, which equals the GGN for these losses; small
        outputs only). Both backpropagate S with S S^T = the Hessian of the batch-mean loss
        with respect to the outputs (in expectation for mc)."""
        b, c_out = out.shape[0], out.shape[1]
        self._capture_grads = True
        mc = self.hyperparameters["fisher_type"] == "mc"
        if self.hyperparameters["likelihood"] == "gaussian":
            # F.mse_loss averages over B x C: the Hessian is (2 / (B C)) I per example, so
            # S = sqrt(2 / C) / B times a standard normal sample (mc) or a unit vector (exact).
            scale = math.sqrt(2.0 / out[0].numel()) / b
            if mc:
                z = torch.randn(out.shape, generator=self.generator, device=out.device, dtype=out.dtype)
                out.backward(z * scale, retain_graph=True)
                self.counters["propagations"] += b
                return
            flat = torch.zeros_like(out).flatten(1)
            for c in range(flat.shape[1]):
                flat.zero_()
                flat[:, c] = scale
                out.backward(flat.view_as(out), retain_graph=True)
            self.counters["propagations"] += b * flat.shape[1]
            return
        # Softmax in at least float32 (bf16/fp16 logits), in float64 when the model is.
        probs = F.softmax(out.detach().to(torch.promote_types(out.dtype, torch.float32)), dim=1).to(out.dtype)
        if mc:
            sampled = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
            F.cross_entropy(out, sampled).backward(retain_graph=True)
            self.counters["propagations"] += b
            return
        eye = torch.eye(c_out, dtype=out.dtype, device=out.device)
        for c in range(c_out):
            # H = diag(p) - p p^T = sum_c h_c h_c^T with h_c = sqrt(p_c) (e_c - p); 1/B for the mean.
            h_c = probs[:, c : c + 1].sqrt() * (eye[c] - probs) / b
            out.backward(h_c, retain_graph=True)
        self.counters["propagations"] += b * c_out

    def _update_factors(self):
        decay = self.hyperparameters["stat_decay"]
        for layer in self.layers.values():
            A, G = layer.batch_A, layer.batch_G
            layer.batch_A = layer.batch_G = None
            if A is None or G is None or not (torch.isfinite(A).all() and torch.isfinite(G).all()):
                self.counters["skipped_factor_updates"] += 1  # keep the running average clean
                continue
            if layer.A is None:
                layer.A, layer.G = A, G
            else:
                layer.A.mul_(decay).add_(A, alpha=1 - decay)
                layer.G.mul_(decay).add_(G, alpha=1 - decay)
        self.counters["factor_updates"] += 1

    # ------------------------------------------------------------------ decompositions

    def _decompose_all(self, damping: float):
        for layer in self.layers.values():
            if layer.A is not None:
                layer.decomposition = self._decompose(layer.A, layer.G, damping)
        self.counters["inverse_updates"] += 1

    def _decompose(self, A, G, damping):
        """Decompose in the factor dtype; on failure (non-finite input or output, or an
        eigensolver error) retry in float64 with jitter; if that fails too, return None:
        the layer keeps its plain gradient until the next successful decomposition."""
        for attempt in range(2):
            try:
                if attempt:
                    A, G = _jittered(A), _jittered(G)
                d = self._decompose_once(A, G, damping)
                if all(torch.isfinite(v).all() for v in d.values()):
                    return {k: v.to(self.dtype) for k, v in d.items()}
            except (RuntimeError, ValueError):  # torch.linalg.LinAlgError is a RuntimeError
                pass
        self.counters["decomposition_failures"] += 1
        return None

    def _decompose_once(self, A, G, damping):
        if not (torch.isfinite(A).all() and torch.isfinite(G).all()):
            raise ValueError("non-finite factor")
        if self.hyperparameters["inverse_method"] == "eigen":
            dA, QA = torch.linalg.eigh(A)
            dG, QG = torch.linalg.eigh(G)
            # Factors are PSD; round-off can give tiny negative eigenvalues.
            return {"QA": QA, "dA": dA.clamp_(min=0), "QG": QG, "dG": dG.clamp_(min=0)}
        A_inv, G_inv = kl.damped_inverses(A, G, damping)
        return {"A_inv": A_inv, "G_inv": G_inv}

    # ------------------------------------------------------------------ preconditioning

    def _precondition(self, damping: float):
        updates, vg = {}, 0.0
        for name, layer in self.layers.items():
            d = layer.decomposition
            if d is None or layer.module.weight.grad is None:
                self.counters["fallback_layer_steps"] += int(d is None)
                continue
            v = kl.gradient_matrix(layer.module)
            v_f = v.to(self.dtype)  # in the factors' dtype
            if "QA" in d:
                p = kl.eigen_precondition(v_f, d["QA"], d["dA"], d["QG"], d["dG"], damping)
            else:
                p = kl.inverse_precondition(v_f, d["A_inv"], d["G_inv"])
            updates[name] = p
            vg += float((p * v_f).sum())
        nu = kl_clip_scale(vg, self.lr, self.hyperparameters["kl_clip"])
        for name, p in updates.items():
            kl.set_gradient_matrix(self.layers[name].module, (p * nu).to(self.layers[name].module.weight.dtype))
        self.last_kl_scale = nu

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["layers"] = {name: {"A": l.A, "G": l.G, "decomposition": l.decomposition}
                           for name, l in self.layers.items()}
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        for name, s in state["layers"].items():
            layer = self.layers[name]
            layer.A, layer.G = _clone(s["A"]), _clone(s["G"])
            layer.decomposition = None if s["decomposition"] is None else {
                k: v.clone() for k, v in s["decomposition"].items()}
        self.generator.set_state(state["generator"])


def kl_clip_scale(vg: float, lr: float, kl_clip: float) -> float:
    """Ba et al.'s KL clipping: scale the preconditioned update by
    nu = min(1, sqrt(kl_clip / (lr^2 sum_layers <P, V>))), bounding the update's KL change."""
    if kl_clip <= 0 or not vg > 0:
        return 1.0
    return min(1.0, math.sqrt(kl_clip / (lr**2 * vg)))


def _jittered(M):
    M = M.double()
    scale = float(M.diagonal().abs().mean()) if torch.isfinite(M).all() else 1.0
    return M + max(scale, 1e-12) * 1e-6 * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)


def _clone(t):
    return None if t is None else t.clone()
