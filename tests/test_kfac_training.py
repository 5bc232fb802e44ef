"""K-FAC in the training loop, on real data: the JPEG CIFAR-10 copy."""

from kfaclab.train import RunConfig, train, validate_record


def run(ds, optimizer, lr, **hp):
    cfg = RunConfig(dataset="cifar10-jpeg", model="mlp:256", optimizer=optimizer, batch_size=128,
                    budget="epochs", budget_value=2.0, hparams={"lr": lr, "momentum": 0.9, "weight_decay": 0.0, **hp},
                    train_subset=5000, test_subset=1000, resolution=16, augment=False, min_evals=10,
                    lr_decay="constant", device="cpu")
    return train(cfg, dataset=ds, progress=False)


def test_kfac_loss_falls_faster_per_iteration_than_sgd(cifar10_jpeg):
    """Over the same learning-rate range, the best K-FAC run reaches a lower running training
    loss after the same number of iterations than the best SGD run (MLP 768-256-10 on 16x16
    CIFAR-10 JPEG, 5000 images, 2 epochs)."""
    ds = cifar10_jpeg[0]
    lrs = (0.01, 0.03, 0.1)
    sgd = [run(ds, "sgd", lr) for lr in lrs]
    kfac = [run(ds, "kfac", lr, damping=0.3, cov_update_freq=5, inv_update_freq=20) for lr in lrs]
    for r in sgd + kfac:
        assert validate_record(r) == []
    final = lambda runs: min(r["history"][-1]["train_loss"] for r in runs if r["status"] == "completed")
    mid = lambda runs: min(r["history"][len(r["history"]) // 2]["train_loss"] for r in runs
                           if r["status"] == "completed")
    assert final(kfac) < final(sgd) and mid(kfac) < mid(sgd), (final(kfac), final(sgd), mid(kfac), mid(sgd))
