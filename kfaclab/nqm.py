"""The noisy quadratic model (NQM) of Zhang et al. (2019), solved exactly.

The loss is L(theta) = 1/2 sum_i h_i theta_i^2 in the curvature's eigenbasis. A batch of B
examples gives the gradient h_i theta_i + n_i with independent noise of variance c_i / B; as in
the paper, the noise covariance is the curvature itself (c_i = h_i). The optimizers are
preconditioned heavy-ball methods with preconditioner H^-p:

    v' = momentum * v - lr * h^-p * (h theta + n),    theta' = theta + v'

p = 0 is SGD (with momentum, or without it at momentum 0); p = 1 is exact curvature
preconditioning (Newton's step at lr 1), the model's stand-in for K-FAC; p = 1/2 is the
model's Adam (with C = H, Adam's second moment estimates the noise variance, proportional to h,
and its square root rescales by h^-1/2).

Each coordinate moves independently, so the expected loss is exact from the second moments
(x, y, z) = E[(theta^2, theta v, v^2)] per coordinate, which follow an affine map m' = K m + q.
With m* the fixed point, S_t - S* = A^t (S_0 - S*) (A^t)^T for the 2x2 mean dynamics A, so the
loss at any step t costs log2(t) products of 2x2 matrices: no sampling, no step-by-step loop.
Everything is vectorised over coordinates and over any broadcast grid of learning rates,
momenta, batch sizes and powers. `simulate` draws the noise instead, as an independent check.

Spectra: h_i = i^-decay for i = 1..dim (the paper: decay 1). With `levels`, coordinates are
pooled into that many groups of equal log-width in i, each at its members' mean curvature and
counted with their number: the initial loss, tr(H) and tr(C) are then those of the full
spectrum, and the pooled model's steps to target are within a per cent of the full one's
(tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kfaclab.errors import UsageError

# The largest number of steps searched: a configuration that needs more "never" reaches the target.
MAX_LOG2_STEPS = 26


@dataclass(frozen=True)
class Spectrum:
    """Curvatures h_i = i^-decay, i = 1..dim, noise c_i = noise * h_i at batch size 1, start
    theta_i = 1 (so E[theta^2] = 1); pooled into `levels` groups (None: every coordinate)."""

    decay: float = 1.0
    dim: int = 10_000
    levels: int | None = 96
    noise: float = 1.0

    def __post_init__(self):
        if not (self.decay >= 0 and np.isfinite(self.decay)):
            raise UsageError(f"NQM spectrum decay must be a non-negative number, got {self.decay!r}")
        if not (isinstance(self.dim, int) and self.dim >= 1):
            raise UsageError(f"NQM dimension must be a positive whole number, got {self.dim!r}")
        if self.levels is not None and not (isinstance(self.levels, int) and self.levels >= 1):
            raise UsageError(f"NQM levels must be a positive whole number or None, got {self.levels!r}")
        if not self.noise >= 0:
            raise UsageError(f"NQM noise must be non-negative, got {self.noise!r}")

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(h, weight): the curvature of each coordinate (or pooled group) and how many coordinates it stands for."""
        h = np.arange(1, self.dim + 1, dtype=float) ** -self.decay
        if self.levels is None or self.levels >= self.dim:
            return h, np.ones_like(h)
        edges = np.unique(np.round(np.geomspace(1, self.dim + 1, self.levels + 1)).astype(int))
        groups = [h[a - 1:b - 1] for a, b in zip(edges[:-1], edges[1:]) if b > a]
        return np.array([g.mean() for g in groups]), np.array([len(g) for g in groups], dtype=float)

    def initial_loss(self) -> float:
        h, w = self.arrays()
        return float(0.5 * np.sum(w * h))


def _grid(lr, momentum, power, batch):
    """Broadcast the four settings to one shape, with a trailing axis for the coordinates."""
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (lr, momentum, power, batch)))
    return [a[..., None] for a in arrays]


def _moments(spec: Spectrum, lr, momentum, power, batch):
    """Per coordinate: the mean dynamics A (entries a11, a12, a21, a22), the stationary second
    moments (x*, y*, z*), the weights w h / 2 of the loss, and whether the dynamics are stable."""
    h, w = spec.arrays()
    lr, beta, p, b = _grid(lr, momentum, power, batch)
    a = lr * h ** (1 - p)                      # the step's contraction of theta per unit theta
    s2 = lr ** 2 * h ** (-2 * p) * spec.noise * h / b  # variance of the step's noise
    A = (1 - a, beta * np.ones_like(a), -a, beta * np.ones_like(a))
    # Stability: the spectral radius of A below 1 (det A = beta, trace A = 1 - a + beta).
    tr, det = 1 - a + beta, beta * np.ones_like(a)
    disc = tr ** 2 - 4 * det
    root = np.sqrt(np.abs(disc))
    rho = np.where(disc >= 0, (np.abs(tr) + root) / 2, np.sqrt(np.abs(det)))
    coordinate_stable = rho < 1 - 1e-12
    stable = coordinate_stable.all(axis=-1)
    # Fixed point of m' = K m + q for m = (x, y, z), q = s2 (1, 1, 1).
    K = np.stack([np.stack([(1 - a) ** 2, 2 * (1 - a) * beta, beta ** 2 + 0 * a], -1),
                  np.stack([-a * (1 - a), beta * (1 - 2 * a), beta ** 2 + 0 * a], -1),
                  np.stack([a ** 2, -2 * a * beta, beta ** 2 + 0 * a], -1)], -2)
    # I - K is invertible wherever A is stable (K's eigenvalues are products of A's); elsewhere
    # the loss is infinite anyway, and K = 0 keeps the solve defined.
    K = np.where(coordinate_stable[..., None, None], K, 0.0)
    with np.errstate(all="ignore"):
        eye = np.broadcast_to(np.eye(3), K.shape)
        rhs = np.broadcast_to(s2[..., None], K.shape[:-1])
        mstar = np.linalg.solve(eye - K, rhs[..., None])[..., 0] if K.size else np.zeros(K.shape[:-1])
    return A, mstar, 0.5 * w * h * np.ones_like(a), stable


def _mul(P, Q):
    """Products of 2x2 matrices held as (m11, m12, m21, m22) arrays."""
    p11, p12, p21, p22 = P
    q11, q12, q21, q22 = Q
    return (p11 * q11 + p12 * q21, p11 * q12 + p12 * q22, p21 * q11 + p22 * q21, p21 * q12 + p22 * q22)


def _second_moment_from_power(P, mstar):
    """E[theta_t^2] per coordinate from P = A^t: [P (S_0 - S*) P^T]_00 + x*, with S_0 = diag(1, 0)."""
    p11, p12 = P[0], P[1]
    xs, ys, zs = mstar[..., 0], mstar[..., 1], mstar[..., 2]
    with np.errstate(all="ignore"):
        return p11 * p11 * (1 - xs) - 2 * p11 * p12 * ys - p12 * p12 * zs + xs


def _power(A, t):
    """A^t by binary powering, with a different t per element."""
    t = np.asarray(t, dtype=np.int64)[..., None]
    one, zero = np.ones_like(A[0]), np.zeros_like(A[0])
    P, Q = (one, zero, zero, one), A
    with np.errstate(all="ignore"):
        for bit in range(MAX_LOG2_STEPS + 2):
            if not (t >> bit).any():
                break
            use = ((t >> bit) & 1).astype(bool)
            P = tuple(np.where(use, n, o) for n, o in zip(_mul(P, Q), P))
            Q = _mul(Q, Q)
    return P


def _loss(weight, x):
    with np.errstate(all="ignore"):
        return np.sum(weight * x, axis=-1)


def expected_loss(spec: Spectrum, lr, momentum, power, batch, t) -> np.ndarray:
    """E[L(theta_t)] exactly, broadcast over lr, momentum, power, batch and t (inf where the
    dynamics are unstable and t > 0)."""
    lr, momentum, power, batch, t = np.broadcast_arrays(*(np.asarray(v) for v in (lr, momentum, power, batch, t)))
    if (t < 0).any() or (t != np.round(t)).any():
        raise UsageError("NQM steps must be whole numbers >= 0")
    A, mstar, weight, stable = _moments(spec, lr, momentum, power, batch)
    loss = _loss(weight, _second_moment_from_power(_power(A, t.astype(np.int64)), mstar))
    return np.where(stable | (t == 0), loss, np.inf)


def steps_to_target(spec: Spectrum, lr, momentum, power, batch, target: float) -> np.ndarray:
    """The number of steps after which the expected loss is at or below `target`: the first
    power of two that reaches it, then bisection between it and the one before (the first
    crossing wherever the expected loss falls monotonically, as for plain and preconditioned SGD;
    with momentum it can oscillate, and the tests compare with a step-by-step scan).
    inf where the target is not reached within 2^MAX_LOG2_STEPS steps, or the dynamics are unstable."""
    if not target > 0:
        raise UsageError(f"NQM target loss must be positive, got {target!r}")
    A, mstar, weight, stable = _moments(spec, lr, momentum, power, batch)
    shape = stable.shape
    if spec.initial_loss() <= target:
        return np.zeros(shape)

    def above(P):  # the expected loss after P = A^t steps is still above the target
        return ~(_loss(weight, _second_moment_from_power(P, mstar)) <= target)

    # Doubling: powers[k] = A^(2^k); first[k] the first k at which the target is reached.
    powers, first = [], np.full(shape, -1)
    Q = A
    with np.errstate(all="ignore"):
        for k in range(MAX_LOG2_STEPS + 1):
            powers.append(Q)
            first = np.where((first < 0) & stable & ~above(Q), k, first)
            if not (stable & (first < 0)).any():
                break
            Q = _mul(Q, Q)
        # Binary lifting inside (2^(k-1), 2^k]: keep the largest t whose loss is still above the
        # target, adding 2^j for j = k-2 .. 0; the answer is that t + 1.
        found = first >= 0
        start = np.maximum(first - 1, 0)
        t = np.where(first >= 1, 2 ** start, 0)
        stacked = [np.stack([p[i] for p in powers]) for i in range(4)]
        index = np.broadcast_to(start[None, ..., None], (1,) + A[0].shape)
        P = tuple(np.take_along_axis(m, index, axis=0)[0] for m in stacked)
        for j in range(len(powers) - 2, -1, -1):
            active = found & (j <= first - 2)
            if not active.any():
                continue
            cand = _mul(P, powers[j])
            take = active & above(cand)
            t = np.where(take, t + 2 ** j, t)
            P = tuple(np.where(take[..., None], c, o) for c, o in zip(cand, P))
    return np.where(found, t + 1, np.inf).astype(float)


def learning_rates(per_octave: int = 4, smallest: float = 2.0 ** -24, largest: float = 4.0) -> np.ndarray:
    """The tuning grid: powers of 2^(1/per_octave) from `smallest` to `largest`."""
    k = np.arange(round(np.log2(smallest) * per_octave), round(np.log2(largest) * per_octave) + 1)
    return 2.0 ** (k / per_octave)


def tuned_steps(spec: Spectrum, batch_sizes, power: float, momenta, target: float, lrs=None) -> dict:
    """Steps to target per batch size with the learning rate and momentum tuned (the minimum
    over the grid, as Shallue et al. and the studies tune). Returns the steps, the best learning
    rate and momentum per batch size, and whether a best learning rate lies on the grid's edge."""
    lrs = learning_rates() if lrs is None else np.asarray(lrs, dtype=float)
    momenta = np.atleast_1d(np.asarray(momenta, dtype=float))
    bs = np.asarray(batch_sizes, dtype=float)
    # One batch size at a time keeps the doubling's stored powers small.
    flat = np.stack([steps_to_target(spec, lrs[None, :], momenta[:, None], power, b, target).ravel() for b in bs])
    best = np.argmin(flat, axis=1)
    steps = flat[np.arange(len(bs)), best]
    i_m, i_lr = np.unravel_index(best, (len(momenta), len(lrs)))
    reached = np.isfinite(steps)
    return {"batch_sizes": bs, "steps": steps, "lr": np.where(reached, lrs[i_lr], np.nan),
            "momentum": np.where(reached, momenta[i_m], np.nan),
            "lr_at_edge": reached & ((i_lr == 0) | (i_lr == len(lrs) - 1))}


def critical_batch_size(batch_sizes, steps) -> dict:
    """S(B) = S_min (1 + B_crit / B) fitted as the studies fit it (kfaclab.results.scaling)."""
    from kfaclab.results.scaling import fit_steps_curve

    return fit_steps_curve(batch_sizes, steps)


def simulate(spec: Spectrum, lr: float, momentum: float, power: float, batch: float, steps: int,
             samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo of the same model: `samples` independent runs with Gaussian gradient noise.
    Returns the mean loss after each of steps 0..steps and its standard error. Needs levels=None
    (pooled groups are not coordinates one can draw noise for)."""
    if spec.levels is not None and spec.levels < spec.dim:
        raise UsageError("simulate draws noise per coordinate: use a Spectrum with levels=None")
    h, _ = spec.arrays()
    rng = np.random.default_rng(seed)
    theta = np.ones((samples, len(h)))
    v = np.zeros_like(theta)
    pre = h ** -power
    sd = np.sqrt(spec.noise * h / batch)
    losses = np.empty((steps + 1, samples))
    losses[0] = 0.5 * theta ** 2 @ h
    for t in range(1, steps + 1):
        g = h * theta + sd * rng.standard_normal(theta.shape)
        v = momentum * v - lr * pre * g
        theta = theta + v
        losses[t] = 0.5 * theta ** 2 @ h
    return losses.mean(axis=1), losses.std(axis=1, ddof=1) / np.sqrt(samples)


# ------------------------------------------------------------------------- the studies' optimizers

# The model's stand-ins for the studies' optimizers, tuned as the miniature tunes them: SGD over
# momentum (and the learning rate), Adam and K-FAC at their fixed momentum 0.9 (beta1 for Adam),
# with preconditioning powers 1/2 (Adam's root of the noise variance, C = H) and 1 (the curvature).
STUDY_OPTIMIZERS = {
    "sgd": {"power": 0.0, "momenta": (0.0, 0.5, 0.9, 0.95)},
    "adam": {"power": 0.5, "momenta": (0.9,)},
    "kfac": {"power": 1.0, "momenta": (0.9,)},
}
STUDY_TARGET_FRACTION = 0.01  # the target loss: 1% of the initial loss
STUDY_BATCH_SIZES = 2.0 ** np.arange(0, 25)


def study_curves(spec: Spectrum | None = None) -> dict:
    """Per study optimizer: the tuned steps-to-target curve and its fitted B_crit."""
    spec = spec or Spectrum()
    target = STUDY_TARGET_FRACTION * spec.initial_loss()
    out = {}
    for name, o in STUDY_OPTIMIZERS.items():
        r = tuned_steps(spec, STUDY_BATCH_SIZES, o["power"], o["momenta"], target)
        r["fit"] = critical_batch_size(STUDY_BATCH_SIZES, r["steps"])
        out[name] = r
    return out


def study_prediction(spec: Spectrum | None = None) -> dict:
    """The model's log2 ratios of B_crit for the verdicts' pairs: (c) K-FAC over SGD, (i) Adam
    over SGD, (j) K-FAC over Adam (book/verdicts.md, rule k)."""
    b = {name: r["fit"]["b_crit"] for name, r in study_curves(spec).items()}
    return {"c": float(np.log2(b["kfac"] / b["sgd"])), "i": float(np.log2(b["adam"] / b["sgd"])),
            "j": float(np.log2(b["kfac"] / b["adam"]))}


# ------------------------------------------------------------------------- the chapter's grid

MOMENTUM_CHOICES = (0.0, 0.5, 0.9, 0.99)
TUNED = "tuned"


CURVE_BATCH_SIZES = 2.0 ** np.arange(0, 21)  # the chapter's grid: batch sizes 1 to 2^20


def curve_table(decays=(0.5, 1.0, 1.5), powers=(0.0, 0.25, 0.5, 0.75, 1.0), batch_sizes=CURVE_BATCH_SIZES,
                target_fraction: float = STUDY_TARGET_FRACTION, progress: bool = False) -> tuple:
    """The chapter's precomputed grid: tuned steps to target for every spectrum decay,
    preconditioning power and momentum (each of MOMENTUM_CHOICES, and the best of them, "tuned"),
    with the fit S_min (1 + B_crit / B). Returns (curves, fits): one row per batch size with the
    steps, the perfect-scaling line from the smallest batch size and the fitted curve; one row per
    curve with S_min, B_crit and whether any best learning rate lies on the grid's edge."""
    import pandas as pd

    rows, fits = [], []
    cases = [(d, p) for d in decays for p in powers]
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="NQM grid", unit="curve")
    bs = np.asarray(batch_sizes, dtype=float)
    for decay, power in cases:
        spec = Spectrum(decay=decay)
        target = target_fraction * spec.initial_loss()
        single = {m: tuned_steps(spec, bs, power, [m], target) for m in MOMENTUM_CHOICES}
        best = np.minimum.reduce([r["steps"] for r in single.values()])
        edge = np.any([r["lr_at_edge"] for r in single.values()], axis=0)
        curves = {**{f"{m:g}": (r["steps"], r["lr_at_edge"]) for m, r in single.items()}, TUNED: (best, edge)}
        for label, (steps, at_edge) in curves.items():
            try:
                fit = critical_batch_size(bs, steps)
            except ValueError:
                fit = {"s_min": np.nan, "b_crit": np.nan, "at_edge": True}
            finite = np.isfinite(steps)
            first = int(np.argmax(finite)) if finite.any() else 0
            for i, b in enumerate(bs):
                rows.append({"decay": decay, "power": power, "momentum": label, "batch_size": b,
                             "steps": steps[i] if finite[i] else np.nan,
                             "ideal": steps[first] * bs[first] / b if finite.any() else np.nan,
                             "fit": fit["s_min"] * (1 + fit["b_crit"] / b)})
            fits.append({"decay": decay, "power": power, "momentum": label, "s_min": fit["s_min"],
                         "b_crit": fit["b_crit"], "fit_at_edge": bool(fit["at_edge"]),
                         "lr_at_edge": int(np.sum(at_edge)), "reached": int(finite.sum())})
    return pd.DataFrame(rows), pd.DataFrame(fits)
