"""Steihaug's truncated conjugate gradient for the trust-region subproblem

    minimise  m(p) = g'p + p'Hp / 2   subject to  |p| <= radius,

on flat vectors, with H given only through Hessian-vector products (Nocedal & Wright 2006,
Algorithm 7.2). CG runs from p = 0 until the residual is small (interior solution), a
direction of non-positive curvature appears, or an iterate would leave the region; in the
last two cases the step goes to the boundary, so its length is exactly the radius.

Hp is carried along (r = g + Hp), so the model value of the returned step needs no extra
product.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

HVP = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SteihaugResult:
    step: torch.Tensor
    Hstep: torch.Tensor  # H @ step, for the model value
    iterations: int  # Hessian-vector products done
    hits_boundary: bool
    negative_curvature: bool

    def model_value(self, g: torch.Tensor) -> float:
        """m(p) = g'p + p'Hp/2; its negative is the predicted decrease."""
        return float(g @ self.step + 0.5 * (self.step @ self.Hstep))


def boundary_roots(z: torch.Tensor, d: torch.Tensor, radius: float) -> tuple[float, float]:
    """The two t with |z + t d| = radius (t_low <= 0 <= t_high when |z| <= radius), computed
    without cancellation: the product of the roots is c / a."""
    a, b, c = float(d @ d), 2.0 * float(z @ d), float(z @ z) - radius**2
    disc = math.sqrt(max(b * b - 4.0 * a * c, 0.0))
    q = -0.5 * (b + math.copysign(disc, b))
    t1, t2 = (q / a, c / q) if q != 0 else (0.0, 0.0)
    return min(t1, t2), max(t1, t2)


def steihaug_cg(g: torch.Tensor, hvp: HVP, radius: float, max_iters: int, tol: float) -> SteihaugResult:
    """Approximate minimiser of m within the radius; `tol` is the absolute residual tolerance."""
    z = torch.zeros_like(g)
    Hz = torch.zeros_like(g)
    r = g.clone()
    if float(r.norm()) < tol:
        return SteihaugResult(z, Hz, 0, False, False)
    d = -r
    rr = float(r @ r)
    for i in range(1, max_iters + 1):
        Hd = hvp(d)
        dHd = float(d @ Hd)
        if dHd <= 0:
            # Non-positive curvature: the model decreases without bound along d; of the two
            # boundary points on the line, take the one with the lower model value.
            best = None
            for t in boundary_roots(z, d, radius):
                p, Hp = z + t * d, Hz + t * Hd
                value = float(g @ p + 0.5 * (p @ Hp))
                if best is None or value < best[0]:
                    best = (value, p, Hp)
            return SteihaugResult(best[1], best[2], i, True, True)
        alpha = rr / dHd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:
            t = boundary_roots(z, d, radius)[1]
            return SteihaugResult(z + t * d, Hz + t * Hd, i, True, False)
        r = r + alpha * Hd
        Hz = Hz + alpha * Hd
        z = z_next
        rr_next = float(r @ r)
        if math.sqrt(rr_next) < tol:
            return SteihaugResult(z, Hz, i, False, False)
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return SteihaugResult(z, Hz, max_iters, False, False)
