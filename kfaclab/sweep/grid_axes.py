"""How a grid axis steps beyond its values, for bracketing (book/verdicts.md, version 3).

A grid that does not bracket the optimum grows by one grid step on the side where the best
configuration sits. The step is the outermost one on that side, taken on the axis's own scale:
learning rates, dampings and epsilons are geometric ("log": the next value beyond 0.1 after 0.03
is 0.1 x 0.1/0.03), momenta are geometric in 1 - momentum ("one_minus_log": after 0.9 and 0.95
comes 0.975), anything else that is declared "linear" steps by the outermost difference. A value
outside the axis's domain (a learning rate <= 0, a momentum below 0 or at 1) is a bound: that
side counts as bracketed.
"""

from __future__ import annotations

import math

SCALES = ("log", "one_minus_log", "linear")
# Axes whose scale is known by name; any other grid axis needs `bracket.scales.<axis>` in the spec.
DEFAULT_SCALES = {"lr": "log", "damping": "log", "eps": "log", "weight_decay": "log", "kl_clip": "log",
                  "momentum": "one_minus_log", "beta1": "one_minus_log", "beta2": "one_minus_log",
                  "stat_decay": "one_minus_log"}
# The axis along which robustness widths are measured (kfaclab.results.width).
WIDTH_AXIS = "lr"


def scale_of(axis: str, given: dict) -> str | None:
    return given.get(axis, DEFAULT_SCALES.get(axis))


def _round(v: float) -> float:
    """Three significant digits: run names stay readable and a value is the same on every machine."""
    if v == 0:
        return 0.0
    return float(f"{v:.3g}")


def next_value(values: list, side: str, scale: str) -> float | None:
    """The value one grid step beyond `values` (sorted ascending, at least two) on `side` ('low' or
    'high'), or None where that side is at the axis's bound."""
    vals = sorted(float(v) for v in values)
    if len(vals) < 2:
        return None
    if side == "high":
        edge, inner = vals[-1], vals[-2]
    elif side == "low":
        edge, inner = vals[0], vals[1]
    else:
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if scale == "log":
        if edge <= 0 or inner <= 0:
            return None
        v = edge * edge / inner
    elif scale == "one_minus_log":
        a, b = 1 - edge, 1 - inner
        if a <= 0 or b <= 0:
            return None
        if side == "low" and edge == 0:
            return None  # momentum 0 is the axis's end
        v = 1 - a * a / b
        if side == "low" and v < 0:
            v = 0.0  # the last step down reaches no momentum at all
    elif scale == "linear":
        v = edge + (edge - inner)
    else:
        raise ValueError(f"unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    v = _round(v)
    if not math.isfinite(v) or v in vals:
        return None
    if scale == "one_minus_log" and not 0 <= v < 1:
        return None
    return v
