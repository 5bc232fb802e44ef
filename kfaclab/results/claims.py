"""The claims the book judges, the outcomes a verdict can have, and how an interval decides one.

Each claim of book/verdicts.md has a letter, a statement and a source (CLAIMS), and the optimizers
whose runs it compares (CLAIM_OPTIMIZERS). A Verdict is one claim judged on one study: its outcome,
its statistic's estimate and 90% interval, and the rule that decided it (_decide).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

REPRODUCED, CONTRADICTED = "reproduced", "contradicted"


NOT_RESOLVED, NOT_TESTABLE = "not resolved at this scale", "not testable here"


OUTCOMES = (REPRODUCED, CONTRADICTED, NOT_RESOLVED, NOT_TESTABLE)


N_BOOT, LEVEL, SEED = 1000, 0.90, 0


MAX_MISSING = 0.2  # more replicates than this without the statistic: not resolved


REGION_TOLERANCE = 0.01  # "within one point" of the best accuracy


@dataclass
class Verdict:
    claim: str  # the letter of book/verdicts.md
    statement: str
    source: str
    study: str
    outcome: str
    statistic: str
    estimate: float | None = None
    interval: tuple = (None, None)
    rule: str = ""
    detail: str = ""
    parts: list = field(default_factory=list)
    # Rules version 3's reading of its flags (kfaclab.results.verdicts_v3.flag_margin): the factor
    # by which the steps of flagged grid cells, lowered, would change this verdict; None where the
    # flags cannot overturn it within 0.25x, or there are none.
    overturned_at: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


CLAIMS = {
    "a": ("K-FAC does not scale better than SGD with the batch size", "Ma et al. 2020"),
    "b": ("Both optimizers leave the ideal line beyond a critical batch size", "Ma et al. 2020"),
    "c": ("K-FAC raises the critical batch size", "Zhang et al. 2019"),
    "d": ("Under an epoch budget the high-accuracy region shrinks with the batch size; under an iteration "
          "budget it grows", "Ma et al. 2020"),
    "e": ("K-FAC is no more robust to its hyperparameters than SGD", "Ma et al. 2020"),
    "f": ("Adaptive batch sizes (ABS, ABSA) lose at most 1% accuracy", "Yao et al. 2018"),
    "g": ("At small batch sizes K-FAC is comparable to SGD, not superior", "Ma et al. (the authors' summary)"),
    "h": ("As the batch size grows, K-FAC needs more iterations than SGD", "Ma et al. (the authors' summary)"),
    "i": ("Adam raises the critical batch size", "Zhang et al. 2019"),
    "j": ("K-FAC's critical batch size exceeds Adam's", "Zhang et al. 2019 (the noisy quadratic model)"),
    "k": ("The noisy quadratic model orders the critical batch sizes as the runs do", "Zhang et al. 2019"),
}


# The optimizers each claim compares (book/verdicts.md, version 2): a verdict waits only for
# their runs. None: the claim judges the study's adaptive-batch runs (f).
CLAIM_OPTIMIZERS = {"a": ("sgd", "kfac"), "b": ("sgd", "kfac"), "c": ("sgd", "kfac"), "d": ("sgd", "kfac"),
                    "e": ("sgd", "kfac"), "f": None, "g": ("sgd", "kfac"), "h": ("sgd", "kfac"),
                    "i": ("sgd", "adam"), "j": ("adam", "kfac"), "k": ("sgd", "adam", "kfac")}


# The pairs whose B_crit ratio is judged, as (claim, numerator, denominator, threshold in log2).
B_CRIT_PAIRS = {"c": ("kfac", "sgd", 0.5), "i": ("adam", "sgd", 0.5), "j": ("kfac", "adam", 0.0)}


NAMES = {"sgd": "SGD", "kfac": "K-FAC", "adam": "Adam"}


def _decide(interval, below: float | None = None, above: float | None = None,
            below_means=CONTRADICTED, above_means=REPRODUCED) -> str:
    """The outcome of an interval against thresholds: entirely below `below` -> below_means,
    entirely above `above` -> above_means, else not resolved."""
    lo, hi = interval
    if lo is None:
        return NOT_RESOLVED
    if below is not None and hi < below:
        return below_means
    if above is not None and lo > above:
        return above_means
    return NOT_RESOLVED


def _verdict(key, study, outcome, statistic, estimate, interval, rule, detail="", parts=None) -> Verdict:
    statement, source = CLAIMS[key]
    return Verdict(key, statement, source, study, outcome, statistic,
                   None if estimate is None or not math.isfinite(estimate) else float(estimate),
                   interval, rule, detail, parts or [])


def _no_primary(key, results, statistic, rule) -> Verdict:
    return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule,
                    "no accuracy target is reached by both optimizers at three or more batch sizes")


def _unresolved_if_missing(v: Verdict, samples: np.ndarray, why: str = "a target not reached") -> Verdict:
    miss = _missing(samples)
    if miss > MAX_MISSING and v.outcome != NOT_TESTABLE:
        v.outcome = NOT_RESOLVED
        v.detail = (v.detail + "; " if v.detail else "") + f"{100 * miss:.0f}% of bootstrap replicates lack the " \
            f"statistic ({why})"
    return v


def _missing(samples: np.ndarray) -> float:
    return float(np.mean(~np.isfinite(samples))) if len(samples) else 1.0
