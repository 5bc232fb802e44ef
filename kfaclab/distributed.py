"""Data parallelism on torch.distributed: the process group torchrun describes, and the few
collectives kfaclab needs (fused, so that many small tensors cost one message).

`torchrun --nproc_per_node N -m kfaclab train ...` sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous address; `from_environment` joins that group (gloo on CPUs, NCCL on GPUs). Without
those variables everything here is a no-op on a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kfaclab.errors import UsageError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def from_environment(device: str = "auto") -> Context:
    """Join torchrun's process group if WORLD_SIZE > 1 (gloo for CPU devices, NCCL for CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if wants_cuda else "gloo"
    if wants_cuda and not torch.cuda.is_available():
        raise UsageError(f"device {device} asks for CUDA but none is available; use --device cpu (gloo)")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Context(rank, world, local, backend)


def device_for(ctx: Context, device: str) -> str:
    """Each rank's device: its local GPU under NCCL, the CPU under gloo."""
    if ctx.active and ctx.backend == "nccl" and device in ("auto", "cuda"):
        return f"cuda:{ctx.local_rank}"
    return device


def all_reduce_mean_(tensors: list[torch.Tensor], ctx: Context) -> None:
    """Average tensors across ranks in place, with one all-reduce over one flat buffer."""
    if not ctx.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_sum(values: list[float], ctx: Context, device) -> list[float]:
    """Sum a few numbers across ranks (float64, one message)."""
    if not ctx.active:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_(tensors: list[torch.Tensor], src: int, ctx: Context) -> None:
    """Send tensors from rank `src` to all ranks in place, as one flat message."""
    if not ctx.active or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.broadcast(flat, src)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def shard_bounds(n: int, ctx: Context) -> tuple[int, int]:
    """The contiguous part [start, stop) of n items that this rank holds (sizes differ by <= 1)."""
    base, extra = divmod(n, ctx.world_size)
    start = ctx.rank * base + min(ctx.rank, extra)
    return start, start + base + (1 if ctx.rank < extra else 0)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg, quiet: bool = False) -> int:
    """Run `python -m kfaclab train` for this config under torchrun with cfg.nproc processes on
    this machine (a rendezvous on a free localhost port); returns torchrun's exit status."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="kfaclab-config-", delete=False) as f:
        json.dump(cfg.to_dict(), f)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={cfg.nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "kfaclab", "train",
               "--config", f.name] + (["--quiet"] if quiet else [])
        return subprocess.run(cmd).returncode
    finally:
        os.unlink(f.name)
