"""TRCG and stochastic TRCG in the training loop: on synthetic data (the record and its
propagations) and on real data, the JPEG CIFAR-10 copy."""

import pytest

from kfaclab.train import RunConfig, train, validate_record


@pytest.mark.parametrize("optimizer", ["trcg", "strcg"])
def test_trcg_runs_in_the_loop_with_a_valid_record(tiny_dataset, optimizer):
    cfg = RunConfig(model="mlp:32", optimizer=optimizer, batch_size=64, budget="iterations", budget_value=6,
                    hparams={"hessian_fraction": 0.1}, min_evals=3, device="cpu", crop_padding=1)
    r = train(cfg, dataset=tiny_dataset, progress=False)
    assert validate_record(r) == [] and r["status"] == "completed"
    assert r["resolved"]["peak_lr"] is None and "lr" not in r["resolved"]["hparams"]
    assert all(h["lr"] is None for h in r["history"])
    props = [h["propagations"] for h in r["history"]]
    assert props == sorted(props) and props[0] == 0
    n, s = 512, round(0.1 * 512)  # the tiny split's 512 training images
    per_step = (2 * n + n if optimizer == "trcg" else 2 * 64 + 64) + 2 * s  # gradient, ratio test, Hessian graph
    o = r["optimizer"]
    assert o["propagations"] == 6 * per_step + 2 * s * o["hessian_products"]
    assert o["accepted_steps"] + o["rejected_steps"] == 6


def run(ds, optimizer, iterations, **hp):
    cfg = RunConfig(dataset="cifar10-jpeg", model="mlp:256", optimizer=optimizer, batch_size=128,
                    budget="iterations", budget_value=iterations, hparams=hp, train_subset=5000,
                    test_subset=1000, resolution=16, augment=False, min_evals=10, device="cpu")
    return train(cfg, dataset=ds, progress=False)


def test_trcg_and_strcg_reduce_the_training_loss_on_real_data(cifar10_jpeg):
    """MLP 768-256-10 on 16x16 CIFAR-10 JPEG, 5000 images: both methods bring the running
    training loss well below its starting value ln 10 = 2.30, and the record counts the
    propagations of the full gradient (TRCG: 2 x 5000 per step at least)."""
    ds = cifar10_jpeg[0]
    trcg = run(ds, "trcg", 20)
    strcg = run(ds, "strcg", 80, radius=0.1)
    for r in (trcg, strcg):
        assert validate_record(r) == [] and r["status"] == "completed"
        assert r["history"][-1]["train_loss"] < 0.85 * 2.3026, r["history"][-1]
        assert r["optimizer"]["accepted_steps"] > 0
    assert trcg["optimizer"]["propagations"] >= 20 * (2 * 5000 + 5000)
    assert trcg["history"][-1]["test_accuracy"] > 0.35
