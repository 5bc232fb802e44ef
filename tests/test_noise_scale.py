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


def _evals(rows):
    import pandas as pd

    cols = ["name", "optimizer", "batch_size", "seed", "hp_lr", "hp_momentum", "hp_damping", "iteration",
            "test_accuracy", "train_loss", "noise_grad_sq", "noise_trace"]
    return pd.DataFrame(rows, columns=cols)


def test_noise_scale_at_targets_uses_plain_gradients_where_each_run_reaches_the_target():
    """B_simple for a target is pooled over the run's first evaluation at or above it and one on
    either side (never the initialisation's), from SGD's runs only; a run that never reaches the
    target gives no value; settings and seeds are counted as such (NaN hyperparameters of another
    optimizer's axes do not make two runs of one setting distinct)."""
    from types import SimpleNamespace

    from kfaclab.results.noise import noise_scale_at_targets, noise_scale_summary

    nan = float("nan")
    rows = []
    for seed in (0, 1):
        acc = [0.1, 0.3, 0.42, 0.47, 0.5, 0.51]
        for i, a in enumerate(acc):
            rows.append([f"sgd-s{seed}", "sgd", 128, seed, 0.03, 0.9, nan, 10 * i, a, 2.0 - 0.1 * i,
                         1.0 + i + seed, 100.0 * (i + 1)])
            rows.append([f"kfac-s{seed}", "kfac", 128, seed, 0.03, nan, 0.1, 10 * i, a, 2.0 - 0.1 * i, 0.001, 1e6])
    rows.append(["sgd-slow", "sgd", 1024, 0, 0.1, 0.9, nan, 0, 0.1, nan, 1.0, 10.0])
    rows.append(["sgd-slow", "sgd", 1024, 0, 0.1, 0.9, nan, 10, 0.2, 1.9, 1.0, 10.0])
    study = SimpleNamespace(evals=_evals(rows), targets=[0.45, 0.6])
    at = noise_scale_at_targets(study)
    assert set(at["optimizer"]) == {"sgd"} and set(at["target"]) == {0.45}  # nobody reaches 60%
    assert set(at["name"]) == {"sgd-s0", "sgd-s1"}
    s0 = at[at["name"] == "sgd-s0"].iloc[0]
    # first at or above 45%: evaluation 3; pooled over evaluations 2, 3, 4
    expected = noise_scale([3.0, 4.0, 5.0], [300.0, 400.0, 500.0])
    assert s0["iteration"] == 30 and s0["train_loss"] == pytest.approx(1.7)
    assert s0["b_simple"] == pytest.approx(expected)
    early = noise_scale_at_targets(SimpleNamespace(evals=_evals(rows), targets=[0.05]))
    first = early[early["name"] == "sgd-s0"].iloc[0]
    assert first["b_simple"] == pytest.approx(noise_scale([2.0], [200.0]))  # the initialisation is left out
    summary = noise_scale_summary(at, n_train=300)
    row = summary.iloc[0]
    assert row["settings"] == 1 and row["seeds"] == 2 and row["runs"] == 2
    # values at or past the training set's size are counted, not used
    other = at[at["name"] == "sgd-s1"].iloc[0]["b_simple"]
    assert other < expected
    big = noise_scale_summary(at, n_train=expected)
    assert big.iloc[0]["at or past the training set's size"] == 1
    assert big.iloc[0]["B_simple (median)"] == pytest.approx(other)
