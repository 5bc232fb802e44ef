"""TRCG and stochastic TRCG against independent references: dense float64 linear algebra for
Steihaug CG, torch.func Hessians and Gauss-Newton matrices for the curvature products, and
scipy's trust-ncg on a convex problem."""

import copy
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, hessian, jacrev

from kfaclab.errors import UsageError
from kfaclab.optim import build_optimizer, resolve_hyperparameters
from kfaclab.optim.steihaug import steihaug_cg
from kfaclab.optim.trcg import update_radius

SCIPY_RULES = dict(eta1=0.75, eta2=0.15, gamma1=4.0, gamma2=2.0, shrink_below=0.25, expand_on_boundary_only=True,
                   cg_tol_rule="scipy")


def dense(H):
    return lambda v: H @ v


def spd(n, seed, low=0.5):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.linspace(low, 5.0, n, dtype=torch.float64)) @ Q.T


# ---------------------------------------------------------------------- Steihaug CG

def test_steihaug_interior_solves_the_newton_system():
    H, g = spd(12, 0), torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    newton = torch.linalg.solve(H, -g)
    res = steihaug_cg(g, dense(H), radius=10 * float(newton.norm()), max_iters=100, tol=1e-12)
    assert not res.hits_boundary and not res.negative_curvature
    torch.testing.assert_close(res.step, newton, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.Hstep, H @ res.step, rtol=1e-10, atol=1e-12)
    assert res.iterations <= 12  # CG in exact arithmetic: at most n products


def test_steihaug_boundary_step_has_exactly_the_radius_and_lowers_the_model():
    H, g = spd(12, 2), torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    radius = 0.3 * float(torch.linalg.solve(H, -g).norm())
    res = steihaug_cg(g, dense(H), radius, max_iters=100, tol=1e-12)
    assert res.hits_boundary and not res.negative_curvature
    assert abs(float(res.step.norm()) - radius) < 1e-12 * radius
    assert res.model_value(g) < 0
    torch.testing.assert_close(res.Hstep, H @ res.step, rtol=1e-10, atol=1e-12)


def test_steihaug_negative_curvature_goes_to_the_boundary():
    # H has one negative eigenvalue along e0 and g points there: the first direction -g has
    # curvature -1, so CG must leave along it to the boundary, on the side that lowers the model.
    H = torch.diag(torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64))
    g = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    res = steihaug_cg(g, dense(H), radius=2.0, max_iters=10, tol=1e-12)
    assert res.negative_curvature and res.hits_boundary and res.iterations == 1
    torch.testing.assert_close(res.step, torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64))
    # Indefinite H found later in the iteration: still on the boundary, model below zero.
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    H = Q @ torch.diag(torch.tensor([-0.5, 1, 2, 3, 4, 5, 6, 7], dtype=torch.float64)) @ Q.T
    g = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    res = steihaug_cg(g, dense(H), radius=100.0, max_iters=50, tol=1e-12)
    assert res.negative_curvature and abs(float(res.step.norm()) - 100.0) < 1e-9
    assert res.model_value(g) < 0


def test_radius_rule():
    h = resolve_hyperparameters("trcg", {})
    assert update_radius(1.0, -3.0, True, h) == 0.5  # rejected: / gamma1
    assert update_radius(1.0, 0.5, True, h) == 1.0  # accepted, kept
    assert update_radius(1.0, 0.9, False, h) == pytest.approx(1.2)  # very successful: x gamma2
    assert update_radius(99.0, 0.9, True, h) == 100.0  # capped at max_radius
    assert update_radius(1.0, float("nan"), True, h) == 0.5
    s = resolve_hyperparameters("trcg", SCIPY_RULES)
    assert update_radius(1.0, 0.2, True, s) == 0.25 and update_radius(1.0, 0.9, False, s) == 1.0
    assert update_radius(1.0, 0.9, True, s) == 2.0


# ---------------------------------------------------------------------- curvature products

def tensor_data(x, y):
    """The slice of the loader interface that TRCG reads: a whole split on the device."""
    return types.SimpleNamespace(images=x, labels=y, num_examples=len(y), device=x.device, normalize=lambda t: t)


def tiny_problem(n=20, seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [nn.Tanh(), nn.Linear(6, 3)]
    model = nn.Sequential(*layers).double()
    g = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return model, x, y


def trcg_for(model, x, y, name="trcg", **hp):
    opt = build_optimizer(name, model, F.cross_entropy, {"hessian_fraction": 1.0, **hp})
    opt.attach_training_data(tensor_data(x, y))
    return opt


def dense_matrices(model, x, y, wd):
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    flat = torch.cat([params[k].reshape(-1) for k in names])
    shapes = [params[k].shape for k in names]

    def unflat(v):
        out, i = {}, 0
        for k, s in zip(names, shapes):
            out[k] = v[i : i + s.numel()].view(s)
            i += s.numel()
        return out

    loss = lambda v: F.cross_entropy(functional_call(model, unflat(v), (x,)), y)
    H = hessian(loss)(flat) + wd * torch.eye(len(flat), dtype=flat.dtype)
    J = jacrev(lambda v: functional_call(model, unflat(v), (x,)))(flat)  # (n, C, P)
    z = model(x).detach()
    Hz = torch.func.vmap(hessian(lambda zi, yi: F.cross_entropy(zi[None], yi[None])))(z, y) / len(y)
    ggn = torch.einsum("ncp,ncd,ndq->pq", J, Hz, J) + wd * torch.eye(len(flat), dtype=flat.dtype)
    return H, ggn


@pytest.mark.parametrize("chunk_size", [1024, 7])  # one retained graph; recomputed chunks
def test_hessian_and_gauss_newton_products_equal_dense_torch_func(chunk_size):
    model, x, y = tiny_problem()
    H, ggn = dense_matrices(model, x, y, wd=0.01)
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    sample = torch.arange(len(y))
    for curvature, M in (("hessian", H), ("gauss-newton", ggn)):
        opt = trcg_for(model, x, y, curvature=curvature, weight_decay=0.01, chunk_size=chunk_size)
        hvp = opt._curvature_products(sample)
        torch.testing.assert_close(hvp(v), M @ v, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hvp(2 * v), 2 * (M @ v), rtol=1e-10, atol=1e-12)  # the graph is reusable
    assert (H - ggn).norm() > 1e-3 * H.norm()  # tanh: the two curvatures really differ here


def test_propagations_are_counted_in_the_unit_of_xu_et_al():
    model, x, y = tiny_problem(n=40)
    opt = trcg_for(model, x, y, hessian_fraction=0.25, cg_max_iters=3, cg_tol=1e-12)
    opt.step(x[:8], y[:8])
    n, s, k = 40, 10, opt.counters["hessian_products"]
    # gradient pass 2n, ratio test forward n, Hessian graph 2|S| once, each product 2|S|.
    assert opt.counters["propagations"] == 2 * n + n + 2 * s + 2 * s * k
    st = trcg_for(copy.deepcopy(model), x, y, name="strcg", hessian_fraction=0.25, cg_max_iters=3, cg_tol=1e-12)
    st.step(x[:8], y[:8])
    k = st.counters["hessian_products"]
    assert st.counters["propagations"] == 2 * 8 + 8 + 2 * s + 2 * s * k
    chunked = trcg_for(copy.deepcopy(model), x, y, hessian_fraction=0.25, cg_max_iters=3, cg_tol=1e-12, chunk_size=4)
    chunked.step(x[:8], y[:8])
    assert chunked.counters["propagations"] == 2 * n + n + 4 * s * chunked.counters["hessian_products"]


def test_batchnorm_running_statistics_move_only_in_the_gradient_pass():
    model, x, y = tiny_problem(n=32, bn=True)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)  # the one pass that may move the running statistics
    opt = trcg_for(model, x, y, cg_max_iters=5)
    opt.step(x, y)
    bn, ref = model[1], reference[1]
    assert opt.counters["hessian_products"] >= 1
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 1


def test_rejected_steps_leave_the_parameters_unchanged():
    model, x, y = tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = trcg_for(model, x, y, radius=50.0, max_radius=50.0, eta1=0.999999, eta2=0.999)  # nearly nothing passes
    opt.step(x, y)
    assert opt.counters["rejected_steps"] == 1 and opt.radius == 25.0
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)


# ---------------------------------------------------------------------- scipy trust-ncg

def logistic_regression(d=6, k=3, n=60, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(d, k).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (x[:, :k] + 0.8 * torch.randn(n, k, generator=g, dtype=torch.float64)).argmax(1)
    return model, x, y


def scipy_trust_ncg(model, x, y, wd, radius, max_radius, maxiter, gtol=1e-10):
    optimize = pytest.importorskip("scipy.optimize")
    w0 = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    k, d = model.weight.shape

    def f(w):
        w = torch.as_tensor(w, dtype=torch.float64)
        return F.cross_entropy(x @ w[: k * d].view(k, d).T + w[k * d :], y) + 0.5 * wd * (w @ w)

    fun = lambda w: float(f(w))
    jac = lambda w: torch.func.grad(f)(torch.as_tensor(w)).numpy()
    hessp = lambda w, v: torch.func.jvp(torch.func.grad(f), (torch.as_tensor(w),), (torch.as_tensor(v),))[1].numpy()
    return optimize.minimize(fun, w0.numpy(), jac=jac, hessp=hessp, method="trust-ncg",
                             options=dict(initial_trust_radius=radius, max_trust_radius=max_radius, gtol=gtol,
                                          maxiter=maxiter, return_all=True))


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_trcg_reaches_scipy_trust_ncg_minimiser_on_logistic_regression():
    model, x, y = logistic_regression()
    ref = scipy_trust_ncg(copy.deepcopy(model), x, y, wd=0.01, radius=1.0, max_radius=100.0, maxiter=200)
    assert ref.success
    opt = trcg_for(model, x, y, weight_decay=0.01, cg_tol=1e-10)  # the study's radius rules
    for _ in range(40):
        opt.step(x, y)
    np.testing.assert_allclose(flat(model), ref.x, rtol=1e-6, atol=1e-8)
    assert opt.counters["accepted_steps"] >= 1


def test_with_scipys_radius_rules_trcg_takes_scipys_iterates():
    model, x, y = logistic_regression(seed=3)
    with torch.no_grad():
        model.weight.mul_(6.0)  # start far out, with a large radius: rejections, shrinks, boundary steps
    ref = scipy_trust_ncg(copy.deepcopy(model), x, y, wd=0.01, radius=10.0, max_radius=30.0, maxiter=12)
    opt = trcg_for(model, x, y, weight_decay=0.01, radius=10.0, max_radius=30.0, cg_max_iters=1000, **SCIPY_RULES)
    ours = [flat(model)]
    for _ in range(len(ref.allvecs) - 1):
        opt.step(x, y)
        ours.append(flat(model))
    assert len(ours) == 13
    for i, (a, b) in enumerate(zip(ours, ref.allvecs)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11, err_msg=f"iterate {i}")
    assert opt.counters["rejected_steps"] >= 1 and opt.counters["boundary_steps"] >= 2


# ---------------------------------------------------------------------- interface

def test_bad_trcg_hyperparameters_are_one_line_errors():
    for given, says in (({"hessian_fraction": 0.0}, "hessian_fraction must be in (0, 1]"),
                        ({"curvature": "fisher"}, "curvature must be one of hessian, gauss-newton"),
                        ({"radius": 5.0, "max_radius": 1.0}, "max_radius must be >= radius"),
                        ({"lr": 0.1}, "optimizer 'trcg' has no hyperparameter lr")):
        with pytest.raises(UsageError, match=says.replace("(", r"\(").replace(")", r"\)")):
            resolve_hyperparameters("trcg", given)


def test_step_without_training_data_says_what_to_do():
    model, x, y = tiny_problem()
    opt = build_optimizer("trcg", model, F.cross_entropy, {})
    with pytest.raises(RuntimeError, match="attach_training_data"):
        opt.step(x, y)


def test_state_dict_round_trip_gives_the_identical_next_step():
    model, x, y = tiny_problem(n=40)
    opt = trcg_for(model, x, y, hessian_fraction=0.2, gradient_fraction=0.5)
    opt.step(x, y)
    twin_model = copy.deepcopy(model)
    twin = trcg_for(twin_model, x, y, hessian_fraction=0.2, gradient_fraction=0.5)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt.step(x, y)
    twin.step(x, y)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    assert twin.counters == opt.counters
