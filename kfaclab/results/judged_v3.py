"""The studies rules version 3 judge, which verdicts are ready, and how they are shown.

Version 3 judges a set of studies together (book/verdicts.md): the stopping-rule study for the
claims on steps to target, and two budget studies for robustness. There are two such sets, one
per model: the MLP's (`miniature3`), the ResNet-8's on the CPU (`resnet-cpu`) and the paper's ResNet-20's
on a borrowed GPU (`gpu`). A verdict waits, as under
version 2, only for the runs it compares, bracketing's runs included: a grid that finishes with
its optimum on an edge adds runs, which the verdict then waits for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kfaclab.results.claims import CLAIM_OPTIMIZERS, CLAIMS, NAMES, Verdict
from kfaclab.results.study import StudyResults, load_results
from kfaclab.results.verdict_display import _number, verdict_display
from kfaclab.results.verdicts_v3 import verdicts_v3

# The sets of studies version 3 judges: set -> role -> folder under runs/.
SETS = {
    "miniature3": {"main": "miniature3", "epochs": "miniature3-epochs", "iterations": "miniature3-iterations"},
    "resnet-cpu": {"main": "resnet-cpu", "epochs": "resnet-cpu-epochs", "iterations": "resnet-cpu-iterations"},
    "gpu": {"main": "gpu", "epochs": "gpu-epochs", "iterations": "gpu-iterations"},
}
# What each set's model is, for column headings.
MODELS = {"miniature3": "MLP 768-256-10", "resnet-cpu": "ResNet-8", "gpu": "ResNet-20"}
STUDIES = SETS["miniature3"]
ROBUSTNESS = "de"


@dataclass
class Judged:
    main: StudyResults
    epochs: StudyResults | None
    iterations: StudyResults | None
    names: dict = dataclasses.field(default_factory=lambda: dict(STUDIES))  # role -> study name

    def studies(self) -> list[StudyResults]:
        return [s for s in (self.main, self.epochs, self.iterations) if s is not None]


def set_of(study: StudyResults) -> str | None:
    """The version-3 set a study belongs to (by its name), or None."""
    return next((name for name, roles in SETS.items() if study.name in roles.values()), None)


def is_v3(study: StudyResults) -> bool:
    return set_of(study) is not None


def load_judged(runs_dir: str | Path, which: str = "miniature3") -> Judged | None:
    """The version-3 set `which` under `runs_dir` (a missing budget study is None; a set whose
    main study has no spec there: None)."""
    runs_dir = Path(runs_dir)
    roles = SETS[which]

    def load(role):
        folder = runs_dir / roles[role]
        return load_results(folder) if (folder / "study.yaml").exists() else None

    main = load("main")
    return None if main is None else Judged(main, load("epochs"), load("iterations"), dict(roles))


def judged_for(study: StudyResults) -> Judged:
    """The version-3 set a study belongs to, from its siblings in the same folder."""
    return load_judged(study.directory.parent, set_of(study) or "miniature3")


def has_run(j: Judged | None) -> bool:
    """Whether any run of the set has finished (a set that has not run is one line, not a column)."""
    return j is not None and any(s.runs["status"].isin(["completed", "diverged", "failed"]).any()
                                 for s in j.studies())


def _left(study: StudyResults | None, opts) -> int:
    if study is None:
        return 0
    runs = study.runs
    waiting = runs["status"].isin(["pending", "interrupted"])
    return int((waiting & runs["optimizer"].isin(opts)).sum())


def waiting(j: Judged) -> dict:
    """Per claim (of a-e and g-k): how many of the runs it compares have no result yet; a
    robustness claim whose budget studies do not exist waits for them (-1)."""
    out = {}
    for key, opts in CLAIM_OPTIMIZERS.items():
        if opts is None:
            continue
        if key in ROBUSTNESS:
            out[key] = -1 if j.epochs is None or j.iterations is None else \
                _left(j.epochs, opts) + _left(j.iterations, opts)
        else:
            out[key] = _left(j.main, opts)
    return out


def ready_verdicts(j: Judged, prediction: dict | None = None, claims: str = "abcdeghijk"):
    """(verdicts, waiting): the version-3 verdicts of `claims` whose runs have all finished, and
    per claim still waiting its number of unfinished runs. (k) needs `prediction` (the NQM's,
    kfaclab.nqm.study_prediction) and waits for (c), (i) and (j)."""
    left = waiting(j)
    ready = [k for k in claims if left.get(k) == 0 and (k != "k" or prediction is not None)]
    if "k" in ready and any(left.get(p) for p in "cij"):
        ready.remove("k")
    vs = verdicts_v3(j.main, j.epochs, j.iterations, prediction=prediction, claims="".join(ready)) if ready else []
    return vs, {k: left[k] for k in claims if k in left and left[k] != 0}


def waiting_line(left: dict, names: dict | None = None) -> str:
    """One sentence per group of claims that wait for the same runs (`names`: the set's role ->
    study name; miniature3's by default)."""
    names = names or STUDIES
    groups: dict = {}
    for key, n in left.items():
        groups.setdefault((n, CLAIM_OPTIMIZERS[key], key in ROBUSTNESS), []).append(f"({key})")
    lines = []
    for (n, opts, robust), keys in groups.items():
        which = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
        whose = " and ".join(NAMES[o] for o in opts)
        where = f"{names['epochs']} and {names['iterations']}" if robust else names["main"]
        lines.append(f"No verdict yet on {which}: " + ("its budget studies have no spec" if n < 0 else
                     f"{n} of {whose}'s runs in {where} have not finished (bracketing may add more)"))
    return ". ".join(lines)  # one sentence per group, each starting "No verdict yet"


def chapter_verdicts(study: StudyResults, claims: str, prediction: dict | None = None):
    """What a results chapter shows under "Verdicts" for a version-3 study: the ready verdicts,
    and a line per group of claims still waiting."""
    from IPython.display import HTML

    j = judged_for(study)
    vs, left = ready_verdicts(j, prediction, claims)
    html = (f"<p>Judged by rules <b>version 3</b> ({', '.join(s.name for s in j.studies())}): pooled seed "
            "bootstrap, hull intervals, bracketed grids.</p>")
    if vs:
        html += verdict_display(vs, claims).style.hide(axis="index").set_table_attributes(
            'class="kfaclab-verdicts"').to_html()
    if left:
        html += f"<p><b>{waiting_line(left, j.names)}.</b></p>"
    return HTML(html)


def versions_table(v2: list[Verdict], v2_waiting: dict, v3: list[Verdict], v3_waiting: dict,
                   resnet: tuple[list[Verdict], dict] | None = None,
                   more: dict[str, tuple[list[Verdict], dict]] | None = None) -> pd.DataFrame:
    """Each claim under rules versions 1-2 (on the miniature) and version 3 (on miniature3 and its
    budget studies; with `resnet` = (verdicts, waiting), also on the resnet-cpu set; `more`: other
    version-3 sets by name, each its own column): outcome with estimate [interval], or what it
    waits for."""
    columns = [("versions 1-2 (miniature)", v2, v2_waiting), ("version 3 (miniature3)", v3, v3_waiting)]
    if resnet is not None:
        columns.append(("version 3 (resnet-cpu, ResNet-8)", *resnet))
    for name, (verdicts, left) in (more or {}).items():
        columns.append((f"version 3 ({name}, {MODELS.get(name, name)})", verdicts, left))
    rows = []
    for key, (statement, _) in CLAIMS.items():
        if key == "f":
            continue  # ABS/ABSA: the abs study, version 2's rule in both
        row = {"claim": f"({key}) {statement}"}
        for label, verdicts, left in columns:
            row[label] = _cell(key, {v.claim: v for v in verdicts}.get(key), left)
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(key: str, v: Verdict | None, left: dict) -> str:
    if v is not None:
        return f"{v.outcome}: {summary(v)}"
    n = left.get(key)
    if n is None:
        return "–"
    return "budget studies missing" if n < 0 else f"waiting: {n} runs to go"


def summary(v: Verdict) -> str:
    """A verdict's number with its interval; for a claim judged in parts ((b) per optimizer, (d)
    and (e) per budget), each part's."""
    if v.estimate is not None or not v.parts:
        return _number(v)
    out = []
    for p in v.parts:
        value = next((p[k] for k in ("efficiency", "slope", "difference") if p.get(k) is not None), None)
        label = " ".join(str(x) for x in (NAMES.get(p.get("optimizer"), p.get("optimizer")), p.get("pair"),
                                           p.get("budget")) if x)
        if value is None:
            out.append(f"{label}: {p.get('outcome', '–')}")
            continue
        lo, hi = p.get("interval", (None, None))
        iv = f" [{lo:.3g}, {hi:.3g}]" if lo is not None else ""
        out.append(f"{label} {value:.3g}{iv}" + (f" ({p['why']})" if p.get("why") else ""))  # why it stays open
    return "; ".join(out)


def bracket_lines(j: Judged) -> str:
    """Per study: how many cells bracket their optimum, how many grew, and which are flagged."""
    out = []
    for s in j.studies():
        cells = s.bracket_cells
        if not cells:
            continue
        states = [c["state"] for c in cells.values()]
        grew = sum(bool(c["steps"]) for c in cells.values())
        edges = [f"{NAMES.get(o, o)} b{b} ({', '.join(c['edges'])})" for (o, b), c in sorted(cells.items())
                 if c["state"] == "edge"]
        out.append(f"`{s.name}`: {states.count('bracketed')} of {len(cells)} (optimizer, batch size) grids bracket "
                   f"their optimum, {states.count('running')} have runs still to come, {grew} grew"
                   + (f"; on an edge at the limit: {'; '.join(edges)}" if edges else ""))
    return "\n".join(f"- {line}" for line in out)
