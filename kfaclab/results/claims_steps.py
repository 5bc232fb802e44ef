"""Claims (a), (b), (g) and (h): how K-FAC's and SGD's steps to the target scale with the batch size.

Rules versions 1-2 of book/verdicts.md, on the bootstrap replicates of kfaclab.results.bootstrap.
"""

from __future__ import annotations

import math

import numpy as np

from kfaclab.results.bootstrap import _interval, _slope, _Steps, primary_target
from kfaclab.results.claims import (
    CONTRADICTED,
    MAX_MISSING,
    NOT_RESOLVED,
    REPRODUCED,
    Verdict,
    _decide,
    _missing,
    _no_primary,
    _unresolved_if_missing,
    _verdict,
)
from kfaclab.results.study import StudyResults


def _ratio_curve(st: _Steps):
    bs_s, p_s = st.curve("sgd")
    bs_k, p_k = st.curve("kfac")
    common = [b for b in bs_s if b in bs_k]
    ps = np.array([p_s[bs_s.index(b)] for b in common])
    pk = np.array([p_k[bs_k.index(b)] for b in common])
    _, bs_boot = st.curve("sgd", "boot")
    _, bk_boot = st.curve("kfac", "boot")
    bs_boot = bs_boot[:, [bs_s.index(b) for b in common]]
    bk_boot = bk_boot[:, [bs_k.index(b) for b in common]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return common, np.log2(pk / ps), np.log2(bk_boot / bs_boot)


def claim_a(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    rule = "slope per doubling of log2(K-FAC steps / SGD steps): contradicted below -0.1, reproduced above -0.1"
    target = target if target is not None else primary_target(results)
    if target is None:
        return _no_primary("a", results, "slope of log2 ratio per doubling", rule)
    st = st or _Steps(results, target)
    common, point, boot = _ratio_curve(st)
    used = [b for b, v in zip(common, point) if math.isfinite(v)]
    est = _slope(common, point)
    samples = np.array([_slope(used, row[[common.index(b) for b in used]]) for row in boot])
    iv = _interval(samples)
    v = _verdict("a", results.name, _decide(iv, below=-0.1, above=-0.1), "slope of log2(K-FAC/SGD steps) per "
                 "doubling", est, iv, rule, f"target {target:g}, batch sizes {', '.join(map(str, used))}")
    return _unresolved_if_missing(v, samples)


def claim_g(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    return _ratio_at(results, "g", st, target, smallest=True)


def claim_h(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    return _ratio_at(results, "h", st, target, smallest=False)


def _ratio_at(results, key, st, target, smallest: bool) -> Verdict:
    threshold = math.log2(0.8) if smallest else 0.0
    rule = ("log2(K-FAC steps / SGD steps) at the smallest batch size: contradicted below log2(0.8), "
            "reproduced above") if smallest else \
        ("log2(K-FAC steps / SGD steps) at the largest batch size both reach: reproduced above 0, "
         "contradicted below 0")
    target = target if target is not None else primary_target(results)
    if target is None:
        return _no_primary(key, results, "log2 ratio of steps", rule)
    st = st or _Steps(results, target)
    common, point, boot = _ratio_curve(st)
    both = [i for i, v in enumerate(point) if math.isfinite(v)]
    if not both:
        return _verdict(key, results.name, NOT_RESOLVED, "log2 ratio of steps", None, (None, None), rule,
                        "no batch size where both reach the target")
    if smallest and min(both) != 0:  # the rule looks at the smallest batch size itself
        return _verdict(key, results.name, NOT_RESOLVED, f"log2(K-FAC/SGD steps) at batch {common[0]}", None,
                        (None, None), rule, f"target {target:g}: not reached by both optimizers at batch {common[0]}")
    i = min(both) if smallest else max(both)
    iv = _interval(boot[:, i])
    outcome = _decide(iv, below=threshold, above=threshold)
    v = _verdict(key, results.name, outcome, f"log2(K-FAC/SGD steps) at batch {common[i]}", point[i], iv, rule,
                 f"target {target:g}; K-FAC needs {2 ** point[i]:.2f}x SGD's iterations")
    return _unresolved_if_missing(v, boot[:, i])


def claim_b(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    rule = ("scaling efficiency at the largest batch size reaching the target (at least 8x the smallest): "
            "reproduced below 0.5 for both optimizers, contradicted above 0.8 for either")
    target = target if target is not None else primary_target(results)
    if target is None:
        return _no_primary("b", results, "scaling efficiency", rule)
    st = st or _Steps(results, target)
    parts, outcomes, worst = [], [], np.array([])
    for opt in ("sgd", "kfac"):
        bs, p = st.curve(opt)
        _, boot = st.curve(opt, "boot")
        ok = [i for i, v in enumerate(p) if math.isfinite(v)]
        if not ok or bs[max(ok)] < 8 * bs[min(ok)]:
            parts.append({"optimizer": opt, "outcome": NOT_RESOLVED, "detail": "reached the target over less than "
                          "an 8x range of batch sizes"})
            outcomes.append(NOT_RESOLVED)
            continue
        i0, i1 = min(ok), max(ok)
        eff = p[i0] * bs[i0] / bs[i1] / p[i1]
        with np.errstate(invalid="ignore", divide="ignore"):
            samples = boot[:, i0] * bs[i0] / bs[i1] / boot[:, i1]
        iv = _interval(samples)
        o = _decide(iv, below=0.5, above=0.8, below_means=REPRODUCED, above_means=CONTRADICTED)
        if _missing(samples) > MAX_MISSING:
            o = NOT_RESOLVED
        parts.append({"optimizer": opt, "batch_size": bs[i1], "efficiency": float(eff), "interval": iv, "outcome": o})
        outcomes.append(o)
        worst = samples if not len(worst) else worst
    if CONTRADICTED in outcomes:
        outcome = CONTRADICTED
    elif all(o == REPRODUCED for o in outcomes):
        outcome = REPRODUCED
    else:
        outcome = NOT_RESOLVED
    est = max((pt["efficiency"] for pt in parts if "efficiency" in pt), default=None)
    iv = max((pt["interval"] for pt in parts if "interval" in pt), default=(None, None), key=lambda x: x[1] or 0)
    return _verdict("b", results.name, outcome, "scaling efficiency at the largest batch size (the higher of "
                    "the two optimizers)", est, iv, rule, f"target {target:g}", parts)
