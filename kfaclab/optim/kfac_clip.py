"""K-FAC's KL clipping (Ba et al. 2017): the scale nu that bounds each update's size, and how it acted.

nu = min(1, sqrt(kl_clip / (lr^2 <P, V>))) shrinks the preconditioned step where it would move
the model's output distribution too far; the effective learning rate is lr x nu. The clip
statistics say how often it bound over a run, so that a grid over the nominal learning rate can
be read on the rate the steps actually took (book/verdicts.md, version 3).
"""

from __future__ import annotations

import math

import torch


class KLClip:
    """The clip statistics of a K-FAC optimizer (a mixin of KFAC): counted on the device each step,
    read once per run."""

    def _count_clip(self, nu: torch.Tensor) -> None:
        """Adds this step's nu to the clip statistics (on nu's device: no transfer per step)."""
        nu = nu.to(torch.float64)
        lr = float(self.lr)
        eff = nu * lr
        row = torch.stack([(nu < 1).to(torch.float64), torch.ones_like(nu), nu, eff,
                           torch.log2(eff) if lr > 0 else torch.zeros_like(nu),
                           torch.ones_like(nu) if lr > 0 else torch.zeros_like(nu)])
        self._clip_sums = row if self._clip_sums is None else self._clip_sums + row

    def clip_statistics(self) -> dict:
        """How the KL clip acted over the run (book/verdicts.md, version 3): the share of
        preconditioned steps on which it bound (nu < 1), the mean nu, the mean effective learning
        rate lr x nu, and its geometric mean (over steps with lr > 0; the robustness widths are
        measured in log2 of it). None where no step was preconditioned."""
        if self._clip_sums is None:
            return {"kl_clip_steps": 0, "kl_clip_bound_share": None, "kl_scale_mean": None,
                    "effective_lr_mean": None, "effective_lr_geomean": None}
        bound, steps, nu, eff, log_eff, with_lr = (float(v) for v in self._clip_sums.cpu())

        def finite(v):  # a record holds no infinity or NaN (an overflowing run's sums can be)
            return v if v is not None and math.isfinite(v) else None

        geo = 2 ** (log_eff / with_lr) if with_lr and math.isfinite(log_eff) and abs(log_eff / with_lr) < 1000 else None
        return {"kl_clip_steps": int(steps), "kl_clip_bound_share": finite(bound / steps),
                "kl_scale_mean": finite(nu / steps), "effective_lr_mean": finite(eff / steps),
                "effective_lr_geomean": finite(geo)}

    @property
    def last_kl_scale(self) -> float:
        """The KL clipping factor nu of the last step (1.0: not clipped)."""
        return float(self._kl_scale)


def kl_clip_scale(vg, lr: float, kl_clip: float):
    """Ba et al.'s KL clipping: scale the preconditioned update by
    nu = min(1, sqrt(kl_clip / (lr^2 sum_layers <P, V>))), bounding the update's KL change
    (1 where <P, V> is not positive). A float for a float, a 0-d tensor on vg's device for a tensor."""
    if not isinstance(vg, torch.Tensor):
        return float(kl_clip_scale(torch.tensor(float(vg), dtype=torch.float64), lr, kl_clip))
    one = torch.ones_like(vg)
    if kl_clip <= 0:
        return one
    nu = (kl_clip / (lr**2 * vg.clamp(min=torch.finfo(vg.dtype).tiny))).sqrt().clamp(max=1.0)
    return torch.where(vg > 0, nu, one)
