"""The communication-cost model of data-parallel K-FAC: its formulas on numbers worked by hand,
and its load balancing against the optimizer's own layer assignment."""

import pytest
import torch.nn.functional as F

from kfaclab.comm_model import (
    Machine,
    balanced_loads,
    eig_flops,
    kfac_step_seconds,
    ring_allreduce_seconds,
)
from kfaclab.models import build_model
from kfaclab.optim import build_optimizer
from kfaclab.optim import kfac_layers as kl
from kfaclab.optim.kfac_distributed import assign_owners

FAST = Machine(bandwidth=1e9, latency=0.0, flops=1e12)


def test_ring_allreduce_by_hand():
    assert ring_allreduce_seconds(1e9, 1, FAST) == 0.0
    assert ring_allreduce_seconds(1e9, 2, FAST) == pytest.approx(1.0)  # 2 (W-1)/W = 1
    assert ring_allreduce_seconds(1e9, 4, FAST) == pytest.approx(1.5)
    slow = Machine(bandwidth=1e9, latency=1e-3, flops=1e12)
    assert ring_allreduce_seconds(0, 4, slow) == pytest.approx(6e-3)  # 2 (W-1) hops


def test_balanced_loads_match_the_optimizers_assignment():
    model = build_model("mlp:64,32,16", (3, 8, 8), 10)
    opt = build_optimizer("kfac", model, F.cross_entropy, {})
    modules = {n: l.module for n, l in opt.layers.items()}
    costs = {n: sum(d ** 3 for d in kl.factor_dims(m)) for n, m in modules.items()}
    for world in (2, 3):
        owners = assign_owners(modules, world)
        loads = [sum(c for n, c in costs.items() if owners[n] == r) for r in range(world)]
        assert sorted(loads) == sorted(balanced_loads(list(costs.values()), world))


def test_step_terms():
    layers = [(65, 32), (33, 10)]
    one = kfac_step_seconds(layers, n_params=2442, world=1, machine=FAST, forward_backward_seconds=0.01)
    assert one["gradient_allreduce"] == one["factor_allreduce"] == one["decomposition_broadcast"] == 0.0
    assert one["decompositions"] == pytest.approx(sum(eig_flops(a) + eig_flops(g) for a, g in layers) / 1e12 / 100)
    rep = kfac_step_seconds(layers, 2442, 4, FAST, 0.01, strategy="replicated")
    dis = kfac_step_seconds(layers, 2442, 4, FAST, 0.01, strategy="distributed")
    assert dis["decompositions"] < rep["decompositions"] == one["decompositions"]
    # with a worker per layer, the slowest worker decomposes the largest layer only
    assert dis["decompositions"] == pytest.approx((eig_flops(65) + eig_flops(32)) / 1e12 / 100)
    assert dis["decomposition_broadcast"] > 0 and rep["decomposition_broadcast"] == 0
    assert rep["compute"] == pytest.approx(0.01 / 4)
    assert rep["factor_allreduce"] == pytest.approx(ring_allreduce_seconds(4 * (65**2 + 32**2 + 33**2 + 10**2), 4,
                                                                            FAST) / 10)
    with pytest.raises(ValueError):
        kfac_step_seconds(layers, 2442, 2, FAST, 0.01, strategy="gossip")
