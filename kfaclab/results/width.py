"""Robustness as a width (book/verdicts.md, version 3).

Rules versions 1 and 2 measured robustness as the share of the grid within one point of the
best accuracy: a number that depends on where the grid was placed (add a hopeless learning rate
and every share falls). Version 3 measures, per optimizer, batch size and budget, the **width of
the good region along the learning rate**: in the row of the grid through the best configuration
(the other hyperparameter at its best value), how far the learning rate can move, in log2 of the
*effective* learning rate, with the mean accuracy over seeds staying within one point of the
best. Each end is interpolated linearly (in log2 of the effective learning rate) between the
last configuration inside the region and the first outside, so the width does not jump by whole
grid steps, and does not depend on grid points far from the optimum.

The effective learning rate is what moves the weights: SGD's and Adam's peak learning rate
(their schedules have the same shape at every configuration, so widths in it are widths in
log2 of the rate they actually used); K-FAC's geometric mean of lr x nu over the run, where nu
is its KL clip's factor (kfaclab.optim.kfac.KFAC.clip_statistics): where the clip binds, a
larger nominal rate does not move the weights further, and an axis that does nothing gives no
width. A region that reaches the end of its row is *censored* on that side: the width is then
only a lower bound, and the book and the verdicts say so.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = 0.01  # "within one point" of the best accuracy


def widths(lr: np.ndarray, other: np.ndarray, x: np.ndarray, acc: np.ndarray, tolerance: float = TOLERANCE):
    """Widths of the good region for every row of `acc` (replicates x configurations) at once.

    lr, other: (configurations,) each configuration's nominal learning rate and other grid value;
    x: (configurations,) log2 of its effective learning rate; acc: (replicates, configurations)
    mean accuracy (NaN: none, counted as 0). Returns (width, censored_low, censored_high), each of
    shape (replicates,)."""
    lr, other, x = (np.asarray(a, float) for a in (lr, other, x))
    acc = np.atleast_2d(np.asarray(acc, float))
    acc = np.where(np.isnan(acc), 0.0, acc)
    n = len(acc)
    best = acc.argmax(axis=1)
    width = np.full(n, np.nan)
    cens_lo = np.zeros(n, bool)
    cens_hi = np.zeros(n, bool)
    for o in np.unique(other):
        rows = other[best] == o  # the replicates whose best configuration lies in this row
        if not rows.any():
            continue
        cols = np.flatnonzero(other == o)
        cols = cols[np.argsort(lr[cols])]
        a = acc[np.ix_(rows, cols)]  # (r, L)
        xs = x[cols]
        L = len(cols)
        p = np.argmax(a, axis=1)  # the best configuration's place in its row
        tau = a[np.arange(len(a)), p] - tolerance - 1e-12
        good = a >= tau[:, None]
        ends, cens = [], []
        for direction in (1, -1):
            pos = p.copy()
            alive = np.ones(len(a), bool)
            for _ in range(L):
                nxt = pos + direction
                inside = (nxt >= 0) & (nxt < L)
                step = alive & inside & good[np.arange(len(a)), np.clip(nxt, 0, L - 1)]
                pos = np.where(step, nxt, pos)
                alive = step
            nxt = pos + direction
            at_end = (nxt < 0) | (nxt >= L)
            nxt_c = np.clip(nxt, 0, L - 1)
            a_in, a_out = a[np.arange(len(a)), pos], a[np.arange(len(a)), nxt_c]
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(at_end, 0.0, (a_in - tau) / np.maximum(a_in - a_out, 1e-12))
            frac = np.clip(frac, 0.0, 1.0)
            ends.append(xs[pos] + frac * (xs[nxt_c] - xs[pos]))
            cens.append(at_end)
        width[rows] = np.abs(ends[0] - ends[1])
        cens_hi[rows], cens_lo[rows] = cens[0], cens[1]
    return width, cens_lo, cens_hi
