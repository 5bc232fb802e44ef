"""What a verdict's flagged cells could do to it: rules version 3's reading of its flags
(book/verdicts.md, "A flagged verdict"), beside the verdict and not part of the rules.

A cell is flagged when its optimum was still on a grid edge after bracketing reached its limit
(kfaclab.sweep.bracket). Steps to target are a minimum over the grid, so a grid grown further
could only lower that optimizer's steps there. From that one fact: which way each flagged cell
moves a statistic (flag_effects for the step ratios of (a), (g) and (h); fit_flag_effects, by
refitting, for the critical batch sizes of (c), (i) and (j)), whether the flags can overturn the
verdict (flag_reach), and how far the steps would have to fall to undo it (flag_margin).
"""

from __future__ import annotations

import math

import numpy as np

from kfaclab.results.claims import B_CRIT_PAIRS, CONTRADICTED, NAMES, REPRODUCED
from kfaclab.results.statistics import b_crit, log2_ratio
from kfaclab.results.study import StudyResults


def flag_effects(results: StudyResults, key: str, bs: list, used: list, reached: set | None = None
                 ) -> tuple[dict, list]:
    """For (a), (g) or (h), whose statistics are built from y_b = log2(K-FAC steps / SGD steps) at
    the batch sizes `used` (indices into `bs`): per flagged cell (an optimum on a grid edge at the
    bracketing limit), the sign of the statistic's change if that optimizer's steps there fell (a
    grid grown further could only lower them: steps are a minimum over the grid), and the flagged
    cells that could change which batch sizes the statistic uses. K-FAC's falling steps lower y_b,
    SGD's raise it; (g) and (h) are y at one batch size, (a) the least-squares slope of y against
    log2 B, which a change d of y_b moves by (log2 b - mean log2 B) d / Sxx. `reached`: the cells
    whose estimate reaches the target, when known; a flagged cell that already reaches it cannot
    add a batch size (a grid grown further only lowers its steps), so it shifts nothing."""
    edge = [(o, b) for (o, b), c in sorted(results.bracket_cells.items())
            if c["state"] == "edge" and o in ("sgd", "kfac")]  # another optimizer's cells do not enter
    sizes = [bs[i] for i in used]
    at = {"g": [sizes[0]], "h": [sizes[-1]]}.get(key, sizes)
    mean = float(np.mean(np.log2(sizes))) if sizes else 0.0
    effects, shifts = {}, []
    for opt, b in edge:
        falls = -1 if opt == "kfac" else 1  # the sign of y_b's change
        if b in at:
            lever = 1.0 if key in "gh" else math.log2(b) - mean
            effects[(opt, b)] = int(np.sign(falls * lever))
        elif (key == "a" or (key == "h" and b > sizes[-1])) and _could_enter(opt, b, reached, edge):
            shifts.append((opt, b))  # a new reach there would add a batch size to (a), move (h) to it
    return effects, shifts


def _could_enter(opt: str, b: int, reached: set | None, edge: list) -> bool:
    """Whether a grid grown further at the flagged cell (opt, b) could make b a batch size that both
    SGD and K-FAC reach: only if opt does not reach the target there yet, and the other optimizer
    does, or could too (its cell there flagged as well). Unknown reach (None): assume it could."""
    if reached is None:
        return True
    other = "sgd" if opt == "kfac" else "kfac"
    return (opt, b) not in reached and ((other, b) in reached or (other, b) in edge)


def flag_reach(results: StudyResults, outcome: str, effects: dict, shifts: list, target: float,
               below_means: str = CONTRADICTED) -> str:
    """What the flagged cells can do to a verdict on log2(K-FAC/SGD steps) ((a), (g), (h)), from
    flag_effects: the verdict stands whatever the flagged grids would find if every flagged cell
    that enters the statistic moves it away from the side the verdict lies on (these claims are
    contradicted below their threshold and reproduced above), none could change which batch sizes
    it uses, and its target is the study's highest accuracy target (the primary target can only
    rise as grids reach more). `below_means`: the outcome below the threshold ((b): reproduced).
    Not part of the rules: a reading of the flags, beside the verdict."""
    highest = target >= max(results.targets)
    moving = {cell: sign for cell, sign in effects.items() if sign}
    if not highest or shifts:
        return "the flagged cells could move this statistic either way"
    if not moving:
        return "none of the flagged cells can move this statistic, so the flags cannot change it"
    signs = set(moving.values())
    if len(signs) > 1:
        return "the flagged cells could move this statistic either way"
    moves = "down" if signs == {-1} else "up"
    cells = ", ".join(f"{NAMES[o]} b{b}" for o, b in moving)
    above_means = REPRODUCED if below_means == CONTRADICTED else CONTRADICTED
    if (outcome == below_means and moves == "down") or (outcome == above_means and moves == "up"):
        return (f"the flags cannot overturn it: a grid grown further could only lower the steps in {cells}, which "
                f"moves the statistic {moves}, away from its threshold")
    return f"a grid grown further could only lower the steps in {cells}: the statistic could only move {moves}"


def _scaled(rows: np.ndarray, bs: list, scale: dict, opt: str) -> np.ndarray:
    """`rows` (estimate and replicates per batch size) with the steps of `opt`'s cells in `scale`
    multiplied by their factor: what a grid grown further would find if it lowered them so."""
    out = np.array(rows, float, copy=True)
    for (o, b), f in scale.items():
        if o == opt and b in bs:
            out[:, bs.index(b)] *= f
    return out


# Factors a flagged cell's steps are lowered by when asking how far they would have to fall to change
# a verdict: 0.95x down to 0.25x (a grid grown two steps further rarely does better than halve them).
FALLS = tuple(round(1 - 0.05 * k, 2) for k in range(1, 16))


def flag_margin(outcome: str, effects: dict, shifts: list, again) -> tuple[str, float | None]:
    """For a resolved verdict whose flagged cells include some that move its statistic toward the
    threshold when their steps fall (`effects`: cell -> sign of the change, from flag_effects or
    fit_flag_effects; these claims are contradicted below their threshold, reproduced above), how far
    those cells' steps (estimate and every bootstrap replicate alike) would have to fall, all by the
    same factor, for the verdict to change; the other flagged cells are left where they are, the
    worst case for the verdict. `again(scale)` judges the claim again with {cell: factor}. Returns
    the note and the factor at which the verdict changes (None if it does not by 0.25x). The note is
    empty when the flags cannot overturn the verdict, or when a new reach could change which batch
    sizes the statistic uses (no factor describes that). Not part of the rules: a reading of the
    flags."""
    toward = {CONTRADICTED: 1, REPRODUCED: -1}.get(outcome)
    cells_ = [c for c, sign in effects.items() if sign == toward]
    if toward is None or shifts or not cells_:
        return "", None
    names = ", ".join(f"{NAMES[o]} b{b}" for o, b in cells_)
    for f in FALLS:
        if again({c: f for c in cells_}) != outcome:
            return (f"lowering the steps in {names} moves it toward its threshold: it would no longer be {outcome} "
                    f"were they {f:g}x what the grid found ({100 * (1 - f):.0f}% fewer)"), f
    return (f"lowering the steps in {names} moves it toward its threshold, but it stays {outcome} even were they "
            f"{FALLS[-1]:g}x what the grid found"), None


def fit_flag_effects(results: StudyResults, key: str, st, bs: list) -> tuple[dict, list]:
    """flag_effects for (c), (i) and (j), log2 of a ratio of fitted critical batch sizes: per flagged
    cell of the pair's optimizers, the sign of the statistic's change when that cell's steps fall by
    a tenth (found by refitting: the fit is not linear in the steps), and the flagged cells where a
    new reach would add a batch size to a fit (the estimate there does not reach the target) or where
    the lowered fit no longer identifies B_crit. `st`: the claim's verdicts_v3.StepRows (its rows per
    optimizer and batch size, estimate first), `bs`: the batch sizes both optimizers of the pair have."""
    num, den, _ = B_CRIT_PAIRS[key]
    _, a = st.curve(num, bs)
    _, b = st.curve(den, bs)

    def statistic(scale):
        pa, pb = _scaled(a[:1], bs, scale, num), _scaled(b[:1], bs, scale, den)
        return float(log2_ratio(b_crit(bs, pa), b_crit(bs, pb))[0])

    base = statistic({})
    effects, shifts = {}, []
    for (o, bsz), c in sorted(results.bracket_cells.items()):
        if c["state"] != "edge" or o not in (num, den):
            continue
        if bsz not in bs or not math.isfinite(st.rows[o][bsz][0]):
            shifts.append((o, bsz))
            continue
        moved = statistic({(o, bsz): 0.9})
        if not math.isfinite(moved):
            shifts.append((o, bsz))
            continue
        effects[(o, bsz)] = int(np.sign(round(moved - base, 9)))
    return effects, shifts
