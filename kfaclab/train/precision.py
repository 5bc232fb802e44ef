"""What `precision: auto` (the default) means: the fast path where it helps, float32 elsewhere.

The fast path is bf16 autocast of forward passes plus channels-last memory order; parameters,
gradients, optimizer state and K-FAC's factors and decompositions stay float32. Where it was
measured (runs/resnet-pilot/timings.json, `kfaclab bench --fast-path`) it helps convolutional
models on hardware with native bfloat16 arithmetic: 1.6-2.1x for SGD and 1.3-1.8x for K-FAC on
the CIFAR ResNets on a Zen 4 CPU (AVX-512 BF16), and bf16 tensor cores on GPUs. So `auto` picks:
- the fast path for convolutional models (ResNets, C1) on a device with native bf16;
- float32 for MLPs. On the MLP the fast path is 0.97-1.02x at batch 128 and only pays at batches
  of thousands, and the MLP studies' verdicts are judged on float32 records; `precision: bf16`
  asks for it explicitly;
- float32 for TRCG, whose trust-region ratio needs full precision, and on hardware without
  native bf16 (where autocast would emulate it, slower than float32).

The choice is made when a RunConfig is built, so the config, its run id and its record all hold
what actually ran (never "auto"): a spec expanded on a machine without bf16 names other runs
than on one with it, rather than mixing their arithmetic under one id.
"""

from __future__ import annotations

import functools
from pathlib import Path

AUTO = "auto"
FULL_PRECISION_OPTIMIZERS = ("trcg", "strcg")


def convolutional(model: str) -> bool:
    """Whether the named model is built of convolutions (a ResNet or C1), not an MLP."""
    from kfaclab.models import resnet_shape

    return model == "c1" or resnet_shape(model) is not None


@functools.cache
def _cpu_has_bf16() -> bool:
    """The CPU's native bfloat16 arithmetic (AVX-512 BF16 or AMX), which oneDNN's bf16 kernels need."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    import torch

    try:  # not Linux: oneDNN's own answer
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: str) -> bool:
    """Whether `device` (a RunConfig device: auto, cpu, cuda, cuda:N) computes in bf16 natively."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return _cpu_has_bf16()


def resolve(model: str, optimizer: str, device: str, precision: str, channels_last: bool | None) -> tuple[str, bool]:
    """(precision, channels_last) that run: `auto` and None are decided here (see the module's
    text); explicit values are kept (an unknown precision too: RunConfig.validate names it)."""
    if precision == AUTO:
        fast = optimizer not in FULL_PRECISION_OPTIMIZERS and convolutional(model) and native_bf16(device)
        precision = "bf16" if fast else "fp32"
        if channels_last is None:
            channels_last = fast
    return precision, bool(channels_last)
