"""The front page: what was found, on which model, from which study, read at a glance.

Each body of evidence (a study, or a version-3 set of studies judged together) is described
from its spec (model, data, resolution, augmentation, test set, seeds, grid, budget) and ranked
by the strength of that evidence as the spec states it, not by its name. The page then says in a
few computed sentences what each one found, shows one compact table (an outcome per body of
evidence, the number and interval from the strongest one, details one click away) and gives a
body of evidence that has not run one line instead of a column.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

from kfaclab.results.claims import CLAIMS, CONTRADICTED, NOT_RESOLVED, NOT_TESTABLE, REPRODUCED

# The paper's own model and data (Ma et al.: ResNet-20 on 32x32 CIFAR-10 with crop and flip).
PAPER_MODEL, PAPER_RESOLUTION = "resnet20", 32
FULL_TEST_SET = 10_000


@dataclass
class Evidence:
    """One column of the front page: a study or a version-3 set, its spec and its verdicts."""
    name: str  # how the book names it: the main study's folder
    spec: dict  # the main study's spec (runs/<name>/study.yaml)
    rules: str  # "1-2" or "3"
    verdicts: dict = field(default_factory=dict)  # claim -> Verdict
    waiting: dict = field(default_factory=dict)  # claim -> runs still to come
    ran: bool = True  # whether any of its runs has finished
    claims: str | None = None  # the claims it is for, where only some (the abs study: "f")


def model_name(spec: dict) -> str:
    """The model as the book names it: "ResNet-20", "ResNet-8 (width x2)", "MLP 768-256-10"."""
    fixed = spec.get("fixed", {})
    model = str(fixed.get("model", "?"))
    res = int(fixed.get("resolution", 32))
    if model.startswith("mlp"):
        hidden = model.split(":", 1)[1] if ":" in model else "256"
        return f"MLP {3 * res * res}-{hidden.replace(',', '-')}-10"
    if model.startswith("resnet"):
        depth, _, width = model[len("resnet"):].partition("x")
        return f"ResNet-{depth}" + (f" (width x{width})" if width else "")
    return model


def describe(spec: dict) -> dict:
    """What the spec says its evidence rests on, in the front page's words."""
    fixed = spec.get("fixed", {})
    res = int(fixed.get("resolution", 32))
    grids = [math.prod(len(v) for v in (o.get("grid") or {}).values()) for o in spec.get("optimizers", {}).values()]
    budget = spec.get("budget", {})
    if "rule" in budget:
        rule = budget["rule"]
        budget_text = f"stopping rule, B0 = {rule['b0']}, E0 = {rule['e0']:g} epoch{'s' * (rule['e0'] != 1)}"
    else:
        budget_text = ", ".join(f"{v:g} {k}" for k, v in budget.items())
    sizes = spec.get("batch_sizes", [])
    return {
        "model": model_name(spec),
        "data": f"CIFAR-10 {res}x{res}" + ("" if fixed.get("dataset") == "cifar10" else " (JPEG copy)"),
        "augmentation": "crop and flip" if fixed.get("augment") else "none",
        "test images": int(fixed.get("test_subset") or FULL_TEST_SET),
        "seeds": len(spec.get("seeds", [0])),
        "grid": f"{max(grids, default=1)} per cell" + (", grown until bracketed" if spec.get("bracket") else ""),
        "batch sizes": f"{min(sizes):,} to {max(sizes):,}" if len(sizes) > 1 else f"{sizes[0]:,}" if sizes else "–",
        "budget": budget_text,
    }


def fidelity(spec: dict) -> int:
    """2: the paper's model at its resolution with augmentation; 1: another CIFAR ResNet; 0: else."""
    fixed = spec.get("fixed", {})
    model = str(fixed.get("model", ""))
    if model == PAPER_MODEL and int(fixed.get("resolution", 32)) == PAPER_RESOLUTION and fixed.get("augment"):
        return 2
    return 1 if model.startswith("resnet") else 0


def strength(e: Evidence) -> tuple:
    """The order of the columns, strongest first, from the spec alone: model fidelity, then seeds,
    then grids grown until they bracket their optimum (rules version 3), then the test set's
    size, then the budget (E0, or the fixed epochs)."""
    spec = e.spec
    budget = spec.get("budget", {})
    e0 = budget.get("rule", {}).get("e0", budget.get("epochs", 0))
    d = describe(spec)
    return (fidelity(spec), d["seeds"], bool(spec.get("bracket")), d["test images"], float(e0))


def order(evidence: list[Evidence]) -> list[Evidence]:
    return sorted(evidence, key=strength, reverse=True)


def short(outcome: str) -> str:
    """An outcome in a narrow column (the table's caption says what "unresolved" stands for)."""
    return {NOT_RESOLVED: "unresolved"}.get(outcome, outcome)


FRAGILE = "\u2020"  # the mark of a verdict its flagged grid cells could undo


def fragile(v) -> bool:
    """Whether the verdict's flagged cells (optima still on a grid edge when bracketing stopped)
    could undo it, by rules version 3's reading of its flags (Verdict.overturned_at)."""
    return v.outcome in (CONTRADICTED, REPRODUCED) and getattr(v, "overturned_at", None) is not None


def fragile_note(evidence: list[Evidence]) -> str:
    """One sentence under the findings for the verdicts marked with FRAGILE: how little their
    flagged cells' steps would have to fall to undo each."""
    items = [f"({k}) on `{e.name}` would no longer be {v.outcome} were the steps in those cells "
             f"{100 * (1 - v.overturned_at):.0f}% fewer"
             for e in order(evidence) if e.ran for k, v in e.verdicts.items() if fragile(v)]
    if not items:
        return ""
    return (f"{FRAGILE} A verdict that rests on grid cells whose optimum was still on an edge when bracketing "
            f"stopped, and that a grid grown further could undo: " + "; ".join(items)
            + " (the claim's chapter names the cells).")


def cell(e: Evidence, key: str) -> str:
    """A column's entry for a claim: its outcome, the runs it waits for, or a dash."""
    if e.claims is not None and key not in e.claims:
        return "–"
    v = e.verdicts.get(key)
    if v is not None:
        return short(v.outcome) + (FRAGILE if fragile(v) else "")
    n = e.waiting.get(key)
    if n is None:
        return "–"
    return "budget studies missing" if n < 0 else f"{n:,} to run"


def strongest_number(evidence: list[Evidence], key: str, number) -> str:
    """The claim's statistic with its interval from the strongest evidence that has a number,
    the study named beside it; `number(v)` formats a verdict's number (estimate [interval])."""
    for e in order(evidence):
        v = e.verdicts.get(key)
        if v is not None and v.estimate is not None:
            return f"{number(v)} ({e.name})"
        if v is not None and v.parts:  # judged in parts: each part's number is behind the click
            return f"{len(v.parts)} parts, in the details ({e.name})"
    return "–"


# Each claim in a few words, for the findings' sentences (CLAIMS has the full statements, which the
# table right below shows).
SHORT = {
    "a": "K-FAC scales no better than SGD with the batch size",
    "b": "both optimizers leave the ideal line past a critical batch size",
    "c": "K-FAC raises the critical batch size",
    "d": "the good region shrinks under epochs, grows under iterations",
    "e": "K-FAC is no more robust than SGD",
    "f": "adaptive batches lose at most 1%",
    "g": "K-FAC is comparable to SGD at small batches",
    "h": "K-FAC needs more iterations than SGD at large batches",
    "i": "Adam raises the critical batch size",
    "j": "K-FAC's critical batch size exceeds Adam's",
    "k": "the NQM orders the critical batch sizes as runs do",
}


# The rules' versions, oldest first (book/verdicts.md): a study judged by an older version is
# shown after, and more briefly than, those judged by the newest that ran.
RULES_ORDER = ["1-2", "3"]


def _outcomes(e: Evidence, stated: set, list_open: bool, decided_elsewhere: tuple[set, str] = (set(), "")) -> list[str]:
    """A study's findings grouped by outcome: contradicted and reproduced claims stated in words
    the first time (`stated` keeps track), the unresolved named by letter (or only counted, where
    `list_open` is false), and the claims still waiting for runs counted. `decided_elsewhere`, for a
    study judged by superseded rules: the claims the newest rules decided, which it only counts, and
    those rules' name."""
    elsewhere, newest = decided_elsewhere
    groups = {}
    for key in CLAIMS:
        if e.claims is not None and key not in e.claims:
            continue
        v = e.verdicts.get(key)
        if v is None and key not in e.waiting:
            continue  # not a claim this evidence judges
        groups.setdefault(v.outcome if v else "waiting", []).append(key)
    parts = []
    for outcome, label in ((CONTRADICTED, "contradicted"), (REPRODUCED, "reproduced"),
                           (NOT_RESOLVED, "unresolved"), (NOT_TESTABLE, "not testable here")):
        keys = groups.get(outcome, [])
        if not keys:
            continue
        decided = outcome in (CONTRADICTED, REPRODUCED)
        if decided:
            keys = [k for k in keys if k not in elsewhere]
            if not keys:
                continue
        if decided or list_open:
            mark = {k: FRAGILE if decided and fragile(e.verdicts[k]) else "" for k in keys}
            words = [f"({k}){mark[k]} {SHORT[k]}" if decided and k not in stated else f"({k}){mark[k]}" for k in keys]
            stated |= set(keys) if decided else set()
            parts.append(f"{label}: " + ", ".join(words))
        else:
            parts.append(f"{len(keys)} {label}")
    also = sum(k in elsewhere for o in (CONTRADICTED, REPRODUCED) for k in groups.get(o, []))
    if also:
        parts.append(f"{also} decided under {newest} too")
    waiting = groups.get("waiting", [])
    wait = f"{len(waiting)} claim{'s' * (len(waiting) != 1)} wait{'s' * (len(waiting) == 1)} for runs"
    if not parts:  # no verdict at all yet
        parts = [f"no verdict yet ({wait})" if waiting else "no verdict"]
    elif waiting:
        parts.append(wait)
    return parts


def findings(evidence: list[Evidence]) -> str:
    """A few computed sentences: which models the verdicts rest on, and what each one found."""
    ran = [e for e in order(evidence) if e.ran]
    unrun = [e for e in order(evidence) if not e.ran]
    # The data named once when every study used the same copy of CIFAR-10, else with each model.
    data = {"CIFAR-10" if e.spec.get("fixed", {}).get("dataset") == "cifar10" else "the JPEG copy of CIFAR-10"
            for e in ran}
    one_data = data.pop() if len(data) == 1 else None
    models = []
    for e in ran:
        d = describe(e.spec)
        aug = "with crop and flip" if d["augmentation"] != "none" else "without augmentation"
        resolution = d["data"].split()[1]
        text = f"{d['model']} at {resolution} {aug}" if one_data else f"{d['model']} on {d['data']} {aug}"
        if text not in models:
            models.append(text)
    devices = {str(e.spec.get("fixed", {}).get("device", "cpu")) for e in ran}
    hardware = sorted({"a GPU" if d.startswith("cuda") else "a CPU" if d == "cpu" else d for d in devices})
    where = "all on a CPU" if hardware == ["a CPU"] else "on " + " and ".join(hardware)
    on = f" on {one_data}" if one_data else ""
    lead = [f"The studies that have run so far trained {len(models)} model{'s' * (len(models) != 1)}{on}, {where}: "
            f"{'; '.join(models)}."]
    if not any(fidelity(e.spec) == 2 for e in ran):
        lead.append("None is the paper's own model: each verdict speaks for the model it names, at budgets far "
                    "below the paper's.")
    for e in unrun:
        d = describe(e.spec)
        paper = ", the paper's model" if fidelity(e.spec) == 2 else ""
        lead.append(f"`{e.name}` ({d['model']} on {d['data'][len('CIFAR-10 '):].split()[0]} CIFAR-10 with "
                    f"{d['augmentation'].replace('none', 'no augmentation')}{paper}) has not run yet: it waits for a "
                    "borrowed GPU.")
    # Studies judged by superseded rules share one line, their open claims counted, not listed: the
    # first screen has room for every study only if its length does not grow with the rules' history.
    newest = max((RULES_ORDER.index(e.rules) for e in ran), default=0)
    current = [e for e in ran if RULES_ORDER.index(e.rules) == newest]
    superseded = [e for e in ran if RULES_ORDER.index(e.rules) < newest]
    stated = set()  # a claim is stated in words at its strongest study's line, then named by its letter
    lines = []
    for e in current:
        d = describe(e.spec)
        parts = _outcomes(e, stated, list_open=True)
        lines.append(f"**`{e.name}`** ({d['model']}, {d['seeds']} seed{'s' * (d['seeds'] != 1)}, rules v{e.rules}): "
                     + "; ".join(parts) + ".")
    if superseded:
        models = {describe(e.spec)["model"] for e in superseded}
        one_model = len(models) == 1
        decided = {k for e in current for k, v in e.verdicts.items() if v.outcome in (CONTRADICTED, REPRODUCED)}
        studies = []
        for e in superseded:
            d = describe(e.spec)
            what = f"{d['seeds']} seed{'s' * (d['seeds'] != 1)}" + ("" if one_model else f", {d['model']}")
            parts = _outcomes(e, stated, list_open=False, decided_elsewhere=(decided, f"v{RULES_ORDER[newest]}"))
            studies.append(f"**`{e.name}`** ({what}): " + "; ".join(parts))
        rules = sorted({e.rules for e in superseded}, key=RULES_ORDER.index)
        lines.append(f"Superseded rules v{', v'.join(rules)}" + (f" ({models.pop()})" if one_model else "") + ": "
                     + ". ".join(studies) + ".")
    note = fragile_note(evidence)
    return " ".join(lead) + "\n\n" + "\n".join(f"- {line}" for line in lines) + (f"\n\n{note}" if note else "")


def studies_table(evidence: list[Evidence]):
    """One row per body of evidence, strongest first: what its spec says it rests on."""
    import pandas as pd

    rows = []
    for e in order(evidence):
        d = describe(e.spec)
        rows.append({"study": e.name, "rules": e.rules, **d, "runs": "finished or running" if e.ran else "not run"})
    return pd.DataFrame(rows)


def claims_table(evidence: list[Evidence], number, published, evidence_page: dict) -> str:
    """The claims as one compact HTML table: a row per claim (in a few words; its full statement,
    source, the paper's number and every study's number behind a click), an outcome column per body of evidence
    that has run, strongest first, and the number with its interval from the strongest."""
    cols = [e for e in order(evidence) if e.ran]
    head = "".join(f"<th>{html.escape(e.name)}<br>{html.escape(describe(e.spec)['model'].split()[0])}</th>"
                   for e in cols)
    rows = []
    for key, (statement, source) in CLAIMS.items():
        others = "".join(
            f"<li><code>{html.escape(e.name)}</code>: {html.escape(number(e.verdicts[key]))}</li>"
            for e in cols if key in e.verdicts and (e.verdicts[key].estimate is not None or e.verdicts[key].parts))
        details = (f"<details><summary>({key}) {html.escape(SHORT[key])}</summary><small>{html.escape(statement)} "
                   f"({html.escape(source)}); "
                   f"<a href=\"{evidence_page[key]}.html\">evidence</a>; the paper reports: "
                   f"{html.escape(published(key))}" + (f"<ul>{others}</ul>" if others else "") + "</small></details>")
        cells = "".join(f"<td>{html.escape(cell(e, key))}</td>" for e in cols)
        rows.append(f"<tr><td>{details}</td>{cells}<td>{html.escape(strongest_number(cols, key, number))}</td></tr>")
    return (f'<table class="kfaclab-verdicts kfaclab-front"><thead><tr><th style="width: 23%">claim (click for '
            f'details)</th>{head}<th style="width: 21%">statistic [90% interval] (strongest study)</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            '<p><small>unresolved: not resolved at this scale; "N to run": the runs the verdict still waits '
            "for; –: the study does not test the claim.</small></p>")


__all__ = ["Evidence", "claims_table", "describe", "findings", "model_name", "order", "strength", "studies_table"]
