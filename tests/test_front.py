"""The front page (kfaclab.report.front): evidence described from its spec and ordered by its
strength, computed findings, one compact claims table, and a study that has not run as one line."""

from pathlib import Path

import yaml

from kfaclab.report import front
from kfaclab.results.claims import CLAIMS, CONTRADICTED, NOT_RESOLVED, REPRODUCED, Verdict

ROOT = Path(__file__).resolve().parents[1]


def spec(name):
    return yaml.safe_load((ROOT / "runs" / name / "study.yaml").read_text())


def verdict(claim, outcome, estimate=None, interval=(None, None), study="s"):
    return Verdict(claim=claim, statement=CLAIMS[claim][0], source=CLAIMS[claim][1], statistic="x",
                   estimate=estimate, interval=interval, outcome=outcome, detail="", study=study)


def test_specs_are_described_in_the_books_words():
    assert front.describe(spec("miniature3"))["model"] == "MLP 768-256-10"
    assert front.describe(spec("resnet-cpu")) == {
        "model": "ResNet-8", "data": "CIFAR-10 16x16 (JPEG copy)", "augmentation": "crop and flip",
        "test images": 10_000, "seeds": 3, "grid": "3 per cell, grown until bracketed", "batch sizes": "32 to 8,192",
        "budget": "stopping rule, B0 = 32, E0 = 1 epoch"}
    cpu = front.describe(spec("cpu"))
    assert cpu["test images"] == 2000 and cpu["seeds"] == 1 and cpu["grid"] == "16 per cell"
    assert front.describe(spec("abs"))["budget"] == "30 epochs"
    assert front.model_name({"fixed": {"model": "resnet14x2"}}) == "ResNet-14 (width x2)"


def test_columns_follow_the_strength_their_specs_state_not_their_names():
    """The paper's model first, then a smaller ResNet, then the MLP; among the MLP's studies, more
    seeds first, then bracketed grids, then the full test set; renaming changes nothing."""
    names = ["cpu", "miniature", "gpu", "miniature3", "resnet-cpu"]
    ev = [front.Evidence(f"z{i}-{n}", spec(n), "3") for i, n in enumerate(names)]
    assert [e.name.split("-", 1)[1] for e in front.order(ev)] == ["gpu", "resnet-cpu", "miniature3", "miniature",
                                                                    "cpu"]
    # the paper's model without augmentation is not the paper's model
    no_aug = spec("gpu")
    no_aug["fixed"]["augment"] = False
    assert front.fidelity(no_aug) == 1 and front.fidelity(spec("gpu")) == 2


def _evidence():
    mlp = front.Evidence("mlp3", spec("miniature3"), "3",
                         {"h": verdict("h", CONTRADICTED, -1.46, (-1.69, -1.23), "mlp3"),
                          "b": verdict("b", REPRODUCED, 0.3, (0.2, 0.4), "mlp3"),
                          "a": verdict("a", NOT_RESOLVED, -0.08, (-0.12, -0.04), "mlp3")},
                         {"d": 12, "e": 12})
    rn = front.Evidence("rn", spec("resnet-cpu"), "3", {"a": verdict("a", NOT_RESOLVED, 0.1, (-0.2, 0.3), "rn")},
                        {"b": 28, "h": 28})
    gpu = front.Evidence("gpu", spec("gpu"), "3", ran=False)
    absf = front.Evidence("abs", spec("abs"), "1-2", {"f": verdict("f", NOT_RESOLVED, -0.005, (-0.01, 0.0))},
                          claims="f")
    return [mlp, gpu, rn, absf]


def test_findings_name_each_model_and_say_what_each_found():
    text = front.findings(_evidence())
    assert "ResNet-8 at 16x16 with crop and flip" in text and "MLP 768-256-10 at 16x16 without augmentation" in text
    assert "None is the paper's own model" in text
    assert "trained 2 models on the JPEG copy of CIFAR-10, all on a CPU: " in text
    # studies on different copies of the data name it with each model
    other = _evidence()
    other[0].spec = {**other[0].spec, "fixed": {**other[0].spec["fixed"], "dataset": "cifar10"}}
    mixed = front.findings(other)
    assert "models, all on a CPU: ResNet-8 on CIFAR-10 16x16 (JPEG copy) with crop and flip; " in mixed
    assert "MLP 768-256-10 on CIFAR-10 16x16 without augmentation" in mixed
    mlp_line = next(line for line in text.splitlines() if "`mlp3`" in line)
    assert "contradicted: (h) " + front.SHORT["h"] in mlp_line and "reproduced: (b) " + front.SHORT["b"] in mlp_line
    assert "unresolved: (a)" in mlp_line and "2 claims wait for runs" in mlp_line
    assert "(f)" not in mlp_line  # a claim the study does not judge is not "waiting"
    # the strongest first: the ResNet's line before the MLP's; the unrun study is one sentence of
    # the lead, with its model, and no line of its own
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if "`rn`" in x)) < lines.index(mlp_line)
    rn_line = next(x for x in lines if "`rn`" in x)
    assert "unresolved: (a); 2 claims wait for runs." in rn_line
    waiting_only = _evidence()
    waiting_only[2].verdicts = {}
    assert "no verdict yet (2 claims wait for runs)." in front.findings(waiting_only)
    assert ("`gpu` (ResNet-20 on 32x32 CIFAR-10 with crop and flip, the paper's model) has not run yet"
            in lines[0]) and not any(x.startswith("- `gpu`") for x in lines)
    ran_paper = _evidence()
    ran_paper[1].ran = True
    assert "None is the paper's own model" not in front.findings(ran_paper)


def test_the_claims_table_has_a_row_per_claim_a_column_per_study_that_ran_and_the_strongest_number():
    ev = _evidence()
    table = front.claims_table(ev, lambda v: f"{v.estimate:.3g} [{v.interval[0]:.3g}, {v.interval[1]:.3g}]",
                               lambda key: f"paper-{key}", {k: "scaling" for k in CLAIMS})
    assert table.count("<tr>") == 1 + len(CLAIMS) and table.count("<details>") == len(CLAIMS)
    head = table[:table.index("</thead>")]
    assert "gpu" not in head  # not run: one line in the findings, no column of repeats
    assert head.index(">rn<") < head.index(">mlp3<") < head.index(">abs<")
    # a claim in a few words, its full statement behind the click
    assert f"<summary>(a) {front.SHORT['a']}</summary><small>{CLAIMS['a'][0]}" in table
    row_a = table[table.index("(a) "):].split("</tr>")[0]
    # (a): the ResNet is the strongest evidence with a number, so its number is shown
    assert "0.1 [-0.2, 0.3] (rn)" in row_a and "paper-a" in row_a
    row_h = table[table.index("(h) "):].split("</tr>")[0]
    assert "<td>28 to run</td><td>contradicted</td><td>–</td>" in row_h and "-1.46 [-1.69, -1.23] (mlp3)" in row_h
    row_f = table[table.index("(f) "):].split("</tr>")[0]
    assert "<td>–</td><td>–</td><td>unresolved</td>" in row_f


def test_a_claim_judged_in_parts_points_to_its_details_instead_of_a_long_number():
    parts = [{"optimizer": "sgd", "budget": "epochs", "slope": -0.03, "interval": (-0.05, -0.01)}] * 4
    v = verdict("d", REPRODUCED)
    v.parts = parts
    e = front.Evidence("mini", spec("miniature"), "1-2", {"d": v})
    assert front.strongest_number([e], "d", lambda v: "long") == "4 parts, in the details (mini)"


def test_a_finding_is_stated_in_words_once_at_its_strongest_study():
    ev = _evidence()
    weaker = front.Evidence("mlp2", spec("miniature"), "3", {"h": verdict("h", CONTRADICTED, -0.7, (-1, -0.5))})
    lines = front.findings([*ev, weaker]).splitlines()
    strong = next(x for x in lines if "`mlp3`" in x)
    weak = next(x for x in lines if "`mlp2`" in x)
    assert front.SHORT["h"] in strong and "contradicted: (h)." in weak and front.SHORT["h"] not in weak


def _worst_case():
    """Every study of the book has run, and every claim it judges is decided, with alternating
    outcomes: the longest the findings can get with the studies the book has."""
    names = {"gpu": "3", "resnet-cpu": "3", "miniature3": "3", "miniature": "1-2", "cpu": "1-2", "abs": "1-2"}
    ev = []
    for i, (name, rules) in enumerate(names.items()):
        claims = "f" if name == "abs" else "abcdeghijk"
        outcomes = [CONTRADICTED, REPRODUCED]
        verdicts = {k: verdict(k, outcomes[(i + j) % 2], 0.1, (0.0, 0.2)) for j, k in enumerate(claims)}
        if rules == "3":  # every verdict one its flags could undo: each carries the mark
            for v in verdicts.values():
                v.overturned_at = 0.9
        ev.append(front.Evidence(name, spec(name), rules, verdicts, claims=claims if name == "abs" else None))
    return ev


def test_findings_stay_short_enough_for_the_first_screen_whatever_the_verdicts():
    """The findings' length is bounded by the studies, not by how many verdicts they reach: a claim
    is stated in words once, studies judged by superseded rules share one line with their open claims
    counted. At 1366 x 900 about 88 characters fit a line of the page's text column, a line is 26 px
    and the lead starts some 400 px down (tests/test_book.py checks the page itself), so 17 lines is
    the budget; this estimate matched the rendered line count of both the page's findings and this
    worst case when it was written."""
    text = front.findings(_worst_case())
    paragraphs = [p for p in text.replace("**", "").replace("`", "").split("\n") if p.strip()]
    assert paragraphs[-1].startswith(front.FRAGILE)  # the note on marked verdicts comes after the list
    paragraphs = paragraphs[:-1]
    lines = sum(-(-len(p) // 88) for p in paragraphs)
    assert lines <= 17, (lines, text)
    assert len(paragraphs) == 1 + 3 + 1  # the lead, one line per current study, one for the superseded
    superseded = paragraphs[-1]
    assert superseded.startswith("- Superseded rules v1-2 (MLP 768-256-10): miniature (3 seeds): ")
    assert "cpu (1 seed): " in superseded and "abs (2 seeds): " in superseded
    # every claim is stated in words exactly once, at the strongest study that decided it
    for key in "abcdefghijk":
        assert text.count(front.SHORT[key]) == 1, key
    assert front.SHORT["a"] in paragraphs[1] and front.SHORT["f"] in superseded
    assert ("trained 3 models on the JPEG copy of CIFAR-10, on a CPU and a GPU: ResNet-20 at 32x32 with crop and "
            "flip; ResNet-8 at 16x16" in paragraphs[0])
    # a claim the current rules decided is only counted on the superseded line
    assert "miniature (3 seeds): 10 decided under v3 too." in superseded


def test_a_verdict_its_flags_could_undo_is_marked_and_says_by_how_much():
    """Rules version 3's reading of the flags (verdicts_v3.flag_margin): a resolved verdict that
    lowering its flagged cells' steps by 5% would undo carries a mark in the findings and the table,
    and a note under the list says how little it would take; an unresolved one is not marked."""
    ev = _evidence()
    rn = next(e for e in ev if e.name == "rn")
    v = rn.verdicts["a"]
    v.outcome, v.overturned_at = REPRODUCED, 0.95
    text = front.findings(ev)
    assert f"(a){front.FRAGILE} {front.SHORT['a']}" in text
    note = text.split("\n")[-1]
    assert note.startswith(front.FRAGILE) and f"(a) on `rn` would no longer be {v.outcome}" in note
    assert "5% fewer" in note
    assert front.cell(rn, "a").endswith(front.FRAGILE)
    v.overturned_at = None
    text = front.findings(ev)
    assert front.FRAGILE not in text and not front.cell(rn, "a").endswith(front.FRAGILE)
    v.outcome, v.overturned_at = NOT_RESOLVED, 0.95  # nothing to undo
    assert front.FRAGILE not in front.findings(ev) + front.cell(rn, "a")
