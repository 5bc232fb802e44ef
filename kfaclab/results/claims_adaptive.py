"""Claim (f): adaptive batch sizes (ABS, ABSA) lose at most 1% accuracy (Yao et al.), under rules versions 1-2.
"""

from __future__ import annotations

import numpy as np

from kfaclab.results.bootstrap import _interval
from kfaclab.results.claims import (
    CONTRADICTED,
    N_BOOT,
    NOT_RESOLVED,
    NOT_TESTABLE,
    REPRODUCED,
    SEED,
    Verdict,
    _decide,
    _verdict,
)
from kfaclab.results.study import StudyResults


def claim_f(results: StudyResults, n: int = N_BOOT, seed: int = SEED) -> Verdict:
    """ABS/ABSA against the fixed batch, per optimizer: final accuracy at each method's best
    learning rate (mean over seeds), seed bootstrap of the difference."""
    from kfaclab.results.adaptive import _best_runs, best_configurations

    rule = ("final accuracy of the adaptive method minus the fixed batch at each method's best learning rate: "
            "reproduced if every interval lies above -1 point, contradicted if any lies below")
    best = best_configurations(results).set_index("method")
    runs = _best_runs(results, best)
    rng = np.random.default_rng(seed)
    parts, outcomes = [], []
    for method in best.index:
        base = best.loc[method, "base_optimizer"]
        if method == base or base not in runs:
            continue
        a = runs[method]["final_accuracy"].astype(float).to_numpy()
        f = runs[base]["final_accuracy"].astype(float).to_numpy()
        diff = float(a.mean() - f.mean())
        boot = rng.choice(a, (n, len(a))).mean(axis=1) - rng.choice(f, (n, len(f))).mean(axis=1)
        iv = _interval(boot)
        o = _decide(iv, below=-0.01, above=-0.01)
        ratio = float(best.loc[base, "iterations"] / best.loc[method, "iterations"])
        parts.append({"method": method, "accuracy_change": diff, "interval": iv, "outcome": o,
                      "fewer_total_iterations": ratio})
        outcomes.append(o)
    if not parts:
        return _verdict("f", results.name, NOT_TESTABLE, "accuracy change", None, (None, None), rule,
                        "the study has no adaptive runs")
    outcome = CONTRADICTED if CONTRADICTED in outcomes else (REPRODUCED if all(o == REPRODUCED for o in outcomes)
                                                              else NOT_RESOLVED)
    worst = min(parts, key=lambda p: p["accuracy_change"])
    top = max(p["fewer_total_iterations"] for p in parts)
    five = REPRODUCED if top >= 5 else NOT_RESOLVED
    return _verdict("f", results.name, outcome, "accuracy change of the worst method (points as a fraction)",
                    worst["accuracy_change"], worst["interval"], rule,
                    f"fewest iterations: {top:.2f}x (the paper's up to 5x: {five})", parts)


def describe_f(v: Verdict) -> str:
    """What verdict (f) says about accuracy, in points, computed from the verdict itself (the
    chapter's prose follows the verdict, never the other way round)."""
    if not v.parts:
        return f"Accuracy: verdict (f) is {v.outcome} ({v.detail})."
    worst = min(v.parts, key=lambda p: p["accuracy_change"])
    below = [p["method"] for p in v.parts if p["interval"][0] is not None and p["interval"][0] < -0.01]
    lo, hi = (100 * x for x in worst["interval"])
    text = (f"Accuracy: verdict (f) is **{v.outcome}**. The largest loss against the fixed batch is "
            f"{worst['method']}'s, {100 * worst['accuracy_change']:+.2f} points (90% interval {lo:+.2f} to "
            f"{hi:+.2f} points); ")
    if v.outcome == REPRODUCED:
        return text + "every method's interval lies above -1 point, as Yao et al. report."
    if v.outcome == CONTRADICTED:
        return text + "an interval lies entirely below -1 point, against Yao et al.'s report."
    return text + (f"the intervals of {', '.join(below)} reach below -1 point, so these seeds cannot tell a loss "
                   "of a point from none: the miniature neither confirms nor contradicts the paper's 'within 1%'.")
