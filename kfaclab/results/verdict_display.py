"""The verdicts as the book shows them: a table with the paper's own numbers, and what still waits for runs.
"""

from __future__ import annotations

import pandas as pd

from kfaclab.results.claims import CLAIM_OPTIMIZERS, NAMES, Verdict
from kfaclab.results.published import published
from kfaclab.results.study import StudyResults
from kfaclab.results.verdicts import ready_verdicts


def verdict_table(vs: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.claim, "statement": v.statement, "source": v.source, "study": v.study,
                          "verdict": v.outcome, "statistic": v.statistic, "estimate": v.estimate,
                          "low": v.interval[0], "high": v.interval[1], "detail": v.detail} for v in vs])


# A statistic computed as a fraction of accuracy but stated in points by its rule (claim (f):
# "above -1 point") is shown in points, so that a chapter's tables, its prose and the verdict
# speak one unit.
IN_POINTS = "(points as a fraction)"


def _number(v: Verdict) -> str:
    if v.estimate is None:
        return "–"
    lo, hi = v.interval
    if IN_POINTS in (v.statistic or ""):
        interval = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None else ""
        return f"{100 * v.estimate:+.2f}{interval} points"
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
            f"{' '.join(str(x) for x in (p.get('optimizer') or p.get('method'), p.get('budget')) if x)}: "
            f"{p['outcome']}" + (f" ({p['why']})" if p.get("why") else "") for p in v.parts if "outcome" in p)
        rows.append({"claim": f"({v.claim}) {v.statement}", "source": v.source, "verdict": v.outcome,
                     "statistic": v.statistic.replace(IN_POINTS, "(points)"), "estimate [90% interval]": _number(v),
                     "notes": notes,
                     "the paper reports": published(v.claim).display()})
    return pd.DataFrame(rows)


def chapter_verdicts(results: StudyResults, claims: str, prediction: dict | None = None):
    """What a results chapter shows under "Verdicts": the table of the given claims whose runs
    have all finished (verdict_display), with a sentence naming the study and what its intervals
    rest on, and for each claim still waiting for runs, "no verdict yet" with their number
    (book/verdicts.md). Claim (k) needs the NQM's `prediction` (kfaclab.nqm.study_prediction())."""
    from IPython.display import HTML

    from kfaclab.results.study import evidence

    vs, waiting = ready_verdicts(results, claims, prediction=prediction)
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
