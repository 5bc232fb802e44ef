"""The gradient noise scale B_simple = tr(Sigma)/|G|^2: the unbiased two-batch-size estimator on a
known gradient distribution, the in-training measurement against dense per-example gradients,
and the promise that measuring does not change training."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from kfaclab.train import RunConfig, train, validate_record
from kfaclab.train.noise_scale import measure, noise_scale, unbiased_terms


def test_estimator_recovers_known_noise_scale_of_a_gaussian_gradient_distribution():
    rng = np.random.default_rng(0)
    d, b, m, reps = 40, 8, 4, 3000
    G = rng.normal(size=d) * 0.5
    sigma = rng.uniform(0.5, 2.0, size=d)  # per-example gradients ~ N(G, diag(sigma^2))
    truth = (sigma ** 2).sum() / (G @ G)
    grad_sq, trace = [], []
    for _ in range(reps):
        per_example = G + sigma * rng.normal(size=(m, b, d))
        small = per_example.mean(1)  # m gradients over b examples
        big = small.mean(0)  # one gradient over m b examples
        g, s = unbiased_terms(float((small ** 2).sum(1).mean()), float(big @ big), b, m * b)
        grad_sq.append(g)
        trace.append(s)
    assert np.mean(trace) == pytest.approx((sigma ** 2).sum(), rel=0.03)
    assert np.mean(grad_sq) == pytest.approx(G @ G, rel=0.05)
    assert noise_scale(grad_sq, trace) == pytest.approx(truth, rel=0.06)
    # a single measurement is far noisier: the ratio of averages is what the book reports
    assert np.std(np.array(trace) / np.array(grad_sq)) > 0.1 * truth


def test_estimator_rejects_batch_sizes_in_the_wrong_order():
    with pytest.raises(ValueError, match="b_small < b_big"):
        unbiased_terms(1.0, 0.5, 64, 32)


def test_measurement_on_a_model_matches_dense_per_example_gradients():
    torch.manual_seed(0)
    n, d, c = 2048, 6, 3
    x = torch.randn(n, d, dtype=torch.float64)
    y = (x @ torch.randn(d, c, dtype=torch.float64)).argmax(1)  # a learnable teacher: |G| is large at init
    model = nn.Linear(d, c).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def example_loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([per[k].reshape(n, -1) for k in params], 1)
    G = flat.mean(0)
    truth_trace = ((flat - G) ** 2).sum(1).mean().item()  # tr of the population covariance
    truth = truth_trace / (G @ G).item()

    gen = torch.Generator().manual_seed(1)
    grad_sq, trace = [], []
    for _ in range(400):  # batches drawn with replacement, as the estimator assumes
        idx = torch.randint(0, n, (4, 16), generator=gen)
        m = measure(model, F.cross_entropy, [(x[i], y[i]) for i in idx])
        assert (m["b_small"], m["b_big"]) == (16, 64)
        grad_sq.append(m["grad_sq"])
        trace.append(m["trace"])
    assert np.mean(trace) == pytest.approx(truth_trace, rel=0.05)
    assert noise_scale(grad_sq, trace) == pytest.approx(truth, rel=0.1)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_measurement_leaves_batchnorm_statistics_and_rng_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(16, 5), torch.randint(0, 2, (16,))) for _ in range(3)]
    rng = torch.get_rng_state()
    measure(model, F.cross_entropy, batches)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)


def test_training_records_noise_per_evaluation_without_changing_the_run(tiny_dataset):
    base = dict(dataset="synthetic", model="mlp:32", batch_size=32, budget="epochs", budget_value=2,
                hparams={"lr": 0.05, "momentum": 0.9}, min_evals=4, device="cpu")
    off = train(RunConfig(**base), dataset=tiny_dataset, progress=False)
    on = train(RunConfig(**base, noise_scale_batches=4), dataset=tiny_dataset, progress=False)
    assert validate_record(on) == []
    assert [h["test_loss"] for h in on["history"]] == [h["test_loss"] for h in off["history"]]
    assert [h["train_loss"] for h in on["history"]] == [h["train_loss"] for h in off["history"]]
    noise = [h["noise"] for h in on["history"]]
    assert all(n["b_small"] == 32 and n["b_big"] == 128 for n in noise)
    assert all(n["trace"] > 0 for n in noise) and "noise" not in off["history"][0]
    # the option is part of the run id only when on, so ids of runs recorded before it existed hold
    assert RunConfig(**base).run_id() == off["run_id"] != on["run_id"]


def test_invalid_noise_scale_batches_are_errors():
    from kfaclab.errors import UsageError

    with pytest.raises(UsageError, match="noise_scale_batches must be 0 .off. or at least 2"):
        RunConfig(noise_scale_batches=1).validate()
    with pytest.raises(UsageError, match="noise_scale_batches 100 needs that many batches"):
        train(RunConfig(dataset="synthetic", model="mlp:8", batch_size=256, train_subset=512, test_subset=100,
                        noise_scale_batches=100, device="cpu"), progress=False)
