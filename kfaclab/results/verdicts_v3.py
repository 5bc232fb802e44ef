"""Verdicts under rules version 3 (book/verdicts.md), on studies made under them.

What changes from versions 1 and 2 (kfaclab.results.verdicts), as the rules state it:
- intervals: the pooled seed bootstrap with the hull interval (kfaclab.results.intervals), with
  the bootstrap's Monte-Carlo error; an interval end within that error of a threshold is not
  resolved; (b) has an interval per optimizer;
- grids are bracketed (kfaclab.sweep.bracket): a verdict that uses a cell whose optimum is still
  on an edge at the limit says so (`flagged`);
- robustness, (d) and (e), is the width of the good region in log2 of the effective learning
  rate (kfaclab.results.width), measured on runs trained to a fixed epoch budget and to a fixed
  iteration budget (two studies of their own), not read from the middle of longer runs; a width
  whose region reaches the end of its row is censored, and a part resting on one is not resolved.
The claims, their statistics' definitions on steps to target and their thresholds are those of
versions 1 and 2 (the rules' text says where not).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from kfaclab.results.bootstrap import cells, primary_target
from kfaclab.results.claims import (
    B_CRIT_PAIRS,
    CONTRADICTED,
    NAMES,
    NOT_RESOLVED,
    REPRODUCED,
    Verdict,
    _verdict,
)
from kfaclab.results.claims_adaptive import claim_f
from kfaclab.results.claims_critical_batch import claim_k
from kfaclab.results.flags import _scaled, fit_flag_effects, flag_effects, flag_margin, flag_reach
from kfaclab.results.intervals import (
    LEVEL,
    N_BOOT,
    interval,
    mean_replicates,
    missing_share,
    monte_carlo_error,
    step_replicates,
)
from kfaclab.results.statistics import (
    b_crit,
    log2_ratio,
    slopes,
    steps_statistics,
    used_batch_sizes,
    width_statistics,
)
from kfaclab.results.study import FINISHED, StudyResults
from kfaclab.results.width import widths

VERSION = 3
SEED = 0
MAX_MISSING = 0.2
E_THRESHOLD = 1.0  # (e): K-FAC's good region wider by more than one doubling of the effective rate


def decide(iv, mc, below=None, above=None, below_means=CONTRADICTED, above_means=REPRODUCED) -> str:
    """The outcome of an interval against thresholds, as version 2's, except that an interval end
    within the bootstrap's Monte-Carlo error `mc` of its threshold does not resolve."""
    lo, hi = iv
    if lo is None:
        return NOT_RESOLVED
    mc = mc or 0.0
    if below is not None and hi < below - mc:
        return below_means
    if above is not None and lo > above + mc:
        return above_means
    return NOT_RESOLVED


def _judge(key, study, rows, statistic, rule, below, above, below_means=CONTRADICTED, above_means=REPRODUCED,
           detail="", parts=None, why="a target not reached"):
    est = float(rows[0])
    samples = rows[1:]
    iv = interval(est, samples)
    mc = monte_carlo_error(est, samples)
    outcome = decide(iv, mc, below, above, below_means, above_means)
    miss = missing_share(samples)
    note = f"Monte-Carlo error of the interval's ends {mc:.2g}" if mc is not None else ""
    if miss > MAX_MISSING:
        outcome = NOT_RESOLVED
        note += f"; {100 * miss:.0f}% of bootstrap replicates lack the statistic ({why})"
    return _verdict(key, study, outcome, statistic, est, iv, rule, _join(detail, note.strip("; ")), parts)


def _missing_note(rows) -> str:
    """Why a part whose interval clears its thresholds may still not resolve: too many bootstrap
    replicates without the statistic ("" when there are few enough)."""
    miss = missing_share(rows[1:])
    return f"{100 * miss:.0f}% of bootstrap replicates lack it" if miss > MAX_MISSING else ""


def _join(*texts) -> str:
    return "; ".join(t for t in texts if t)


# ------------------------------------------------------------------------------ steps to target

class StepRows:
    """Per optimizer: batch sizes and a (1 + N_BOOT, batch sizes) array of steps to the target,
    the estimate in row 0 and the pooled seed bootstrap's replicates below it."""

    def __init__(self, results: StudyResults, target: float, n: int = N_BOOT, seed: int = SEED):
        rng = np.random.default_rng(seed)
        self.target = target
        self.cells = cells(results, "accuracy", target)
        self.rows: dict = {}
        for (opt, b), cell in sorted(self.cells.items()):
            est = _min_of_medians(cell.values)
            reps = step_replicates(cell.values, rng, n)
            self.rows.setdefault(opt, {})[b] = np.concatenate([[est], reps])

    def curve(self, opt, bs=None):
        mine = self.rows.get(opt, {})
        bs = sorted(mine) if bs is None else bs
        return bs, np.stack([mine.get(b, np.full(N_BOOT + 1, np.nan)) for b in bs], axis=1)


def _min_of_medians(values) -> float:
    from kfaclab.results.intervals import min_of_medians

    return float(min_of_medians(np.asarray(values, float)[None])[0])


def _flagged(results: StudyResults, opts, bs=None) -> str:
    edge = [f"{NAMES.get(o, o)} b{b}" for (o, b), c in sorted(results.bracket_cells.items())
            if o in opts and c["state"] == "edge" and (bs is None or b in bs)]
    return f"flagged: optimum on a grid edge at the bracketing limit in {', '.join(edge)}" if edge else ""


def steps_verdicts(results: StudyResults, n: int = N_BOOT, seed: int = SEED, claims: str = "abcghij") -> dict:
    """Rules (a), (b), (c), (g), (h), (i) and (j) under version 3: claim -> Verdict."""
    out = {}
    target = primary_target(results)
    if target is not None and any(k in claims for k in "abcgh"):
        st = StepRows(results, target, n, seed)
        bs = sorted(set(st.rows.get("sgd", {})) & set(st.rows.get("kfac", {})))
        _, sgd = st.curve("sgd", bs)
        _, kfac = st.curve("kfac", bs)
        stats = steps_statistics(bs, sgd, kfac)
        flag = _flagged(results, ("sgd", "kfac"))
        base = f"target {target:g}, batch sizes {bs[0]} to {bs[-1]}" if bs else f"target {target:g}"
        for key in "agh":
            if key in claims:
                statistic, rule, thresholds = _step_rule(key, bs)
                out[key] = _statistic_or_not(key, results, stats, key, statistic, rule, thresholds,
                                             _join(base, flag))
        both = used_batch_sizes(sgd[0], kfac[0]) if bs else []
        for key in "agh":
            if flag and both and key in out and out[key].estimate is not None:
                reached = {(o, b) for o, row in (("sgd", sgd[0]), ("kfac", kfac[0]))
                           for b, v in zip(bs, row) if math.isfinite(v)}
                effects, shifts = flag_effects(results, key, bs, both, reached)
                reach = flag_reach(results, out[key].outcome, effects, shifts, target)
                statistic, rule, thresholds = _step_rule(key, bs)

                def again(scale, key=key, statistic=statistic, rule=rule, thresholds=thresholds):
                    moved = steps_statistics(bs, _scaled(sgd, bs, scale, "sgd"), _scaled(kfac, bs, scale, "kfac"))
                    return _statistic_or_not(key, results, moved, key, statistic, rule, thresholds, "").outcome

                margin, at = flag_margin(out[key].outcome, effects, shifts, again)
                out[key] = dataclasses.replace(out[key], detail=_join(out[key].detail, reach, margin),
                                               overturned_at=at)
        if "b" in claims:
            out["b"] = _claim_b(results, stats, bs, sgd, kfac, _join(base, flag), target)
        if "c" in claims:
            out["c"] = _b_crit("c", results, st)
    elif target is None:
        for k in "abcgh":
            if k in claims:
                out[k] = _verdict(k, results.name, NOT_RESOLVED, "", None, (None, None), "",
                                  "no accuracy target is reached by both optimizers at three or more batch sizes")
    for key in "ij":
        if key in claims:
            num, den, _ = B_CRIT_PAIRS[key]
            t = primary_target(results, (den, num))
            out[key] = _b_crit(key, results, StepRows(results, t, n, seed)) if t is not None else _verdict(
                key, results.name, NOT_RESOLVED, "", None, (None, None), "",
                f"no accuracy target is reached by both {NAMES[num]} and {NAMES[den]} at three or more batch sizes")
    return out


def _step_rule(key: str, bs: list) -> tuple[str, str, dict]:
    """(a), (g) and (h) on log2(K-FAC steps / SGD steps): statistic, rule text, thresholds."""
    first = bs[0] if bs else "the smallest size"
    return {
        "a": ("slope of log2(K-FAC/SGD steps) per doubling",
              "slope per doubling of log2(K-FAC steps / SGD steps): contradicted below -0.1, reproduced above -0.1",
              dict(below=-0.1, above=-0.1)),
        "g": (f"log2(K-FAC/SGD steps) at batch {first}",
              "log2(K-FAC steps / SGD steps) at the smallest batch size: contradicted below log2(0.8), reproduced "
              "above", dict(below=math.log2(0.8), above=math.log2(0.8))),
        "h": ("log2(K-FAC/SGD steps) at the largest batch size both reach",
              "log2(K-FAC steps / SGD steps) at the largest batch size both reach: reproduced above 0, contradicted "
              "below 0", dict(below=0.0, above=0.0)),
    }[key]


def _statistic_or_not(key, results, stats, name, statistic, rule, thresholds, detail):
    if name not in stats:
        return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule,
                        "the point estimate does not give the statistic (too few batch sizes reach the target)")
    return _judge(key, results.name, stats[name], statistic, rule, detail=detail, **thresholds)


def _claim_b(results, stats, bs, sgd, kfac, detail, target=None) -> Verdict:
    rule = ("scaling efficiency at the largest batch size reaching the target (at least 8x the smallest), each "
            "optimizer with its own interval: reproduced below 0.5 for both, contradicted above 0.8 for either")
    parts, outcomes = [], []
    for opt in ("sgd", "kfac"):
        key = f"b_{opt}"
        if key not in stats:
            parts.append({"optimizer": opt, "outcome": NOT_RESOLVED, "detail": "reached the target over less than an "
                          "8x range of batch sizes"})
            outcomes.append(NOT_RESOLVED)
            continue
        v = _judge("b", results.name, stats[key], "efficiency", rule, below=0.5, above=0.8, below_means=REPRODUCED,
                   above_means=CONTRADICTED)
        steps = sgd if opt == "sgd" else kfac
        own = np.flatnonzero(np.isfinite(steps[0]))
        first, largest = bs[int(own[0])], bs[int(own[-1])]
        part = {"optimizer": opt, "batch_size": largest, "efficiency": v.estimate, "interval": v.interval,
                "outcome": v.outcome, "detail": v.detail}
        part["why"] = _missing_note(stats[key])
        mine = [b for (o, b), c in sorted(results.bracket_cells.items()) if o == opt and c["state"] == "edge"]
        if mine and target is not None:
            # the efficiency is steps[first] x first / largest / steps[largest]: this optimizer's steps
            # falling at the first batch size lower it, at the largest raise it, elsewhere leave it
            effects = {(opt, b): -1 if b == first else 1 if b == largest else 0 for b in mine}
            shifts = [(opt, b) for b in mine if b > largest or b < first]
            part["flags"] = flag_reach(results, v.outcome, effects, shifts, target, below_means=REPRODUCED)
        parts.append(part)
        outcomes.append(v.outcome)
    outcome = CONTRADICTED if CONTRADICTED in outcomes else (REPRODUCED if all(o == REPRODUCED for o in outcomes)
                                                              else NOT_RESOLVED)
    text = "; ".join(_b_part_text(p) for p in parts)
    return _verdict("b", results.name, outcome, "scaling efficiency at the largest batch size, per optimizer", None,
                    (None, None), rule, _join(detail, text), parts)


def _b_part_text(p: dict) -> str:
    """One optimizer's part of (b) in words: its efficiency, interval, batch size and outcome, with
    why it does not resolve where its interval alone would, and what its flagged cells can do."""
    if p.get("efficiency") is None:
        return f"{NAMES[p['optimizer']]} {p.get('detail', p['outcome'])}"
    lo, hi = p["interval"]
    text = f"{NAMES[p['optimizer']]} {p['efficiency']:.3g} [{lo:.3g}, {hi:.3g}] at batch {p['batch_size']}: "
    text += p["outcome"]
    for why in (p.get("why"), p.get("flags")):
        text += f" ({why})" if why else ""
    return text


def _b_crit(key, results, st: StepRows) -> Verdict:
    num, den, threshold = B_CRIT_PAIRS[key]
    statistic = f"log2({NAMES[num]} B_crit / {NAMES[den]} B_crit)"
    rule = (f"{statistic} from fits of S(B) = S_min (1 + B_crit/B): not identified (not resolved) when a point fit's "
            f"B_crit lies beyond the largest batch size or at the search's edge; reproduced above {threshold:g}, "
            f"contradicted below {threshold:g}")
    bs = sorted(set(st.rows.get(num, {})) & set(st.rows.get(den, {})))
    if not bs:
        return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule, "no runs of both")
    _, a = st.curve(num, bs)
    _, b = st.curve(den, bs)
    fa, fb = b_crit(bs, a), b_crit(bs, b)
    detail = (f"target {st.target:g}; {NAMES[num]} B_crit {_fmt(fa[0])}, {NAMES[den]} B_crit {_fmt(fb[0])} "
              f"(batch sizes {bs[0]} to {bs[-1]})")
    flag = _flagged(results, (num, den))
    if not (math.isfinite(fa[0]) and math.isfinite(fb[0])):
        which = [NAMES[o] for o, f in ((num, fa), (den, fb)) if not math.isfinite(f[0])]
        return _verdict(key, results.name, NOT_RESOLVED, statistic, None, (None, None), rule,
                        _join(detail, f"B_crit not identified for {', '.join(which)}", flag))
    why = "a target not reached, or B_crit not identified"
    v = _judge(key, results.name, log2_ratio(fa, fb), statistic, rule, below=threshold, above=threshold,
               detail=_join(detail, flag), why=why)
    if flag and v.estimate is not None:
        effects, shifts = fit_flag_effects(results, key, st, bs)

        def again(scale):
            moved = log2_ratio(b_crit(bs, _scaled(a, bs, scale, num)), b_crit(bs, _scaled(b, bs, scale, den)))
            return _judge(key, results.name, moved, statistic, rule, below=threshold, above=threshold, why=why).outcome

        margin, at = flag_margin(v.outcome, effects, shifts, again)
        v = dataclasses.replace(v, detail=_join(v.detail, flag_reach(results, v.outcome, effects, shifts, st.target),
                                                margin), overturned_at=at)
    return v


def b_crit_intervals(results: StudyResults, target: float, n: int = N_BOOT, seed: int = SEED) -> dict:
    """Each optimizer's fitted B_crit at an accuracy target with version 3's 90% interval:
    optimizer -> (estimate, low, high). The steps are (c)'s (StepRows: each batch size's grid
    minimum of the medians over seeds, and the pooled seed bootstrap's replicates), each row refitted
    over the optimizer's own batch sizes; the hull interval is taken on log2 B_crit (the statistic
    whose coverage runs/coverage measures, "bcrit_sgd" and "bcrit_kfac"). NaN where the estimate's
    fit does not identify B_crit (at the search's edge or beyond the largest batch size)."""
    from kfaclab.results.statistics import log_b_crit

    st = StepRows(results, target, n, seed)
    out = {}
    for opt in st.rows:
        bs, rows = st.curve(opt)
        logs = log_b_crit(bs, rows)
        if not math.isfinite(logs[0]):
            out[opt] = (math.nan, math.nan, math.nan)
            continue
        lo, hi = interval(float(logs[0]), logs[1:])
        out[opt] = (2.0 ** logs[0], 2.0 ** lo if lo is not None else math.nan,
                    2.0 ** hi if hi is not None else math.nan)
    return out


def _fmt(v) -> str:
    return f"{v:,.0f}" if math.isfinite(v) else "not identified"


# ------------------------------------------------------------------------------ robustness widths

def width_cells(results: StudyResults) -> dict:
    """(optimizer, batch size) -> dict(lr, other, x, acc): per configuration its nominal learning
    rate, its other grid value, log2 of its effective learning rate (mean over seeds; K-FAC's
    geometric mean of lr x nu, else the peak rate) and its final accuracies (configurations x
    seeds; NaN for a run without one: diverged, failed, pending)."""
    runs = results.runs
    out = {}
    for (opt, b), g in runs[runs["batch_schedule"] == "fixed"].groupby(["optimizer", "batch_size"], observed=True):
        axes = [a for a in results.grid_keys.get(opt, []) if f"hp_{a}" in g]
        if "lr" not in axes or len(axes) > 2:
            continue
        # a grid of the learning rate alone (the ResNet studies) is one row: its other value is 0
        other_axis = next((a for a in axes if a != "lr"), None)
        configs = sorted({(float(r["hp_lr"]), float(r[f"hp_{other_axis}"]) if other_axis else 0.0)
                          for _, r in g.iterrows()})
        seeds = sorted(g["seed"].unique())
        acc = np.full((len(configs), len(seeds)), np.nan)
        x = np.full((len(configs), len(seeds)), np.nan)
        for _, r in g.iterrows():
            config = (float(r["hp_lr"]), float(r[f"hp_{other_axis}"]) if other_axis else 0.0)
            i, j = configs.index(config), seeds.index(r["seed"])
            if r["status"] == "completed":
                acc[i, j] = r["final_accuracy"]
            eff = r.get("effective_lr_geomean")
            rate = eff if eff is not None and isinstance(eff, float) and math.isfinite(eff) and eff > 0 \
                else r.get("peak_lr")
            if rate is not None and isinstance(rate, float) and math.isfinite(rate) and rate > 0:
                x[i, j] = math.log2(rate)
        lr = np.array([c[0] for c in configs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            xm = np.nanmean(x, axis=1)
        xm = np.where(np.isfinite(xm), xm, np.log2(lr))  # a configuration without a run: its nominal rate
        out[(opt, int(b))] = {"lr": lr, "other": np.array([c[1] for c in configs]), "x": xm, "acc": acc,
                              "other_axis": other_axis,
                              "finished": bool(g["status"].isin(FINISHED + ("failed",)).all())}
    return out


def width_rows(results: StudyResults, opt: str, bs, n: int = N_BOOT, seed: int = SEED):
    """(1 + n, batch sizes) widths (estimate then replicates) and (batch sizes,) censored flags of
    the estimate."""
    rng = np.random.default_rng(seed)
    wc = width_cells(results)
    rows, censored = [], []
    for b in bs:
        c = wc.get((opt, b))
        if c is None:
            rows.append(np.full(n + 1, np.nan))
            censored.append(False)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            est = np.nanmean(c["acc"], axis=1)
        means = np.concatenate([est[None], mean_replicates(c["acc"], rng, n)])
        w, lo, hi = widths(c["lr"], c["other"], c["x"], means)
        rows.append(w)
        censored.append(bool(lo[0] or hi[0]))
    return np.stack(rows, axis=1), censored


def width_table(results: StudyResults):
    """Per optimizer and batch size: the width of the good region (log2 of the effective learning
    rate), whether it is censored, its 90% interval, and K-FAC's share of clipped steps."""
    import pandas as pd

    wc = width_cells(results)
    rows = []
    for opt in sorted({o for o, _ in wc}):
        bs = sorted(b for o, b in wc if o == opt)
        w, cens = width_rows(results, opt, bs)
        for k, b in enumerate(bs):
            lo, hi = interval(float(w[0, k]), w[1:, k]) if math.isfinite(w[0, k]) else (None, None)
            g = results.runs[(results.runs["optimizer"] == opt) & (results.runs["batch_size"] == b)]
            clip = g["kl_clip_bound_share"].dropna() if "kl_clip_bound_share" in g else []
            rows.append({"optimizer": opt, "batch_size": b, "width (log2 effective lr)": w[0, k], "low": lo,
                         "high": hi, "censored": cens[k],
                         "KL clip bound (share of steps)": float(np.mean(clip)) if len(clip) else None})
    return pd.DataFrame(rows)


def robustness_verdicts(epochs: StudyResults | None, iterations: StudyResults | None, n: int = N_BOOT,
                        seed: int = SEED, claims: str = "de") -> dict:
    """Rules (d) and (e) under version 3, from the fixed-epoch and fixed-iteration budget studies."""
    out = {}
    parts_d, parts_e = [], []
    for budget, res, want in (("epochs", epochs, "down"), ("iterations", iterations, "up")):
        if res is None:
            continue
        cells = width_cells(res)
        bs = sorted({b for (o, b) in cells if o == "sgd"} & {b for (o, b) in cells if o == "kfac"})
        if len(bs) < 3:
            continue
        w_s, cens_s = width_rows(res, "sgd", bs, n, seed)
        w_k, cens_k = width_rows(res, "kfac", bs, n, seed + 1)
        stats = width_statistics(bs, w_s, w_k)
        for opt, cens in (("sgd", cens_s), ("kfac", cens_k)):
            rows = stats[f"d_{opt}"]
            if want == "down":
                v = _judge("d", res.name, rows, "slope", "", below=0.0, above=0.0, below_means=REPRODUCED,
                           above_means=CONTRADICTED)
            else:
                v = _judge("d", res.name, rows, "slope", "", below=0.0, above=0.0)
            o = v.outcome if not any(cens) else NOT_RESOLVED
            censored_at = [b for b, c in zip(bs, cens) if c]
            why = "; ".join(t for t in (_missing_note(rows), f"censored width at b{', b'.join(map(str, censored_at))}"
                                        if censored_at else "") if t)
            parts_d.append({"optimizer": opt, "budget": budget, "study": res.name, "slope": v.estimate,
                            "interval": v.interval, "outcome": o, "censored_at": censored_at, "why": why,
                            "widths": dict(zip(bs, map(float, (w_s if opt == "sgd" else w_k)[0])))})
        if "e" in stats:
            v = _judge("e", res.name, stats["e"], "mean width difference", "", below=E_THRESHOLD, above=E_THRESHOLD,
                       below_means=REPRODUCED, above_means=CONTRADICTED)
            censored = any(cens_s) or any(cens_k)
            o = v.outcome if not censored else NOT_RESOLVED
            why = "; ".join(t for t in (_missing_note(stats["e"]), "a censored width" if censored else "") if t)
            parts_e.append({"budget": budget, "study": res.name, "difference": v.estimate, "interval": v.interval,
                            "outcome": o, "censored": censored, "why": why})
    rule_d = ("slope per doubling of the width of the region within one point of the optimizer's best (log2 of the "
              "effective learning rate), on runs trained to a fixed epoch budget (reproduced below 0) and to a fixed "
              "iteration budget (reproduced above 0); all four parts must hold; a part with a censored width is not "
              "resolved")
    rule_e = (f"mean over batch sizes of K-FAC's minus SGD's width, per budget: reproduced below {E_THRESHOLD:g} "
              f"(a factor 2 in effective learning rate), contradicted above; both budgets must hold")
    name = ", ".join(r.name for r in (epochs, iterations) if r is not None)
    if "d" in claims:
        out["d"] = _combine("d", name, parts_d, 4, "slopes of the width per doubling (four parts)", rule_d)
    if "e" in claims:
        out["e"] = _combine("e", name, parts_e, 2, "mean width difference K-FAC - SGD (log2 effective lr), per "
                            "budget", rule_e)
    return out


def _combine(key, name, parts, needed, statistic, rule) -> Verdict:
    outcomes = [p["outcome"] for p in parts]
    if CONTRADICTED in outcomes:
        outcome = CONTRADICTED
    elif len(parts) == needed and all(o == REPRODUCED for o in outcomes):
        outcome = REPRODUCED
    else:
        outcome = NOT_RESOLVED
    detail = "" if len(parts) == needed else f"{needed - len(parts)} of {needed} parts have no runs yet"
    return _verdict(key, name, outcome, statistic, None, (None, None), rule, detail, parts)


# ------------------------------------------------------------------------------ all of them

def verdicts_v3(main: StudyResults, epochs: StudyResults | None = None, iterations: StudyResults | None = None,
                adaptive: StudyResults | None = None, prediction: dict | None = None, n: int = N_BOOT,
                seed: int = SEED, claims: str = "abcdefghijk") -> list[Verdict]:
    """The verdicts of rules version 3: steps claims on `main` (the stopping-rule study), (d) and
    (e) on the budget studies, (f) on `adaptive` (version 2's rule, unchanged), (k) from the pairs
    and the NQM's `prediction` (kfaclab.nqm.study_prediction, passed in by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = set(claims)
        need_pairs = "k" in want
        steps_claims = "".join(k for k in "abcghij" if k in want or (need_pairs and k in "cij"))
        out = steps_verdicts(main, n, seed, steps_claims)
        if want & set("de"):
            out.update(robustness_verdicts(epochs, iterations, n, seed, "".join(k for k in "de" if k in want)))
        if "k" in want and prediction is not None:
            out["k"] = claim_k(main, {k: out[k] for k in "cij"}, prediction)
        if "f" in want and adaptive is not None:
            out["f"] = claim_f(adaptive, n, seed)
        return [out[k] for k in sorted(out) if k in want]


__all__ = ["VERSION", "LEVEL", "decide", "steps_verdicts", "robustness_verdicts", "verdicts_v3", "width_cells",
           "width_rows", "width_table", "slopes", "b_crit_intervals"]
