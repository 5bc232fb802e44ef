"""What `precision: auto` (the default) means: the fast path where it helps, float32 elsewhere.

The fast path is bf16 autocast of forward passes plus channels-last memory order; parameters,
gradients, optimizer state and K-FAC's factors and decompositions stay float32. Where it was
measured (runs/resnet-pilot/timings.json, `kfaclab bench --fast-path`) it helps convolutional
models: 1.6-2.1x for SGD and 1.3-1.8x for K-FAC on the CIFAR ResNets on a Zen 4 CPU (AVX-512
BF16), and bf16 tensor cores on GPUs. So `auto` picks:
- the fast path for convolutional models (ResNets, C1);
- float32 for MLPs. On the MLP the fast path is 0.97-1.02x at batch 128 and only pays at batches
  of thousands, and the MLP studies' verdicts are judged on float32 records; `precision: bf16`
  asks for it explicitly;
- float32 for TRCG, whose trust-region ratio needs full precision.

The choice is made when a RunConfig is built, from the config alone (model and optimizer), so
the config, its run id and its record all hold what runs (never "auto"), and a spec names the
same runs on every machine that reads it: a study's records made on this CPU are found by CI, a
GPU study's by the machine that merges its harvest. A device without native bfloat16 (a CPU
without AVX-512 BF16 or AMX) still runs such a config, emulating bf16, slower than float32: the
run says so when it starts (`native_bf16`), and `precision: fp32` is the way out.
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


def resolve(model: str, optimizer: str, precision: str, channels_last: bool | None) -> tuple[str, bool]:
    """(precision, channels_last) that run: `auto` and None are decided here from the model and
    the optimizer (see the module's text); explicit values are kept (an unknown precision too:
    RunConfig.validate names it)."""
    if precision == AUTO:
        fast = optimizer not in FULL_PRECISION_OPTIMIZERS and convolutional(model)
        precision = "bf16" if fast else "fp32"
        if channels_last is None:
            channels_last = fast
    return precision, bool(channels_last)


def emulation_note(precision: str, device) -> str | None:
    """A one-line note when a bf16 run lands on a device without native bf16 (None otherwise)."""
    if precision != "bf16" or native_bf16(str(device)):
        return None
    return (f"note: bf16 autocast on {device} without native bfloat16 (no AVX-512 BF16 or AMX) is emulated and "
            "slower than float32; set precision fp32 for speed (a different run id)")
