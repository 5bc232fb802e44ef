"""Checks that an accelerator computes what the CPU computes, path by path.

Each check runs one piece of kfaclab on `device` and the same piece on the CPU (in float64
where the piece allows it), from the same seeds, and compares within a stated tolerance. The
tolerances are those of float32 against float64 arithmetic on small, well-conditioned
problems; TF32 is switched off while a check runs (it is on by default for cuDNN
convolutions). A broken path gives errors of order one; the tolerances leave room for rounding
amplified over a few steps, so that a sound GPU never fails the smoke check that guards a
borrowed window.

`run_checks(device)` runs them all; the `gpu` tests call it with "cuda", the harvest's smoke
check before any run of a study, and the CPU test suite with "cpu" (float32 against float64
on the CPU) so that the checks themselves are tested where no GPU is.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from kfaclab.data.loader import DeviceLoader
from kfaclab.data.sources import make_synthetic
from kfaclab.optim import build_optimizer


@dataclass
class CheckResult:
    name: str
    ok: bool
    error: float  # the largest relative (or stated) difference found
    tolerance: float
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class SmallCNN(nn.Module):
    """Conv (with bias) -> BatchNorm -> ReLU -> Conv (no bias, stride 2) -> ReLU -> Linear:
    every kind of layer K-FAC preconditions, and a buffer that moves in training."""

    def __init__(self, c_in=3, classes=10, size=8):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(8 * (size // 2) ** 2, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(x)).flatten(1))


def _data(n=64, size=8, seed=3):
    train, _, _ = make_synthetic(n_train=n, n_test=10, size=size, contrast=5.0, seed=seed)
    return train


def _loader(split, device, batch=32, **kw):
    return DeviceLoader(split, batch, mean=(0.5,) * 3, std=(0.25,) * 3, device=device, shuffle=True, augment=True,
                        drop_last=True, seed=7, crop_padding=1, **kw)


def _batches(device, k=3, dtype=torch.float32):
    return [(x.to(dtype), y) for (x, y), _ in zip(_loader(_data(), device).epoch(0), range(k))]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _train(device, dtype, name, hp, steps=3, precision="fp32", channels_last=False, model=None):
    """`steps` steps of optimizer `name` on the small CNN; returns (model, optimizer, losses)."""
    torch.manual_seed(0)
    model = (model or SmallCNN()).to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(name, model, F.cross_entropy, hp)
    opt.set_precision(precision)
    losses = []
    for x, y in _batches(device, steps, dtype):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses.append(float(opt.step(x, y)))
    return model, opt, losses


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().double().cpu().flatten() for p in model.parameters()])


def _update_error(device, name, hp, steps=3) -> float:
    """Relative difference of the total update of all parameters, device float32 against CPU float64."""
    torch.manual_seed(0)
    start = SmallCNN()
    m_dev, _, _ = _train(device, torch.float32, name, hp, steps, model=copy.deepcopy(start))
    m_ref, _, _ = _train("cpu", torch.float64, name, {**hp, "factor_dtype": "float64"} if name == "kfac" else hp,
                         steps, model=copy.deepcopy(start))
    s0 = _flat(start)
    return _rel(_flat(m_dev) - s0, _flat(m_ref) - s0)


# --------------------------------------------------------------------------- the checks

def check_loader(device) -> tuple[float, float, str]:
    a = _batches(device, 4)
    b = _batches("cpu", 4)
    labels_equal = all(torch.equal(ya.cpu(), yb) for (_, ya), (_, yb) in zip(a, b))
    err = max(float((xa.cpu() - xb).abs().max()) for (xa, _), (xb, _) in zip(a, b))
    return (err if labels_equal else float("inf")), 1e-6, "shuffled, cropped and flipped batches from the same seed"


def check_sgd(device):
    hp = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    return _update_error(device, "sgd", hp), 1e-3, "3 SGD steps, float32 on the device against float64 on the CPU"


def check_adam(device):
    # eps well above float32's resolution of sqrt(v): at eps 1e-8 a near-zero gradient's first
    # step is +-lr in either precision, a sign that rounding decides.
    hp = {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-4, "weight_decay": 5e-4}
    return _update_error(device, "adam", hp), 1e-3, "3 Adam (AdamW) steps, float32 on the device against float64 " \
        "on the CPU"


def _kfac_check(fisher, inverse):
    def check(device):
        hp = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "damping": 0.03, "kl_clip": 1e-2,
              "cov_update_freq": 1, "inv_update_freq": 1, "fisher_type": fisher, "inverse_method": inverse}
        return (_update_error(device, "kfac", hp), 1e-2,
                f"3 K-FAC steps ({fisher} Fisher, {inverse}, KL clipping), float32 on the device against "
                "float64 on the CPU")
    return check


def check_decomposition_fallback(device):
    """A non-finite factor leaves the layer on its plain gradient and is counted, on any device."""
    hp = {"lr": 0.1, "cov_update_freq": 1, "inv_update_freq": 1, "fisher_type": "empirical"}
    model, opt, _ = _train(device, torch.float32, "kfac", hp, steps=1)
    layer = next(iter(opt.layers.values()))
    layer.A[0, 0] = float("nan")
    x, y = _batches(device, 1)[0]
    opt.step(x, y)  # factors of this step are finite; the running average is not
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    failures = opt.counters["decomposition_failures"]
    return (0.0 if finite and failures >= 1 else 1.0), 0.0, f"{failures} decomposition failure(s) counted, " \
        "parameters finite"


def check_trcg(device):
    hp = {"radius": 1.0, "hessian_fraction": 0.5, "cg_max_iters": 20}
    split = _data()
    results = []
    for dev in (device, "cpu"):
        torch.manual_seed(0)
        model = SmallCNN().to(dev)
        opt = build_optimizer("trcg", model, F.cross_entropy, hp)
        loader = DeviceLoader(split, 32, mean=(0.5,) * 3, std=(0.25,) * 3, device=dev)
        opt.attach_training_data(loader)
        x, y = next(loader.epoch(0))
        opt.step(x, y)
        results.append(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]))
    return _rel(results[0], results[1]), 1e-2, "one TRCG iteration (Steihaug CG, Hessian sample), float32 both"


def check_top_eigenvalue(device):
    from kfaclab.hessian import top_eigenvalue

    values = []
    for dev, dtype in ((device, torch.float32), ("cpu", torch.float64)):
        torch.manual_seed(0)
        model = SmallCNN().to(device=dev, dtype=dtype)
        x, y = _batches(dev, 1, dtype)[0]
        values.append(top_eigenvalue(model, F.cross_entropy, x, y, seed=0, max_iterations=30, tolerance=1e-6).value)
    return abs(values[0] - values[1]) / abs(values[1]), 1e-2, "ABS's Hessian top eigenvalue by power iteration"


def check_channels_last(device):
    hp = {"lr": 0.1, "cov_update_freq": 1, "inv_update_freq": 1}
    with _no_tf32():
        a, _, _ = _train(device, torch.float32, "kfac", hp)
        b, _, _ = _train(device, torch.float32, "kfac", hp, channels_last=True)
    return _rel(_flat(b), _flat(a)), 1e-3, "3 K-FAC steps with the model and batches channels-last against the " \
        "default layout (other convolution algorithms: equal up to float32 rounding)"


def check_bf16(device):
    """bf16 autocast changes the forward's arithmetic, not what is trained: losses stay within a
    bounded distance of fp32's, and K-FAC's factors stay float32."""
    hp = {"lr": 0.05, "cov_update_freq": 1, "inv_update_freq": 1}
    with _no_tf32():
        _, _, fp32 = _train(device, torch.float32, "kfac", hp, steps=4)
        _, opt, bf16 = _train(device, torch.float32, "kfac", hp, steps=4, precision="bf16")
    dtypes = {str(f.dtype) for layer in opt.layers.values() for f in (layer.A, layer.G)}
    err = max(abs(a - b) / abs(b) for a, b in zip(bf16, fp32))
    return (err if dtypes == {"torch.float32"} else float("inf")), 5e-2, \
        f"4 K-FAC steps under bf16 autocast: loss relative to fp32's; factors {', '.join(sorted(dtypes))}"


def check_process_group(device):
    """A process group of one (NCCL on a GPU, gloo on the CPU): DistributedDataParallel with
    K-FAC gives the single-process update."""
    import torch.distributed as dist

    from kfaclab.distributed import free_port

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    hp = {"lr": 0.1, "cov_update_freq": 1, "inv_update_freq": 1, "fisher_type": "empirical"}
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with _no_tf32():
            plain, _, _ = _train(device, torch.float32, "kfac", hp)
            torch.manual_seed(0)
            inner = SmallCNN().to(device)
            dev = torch.device(device)
            ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(inner, device_ids=ids)
            opt = build_optimizer("kfac", ddp, F.cross_entropy, hp)
            for x, y in _batches(device, 3):
                opt.step(x, y)
        err = _rel(_flat(inner), _flat(plain))
    finally:
        if started:
            dist.destroy_process_group()
    return err, 1e-5, f"3 K-FAC steps under DistributedDataParallel ({backend}, one process)"


CHECKS = {
    "loader": check_loader,
    "sgd": check_sgd,
    "adam": check_adam,
    **{f"kfac-{f}-{i}": _kfac_check(f, i) for f in ("mc", "empirical", "exact") for i in ("eigen", "inverse")},
    "kfac-decomposition-fallback": check_decomposition_fallback,
    "trcg": check_trcg,
    "top-eigenvalue": check_top_eigenvalue,
    "channels-last": check_channels_last,
    "bf16-autocast": check_bf16,
    "process-group": check_process_group,
}


def run_check(name: str, device) -> CheckResult:
    t0 = time.perf_counter()
    try:
        with _no_tf32():
            error, tolerance, detail = CHECKS[name](device)
        ok = error <= tolerance
    except Exception as e:  # a crash is a failed check with its reason, not the end of the smoke check
        error, tolerance, ok, detail = float("inf"), 0.0, False, f"{type(e).__name__}: {e}"
    return CheckResult(name, ok, error, tolerance, time.perf_counter() - t0, detail)


def run_checks(device, names=None) -> list[CheckResult]:
    return [run_check(n, device) for n in (names or CHECKS)]
