"""Bounds on the NQM's expected loss over a block of steps, for the exact crossing searches in
kfaclab.nqm.

Per coordinate, E[theta_t^2] = x* + e(t) with e(t) = p(t) D p(t)^T, where p(t) is the first row
of A^t (A the 2x2 mean dynamics) and D = S_0 - S* the start's second moments less the
stationary ones. A 2x2 matrix's powers have closed forms:

- real eigenvalues l1 != l2: p(t) = l1^t g + l2^t h, so e(t) = k1 (l1^2)^t + k2 (l1 l2)^t +
  k3 (l2^2)^t: three terms, each monotone in t (or, for a negative base, alternating inside a
  decaying envelope);
- complex eigenvalues r e^(+-i phi): p(t) = r^t (cos(t phi) u + sin(t phi) v), so
  e(t) = r^(2t) (alpha + beta cos(2 t phi) + gamma sin(2 t phi)), inside r^(2t) (alpha +- R).

Each form bounds e over any block [t0, t1] (t1 may be infinite) from the block's two ends. Where
the eigenvalues (nearly) coincide those forms divide by their gap, so there, and as a floor
everywhere, a form-free bound from the Schur decomposition holds: ||A^t|| <= rho^(t-1)
(sqrt(2) rho + |tau| t), hence |e(t)| <= ||D|| (rho^(t-1) (sqrt(2) rho + |tau| t))^2, whose
maximum over a block is at the log-concave peak or an end. The bounds are widened by a rounding
margin, so a block they clear is clear in the arithmetic the searches evaluate exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Below this gap between the eigenvalues (relative to their size), or sin(phi), the closed
# forms lose digits to cancellation and the form-free bound is used instead.
ILL_CONDITIONED = 1e-6
# The rounding margin: relative to the terms' magnitude, growing with t (powers s^t carry the
# rounding of s, t times over).
MARGIN, MARGIN_PER_STEP = 1e-11, 4e-16


@dataclass
class CoordinateForms:
    """Per coordinate (arrays over ... x coordinates): the closed form of e(t) and the
    form-free envelope, as built by `forms`."""

    real: np.ndarray       # real, well-separated eigenvalues: e(t) = sum_m k_m s_m^t
    k: tuple               # (k1, k2, k3)
    log_s: tuple           # log |s_m| of (s1, s2, s3) = (l1^2, l1 l2, l2^2); s2 = det A = r2
    alternating: np.ndarray  # s2 = l1 l2 < 0: its term alternates in sign
    complex_: np.ndarray   # complex, well-separated: e(t) = r2^t (alpha + R cos(2 phi t - psi))
    alpha: np.ndarray
    radius: np.ndarray
    two_phi: np.ndarray
    psi: np.ndarray
    rho: np.ndarray        # spectral radius
    log_rho: np.ndarray
    tau: np.ndarray        # the Schur form's off-diagonal magnitude
    dnorm: np.ndarray      # ||D||_2
    magnitude: np.ndarray  # the size of the terms, for the rounding margin


def forms(A, mstar) -> CoordinateForms:
    """The closed forms of e(t) per coordinate from A = (a11, a12, a21, a22) and the stationary
    moments mstar[..., (x, y, z)]."""
    a11, a12, a21, a22 = (np.asarray(m, dtype=float) for m in A)
    xs, ys, zs = mstar[..., 0], mstar[..., 1], mstar[..., 2]
    d11, d12, d22 = 1 - xs, -ys, -zs                   # D = S_0 - S*, S_0 = diag(1, 0)
    tr, det = a11 + a22, a11 * a22 - a12 * a21
    disc = tr * tr - 4 * det
    with np.errstate(all="ignore"):
        root = np.sqrt(np.abs(disc))
        # Real eigenvalues, the larger in magnitude first, the other from the product (no cancellation).
        l1 = (tr + np.where(tr >= 0, root, -root)) / 2
        l2 = np.where(l1 != 0, det / l1, (tr - root) / 2)
        gap = l1 - l2
        scale = np.maximum(np.abs(l1), np.abs(l2))
        real = (disc > 0) & (np.abs(gap) > ILL_CONDITIONED * np.maximum(scale, 1e-300))
        g1, g2 = (a11 - l2) / gap, a12 / gap
        h1, h2 = -(a11 - l1) / gap, -a12 / gap

        def quad(p1, p2, q1, q2):  # p D q^T
            return p1 * (d11 * q1 + d12 * q2) + p2 * (d12 * q1 + d22 * q2)

        k = (quad(g1, g2, g1, g2), 2 * quad(g1, g2, h1, h2), quad(h1, h2, h1, h2))
        log_s = (2 * np.log(np.abs(l1)), np.log(np.abs(l1 * l2)), 2 * np.log(np.abs(l2)))
        # Complex eigenvalues r e^(+-i phi): u = (1, 0), v = ((a11 / r - cos phi), a12 / r) / sin phi.
        r = np.sqrt(np.abs(det))
        cos_phi = tr / (2 * r)
        sin_phi = root / (2 * r)
        complex_ = (disc < 0) & (sin_phi > ILL_CONDITIONED)
        v1, v2 = (a11 / r - cos_phi) / sin_phi, (a12 / r) / sin_phi
        m11, m12, m22 = d11, quad(1.0, 0.0, v1, v2), quad(v1, v2, v1, v2)
        alpha = (m11 + m22) / 2
        radius = np.sqrt(((m11 - m22) / 2) ** 2 + m12 ** 2)
        two_phi = 2 * np.arctan2(sin_phi, cos_phi)
        psi = np.arctan2(m12, (m11 - m22) / 2)
        rho = np.where(disc >= 0, scale, r)
        # Schur: ||A||_F^2 = |l1|^2 + |l2|^2 + |tau|^2.
        eig2 = np.where(disc >= 0, l1 * l1 + l2 * l2, 2 * np.abs(det))
        tau = np.sqrt(np.maximum(a11 ** 2 + a12 ** 2 + a21 ** 2 + a22 ** 2 - eig2, 0.0))
        dnorm = np.abs(d11 + d22) / 2 + np.sqrt(((d11 - d22) / 2) ** 2 + d12 ** 2)
        magnitude = np.where(real, np.abs(k[0]) + np.abs(k[1]) + np.abs(k[2]),
                             np.where(complex_, np.abs(alpha) + radius, 0.0)) + dnorm
        # Coefficients of a form a coordinate does not use are 0, and their bases decay at once
        # (log base -inf), so they add 0. The middle base, det A, is also r^2 of complex eigenvalues.
        k = tuple(np.where(real, v, 0.0) for v in k)
        log_s = (np.where(real, log_s[0], -np.inf), np.log(np.abs(det)), np.where(real, log_s[2], -np.inf))
        alpha, radius = np.where(complex_, alpha, 0.0), np.where(complex_, radius, 0.0)
        return CoordinateForms(real, k, log_s, real & (l1 * l2 < 0), complex_, alpha, radius, two_phi, psi,
                               rho, np.log(rho), tau, dnorm, magnitude)


def _envelope(f: CoordinateForms, t0, t1):
    """max over [t0, t1] of ||D|| (rho^(t-1) (sqrt(2) rho + tau t))^2, the form-free bound on |e(t)|."""
    a, b, rho = np.sqrt(2) * f.rho, f.tau, f.rho
    with np.errstate(all="ignore"):
        peak = np.where((b > 0) & (rho > 0) & (rho < 1), -1 / f.log_rho - a / b, -np.inf)
        t = np.clip(peak, t0, t1)
        t = np.where(np.isinf(t), t0, t)  # an infinite block's end is never the maximum of a decaying bound
        value = np.exp((t - 1) * f.log_rho) * (a + b * t)
        value = np.where(rho == 0, np.where(t <= 1, a + b * t, 0.0), value)
    return f.dnorm * value * value


def _cos_range(start, width):
    """(min, max) of cos over [start, start + width], widened for the rounding of large phases."""
    with np.errstate(all="ignore"):
        slack = 1e-12 * (1 + np.abs(start) + width)
        a = np.mod(start - slack, 2 * np.pi)
        b = a + width + 2 * slack
        ends_lo, ends_hi = np.minimum(np.cos(a), np.cos(b)), np.maximum(np.cos(a), np.cos(b))
        full = ~(width + 2 * slack < 2 * np.pi)  # a whole turn, or an infinite block
        lo = np.where(full | ((a <= np.pi) & (b >= np.pi)) | (b >= 3 * np.pi), -1.0, ends_lo)
        hi = np.where(full | (b >= 2 * np.pi), 1.0, ends_hi)
    return lo, hi


def e_bounds(f: CoordinateForms, t0, t1):
    """(lower, upper) bounds on e(t) for every t in [t0, t1], t0 >= 1, per coordinate; t0 and t1
    broadcast against the coordinates' leading axes (t1 may be inf)."""
    t0 = np.asarray(t0, dtype=float)
    t1 = np.asarray(t1, dtype=float)
    with np.errstate(all="ignore"):
        p0 = [np.exp(t0 * ls) for ls in f.log_s]  # base^t at the block's two ends (0 at t = inf)
        p1 = [np.exp(t1 * ls) for ls in f.log_s]
        # The real form: three terms, each monotone, the middle one alternating for det A < 0.
        lo = hi = 0.0
        for m in range(3):
            a, b = f.k[m] * p0[m], f.k[m] * p1[m]
            term_lo, term_hi = np.minimum(a, b), np.maximum(a, b)
            if m == 1:
                term_lo, term_hi = np.where(f.alternating, -np.abs(a), term_lo), np.where(f.alternating, np.abs(a),
                                                                                         term_hi)
            lo, hi = lo + term_lo, hi + term_hi
        # The complex form: r2^t (alpha + R cos(theta)), theta over the block's phases.
        if f.complex_.any():
            cos_lo, cos_hi = _cos_range(f.two_phi * t0 - f.psi, f.two_phi * (t1 - t0))
            c_lo, c_hi = f.alpha + f.radius * cos_lo, f.alpha + f.radius * cos_hi
            lo = lo + np.minimum(c_lo * p0[1], c_lo * p1[1])
            hi = hi + np.maximum(c_hi * p0[1], c_hi * p1[1])
        margin = (MARGIN + MARGIN_PER_STEP * np.where(np.isinf(t1), t0, t1)) * f.magnitude * \
            np.where(f.complex_, p0[1], p0[0])
        lo, hi = lo - margin, hi + margin
        ill = ~(f.real | f.complex_)
        if ill.any():  # the form-free bound where the closed forms lose digits
            env = _envelope(f, t0, t1)
            lo, hi = np.where(ill, -env, lo), np.where(ill, env, hi)
    return lo, hi
