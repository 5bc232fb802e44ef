"""Adam (torch's AdamW behind TrainingOptimizer): the update against the algorithm written out in
float64, the interface's own paths (micro-batches, learning-rate schedule, state), the record."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab.errors import UsageError
from kfaclab.optim import build_optimizer, resolve_hyperparameters
from kfaclab.train import RunConfig, train, validate_record


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _batches(n=6, size=16):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (size,), generator=g))
            for _ in range(n)]


def _reference_adamw(model, batches, lrs, beta1, beta2, eps, wd):
    """Loshchilov & Hutter's AdamW, written from the paper's algorithm: decoupled decay, bias-corrected
    moments, eps added to the root of the second moment."""
    params = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, ((x, y), lr) in enumerate(zip(batches, lrs), start=1):
        net = copy.deepcopy(model)
        with torch.no_grad():
            for q, p in zip(net.parameters(), params):
                q.copy_(p)
        grads = torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1 ** t), v[i] / (1 - beta2 ** t)
            params[i] = params[i] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
    return params


@pytest.mark.parametrize("hp", [
    {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    {"lr": 0.003, "beta1": 0.0, "beta2": 0.99, "eps": 0.1, "weight_decay": 0.05},
    {"lr": 0.03, "beta1": 0.5, "beta2": 0.9, "eps": 1e-4, "weight_decay": 5e-4},
])
def test_update_is_adamw_written_out(hp):
    model, batches = _model(), _batches()
    lrs = [hp["lr"] * f for f in (1.0, 0.5, 2.0, 1.0, 0.25, 1.0)]  # the loop's schedule moves lr between steps
    expected = _reference_adamw(copy.deepcopy(model), batches, lrs, hp["beta1"], hp["beta2"], hp["eps"],
                                hp["weight_decay"])
    opt = build_optimizer("adam", model, F.cross_entropy, hp)
    for (x, y), lr in zip(batches, lrs):
        opt.set_lr(lr)
        opt.step(x, y)
    for p, q in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-14)
    assert opt.counters["steps"] == 6 and opt.counters["propagations"] == 2 * 6 * 16
    # and torch's own AdamW, driven directly, lands on the same parameters
    direct = _model()
    ref = torch.optim.AdamW(direct.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"])
    for (x, y), lr in zip(batches, lrs):
        for group in ref.param_groups:
            group["lr"] = lr
        ref.zero_grad()
        F.cross_entropy(direct(x), y).backward()
        ref.step()
    for p, q in zip(model.parameters(), direct.parameters()):
        assert torch.equal(p, q)


def test_micro_batches_give_the_batch_update_and_state_round_trips():
    hp = {"lr": 0.01, "eps": 1e-6}
    a, b = _model(), _model()
    oa, ob = build_optimizer("adam", a, F.cross_entropy, hp), build_optimizer("adam", b, F.cross_entropy, hp)
    ob.set_micro_batch(5)  # 16 = 5 + 5 + 5 + 1
    batches = _batches()
    for x, y in batches[:3]:
        oa.step(x, y)
        ob.step(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # a fresh optimizer loaded from the state continues exactly where this one would
    c = copy.deepcopy(a)
    oc = build_optimizer("adam", c, F.cross_entropy, hp)
    oc.load_state_dict(copy.deepcopy(oa.state_dict()))
    for x, y in batches[3:]:
        oa.step(x, y)
        oc.step(x, y)
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_defaults_and_bad_values():
    h = resolve_hyperparameters("adam", {"lr": 0.002})
    assert h == {"lr": 0.002, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
    for bad, says in [({"beta1": 1.0}, "beta1 must be in [0, 1)"), ({"beta2": 2}, "beta2 must be in [0, 1)"),
                      ({"eps": 0.0}, "eps must be positive"), ({"lr": 0}, "learning rate must be positive"),
                      ({"momentum": 0.9}, "has no hyperparameter momentum")]:
        with pytest.raises(UsageError, match=says.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            resolve_hyperparameters("adam", bad)


def test_record_holds_every_hyperparameter():
    cfg = RunConfig(dataset="synthetic", model="mlp:8", optimizer="adam", hparams={"lr": 0.01, "eps": 1e-3},
                    batch_size=32, budget="iterations", budget_value=6, min_evals=2, device="cpu")
    rec = train(cfg, progress=False)
    assert validate_record(rec) == []
    assert rec["status"] == "completed"
    assert rec["resolved"]["hparams"] == {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-3,
                                          "weight_decay": 0.0, "amsgrad": False}
