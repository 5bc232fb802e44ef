"""KFC's input factor A of a stride-1 convolution from its input's autocorrelation.

A is the mean over output positions p of a a^T, a = the input patch at p. Its block for kernel
offsets (a, b) and channels (c, c') sums x[c, q] x[c', q + (b - a)] over the positions q that
the patches at offset a cover. The translation invariance of a stride-1 convolution makes
that, up to a border, one number per offset difference d = b - a: the autocorrelation

    T[c, c', d] = sum over examples and all q of x[c, q] x[c', q + d]   (x zero outside the image)

for the (2k-1)^2 differences instead of the k^4 pairs of offsets: 25 against 81 products of
the input with itself for a 3x3 kernel. T is the weight gradient of a (2k-1)x(2k-1)
convolution whose output gradient is x itself, which torch computes with the same tuned
kernel as the training backward. The patches at offset a miss a few border rows and columns of
the image (those the zero padding pushes out of the window); their terms are subtracted
exactly (rows, plus columns, less the corners counted twice), so A equals the patch
computation to rounding. The rows of patches (B H W x C k^2, 9 copies of the input for a 3x3
kernel) are never built.

Used for Conv2d layers with stride 1, dilation 1 and zero padding, and kernels larger than 1x1;
others build the patches (`kfac_layers.input_rows`).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.grad import conv2d_weight


def applies(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and tuple(module.stride) == (1, 1)
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros"
            and tuple(module.kernel_size) != (1, 1))


def factor_A(module: nn.Conv2d, x: torch.Tensor, amounts: list[int]) -> torch.Tensor:
    """A in the weight's (C, kh, kw) order (with the homogeneous coordinate last when the layer
    has a bias) for input x (B, C, H, W); `amounts` is the padding (left, right, top, bottom)."""
    B, C, H, W = x.shape
    kh, kw = module.kernel_size
    left, right, top, bottom = amounts
    Ho, Wo = H + top + bottom - kh + 1, W + left + right - kw + 1
    size = (C, C, 2 * kh - 1, 2 * kw - 1)
    x = x.contiguous(memory_format=torch.channels_last)  # torch's CPU kernels run faster on it
    with exact_convolutions(x):
        T = _autocorrelation(x, kh, kw)  # [c, c', d + k - 1]
        # A[(c, a), (c', b)] = T[c, c', b - a + k - 1] before the border: windows of T (views;
        # unfold's window i holds i + b, and i = k - 1 - a), copied once into A's order.
        S = T.unfold(2, kh, 1).unfold(3, kw, 1).flip(2, 3)  # [c, c', a_h, a_w, b_h, b_w]
        A = S.permute(0, 2, 3, 1, 4, 5).reshape(C * kh * kw, C * kh * kw)
        A6 = A.view(C, kh, kw, C, kh, kw)
        # The border: image rows (columns) outside the window of the patches at offset a.
        ex_h = [_outside(a, top, Ho, H) for a in range(kh)]
        ex_w = [_outside(a, left, Wo, W) for a in range(kw)]
        xp = F.pad(x, (kw - 1, kw - 1, kh - 1, kh - 1))
        need_h = _needed_differences(ex_h, kh, H)  # row q -> the d_h its corrections use
        need_w = _needed_differences(ex_w, kw, W)
        full_h, full_w = (-(kh - 1), kh - 1), (-(kw - 1), kw - 1)
        rows = {q: _window_correlation(x, xp, (q, q + 1), (0, W), need_h[q], full_w, size) for q in need_h}
        cols = {q: _window_correlation(x, xp, (0, H), (q, q + 1), full_h, need_w[q], size) for q in need_w}
        pixels = {(r, c): _window_correlation(x, xp, (r, r + 1), (c, c + 1), need_h[r], need_w[c], size)
                  for r in rows for c in cols}
        for ah in range(kh):
            for aw in range(kw):
                border = [rows[r] for r in ex_h[ah]] + [cols[c] for c in ex_w[aw]]
                if not border:
                    continue
                D = sum(border) - sum((pixels[r, c] for r in ex_h[ah] for c in ex_w[aw]), torch.zeros_like(T))
                # the differences b - a for this a, over all b
                A6[:, ah, aw] -= D[:, :, kh - 1 - ah:2 * kh - 1 - ah, kw - 1 - aw:2 * kw - 1 - aw]
        if module.bias is not None:  # sums of the patches: the weight gradient for an output of ones
            ones = x.new_ones(B, 1, Ho, Wo)
            s = conv2d_weight(F.pad(x, amounts), (1, C, kh, kw), ones).reshape(-1)
            A = torch.cat([torch.cat([A, s[:, None]], 1), torch.cat([s, s.new_tensor([B * Ho * Wo])])[None]], 0)
    return A.div_(B * Ho * Wo)


def _autocorrelation(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """T for all differences d in [-(k-1), k-1]^2, from the half with d_h >= 0 (T(-d) is
    T(d) with c and c' swapped): 3x5 of the 5x5 products for a 3x3 kernel."""
    C = x.shape[1]
    half = conv2d_weight(F.pad(x, (kw - 1, kw - 1, 0, kh - 1)), (C, C, kh, 2 * kw - 1), x)  # d_h = 0 .. kh-1
    mirrored = half.flip(2, 3).transpose(0, 1)[:, :, :-1]  # d_h = -(kh-1) .. -1
    return torch.cat([mirrored, half], 2)


def _needed_differences(excluded: list[list[int]], k: int, n: int) -> dict:
    """For each border row q (excluded from the window of some offsets a), the differences
    d = b - a, b in [0, k), that its corrections use, less those that leave the image (their
    products are zero): for a 3x3 kernel with padding 1, only d = 0."""
    need = {}
    for q in sorted(set().union(*excluded)):
        offsets = [a for a in range(k) if q in excluded[a]]
        need[q] = (max(-max(offsets), -q), min(k - 1 - min(offsets), n - 1 - q))
    return need


def _window_correlation(x, xp, rows, cols, dh, dw, size) -> torch.Tensor:
    """T restricted to positions q in rows x cols (half-open ranges) and to differences d in
    dh x dw (closed ranges), zero elsewhere: sum over examples of x[c, q] x[c', q + d]
    (xp: x padded by k - 1 on every side)."""
    kh, kw = size[2] // 2 + 1, size[3] // 2 + 1
    out = x.new_zeros(size)
    if dh[0] > dh[1] or dw[0] > dw[1]:
        return out
    band = xp[:, :, rows[0] + dh[0] + kh - 1:rows[1] + dh[1] + kh - 1,
              cols[0] + dw[0] + kw - 1:cols[1] + dw[1] + kw - 1]
    if rows[1] - rows[0] == cols[1] - cols[0] == 1:  # one pixel: a product over the examples
        part = torch.einsum("bi,bjuv->ijuv", x[:, :, rows[0], cols[0]], band)
    else:
        part = conv2d_weight(band, (size[0], size[1], dh[1] - dh[0] + 1, dw[1] - dw[0] + 1),
                             x[:, :, rows[0]:rows[1], cols[0]:cols[1]])
    out[:, :, dh[0] + kh - 1:dh[1] + kh, dw[0] + kw - 1:dw[1] + kw] = part
    return out


def _outside(a: int, before: int, n_out: int, n: int) -> list[int]:
    """Image rows q in [0, n) not covered by the patches' offset a: the window [a - before,
    a - before + n_out) of a stride-1 convolution with `before` rows of padding before."""
    lo = a - before
    return [q for q in range(n) if not lo <= q < lo + n_out]


@contextlib.contextmanager
def exact_convolutions(x: torch.Tensor):
    """cuDNN may compute float32 convolutions in TF32 (10-bit mantissa) by default; A's
    products are computed in full float32, as the patch GEMM computes them."""
    if not x.is_cuda:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved
