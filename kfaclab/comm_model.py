"""A cost model of one data-parallel K-FAC step, for clusters larger than the one we measure.

Terms per step, on W workers, for layers with factor sizes (d_A, d_G):
  - compute: the forward and backward pass over the local batch, t_fb(B) / W (taken as linear
    in the batch), plus preconditioning, 4 matrix products per layer in the eigenbasis,
    2 (d_A^2 d_G + d_A d_G^2) flops each pair;
  - gradient all-reduce (ring): 2 (W-1)/W x bytes / bandwidth + 2 (W-1) x latency, bytes = 4 P;
  - factor all-reduce every T_cov steps: the same with bytes = 4 sum(d_A^2 + d_G^2);
  - decompositions every T_inv steps: an eigendecomposition of a d x d matrix costs about
    9 d^3 flops. `replicated`: every worker does all of them; `distributed`: the most loaded
    worker's share (layers assigned largest first), plus broadcasting the results,
    4 sum(d^2 + d) bytes, one fused message per owner (pipelined: bytes / bandwidth, plus
    log2(W) x latency per owner).
Every rate is a parameter: the book says which values it assumes and which it measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    bandwidth: float  # bytes per second between workers
    latency: float  # seconds per message hop
    flops: float  # sustained flop/s of one worker for dense linear algebra


def ring_allreduce_seconds(nbytes: float, world: int, m: Machine) -> float:
    if world <= 1:
        return 0.0
    return 2 * (world - 1) / world * nbytes / m.bandwidth + 2 * (world - 1) * m.latency


def eig_flops(d: int) -> float:
    return 9.0 * d ** 3


def balanced_loads(costs: list[float], world: int) -> list[float]:
    """Largest first to the least loaded worker (as kfaclab.optim.kfac_distributed.assign_owners does)."""
    load = [0.0] * world
    for c in sorted(costs, reverse=True):
        i = min(range(world), key=lambda r: (load[r], r))
        load[i] += c
    return load


def kfac_step_seconds(layers: list[tuple[int, int]], n_params: int, world: int, machine: Machine,
                      forward_backward_seconds: float, strategy: str = "distributed", cov_update_freq: int = 10,
                      inv_update_freq: int = 100) -> dict:
    """Predicted seconds per step by term (averaged over the update frequencies)."""
    if strategy not in ("replicated", "distributed"):
        raise ValueError("strategy must be replicated or distributed")
    precondition = sum(4 * (da * da * dg + da * dg * dg) for da, dg in layers) / machine.flops
    costs = [eig_flops(da) + eig_flops(dg) for da, dg in layers]
    if strategy == "replicated" or world == 1:
        decompose, share = sum(costs) / machine.flops, 0.0
    else:
        decompose = max(balanced_loads(costs, world)) / machine.flops
        # one fused broadcast per owner: all the bytes once, the latency once per owner
        nbytes = sum(4 * (da * da + da + dg * dg + dg) for da, dg in layers)
        owners = min(world, len(layers))
        share = nbytes / machine.bandwidth + owners * math.ceil(math.log2(world)) * machine.latency
    return {
        "compute": forward_backward_seconds / world,
        "precondition": precondition,
        "gradient_allreduce": ring_allreduce_seconds(4 * n_params, world, machine),
        "factor_allreduce": ring_allreduce_seconds(4 * sum(da * da + dg * dg for da, dg in layers), world,
                                                   machine) / cov_update_freq,
        "decompositions": decompose / inv_update_freq,
        "decomposition_broadcast": share / inv_update_freq,
    }
