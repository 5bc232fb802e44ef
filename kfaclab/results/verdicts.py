"""Verdicts: each claim of the papers judged by the rule registered in book/verdicts.md.

The rules were committed before the runs they judge; this module implements them as written
there. Every verdict is one of OUTCOMES, with its statistic's point estimate and a 90%
interval from a bootstrap over grid configurations and, within each, seeds (1,000 seeded
replicates). Verdicts use steps-to-target values only, never which configuration was best, so
they do not depend on how ties are broken.
"""

from __future__ import annotations

import warnings

from kfaclab.results.bootstrap import _Steps, primary_target
from kfaclab.results.claims import (
    B_CRIT_PAIRS,
    CLAIM_OPTIMIZERS,
    CLAIMS,
    N_BOOT,
    SEED,
    Verdict,
)
from kfaclab.results.claims_adaptive import claim_f
from kfaclab.results.claims_critical_batch import _b_crit_ratio, claim_c, claim_k
from kfaclab.results.claims_robustness import claim_d, claim_e
from kfaclab.results.claims_steps import claim_a, claim_b, claim_g, claim_h
from kfaclab.results.study import StudyResults

# ------------------------------------------------------------------------------ all of them

def verdicts(results: StudyResults, n: int = N_BOOT, seed: int = SEED, claims=None,
             prediction: dict | None = None) -> list[Verdict]:
    """The verdicts a study can carry (of `claims`, default all): each claim where the optimizers
    it compares (CLAIM_OPTIMIZERS) have fixed-batch runs at three or more batch sizes, the
    adaptive-batch claim (f) where the study has adaptive runs, and (k) where the caller passes the
    NQM's `prediction` (kfaclab.nqm.study_prediction(); the model sits above the results, so it
    comes in as an argument). Pending runs are not checked here: see `ready_verdicts`."""
    with warnings.catch_warnings():  # empty slices (configurations without a result) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return _verdicts(results, n, seed, claims, prediction)


def pending_runs(results: StudyResults) -> dict:
    """Per claim: how many runs of the optimizers it compares have no result yet (pending or
    interrupted). A claim about adaptive batches (f) waits for every run of the study."""
    runs = results.runs
    waiting = runs["status"].isin(["pending", "interrupted"])
    out = {}
    for key, opts in CLAIM_OPTIMIZERS.items():
        mine = waiting if opts is None else waiting & runs["base_optimizer"].fillna(runs["optimizer"]).isin(opts)
        out[key] = int(mine.sum())
    return out


def carried_claims(results: StudyResults) -> list[str]:
    """The claims a study can carry: those whose optimizers all have fixed-batch runs at three or
    more batch sizes, and (f) where it has adaptive-batch runs."""
    runs = results.runs
    fixed = runs[runs["batch_schedule"] == "fixed"]
    sizes = fixed.groupby("optimizer", observed=True)["batch_size"].nunique()
    out = []
    for key, opts in CLAIM_OPTIMIZERS.items():
        if opts is None:
            if (runs["batch_schedule"] != "fixed").any():
                out.append(key)
        elif all(sizes.get(o, 0) >= 3 for o in opts):
            out.append(key)
    return out


def ready_claims(results: StudyResults, claims=None) -> tuple[list[str], dict]:
    """(ready, waiting): of `claims` (default all) that the study can carry, those whose
    optimizers' runs have all finished, and per claim still waiting its number of unfinished runs."""
    left = pending_runs(results)
    carried = [k for k in carried_claims(results) if claims is None or k in claims]
    return [k for k in carried if left[k] == 0], {k: left[k] for k in carried if left[k]}


def ready_verdicts(results: StudyResults, claims=None, n: int = N_BOOT, seed: int = SEED,
                   prediction: dict | None = None):
    """(verdicts, waiting): the verdicts of `claims` whose optimizers' runs have all finished
    (book/verdicts.md: a verdict waits only for the runs it compares), and per claim still
    waiting the number of its runs without a result. (k) is among them only with the NQM's
    `prediction`."""
    ready, waiting = ready_claims(results, claims)
    ready = [k for k in ready if k != "k" or prediction is not None]
    return (verdicts(results, n, seed, "".join(ready), prediction) if ready else []), waiting


def _verdicts(results, n, seed, claims=None, prediction=None):
    out = []
    wanted = set(claims or CLAIMS) & set(carried_claims(results))

    def can(key):  # the claim is wanted and the study can carry it
        return key in wanted

    pair_steps = {}
    if any(can(k) for k in "abcdegh"):
        target = primary_target(results)
        st = _Steps(results, target, n, seed) if target is not None else None
        pair_steps[("sgd", "kfac")] = st
        for key, fn in (("a", claim_a), ("b", claim_b), ("c", claim_c), ("g", claim_g), ("h", claim_h)):
            if can(key):
                out.append(fn(results, st, target))
        if can("d"):
            out.append(claim_d(results, n, seed))
        if can("e"):
            out.append(claim_e(results, n, seed))
    pairs = {v.claim: v for v in out if v.claim in B_CRIT_PAIRS}
    for key in ("c", "i", "j"):
        num, den, _ = B_CRIT_PAIRS[key]
        if key in pairs or not (can(key) or (can("k") and prediction is not None)):
            continue
        target = primary_target(results, (den, num))
        st = _Steps(results, target, n, seed) if target is not None else None
        pairs[key] = _b_crit_ratio(results, key, st, target)
        if can(key):
            out.append(pairs[key])
    if can("k") and prediction is not None:
        out.append(claim_k(results, pairs, prediction))
    if can("f"):
        out.append(claim_f(results, n, seed))
    return sorted(out, key=lambda v: v.claim)
