"""Run under torchrun by tests/test_distributed.py: k K-FAC steps on synthetic data, in float64,
with the given strategy; rank 0 saves the parameters. The same script with one process is the
single-process reference."""

import sys

import torch
import torch.nn.functional as F

from kfaclab.data.loader import DeviceLoader
from kfaclab.data.sources import make_synthetic
from kfaclab.distributed import from_environment
from kfaclab.models import build_model
from kfaclab.optim import build_optimizer


def main(strategy: str, stale: str, fisher: str, steps: str, out: str):
    ctx = from_environment("cpu")
    train, _, _ = make_synthetic(n_train=256, n_test=16, size=4, contrast=5.0, seed=3)
    loader = DeviceLoader(train, 32, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, drop_last=True, seed=1,
                          part=(ctx.rank, ctx.world_size))
    torch.manual_seed(0)
    model = build_model("mlp:12,8", loader.input_shape, 10).double()
    if ctx.active:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer("kfac", model, F.cross_entropy, {
        "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "damping": 0.05, "kl_clip": 0.01,
        "cov_update_freq": 1, "inv_update_freq": 2, "fisher_type": fisher, "factor_dtype": "float64",
        "inverse_strategy": strategy, "stale_inverses": stale == "stale"})
    opt.attach_distributed(ctx)
    batches = loader.epoch(0)
    for _ in range(int(steps)):
        x, y = next(batches)
        opt.step(x.double(), y)
    if ctx.is_main:
        inner = model.module if ctx.active else model
        torch.save({k: v.detach().clone() for k, v in inner.state_dict().items()}, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
