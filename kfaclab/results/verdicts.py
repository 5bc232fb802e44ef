"""Verdicts: each claim of the papers judged by the rule registered in book/verdicts.md.

The rules were committed before the runs they judge; this module implements them as written
there. Every verdict is one of OUTCOMES, with its statistic's point estimate and a 90%
interval from a bootstrap over grid configurations and, within each, seeds (1,000 seeded
replicates). Verdicts use steps-to-target values only, never which configuration was best, so
they do not depend on how ties are broken.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from kfaclab.results.published import published
from kfaclab.results.scaling import fit_steps_curve
from kfaclab.results.study import FINISHED, StudyResults

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


# ------------------------------------------------------------------------------ crossings and steps

def crossings(results: StudyResults, kind: str, target: float) -> pd.Series:
    """Per run name: the iteration of its first evaluation meeting the target (test accuracy >=
    target for kind 'accuracy', running training loss <= target for 'loss'); inf for a finished
    run that never met it. Runs without a result (failed, pending) are absent."""
    ev = results.evals
    finished = results.runs.loc[results.runs["status"].isin(FINISHED), "name"]
    if kind == "accuracy":
        hit = ev[ev["test_accuracy"] >= target]
    elif kind == "loss":
        hit = ev[ev["train_loss"].notna() & (ev["train_loss"] <= target)]
    else:
        raise ValueError(f"kind must be 'accuracy' or 'loss', got {kind!r}")
    first = hit.groupby("name")["iteration"].min()
    return pd.Series({n: float(first.get(n, math.inf)) for n in finished}, dtype=float)


@dataclass
class Cell:
    """The runs of one optimizer at one batch size: crossings per configuration (rows) and seed
    (columns, NaN where a seed has no result), for one target."""
    values: np.ndarray  # (configurations, seeds): iteration, inf = never, nan = no run
    configs: list  # the grid point of each row

    def point(self) -> float:
        return _steps(self.values)


def _steps(values: np.ndarray) -> float:
    """Shallue's rule with seeds: the minimum over configurations of the median over seeds."""
    meds = [np.median(v[~np.isnan(v)]) for v in values if (~np.isnan(v)).any()]
    best = min(meds) if meds else math.inf
    return best if math.isfinite(best) else math.nan


def cells(results: StudyResults, kind: str, target: float) -> dict:
    """(optimizer, batch size) -> Cell for this target."""
    cross = crossings(results, kind, target)
    runs = results.runs[results.runs["name"].isin(cross.index)]
    hp = [c for c in runs.columns if c.startswith("hp_")]
    out = {}
    for (opt, b), g in runs.groupby(["optimizer", "batch_size"], sort=True, observed=True):
        keys = [c for c in hp if g[c].notna().all()]
        points = g[keys].astype(str).agg("|".join, axis=1) if keys else pd.Series("", index=g.index)
        seeds = sorted(g["seed"].unique())
        configs = list(dict.fromkeys(points))
        values = np.full((len(configs), len(seeds)), np.nan)
        for (_, row), p in zip(g.iterrows(), points):
            values[configs.index(p), seeds.index(row["seed"])] = cross[row["name"]]
        out[(opt, int(b))] = Cell(values, configs)
    return out


def bootstrap_steps(cell: Cell, rng: np.random.Generator, n: int = N_BOOT) -> np.ndarray:
    """`n` replicates of the cell's steps to target: configurations resampled with replacement,
    then within each drawn configuration its seeds (those with a result) with replacement."""
    rows = [v[~np.isnan(v)] for v in cell.values]
    rows = [r for r in rows if len(r)]
    if not rows:
        return np.full(n, np.nan)
    width = max(len(r) for r in rows)
    padded = np.array([np.resize(r, width) for r in rows])  # each row cycles its own values
    counts = np.array([len(r) for r in rows])
    c = len(rows)
    pick = rng.integers(0, c, size=(n, c))
    seed_idx = (rng.random((n, c, width)) * counts[pick][..., None]).astype(int)
    draws = padded[pick[..., None], seed_idx]  # (n, c, width)
    # Each drawn configuration keeps its own number of seeds: columns past it are ignored.
    mask = np.arange(width)[None, None, :] < counts[pick][..., None]
    draws = np.where(mask, draws, np.nan)
    with np.errstate(invalid="ignore"):
        meds = np.nanmedian(draws, axis=2)
    best = meds.min(axis=1)
    return np.where(np.isfinite(best), best, np.nan)


def _interval(samples: np.ndarray) -> tuple[float, float] | tuple[None, None]:
    ok = samples[np.isfinite(samples)]
    if not len(ok):
        return (None, None)
    q = [(1 - LEVEL) / 2, (1 + LEVEL) / 2]
    lo, hi = np.quantile(ok, q)
    return float(lo), float(hi)


def _missing(samples: np.ndarray) -> float:
    return float(np.mean(~np.isfinite(samples))) if len(samples) else 1.0


def _slope(x, y) -> float:
    x, y = np.log2(np.asarray(x, float)), np.asarray(y, float)
    keep = np.isfinite(y)
    if keep.sum() < 3:
        return math.nan
    x, y = x[keep], y[keep]
    return float(np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------------------ the primary target

def primary_target(results: StudyResults, optimizers=("sgd", "kfac")) -> float | None:
    """The highest accuracy target that every one of `optimizers` reaches at three or more batch
    sizes in the point estimate."""
    for t in sorted(results.targets, reverse=True):
        cs = cells(results, "accuracy", t)
        if all(sum(math.isfinite(c.point()) for (o, _), c in cs.items() if o == opt) >= 3 for opt in optimizers):
            return t
    return None


class _Steps:
    """Steps to the primary target per optimizer and batch size, with aligned bootstrap replicates
    (each replicate resamples every cell independently; replicate k of every cell together is
    one replicate of the study)."""

    def __init__(self, results: StudyResults, target: float, n: int = N_BOOT, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.target = target
        self.cells = cells(results, "accuracy", target)
        self.point = {k: c.point() for k, c in self.cells.items()}
        self.boot = {k: bootstrap_steps(c, rng, n) for k, c in self.cells.items()}
        self.n = n

    def batch_sizes(self, opt) -> list[int]:
        return sorted(b for (o, b) in self.cells if o == opt)

    def curve(self, opt, which="point"):
        bs = self.batch_sizes(opt)
        if which == "point":
            return bs, np.array([self.point[(opt, b)] for b in bs])
        return bs, np.stack([self.boot[(opt, b)] for b in bs], axis=1)  # (n, len(bs))


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


# ------------------------------------------------------------------------------ the claims on steps

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


AGREE, DISAGREE, CANNOT_TELL = "agree", "disagree", "cannot tell"


def claim_k(results: StudyResults, pair_verdicts: dict, prediction: dict | None = None) -> Verdict:
    """Rule (k): on each pair ((c), (i), (j)) the NQM set up as the studies tune predicts
    *reproduced* where its log2 ratio of B_crit lies above the pair's threshold, *contradicted*
    below; the runs agree where the pair's verdict is the predicted one, disagree where it is the
    other, cannot tell where it is not resolved. Reproduced if every pair agrees, contradicted if
    any disagrees. `prediction` maps each pair's claim to the model's log2 ratio
    (kfaclab.nqm.study_prediction when not given)."""
    rule = ("per pair (K-FAC, SGD), (Adam, SGD), (K-FAC, Adam): the NQM predicts reproduced above the pair's "
            "threshold, contradicted below; the runs agree where the pair's verdict (c, i, j) is the predicted one, "
            "disagree where it is the other; reproduced if all agree, contradicted if any disagrees")
    if prediction is None:
        from kfaclab.nqm import study_prediction

        prediction = study_prediction()
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


def fit_b_crit_rows(bs, steps: np.ndarray) -> np.ndarray:
    """B_crit of S(B) = S_min (1 + B_crit / B) fitted to every row of `steps` (replicates x batch
    sizes) at once (`fit_steps_rows`). NaN where a row has fewer than three finite steps or its
    B_crit is not identified (at the search's edge, or beyond the largest batch size the row has).
    The same function as rules version 3's (kfaclab.results.statistics.b_crit)."""
    from kfaclab.results.statistics import b_crit

    return b_crit(bs, steps)


# ------------------------------------------------------------------------------ robustness claims

def _accuracy_cells(results: StudyResults, budget_type: str) -> dict:
    """(optimizer, batch size) -> (configurations x seeds) accuracy at the budget (nan: none)."""
    from kfaclab.results.robustness import accuracy_at_budget

    table = accuracy_at_budget(results, budget_type)
    hp = [c for c in table.columns if c.startswith("hp_")]
    out = {}
    for (opt, b), g in table.groupby(["optimizer", "batch_size"], sort=True):
        keys = [c for c in hp if g[c].notna().all()]
        points = g[keys].astype(str).agg("|".join, axis=1) if keys else pd.Series("", index=g.index)
        seeds = sorted(results.runs.set_index("name").loc[g["name"], "seed"].unique())
        seed_of = results.runs.set_index("name")["seed"]
        configs = list(dict.fromkeys(points))
        values = np.full((len(configs), len(seeds)), np.nan)
        for (_, row), p in zip(g.iterrows(), points):
            values[configs.index(p), seeds.index(seed_of[row["name"]])] = row["accuracy"]
        out[(opt, int(b))] = values
    return out


def _resample_configs(values: np.ndarray, rng, n: int) -> np.ndarray:
    """(n, configurations) of per-configuration mean accuracy over resampled seeds, configurations
    resampled with replacement; a configuration without any accuracy stays nan (outside any region)."""
    c, s = values.shape
    pick = rng.integers(0, c, size=(n, c))
    seed_idx = rng.integers(0, s, size=(n, c, s))
    draws = values[pick[..., None], seed_idx]
    with np.errstate(invalid="ignore"):
        return np.nanmean(draws, axis=2) if s else np.full((n, c), np.nan)


def _share_within(means: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Share of configurations (last axis) within REGION_TOLERANCE of `best`; nan counts as outside."""
    with np.errstate(invalid="ignore"):
        inside = means >= (best[..., None] - REGION_TOLERANCE - 1e-12)
    return inside.sum(axis=-1) / means.shape[-1]


def claim_d(results: StudyResults, n: int = N_BOOT, seed: int = SEED) -> Verdict:
    rule = ("slope per doubling of the share of the grid within one point of the optimizer's best: under the "
            "epoch budget reproduced below 0, under the iteration budget above 0; all four parts must hold")
    rng = np.random.default_rng(seed)
    parts, outcomes = [], []
    for budget, want in (("epochs", "down"), ("iterations", "up")):
        acc = _accuracy_cells(results, budget)
        for opt in ("sgd", "kfac"):
            bs = sorted(b for (o, b) in acc if o == opt)
            if len(bs) < 3:
                parts.append({"optimizer": opt, "budget": budget, "outcome": NOT_RESOLVED})
                outcomes.append(NOT_RESOLVED)
                continue
            with np.errstate(invalid="ignore"):
                point_means = [np.nanmean(acc[(opt, b)], axis=1) for b in bs]
            best = np.nanmax(np.concatenate(point_means)) if any(np.isfinite(m).any() for m in point_means) else np.nan
            point_share = [float(_share_within(m[None], np.array([best]))[0]) for m in point_means]
            boot_means = [_resample_configs(acc[(opt, b)], rng, n) for b in bs]  # each (n, c)
            with np.errstate(invalid="ignore"):
                boot_best = np.nanmax(np.concatenate(boot_means, axis=1), axis=1)
            shares = np.stack([_share_within(m, boot_best) for m in boot_means], axis=1)  # (n, len(bs))
            est = _slope(bs, point_share)
            samples = np.array([_slope(bs, row) for row in shares])
            iv = _interval(samples)
            if want == "down":
                o = _decide(iv, below=0.0, above=0.0, below_means=REPRODUCED, above_means=CONTRADICTED)
            else:
                o = _decide(iv, below=0.0, above=0.0)
            parts.append({"optimizer": opt, "budget": budget, "slope": est, "interval": iv, "outcome": o,
                          "shares": dict(zip(bs, point_share))})
            outcomes.append(o)
    outcome = CONTRADICTED if CONTRADICTED in outcomes else (REPRODUCED if all(o == REPRODUCED for o in outcomes)
                                                              else NOT_RESOLVED)
    return _verdict("d", results.name, outcome, "slopes of the high-accuracy region's share per doubling (four "
                    "parts)", None, (None, None), rule, "", parts)


def claim_e(results: StudyResults, n: int = N_BOOT, seed: int = SEED) -> Verdict:
    rule = ("mean over batch sizes of K-FAC's minus SGD's share of the grid within one point of the best at that "
            "batch size (final accuracy): reproduced below 0.15, contradicted above 0.15")
    rng = np.random.default_rng(seed)
    acc = _accuracy_cells(results, "rule")
    diffs, samples = [], []
    bs = sorted({b for (o, b) in acc if o == "sgd"} & {b for (o, b) in acc if o == "kfac"})
    if not bs:
        return _verdict("e", results.name, NOT_RESOLVED, "difference of region shares", None, (None, None), rule,
                        "no batch size with runs of both optimizers")
    per_b = []
    for b in bs:
        shares_point, shares_boot = {}, {}
        for opt in ("sgd", "kfac"):
            with np.errstate(invalid="ignore"):
                m = np.nanmean(acc[(opt, b)], axis=1)
            best = np.nanmax(m) if np.isfinite(m).any() else np.nan
            shares_point[opt] = float(_share_within(m[None], np.array([best]))[0])
            boot = _resample_configs(acc[(opt, b)], rng, n)
            with np.errstate(invalid="ignore"):
                shares_boot[opt] = _share_within(boot, np.nanmax(boot, axis=1))
        diffs.append(shares_point["kfac"] - shares_point["sgd"])
        samples.append(shares_boot["kfac"] - shares_boot["sgd"])
        per_b.append({"batch_size": b, **{f"{o}_share": s for o, s in shares_point.items()}})
    est = float(np.mean(diffs))
    samples = np.mean(np.stack(samples, axis=1), axis=1)
    iv = _interval(samples)
    return _verdict("e", results.name, _decide(iv, below=0.15, above=0.15, below_means=REPRODUCED,
                                               above_means=CONTRADICTED),
                    "mean difference of region shares (K-FAC - SGD)", est, iv, rule, "", per_b)


# ------------------------------------------------------------------------------ adaptive batch sizes

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


# ------------------------------------------------------------------------------ all of them

def verdicts(results: StudyResults, n: int = N_BOOT, seed: int = SEED, claims=None) -> list[Verdict]:
    """The verdicts a study can carry (of `claims`, default all): each claim where the optimizers
    it compares (CLAIM_OPTIMIZERS) have fixed-batch runs at three or more batch sizes, the
    adaptive-batch claim (f) where the study has adaptive runs. Pending runs are not checked here:
    see `ready_verdicts`."""
    with warnings.catch_warnings():  # empty slices (configurations without a result) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        return _verdicts(results, n, seed, claims)


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


def ready_verdicts(results: StudyResults, claims=None, n: int = N_BOOT, seed: int = SEED):
    """(verdicts, waiting): the verdicts of `claims` whose optimizers' runs have all finished
    (book/verdicts.md: a verdict waits only for the runs it compares), and per claim still
    waiting the number of its runs without a result."""
    ready, waiting = ready_claims(results, claims)
    return (verdicts(results, n, seed, "".join(ready)) if ready else []), waiting


def _verdicts(results, n, seed, claims=None):
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
        if key in pairs or not (can(key) or can("k")):
            continue
        target = primary_target(results, (den, num))
        st = _Steps(results, target, n, seed) if target is not None else None
        pairs[key] = _b_crit_ratio(results, key, st, target)
        if can(key):
            out.append(pairs[key])
    if can("k"):
        out.append(claim_k(results, pairs))
    if can("f"):
        out.append(claim_f(results, n, seed))
    return sorted(out, key=lambda v: v.claim)


def verdict_table(vs: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.claim, "statement": v.statement, "source": v.source, "study": v.study,
                          "verdict": v.outcome, "statistic": v.statistic, "estimate": v.estimate,
                          "low": v.interval[0], "high": v.interval[1], "detail": v.detail} for v in vs])


def _number(v: Verdict) -> str:
    if v.estimate is None:
        return "–"
    lo, hi = v.interval
    interval = f" [{lo:.3g}, {hi:.3g}]" if lo is not None else ""
    return f"{v.estimate:.3g}{interval}"


def verdict_display(vs: list[Verdict], claims: str | None = None) -> pd.DataFrame:
    """The verdicts (those of `claims`, e.g. "abgh") as a table to show: the claim, its source,
    the verdict, the statistic with its estimate and 90% interval, what it rests on, and what the
    paper itself reports (kfaclab.results.published)."""
    rows = []
    for v in vs:
        if claims and v.claim not in claims:
            continue
        notes = v.detail or "; ".join(
            f"{p.get('optimizer') or p.get('method')}{' ' + p['budget'] if 'budget' in p else ''}: {p['outcome']}"
            for p in v.parts if "outcome" in p)
        rows.append({"claim": f"({v.claim}) {v.statement}", "source": v.source, "verdict": v.outcome,
                     "statistic": v.statistic, "estimate [90% interval]": _number(v), "notes": notes,
                     "the paper reports": published(v.claim).display()})
    return pd.DataFrame(rows)


def chapter_verdicts(results: StudyResults, claims: str):
    """What a results chapter shows under "Verdicts": the table of the given claims whose runs
    have all finished (verdict_display), with a sentence naming the study and what its intervals
    rest on, and for each claim still waiting for runs, "no verdict yet" with their number
    (book/verdicts.md)."""
    from IPython.display import HTML

    from kfaclab.results.study import evidence

    vs, waiting = ready_verdicts(results, claims)
    html = f"<p>On the <code>{results.name}</code> study: {evidence(results)}.</p>"
    if vs:
        html += verdict_display(vs, claims).style.hide(axis="index").set_table_attributes(
            'class="kfaclab-verdicts"').to_html()
    # Claims that wait for the same runs share one line.
    groups: dict = {}
    for key, left in waiting.items():
        groups.setdefault((left, CLAIM_OPTIMIZERS[key]), []).append(f"({key})")
    for (left, opts), keys in groups.items():
        whose = "the study's" if opts is None else " and ".join(NAMES[o] for o in opts)
        which = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
        html += (f"<p><b>No verdict yet</b> on {which}: {left} of {whose} runs have not finished, and a verdict "
                 "is drawn only from finished runs.</p>")
    return HTML(html)
