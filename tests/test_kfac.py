"""K-FAC against independent references: curvlinops' KFACLinearOperator, dense float64 GGNs
from torch.func, and dense Kronecker solves."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

from kfaclab.errors import UsageError
from kfaclab.optim import build_optimizer, resolve_hyperparameters
from kfaclab.optim import kfac_layers as kl
from kfaclab.optim.kfac_clip import kl_clip_scale


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 4))


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.Conv2d(5, 3, (2, 3), stride=(1, 2)), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))


def data(shape, n=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


LOSSES = {"categorical": F.cross_entropy, "gaussian": F.mse_loss}


def kfac_for(model, **hp):
    base = dict(lr=0.1, momentum=0.0, weight_decay=0.0, cov_update_freq=1, inv_update_freq=1, stat_decay=0.0,
                kl_clip=0.0, factor_dtype="float64", fisher_type="empirical")
    h = {**base, **hp}
    return build_optimizer("kfac", model, LOSSES[h.get("likelihood", "categorical")], h)


def our_factors(model, x, y, **hp):
    """Factors of one batch (stat_decay 0: the running average is this batch's estimate),
    computed before the step moves the parameters."""
    opt = kfac_for(model, **hp)
    opt.step(x, y)
    return {name: (l.A, l.G) for name, l in opt.layers.items()}


def curvlinops_factors(model, x, y, fisher_type, loss=None):
    curvlinops = pytest.importorskip("curvlinops")
    loss = nn.CrossEntropyLoss() if loss is None else loss
    params = [p for p in model.parameters()]
    op = curvlinops.KFACLinearOperator(model, loss, params, [(x, y)], fisher_type=fisher_type,
                                       separate_weight_and_bias=False, check_deterministic=False)
    op.compute_kronecker_factors()
    return op._input_covariances, op._gradient_covariances


@pytest.mark.parametrize("make,shape", [(mlp, (3, 2, 2)), (cnn, (3, 8, 9))])
@pytest.mark.parametrize("fisher", ["empirical", "exact"])
def test_factors_equal_curvlinops(make, shape, fisher):
    torch.manual_seed(0)
    model = make().double()
    x, y = data(shape)
    model(x)  # materialise lazy layers
    ref_A, ref_G = curvlinops_factors(copy.deepcopy(model), x, y, {"exact": "type-2"}.get(fisher, fisher))
    ours = our_factors(model, x, y, fisher_type=fisher)
    assert set(ours) == set(ref_A) == set(ref_G)
    for name, (A, G) in ours.items():
        torch.testing.assert_close(A, ref_A[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(G, ref_G[name], rtol=1e-10, atol=1e-12)


def test_gaussian_likelihood_factors_equal_curvlinops_mse():
    # The likelihood only matters for the exact (type-2) and mc Fishers; the empirical one
    # backpropagates the loss itself. (curvlinops also rescales MSELoss's empirical Fisher by
    # the output size, a convention of its own, so that comparison would not be like for like.)
    fisher = "exact"
    torch.manual_seed(0)
    model = mlp().double()
    x, _ = data((3, 2, 2))
    y = torch.randn(len(x), 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ref_A, ref_G = curvlinops_factors(copy.deepcopy(model), x, y, {"exact": "type-2"}.get(fisher, fisher),
                                      loss=nn.MSELoss())
    ours = our_factors(model, x, y, fisher_type=fisher, likelihood="gaussian")
    for name, (A, G) in ours.items():
        torch.testing.assert_close(A, ref_A[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(G, ref_G[name], rtol=1e-10, atol=1e-12)


def test_mc_fisher_averages_to_the_type2_fisher():
    torch.manual_seed(0)
    model = mlp().double()
    x, y = data((3, 2, 2), n=32)
    _, ref_G = curvlinops_factors(copy.deepcopy(model), x, y, "type-2")
    opt = kfac_for(model, fisher_type="mc", stat_decay=0.0, lr=1e-12)
    draws = 400
    sums = {}
    for _ in range(draws):
        opt.step(x, y)  # lr ~ 0: the parameters stay put
        for name, l in opt.layers.items():
            sums[name] = sums.get(name, 0) + l.G / draws
    for name, G in sums.items():
        err = (G - ref_G[name]).norm() / ref_G[name].norm()
        assert err < 0.1, (name, float(err))


def test_one_data_point_kfac_is_the_exact_ggn():
    """For a single example (no weight sharing), each K-FAC block G kron A is the exact GGN block."""
    torch.manual_seed(1)
    model = mlp().double()
    x, y = data((3, 2, 2), n=1)
    params = {k: v.detach() for k, v in model.named_parameters()}
    logits = lambda p: functional_call(model, p, (x,))[0]
    J = jacrev(logits)(params)
    z = logits(params).detach()
    H = hessian(lambda z: F.cross_entropy(z[None], y))(z)
    ours = our_factors(copy.deepcopy(model), x, y, fisher_type="exact")
    for name, (A, G) in ours.items():
        Jw, Jb = J[f"{name}.weight"], J[f"{name}.bias"]
        Jl = torch.cat([Jw, Jb[..., None]], -1).reshape(len(z), -1)  # row-major vec of [W | b]
        ggn = Jl.T @ H @ Jl
        torch.testing.assert_close(torch.kron(G, A), ggn, rtol=1e-9, atol=1e-12)


def dense_ggn_blocks(model, x, loss):
    """Each layer's diagonal block of the GGN sum_n J_n^T H_n J_n of the batch loss, dense, via
    torch.func, in the row-major vec order of [W | b]."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    f = lambda p: functional_call(model, p, (x,))
    J = jacrev(f)(params)  # (B, C, *param shape)
    z = f(params).detach()
    H = hessian(loss)(z).reshape(z.numel(), z.numel())  # the loss couples nothing across examples
    blocks = {}
    for name in {k.rsplit(".", 1)[0] for k in params}:
        Jl = torch.cat([J[f"{name}.weight"], J[f"{name}.bias"][..., None]], -1).reshape(z.numel(), -1)
        blocks[name] = Jl.T @ H @ Jl
    return blocks


def test_deep_linear_network_with_mse_kfac_is_the_exact_ggn():
    """In a deep linear network the output's Jacobian with respect to a layer's output is the
    product of the later weights, the same for every example, and the MSE Hessian is constant:
    the per-example G is the same for all examples, so A kron G is the exact GGN block for a
    whole batch, not just one example."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(24, 6, generator=g, dtype=torch.float64), torch.randn(24, 3, generator=g, dtype=torch.float64)
    ggn = dense_ggn_blocks(model, x, lambda z: F.mse_loss(z, y))
    ours = our_factors(copy.deepcopy(model), x, y, fisher_type="exact", likelihood="gaussian")
    assert set(ours) == set(ggn)
    for name, (A, G) in ours.items():
        torch.testing.assert_close(torch.kron(G, A), ggn[name], rtol=1e-9, atol=1e-12)
    # The identity is special: with a nonlinearity in between K-FAC is only an approximation.
    bent = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Linear(4, 3)).double()
    ggn = dense_ggn_blocks(bent, x, lambda z: F.mse_loss(z, y))
    A, G = our_factors(copy.deepcopy(bent), x, y, fisher_type="exact", likelihood="gaussian")["0"]
    assert (torch.kron(G, A) - ggn["0"]).norm() > 1e-3 * ggn["0"].norm()


def test_gaussian_mc_fisher_averages_to_the_exact_one():
    torch.manual_seed(0)
    model = mlp().double()
    x, _ = data((3, 2, 2), n=32)
    y = torch.zeros(32, 4, dtype=torch.float64)
    exact = our_factors(copy.deepcopy(model), x, y, fisher_type="exact", likelihood="gaussian")
    opt = kfac_for(model, fisher_type="mc", likelihood="gaussian", lr=1e-12)
    draws = 400
    sums = {}
    for _ in range(draws):
        opt.step(x, y)
        for name, l in opt.layers.items():
            sums[name] = sums.get(name, 0) + l.G / draws
    for name, G in sums.items():
        err = (G - exact[name][1]).norm() / exact[name][1].norm()
        assert err < 0.1, (name, float(err))


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def test_preconditioning_equals_dense_solves():
    A, G = _spd(5, 0), _spd(3, 1)
    V = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    damping = 0.03
    dA, QA = torch.linalg.eigh(A)
    dG, QG = torch.linalg.eigh(G)
    P = kl.eigen_precondition(V, QA, dA, QG, dG, damping)
    dense = torch.linalg.solve(torch.kron(G, A) + damping * torch.eye(15, dtype=torch.float64), V.reshape(-1))
    torch.testing.assert_close(P.reshape(-1), dense)
    A_inv, G_inv = kl.damped_inverses(A, G, damping)
    pi = ((A.trace() / 5) / (G.trace() / 3)).sqrt()
    r = damping**0.5
    dense = torch.linalg.solve(torch.kron(G + r / pi * torch.eye(3, dtype=torch.float64),
                                          A + pi * r * torch.eye(5, dtype=torch.float64)), V.reshape(-1))
    torch.testing.assert_close(kl.inverse_precondition(V, A_inv, G_inv).reshape(-1), dense)


@pytest.mark.parametrize("method", ["eigen", "inverse"])
def test_the_step_is_minus_lr_times_the_dense_natural_gradient(method):
    torch.manual_seed(2)
    model = mlp().double()
    x, y = data((3, 2, 2))
    before = copy.deepcopy(model)
    F.cross_entropy(before(x), y).backward()
    opt = kfac_for(model, inverse_method=method, damping=0.05, lr=0.5)
    opt.step(x, y)
    for name, layer in opt.layers.items():
        A, G = layer.A, layer.G
        m = dict(before.named_modules())[name]
        V = torch.cat([m.weight.grad, m.bias.grad[:, None]], 1)
        if method == "eigen":
            K = torch.kron(G, A) + 0.05 * torch.eye(A.shape[0] * G.shape[0], dtype=torch.float64)
        else:
            pi, r = kl.pi_correction(A, G), 0.05**0.5
            K = torch.kron(G + r / pi * torch.eye(G.shape[0], dtype=torch.float64),
                           A + pi * r * torch.eye(A.shape[0], dtype=torch.float64))
        step = torch.linalg.solve(K, V.reshape(-1)).reshape(V.shape)
        new = torch.cat([layer.module.weight, layer.module.bias[:, None]], 1)
        old = torch.cat([m.weight, m.bias[:, None]], 1)
        torch.testing.assert_close(new, old - 0.5 * step)


def test_kl_clipping_scales_the_update_by_its_formula():
    assert kl_clip_scale(vg=4.0, lr=0.1, kl_clip=1e-3) == pytest.approx((1e-3 / (0.01 * 4.0)) ** 0.5)
    assert kl_clip_scale(vg=1e-6, lr=0.1, kl_clip=1e-3) == 1.0  # small updates are not enlarged
    assert kl_clip_scale(vg=4.0, lr=0.1, kl_clip=0.0) == 1.0  # off
    torch.manual_seed(3)
    x, y = data((3, 2, 2))
    m0, m1 = mlp().double(), None
    m1 = copy.deepcopy(m0)
    start = [p.detach().clone() for p in m0.parameters()]
    free, clipped = kfac_for(m0, lr=1.0, kl_clip=0.0), kfac_for(m1, lr=1.0, kl_clip=1e-4)
    free.step(x, y)
    clipped.step(x, y)
    nu = clipped.last_kl_scale
    assert 0 < nu < 1
    for p0, p1, s in zip(m0.parameters(), m1.parameters(), start):
        torch.testing.assert_close(p1 - s, nu * (p0 - s))


def test_clip_statistics_count_each_steps_nu():
    """The record's clip statistics equal what the per-step nu says, step by step: the share of
    steps clipped, the mean nu, the mean and geometric mean of lr x nu."""
    torch.manual_seed(4)
    x, y = data((3, 2, 2), n=32)
    opt = kfac_for(mlp().double(), lr=1.0, kl_clip=1e-3, momentum=0.9)
    nus, lrs = [], []
    for t in range(12):
        lr = [1.0, 1e-4, 0.3][t % 3]  # some steps clipped, some not
        opt.set_lr(lr)
        opt.step(x, y)
        nus.append(opt.last_kl_scale)
        lrs.append(lr)
    nus, lrs = np.array(nus), np.array(lrs)
    assert (nus < 1).any() and (nus == 1).any()
    s = opt.report()
    assert s["kl_clip_steps"] == 12
    assert s["kl_clip_bound_share"] == pytest.approx(np.mean(nus < 1))
    assert s["kl_scale_mean"] == pytest.approx(nus.mean())
    assert s["effective_lr_mean"] == pytest.approx(np.mean(lrs * nus))
    assert s["effective_lr_geomean"] == pytest.approx(np.exp(np.mean(np.log(lrs * nus))))
    assert s["steps"] == 12  # the counters are still there
    unclipped = kfac_for(mlp().double(), lr=0.01, kl_clip=0.0)
    unclipped.step(x, y)
    assert unclipped.report()["kl_clip_bound_share"] == 0.0


def test_update_frequencies_are_honoured(monkeypatch):
    calls = []
    real = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda M: calls.append(1) or real(M))
    model = mlp().double()
    x, y = data((3, 2, 2))
    opt = kfac_for(model, cov_update_freq=3, inv_update_freq=10, lr=0.01)
    for _ in range(25):
        opt.step(x, y)
    assert opt.counters["factor_updates"] == 9  # steps 0, 3, ..., 24
    assert opt.counters["inverse_updates"] == 3  # steps 0, 10, 20
    assert len(calls) == 3 * 2 * len(opt.layers)  # two factors per layer per decomposition


def test_factors_are_batch_size_consistent():
    """G and A estimate per-example quantities: the factors of a batch of 8B are the mean of the
    factors of its 8 sub-batches of B (a 1/B^2 scaling of G would make them differ 8-fold), and
    batches of B and 8B drawn independently agree within sampling error."""
    torch.manual_seed(4)
    model = mlp().double()
    x, y = data((3, 2, 2), n=256, seed=5)
    big = our_factors(copy.deepcopy(model), x, y)
    small = [our_factors(copy.deepcopy(model), x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    for name, (A, G) in big.items():
        torch.testing.assert_close(A, sum(s[name][0] for s in small) / 8)
        torch.testing.assert_close(G, sum(s[name][1] for s in small) / 8)
    x2, y2 = data((3, 2, 2), n=32, seed=6)
    other = our_factors(copy.deepcopy(model), x2, y2)
    for name, (A, G) in big.items():
        assert 0.5 < float(other[name][1].trace() / G.trace()) < 2.0
        assert 0.5 < float(other[name][0].trace() / A.trace()) < 2.0


def test_eigensolver_failure_retries_in_float64_then_falls_back(monkeypatch):
    real = torch.linalg.eigh
    state = {"fail": 1}

    def flaky(M):
        if state["fail"] > 0 and M.dtype == torch.float32:
            state["fail"] -= 1
            raise torch.linalg.LinAlgError("simulated failure")
        return real(M)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    x, y = data((3, 2, 2))
    opt = build_optimizer("kfac", mlp().double(), F.cross_entropy, {"lr": 0.01, "fisher_type": "empirical"})
    opt.step(x.float().double(), y)
    assert opt.counters["decomposition_failures"] == 0  # the float64 retry succeeded
    assert all(l.decomposition is not None for l in opt.layers.values())

    state["fail"] = 10**9  # now every eigendecomposition fails, in any dtype
    monkeypatch.setattr(torch.linalg, "eigh", lambda M: (_ for _ in ()).throw(torch.linalg.LinAlgError("no")))
    torch.manual_seed(5)
    model, plain = mlp().double(), None
    plain = copy.deepcopy(model)
    opt = kfac_for(model, lr=0.1)
    sgd = build_optimizer("sgd", plain, F.cross_entropy, {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    opt.step(x, y)
    sgd.step(x, y)
    assert opt.counters["decomposition_failures"] == len(opt.layers)
    assert opt.counters["fallback_layer_steps"] == len(opt.layers)
    for p, q in zip(model.parameters(), plain.parameters()):  # plain gradient: the SGD step
        torch.testing.assert_close(p, q)


def test_non_finite_statistics_never_crash():
    model = mlp().double()
    x, y = data((3, 2, 2))
    opt = kfac_for(model, lr=0.01)
    opt.step(x, y)
    bad = x.clone()
    bad[0, 0] = float("nan")
    opt.step(bad, y)  # NaN inputs: the batch statistics are skipped, the running ones stay finite
    assert opt.counters["skipped_factor_updates"] == len(opt.layers)
    assert all(torch.isfinite(l.A).all() for l in opt.layers.values())
    first = next(iter(opt.layers.values()))
    first.A[0, 0] = float("inf")
    opt._decompose_all(1e-3)
    assert first.decomposition is None and opt.counters["decomposition_failures"] == 1


def test_state_dict_round_trip_gives_the_identical_next_steps():
    torch.manual_seed(6)
    x, y = data((3, 8, 9), n=8)
    model = cnn().double()
    model(x)
    hp = {"lr": 0.05, "cov_update_freq": 2, "inv_update_freq": 3, "fisher_type": "mc", "factor_dtype": "float64"}
    opt = build_optimizer("kfac", model, F.cross_entropy, hp)
    for _ in range(7):
        opt.step(x, y)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for _ in range(3):
        opt.step(x, y)
    clone = cnn().double()
    clone(x)
    clone.load_state_dict(saved_model)
    opt2 = build_optimizer("kfac", clone, F.cross_entropy, hp)
    opt2.load_state_dict(saved_opt)
    for _ in range(3):
        opt2.step(x, y)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


def test_skip_layers_and_bad_hyperparameters():
    opt = build_optimizer("kfac", mlp(), F.cross_entropy, {"skip_layers": ["5"]})
    assert set(opt.layers) == {"1", "3"}
    for bad, says in [({"damping": 0}, "damping must be positive"), ({"stat_decay": 1.0}, "stat_decay"),
                      ({"fisher_type": "true"}, "fisher_type must be one of mc, empirical, exact"),
                      ({"inverse_method": "cholesky"}, "inverse_method"), ({"cov_update_freq": 0}, "cov_update_freq"),
                      ({"cov_update_freq": 2.5}, "whole number"), ({"dampening": 1}, "no hyperparameter dampening")]:
        with pytest.raises(UsageError, match=says):
            resolve_hyperparameters("kfac", bad)


def test_batchnorm_and_other_parameters_keep_the_plain_gradient():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).double()
    x, y = data((3, 6, 6), classes=3)
    model(x)
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    opt = kfac_for(model, lr=0.1)
    opt.step(x, y)
    assert set(opt.layers) == {"0", "4"}
    bn, bn_ref = model[1], ref[1]
    torch.testing.assert_close(bn.weight, bn_ref.weight - 0.1 * bn_ref.weight.grad)
    assert not torch.allclose(model[0].weight, ref[0].weight - 0.1 * ref[0].weight.grad)


PADDINGS = [(mode, padding) for mode in ("zeros", "reflect", "replicate", "circular")
            for padding in (1, (1, 2), "same", "valid")]


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("mode,padding", PADDINGS)
@pytest.mark.parametrize("kernel,dilation", [(3, 1), ((2, 3), 1), (3, 2), (2, 2)])
def test_conv_factor_A_follows_every_padding_the_layer_applies(mode, padding, kernel, dilation):
    """A of a Conv2d against patches from torch itself: the Jacobian of the layer's own forward
    with respect to its weight (whatever padding it applies) holds, at each output position,
    the patch the weight multiplies. Covers string padding and every padding_mode."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, padding=padding, dilation=dilation, padding_mode=mode).double()
    x = torch.randn(4, 2, 7, 6, dtype=torch.float64)
    J = jacrev(lambda w: functional_call(conv, {"weight": w, "bias": conv.bias}, (x,)))(conv.weight)
    B, _, H, W = J.shape[:4]
    patches = J[:, 0, :, :, 0].reshape(B * H * W, -1)  # (positions, C_in kh kw) in the weight's order
    patches = torch.cat([patches, torch.ones(len(patches), 1, dtype=patches.dtype)], 1)  # the bias column
    torch.testing.assert_close(kl.layer_factor_A(conv, x), patches.T @ patches / len(patches), rtol=0, atol=1e-12)


def patch_gram(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A from the patches torch's own convolution multiplies: a probe with the layer's geometry
    and an identity weight (one output channel per patch entry) outputs the patches."""
    d = conv.weight[0].numel()
    probe = nn.Conv2d(conv.in_channels, d, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, padding_mode=conv.padding_mode, bias=False).to(x.dtype)
    with torch.no_grad():
        probe.weight.copy_(torch.eye(d, dtype=x.dtype).view_as(probe.weight))
        rows = probe(x).permute(0, 2, 3, 1).reshape(-1, d)
    if conv.bias is not None:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
    return rows.T @ rows / len(rows)


def _conv_cases():
    """(kernel, padding, image size) where the layer has at least one output position."""
    import itertools
    import warnings

    cases = []
    for kernel, padding, size in itertools.product(
            [3, (5, 3), 2, (4, 1), (2, 3)], [1, 0, 2, 4, (2, 1), (0, 3), "same", "valid"],
            [(1, 1), (2, 3), (4, 4), (9, 6)]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                nn.Conv2d(1, 1, kernel, padding=padding)(torch.zeros(1, 1, *size))
            except RuntimeError:
                continue
        cases.append((kernel, padding, size))
    return cases


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kernel,padding,size", _conv_cases())
@pytest.mark.parametrize("bias", [True, False])
def test_stride_one_conv_A_from_the_autocorrelation_equals_the_patches(kernel, padding, size, bias):
    """The autocorrelation path (conv_factors) against the patches, on the shapes where its border
    terms matter: images smaller than the kernel, padding wider than the kernel, asymmetric
    'same' padding of even kernels, no padding at all."""
    from kfaclab.optim import conv_factors

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, kernel, padding=padding, bias=bias).double()
    x = torch.randn(5, 3, *size, dtype=torch.float64)
    ref = patch_gram(conv, x)
    assert conv_factors.applies(conv)
    torch.testing.assert_close(kl.layer_factor_A(conv, x), ref, rtol=1e-10, atol=1e-12)


def test_conv_A_from_the_autocorrelation_in_float32_and_channels_last_matches_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=True)
    x = torch.randn(32, 16, 8, 8)
    ref = patch_gram(conv.double(), x.double())
    conv.float()
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        got = kl.layer_factor_A(conv, inp)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_strided_dilated_and_1x1_convs_keep_the_patch_path():
    from kfaclab.optim import conv_factors

    assert conv_factors.applies(nn.Conv2d(4, 4, 3, padding=1))
    for conv in (nn.Conv2d(4, 4, 3, stride=2), nn.Conv2d(4, 4, 3, dilation=2), nn.Conv2d(4, 4, 1),
                 nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, groups=2)):
        assert not conv_factors.applies(conv)
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
        if conv.groups == 1:
            torch.testing.assert_close(kl.layer_factor_A(conv.double(), x), patch_gram(conv, x))


@pytest.mark.parametrize("fisher", ["mc", "exact"])
@pytest.mark.parametrize("micro", [None, 4])
def test_the_curvature_backward_computes_no_weight_gradients(fisher, micro, monkeypatch):
    """G needs the gradients at the layers' outputs only: on a factor-update step each weight's
    gradient is computed once (the loss's backward, per chunk), not again in the curvature pass,
    and it is the loss's gradient (checked on a step with KL clipping off and the
    preconditioner's input compared against a plain backward)."""
    torch.manual_seed(0)
    model = cnn().double()
    x, y = data((3, 8, 9))
    model(x)
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(x), y).backward()
    opt = kfac_for(model, fisher_type=fisher)
    opt.set_micro_batch(micro)
    calls = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    seen = {}
    orig = kl.gradient_matrix
    monkeypatch.setattr(kl, "gradient_matrix", lambda m: seen.setdefault(m, orig(m).clone()))
    opt.step(x, y)
    monkeypatch.undo()
    chunks = len(opt.chunks(x, y))
    assert calls and all(n == chunks for n in calls.values()), calls
    for name, m in ref.named_modules():
        if name in opt.layers:
            torch.testing.assert_close(seen[opt.layers[name].module], kl.gradient_matrix(m), rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_kfac_trains_a_net_with_reflect_and_same_padding_with_exact_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"), nn.ReLU(),
                          nn.Conv2d(4, 2, 2, padding="valid", padding_mode="circular"), nn.Flatten(),
                          nn.LazyLinear(4)).double()
    x, y = data((3, 6, 6))
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    model(x)  # each conv's input before the step moves the parameters
    for h in hooks:
        h.remove()
    factors = our_factors(model, x, y)
    for name, xi in inputs.items():  # the running A after one step with stat_decay 0: that batch's A
        torch.testing.assert_close(factors[name][0], kl.layer_factor_A(dict(model.named_modules())[name], xi))
    opt = kfac_for(model, lr=0.05)
    losses = [float(opt.step(x, y)) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("method", ["inverse", "eigen"])
def test_both_inverse_methods_follow_the_damping_schedule(method):
    """The damping halves every 3 steps while factors and inverses would otherwise stay from
    step 0 (cov and inv updates every 100 steps): `inverse` recomputes its damped inverses when
    the damping changes, `eigen` applies the current damping at every step."""
    model = mlp().double()
    x, y = data((3, 2, 2))
    opt = kfac_for(model, inverse_method=method, cov_update_freq=100, inv_update_freq=100, damping=0.1,
                   damping_decay=0.5, damping_decay_steps=3, lr=1e-3)
    for t in range(8):
        opt.step(x, y)
        damping = opt.damping_at(t)
        for layer in opt.layers.values():
            v = kl.gradient_matrix(layer.module)  # the step-t gradient, preconditioned
            A, G = layer.A, layer.G
            if method == "inverse":
                A_inv, G_inv = kl.damped_inverses(A, G, damping)
                expected_inverse = layer.decomposition["A_inv"]
                torch.testing.assert_close(expected_inverse, A_inv)  # the inverses of this step's damping
                torch.testing.assert_close(layer.decomposition["G_inv"], G_inv)
            else:
                assert "QA" in layer.decomposition  # the eigenbasis; damping enters at each step
            assert v.shape == (G.shape[0], A.shape[0])
    expected_updates = 1 + (2 if method == "inverse" else 0)  # step 0, and steps 3 and 6 for `inverse`
    assert opt.counters["inverse_updates"] == expected_updates


# ------------------------------------------------------------------ wide layers: the low-rank path


def wide(bias=True):
    """Linear layers wider than the batch (rows < d_in), the case where preconditioning the
    factors of the gradient pays; the last layer is narrow and stays dense."""
    return nn.Sequential(nn.Flatten(), nn.Linear(300, 64, bias=bias), nn.Tanh(), nn.Linear(64, 80, bias=bias),
                         nn.Tanh(), nn.Linear(80, 10))


def _twin_runs(make, steps=7, micro=None, ddp=False, **hp):
    torch.manual_seed(0)
    m_low = make().double()
    m_dense = copy.deepcopy(m_low)
    h = {**dict(lr=0.1, momentum=0.9, weight_decay=1e-3, cov_update_freq=2, inv_update_freq=3, stat_decay=0.9,
                kl_clip=1e-2, factor_dtype="float64", inverse_method="inverse", damping=0.03), **hp}
    opts = []
    for model, low in ((m_low, True), (m_dense, False)):
        target = nn.parallel.DistributedDataParallel(model) if ddp else model
        opt = build_optimizer("kfac", target, F.cross_entropy, {**h, "low_rank": low})
        opt.set_micro_batch(micro)
        opts.append(opt)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(32, 3, 10, 10, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=g)
        for opt in opts:
            opt.step(x, y)
    diff = max((a - b).abs().max().item() for a, b in zip(m_low.parameters(), m_dense.parameters()))
    return diff, opts[0].counters["low_rank_layer_steps"]


@pytest.mark.parametrize("method", ["inverse", "eigen"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fisher", ["empirical", "mc"])
@pytest.mark.parametrize("micro", [None, 8])
def test_the_low_rank_path_equals_the_dense_step(method, bias, fisher, micro):
    """Either inverse method, bias or not, either Fisher, with gradient accumulation over
    micro-batches: the same parameters after 7 steps to 1e-10 in float64, and the low-rank path
    was the one taken (the two wide layers at every step)."""
    diff, low_rank_steps = _twin_runs(lambda: wide(bias), micro=micro, fisher_type=fisher, inverse_method=method)
    assert diff < 1e-10 and low_rank_steps == 2 * 7


def test_low_rank_preconditioning_is_the_dense_product_of_the_gradients_factors():
    g = torch.Generator().manual_seed(0)
    rows_A = torch.randn(20, 301, generator=g, dtype=torch.float64)
    rows_G = torch.randn(20, 64, generator=g, dtype=torch.float64)
    A_inv = torch.randn(301, 301, generator=g, dtype=torch.float64)
    G_inv = torch.randn(64, 64, generator=g, dtype=torch.float64)
    dense = kl.inverse_precondition(rows_G.T @ rows_A, A_inv, G_inv)
    torch.testing.assert_close(kl.low_rank_inverse_precondition(rows_A, rows_G, A_inv, G_inv), dense,
                               rtol=1e-12, atol=1e-12)


def test_the_low_rank_path_is_taken_only_where_it_costs_less():
    from kfaclab.optim.kfac import KFAC

    wide_layer, narrow_layer = nn.Linear(3072, 512), nn.Linear(80, 10)
    assert KFAC.low_rank_pays(wide_layer, 128) and not KFAC.low_rank_pays(wide_layer, 4096)
    assert not KFAC.low_rank_pays(narrow_layer, 32) and not KFAC.low_rank_pays(nn.Conv2d(3, 4, 3), 1)


def test_low_rank_eigen_preconditioning_is_the_dense_one():
    g = torch.Generator().manual_seed(0)
    rows_A = torch.randn(20, 301, generator=g, dtype=torch.float64)
    rows_G = torch.randn(20, 64, generator=g, dtype=torch.float64)
    dA, QA = torch.linalg.eigh(torch.cov(torch.randn(301, 400, generator=g, dtype=torch.float64)))
    dG, QG = torch.linalg.eigh(torch.cov(torch.randn(64, 100, generator=g, dtype=torch.float64)))
    dense = kl.eigen_precondition(rows_G.T @ rows_A, QA, dA.clamp(min=0), QG, dG.clamp(min=0), 0.01)
    low = kl.low_rank_eigen_precondition(rows_A, rows_G, QA, dA.clamp(min=0), QG, dG.clamp(min=0), 0.01)
    torch.testing.assert_close(low, dense, rtol=1e-10, atol=1e-10)


def test_a_layer_called_twice_in_a_forward_falls_back_to_the_dense_step():
    class Shared(nn.Module):  # one Linear applied twice: its rows do not pair up chunk by chunk
        def __init__(self):
            super().__init__()
            self.inp, self.shared, self.out = nn.Linear(300, 100), nn.Linear(100, 100), nn.Linear(100, 10)

        def forward(self, x):
            h = torch.tanh(self.shared(torch.tanh(self.inp(x.flatten(1)))))
            return self.out(torch.tanh(self.shared(h)))

    diff, low_rank_steps = _twin_runs(Shared)
    assert diff < 1e-10 and low_rank_steps == 7  # `inp` took the low-rank path, `shared` the dense one


def test_under_data_parallelism_the_gradient_is_the_ranks_mean_and_the_dense_path_preconditions_it():
    """With torch.distributed the gradient is averaged over ranks after the backward, and a rank
    holds only its own rows: the low-rank path does not apply (one-process gloo group here),
    and the steps are the dense ones."""
    import torch.distributed as dist

    from kfaclab.distributed import free_port

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        diff, low_rank_steps = _twin_runs(wide, ddp=True)
    finally:
        if started:
            dist.destroy_process_group()
    assert low_rank_steps == 0 and diff < 1e-12


def test_bench_variants_parse_and_refuse_malformed_entries():
    from kfaclab.bench import parse_variant

    assert parse_variant("kfac") == ("kfac", "kfac", {})
    assert parse_variant("kfac[low_rank=false; inverse_method=inverse]") == (
        "kfac[low_rank=false; inverse_method=inverse]", "kfac", {"low_rank": False, "inverse_method": "inverse"})
    with pytest.raises(UsageError, match="must end with"):
        parse_variant("kfac[low_rank=false")
    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        parse_variant("kfac[low_rank]")


@pytest.mark.parametrize("fisher", ["mc", "exact", "empirical"])
def test_in_place_activations_after_a_layer_leave_its_factors_unchanged(fisher):
    """ReLU(inplace=True) rebinds a layer's output tensor to the activation's node; the curvature
    backward must still stop at the layer's own output (its G), as with an out-of-place ReLU."""
    def net(inplace):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Flatten(),
                             nn.Linear(4 * 6 * 6, 8), nn.ReLU(inplace=inplace), nn.Linear(8, 3)).double()

    x, y = data((3, 6, 6), classes=3)
    ours = {}
    for inplace in (False, True):
        opt = kfac_for(net(inplace), fisher_type=fisher)
        opt.step(x, y)
        assert opt.counters["skipped_factor_updates"] == 0
        ours[inplace] = {n: (l.A, l.G) for n, l in opt.layers.items()}
    for name, (A, G) in ours[False].items():
        torch.testing.assert_close(ours[True][name][0], A, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ours[True][name][1], G, rtol=1e-12, atol=1e-14)
