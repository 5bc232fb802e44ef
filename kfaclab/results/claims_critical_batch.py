"""Claims (c), (i), (j) and (k): the critical batch sizes of SGD, K-FAC and Adam, and the NQM's order of them.

Rules versions 1-2 of book/verdicts.md: each pair's log2 ratio of fitted B_crit with its bootstrap
interval; (k) compares the pairs' verdicts with the noisy quadratic model's prediction, which the
caller passes in (kfaclab.nqm.study_prediction), so the verdicts do not depend on the NQM's code.
"""

from __future__ import annotations

import math

import numpy as np

from kfaclab.results.bootstrap import _interval, _Steps, fit_b_crit_rows, primary_target
from kfaclab.results.claims import (
    B_CRIT_PAIRS,
    CONTRADICTED,
    NAMES,
    NOT_RESOLVED,
    REPRODUCED,
    Verdict,
    _decide,
    _unresolved_if_missing,
    _verdict,
)
from kfaclab.results.scaling import fit_steps_curve
from kfaclab.results.study import StudyResults

AGREE, DISAGREE, CANNOT_TELL = "agree", "disagree", "cannot tell"  # rule (k): the runs against the NQM


def claim_c(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    return _b_crit_ratio(results, "c", st, target)


def claim_i(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    return _b_crit_ratio(results, "i", st, target)


def claim_j(results: StudyResults, st: _Steps | None = None, target=None) -> Verdict:
    return _b_crit_ratio(results, "j", st, target)


def _b_crit_ratio(results: StudyResults, key: str, st: _Steps | None, target) -> Verdict:
    """Rules (c), (i) and (j): log2 of one optimizer's fitted B_crit over another's at the pair's
    primary target, with the identification check of (c)."""
    num, den, threshold = B_CRIT_PAIRS[key]
    statistic = f"log2({NAMES[num]} B_crit / {NAMES[den]} B_crit)"
    rule = (f"{statistic} from fits of S(B) = S_min (1 + B_crit/B): not identified (not resolved) when a fitted "
            f"B_crit lies beyond the largest batch size; reproduced above {threshold:g}, contradicted below "
            f"{threshold:g}")
    target = target if target is not None else primary_target(results, (den, num))
    if target is None:
        return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule,
                        f"no accuracy target is reached by both {NAMES[num]} and {NAMES[den]} at three or more "
                        "batch sizes")
    st = st if st is not None and st.target == target else _Steps(results, target)
    fits, boots = {}, {}
    for opt in (den, num):
        bs, p = st.curve(opt)
        try:
            fits[opt] = fit_steps_curve(bs, p)
        except ValueError as e:
            return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule,
                            f"{NAMES[opt]}: {e}")
        _, boot = st.curve(opt, "boot")
        boots[opt] = fit_b_crit_rows(bs, boot)
    unidentified = [NAMES[o] for o, f in fits.items() if f["at_edge"] or f["b_crit"] > max(st.batch_sizes(o))]
    detail = ", ".join(f"{NAMES[o]} B_crit {f['b_crit']:,.0f}" for o, f in fits.items())
    est = math.log2(fits[num]["b_crit"] / fits[den]["b_crit"])
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = np.log2(boots[num] / boots[den])
    iv = _interval(samples)
    if unidentified:
        return _verdict(key, results.name, NOT_RESOLVED, statistic, est, iv, rule,
                        f"target {target:g}; B_crit not identified for {', '.join(unidentified)} (beyond the "
                        f"largest batch size measured); {detail}")
    v = _verdict(key, results.name, _decide(iv, below=threshold, above=threshold), statistic, est, iv, rule,
                 f"target {target:g}; {detail}")
    return _unresolved_if_missing(v, samples, "a target not reached, or B_crit not identified")


def claim_k(results: StudyResults, pair_verdicts: dict, prediction: dict) -> Verdict:
    """Rule (k): on each pair ((c), (i), (j)) the NQM set up as the studies tune predicts
    *reproduced* where its log2 ratio of B_crit lies above the pair's threshold, *contradicted*
    below; the runs agree where the pair's verdict is the predicted one, disagree where it is the
    other, cannot tell where it is not resolved. Reproduced if every pair agrees, contradicted if
    any disagrees. `prediction` maps each pair's claim to the model's log2 ratio: the caller
    passes kfaclab.nqm.study_prediction(), so the verdicts do not import the model above them."""
    rule = ("per pair (K-FAC, SGD), (Adam, SGD), (K-FAC, Adam): the NQM predicts reproduced above the pair's "
            "threshold, contradicted below; the runs agree where the pair's verdict (c, i, j) is the predicted one, "
            "disagree where it is the other; reproduced if all agree, contradicted if any disagrees")
    parts, outcomes = [], []
    for key, (num, den, threshold) in B_CRIT_PAIRS.items():
        v = pair_verdicts[key]
        predicted = REPRODUCED if prediction[key] > threshold else CONTRADICTED
        if v.outcome not in (REPRODUCED, CONTRADICTED):
            o = CANNOT_TELL
        else:
            o = AGREE if v.outcome == predicted else DISAGREE
        parts.append({"pair": f"{NAMES[num]} over {NAMES[den]}", "claim": key, "outcome": o,
                      "nqm_log2_ratio": float(prediction[key]), "nqm_predicts": predicted,
                      "runs_log2_ratio": v.estimate, "interval": v.interval, "runs_verdict": v.outcome})
        outcomes.append(o)
    outcome = CONTRADICTED if DISAGREE in outcomes else (REPRODUCED if all(o == AGREE for o in outcomes)
                                                          else NOT_RESOLVED)
    detail = "; ".join(f"{p['pair']}: {p['outcome']} (NQM {p['nqm_log2_ratio']:+.2f}, predicts {p['nqm_predicts']}; "
                       f"runs {'–' if p['runs_log2_ratio'] is None else format(p['runs_log2_ratio'], '+.2f')}, "
                       f"{p['runs_verdict']})" for p in parts)
    return _verdict("k", results.name, outcome, "pairs on which the runs agree with the NQM", None,
                    (None, None), rule, detail, parts)
