"""Rules version 3 on studies with known answers, and against version 2 on the same records:
the statistics on steps to target are defined as before, so their point estimates must agree;
only the intervals, the robustness measure and the studies judged change."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_verdicts import both, curve, study

from kfaclab.results import flags as reading
from kfaclab.results import judged_v3, load_results
from kfaclab.results import verdicts as v2
from kfaclab.results import verdicts_v3 as v3
from kfaclab.results.claims import CONTRADICTED, NOT_RESOLVED, REPRODUCED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def miniature():
    return load_results(ROOT / "runs" / "miniature")


def test_point_estimates_equal_version_2s(miniature):
    old = {v.claim: v for v in v2.verdicts(miniature, n=50, claims="abchij")}
    new = v3.steps_verdicts(miniature, n=50, claims="abchij")
    for key in "ah":
        assert new[key].estimate == pytest.approx(old[key].estimate, abs=1e-12), key
    for key in "cij":  # B_crit: version 2 fits the estimate by the scalar search, version 3 by the vectorised one
        assert new[key].estimate == pytest.approx(old[key].estimate, abs=1e-6), key
    effs = {p["optimizer"]: p["efficiency"] for p in old["b"].parts}
    assert {p["optimizer"]: p["efficiency"] for p in new["b"].parts} == pytest.approx(effs)
    # each optimizer's (b) has its own interval, around its own estimate
    for p in new["b"].parts:
        lo, hi = p["interval"]
        assert lo <= p["efficiency"] <= hi


@pytest.mark.parametrize("kfac_b_crit,expected", [(2000, CONTRADICTED), (100, REPRODUCED)])
def test_claim_a_reaches_both_outcomes(kfac_b_crit, expected):
    res = study(both(curve(1000, 300), curve(1000, kfac_b_crit)), noise=0.03)
    assert v3.steps_verdicts(res, n=300, claims="a")["a"].outcome == expected


def test_claim_h_and_g_read_the_ends():
    res = study(both(curve(1000, 300), curve(1500, 300)), noise=0.02)  # K-FAC 1.5x slower everywhere
    out = v3.steps_verdicts(res, n=300, claims="gh")
    # seed noise 2%
    assert out["h"].outcome == REPRODUCED and out["h"].estimate == pytest.approx(math.log2(1.5), abs=0.03)
    assert out["g"].outcome == REPRODUCED


def test_noise_leaves_it_open():
    res = study(both(curve(1000, 300), curve(1000, 300)), noise=0.4)
    assert v3.steps_verdicts(res, n=300, claims="h")["h"].outcome == NOT_RESOLVED


@pytest.fixture(scope="module")
def judged_copies(tmp_path_factory):
    """The miniature's records under the names of version 3's three studies (links, not copies),
    each with the miniature's spec renamed: a finished version-3 set with known content."""
    return _linked_set(tmp_path_factory.mktemp("runs"), judged_v3.STUDIES)


def _linked_set(runs, names: dict):
    spec = yaml.safe_load((ROOT / "runs" / "miniature" / "study.yaml").read_text())
    for name in names.values():
        d = runs / name
        d.mkdir()
        (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": name}, sort_keys=False))
        for p in (ROOT / "runs" / "miniature").glob("*.json"):
            (d / p.name).symlink_to(p)
            (d / p.with_suffix(".ipynb").name).symlink_to(p.with_suffix(".ipynb"))
    return runs


def test_a_finished_set_gives_every_verdict_and_the_versions_table(judged_copies, miniature):
    j = judged_v3.load_judged(judged_copies)
    assert set(judged_v3.waiting(j).values()) == {0}
    vs, left = judged_v3.ready_verdicts(j, prediction={"c": 4.85, "i": -0.42, "j": 5.27})
    assert [v.claim for v in vs] == list("abcdeghijk") and left == {}
    d = {v.claim: v for v in vs}
    assert [p["budget"] for p in d["e"].parts] == ["epochs", "iterations"]
    assert len(d["d"].parts) == 4
    # (b) shows each optimizer's efficiency with its own interval, not one optimizer's with another's
    b = judged_v3.summary(d["b"])
    assert b.startswith("SGD 0.368 [") and "; K-FAC 0.335 [" in b
    old, old_left = v2.ready_verdicts(miniature, prediction={"c": 4.85, "i": -0.42, "j": 5.27})
    table = judged_v3.versions_table(old, old_left, vs, left)
    assert len(table) == 10 and not table["version 3 (miniature3)"].str.contains("waiting").any()


def test_a_set_waits_for_the_runs_each_claim_compares(judged_copies, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(judged_copies, runs, symlinks=True)
    victim = next((runs / "miniature3-epochs").glob("kfac-b64-*.json"))
    victim.unlink()  # one K-FAC run of a budget study not made yet
    victim = next((runs / "miniature3").glob("adam-b128-*.json"))
    victim.unlink()  # one Adam run of the main study
    left = judged_v3.waiting(judged_v3.load_judged(runs))
    assert left["d"] == left["e"] == 1 and left["i"] == left["j"] == left["k"] == 1
    assert all(left[k] == 0 for k in "abcgh")
    vs, waiting = judged_v3.ready_verdicts(judged_v3.load_judged(runs), claims="abdi")
    assert [v.claim for v in vs] == ["a", "b"] and waiting == {"d": 1, "i": 1}
    line = judged_v3.waiting_line(waiting)
    assert "(d): 1 of SGD and K-FAC's runs in miniature3-epochs and miniature3-iterations" in line


def test_results_command_judges_a_version_3_study_by_version_3(judged_copies):
    out = subprocess.run([sys.executable, "-m", "kfaclab", "results", str(judged_copies / "miniature3"),
                          "--verdicts"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "rules version 3, on miniature3, miniature3-epochs, miniature3-iterations" in out.stdout
    assert "(e) K-FAC is no more robust" in out.stdout


def test_the_csv_files_of_a_version_3_set_carry_every_claim_once(judged_copies, tmp_path):
    """Each claim of version 3 lands in exactly one study's verdicts file (the stopping-rule study's
    for (a)-(c), (g)-(k), each budget study's for (d) and (e)), with the numbers the book shows;
    (k) needs the NQM's prediction and is left out without one."""
    import pandas as pd

    from kfaclab.results.export import write_csv

    prediction = {"c": 4.85, "i": -0.42, "j": 5.27}
    j = judged_v3.load_judged(judged_copies)
    claims = {}
    for s in j.studies():
        write_csv(s, tmp_path, prediction)
        claims[s.name] = list(pd.read_csv(tmp_path / f"{s.name}-verdicts.csv")["claim"])
    assert claims == {"miniature3": list("abcghijk"), "miniature3-epochs": ["d", "e"],
                      "miniature3-iterations": ["d", "e"]}
    shown = {v.claim: v for v in judged_v3.ready_verdicts(j, prediction, claims="ck")[0]}
    table = pd.read_csv(tmp_path / "miniature3-verdicts.csv").set_index("claim")
    assert table.loc["c", "estimate"] == pytest.approx(shown["c"].estimate)
    assert table.loc["k", "verdict"] == shown["k"].outcome
    write_csv(j.main, tmp_path / "without", None)
    assert "k" not in set(pd.read_csv(tmp_path / "without" / "miniature3-verdicts.csv")["claim"])


def test_results_command_draws_no_verdict_before_its_runs_finish(tmp_path):
    """As the book: a claim whose runs have not all finished gets no verdict from `results
    --verdicts`, but the line that says how many runs it waits for and where."""
    runs = _linked_set(tmp_path, judged_v3.STUDIES)
    next((runs / "miniature3-epochs").glob("kfac-b64-*.json")).unlink()
    out = subprocess.run([sys.executable, "-m", "kfaclab", "results", str(runs / "miniature3"), "--verdicts"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert ("No verdict yet on (d) and (e): 1 of SGD and K-FAC's runs in miniature3-epochs and "
            "miniature3-iterations have not finished") in out.stdout
    assert "(e) K-FAC is no more robust" not in out.stdout and "(a) " in out.stdout


def test_widths_of_the_miniature_are_finite_and_censoring_is_reported(miniature):
    table = v3.width_table(miniature)
    assert set(table["optimizer"]) == {"sgd", "kfac", "adam"}
    assert np.isfinite(table["width (log2 effective lr)"]).all()
    assert table["censored"].dtype == bool and table["censored"].any()
    assert ((table["low"] <= table["width (log2 effective lr)"]) & (table["width (log2 effective lr)"] <=
                                                                     table["high"])).all()


def test_the_width_chart_shows_the_verdicts_statistic_with_its_study(miniature):
    from kfaclab import plots

    table = v3.width_table(miniature)
    spec = plots.width_chart(miniature, table).to_dict()
    assert "miniature" in json.dumps(spec["title"]) and "rules version 3" in json.dumps(spec["title"])
    data = next(iter(spec["datasets"].values()))
    assert len(data) == len(table) and {"width", "low", "high", "kind"} <= set(data[0])
    assert {d["kind"] for d in data} <= {"bracketed", "censored (a lower bound)"}


def test_the_resnet_set_is_judged_apart_and_shown_in_its_own_column(judged_copies, tmp_path, miniature):
    """Two version-3 sets side by side: each is loaded, waited for and named by its own studies,
    and the versions table gives the ResNet set a column of its own."""
    (tmp_path / "runs").mkdir()
    runs = _linked_set(tmp_path / "runs", judged_v3.SETS["resnet-cpu"])
    next((runs / "resnet-cpu-epochs").glob("kfac-b64-*.json")).unlink()
    assert judged_v3.load_judged(tmp_path / "runs") is None  # no miniature3 there
    rn = judged_v3.load_judged(runs, "resnet-cpu")
    assert rn.names == judged_v3.SETS["resnet-cpu"] and judged_v3.set_of(rn.main) == "resnet-cpu"
    assert judged_v3.judged_for(rn.epochs).names["main"] == "resnet-cpu"
    vs, left = judged_v3.ready_verdicts(rn, claims="ade")
    assert [v.claim for v in vs] == ["a"] and left == {"d": 1, "e": 1}
    assert "runs in resnet-cpu-epochs and resnet-cpu-iterations" in judged_v3.waiting_line(left, rn.names)
    mini = judged_v3.ready_verdicts(judged_v3.load_judged(judged_copies), claims="a")
    old, old_left = v2.ready_verdicts(miniature, claims="a")
    table = judged_v3.versions_table(old, old_left, *mini, resnet=(vs, left))
    column = dict(zip(table["claim"].str[:3], table["version 3 (resnet-cpu, ResNet-8)"], strict=True))
    assert column["(a)"].startswith(vs[0].outcome) and column["(d)"] == "waiting: 1 runs to go"
    assert column["(b)"] == "–"  # not asked for here


def test_the_gpu_set_is_one_line_until_it_has_run_then_a_column_of_its_own(judged_copies, tmp_path, miniature):
    """The gpu set (ResNet-20, borrowed GPUs) has no column while none of its runs has finished
    (issue: a study that has not run is one line, not a column of repeats); once one has, the
    versions table gives it a column named by its model."""
    (tmp_path / "runs").mkdir()
    runs = _linked_set(tmp_path / "runs", judged_v3.SETS["gpu"])
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in judged_v3.SETS["gpu"].values():
        (empty / name).mkdir()
        (empty / name / "study.yaml").write_text((runs / name / "study.yaml").read_text())
    unrun = judged_v3.load_judged(empty, "gpu")
    assert unrun is not None and not judged_v3.has_run(unrun)
    assert judged_v3.has_run(gpu := judged_v3.load_judged(runs, "gpu"))
    vs, left = judged_v3.ready_verdicts(gpu, claims="a")
    mini = judged_v3.ready_verdicts(judged_v3.load_judged(judged_copies), claims="a")
    old, old_left = v2.ready_verdicts(miniature, claims="a")
    table = judged_v3.versions_table(old, old_left, *mini, more={"gpu": (vs, left)})
    assert "version 3 (gpu, ResNet-20)" in table.columns and "version 3 (resnet-cpu, ResNet-8)" not in table.columns
    column = dict(zip(table["claim"].str[:3], table["version 3 (gpu, ResNet-20)"], strict=True))
    assert column["(a)"].startswith(vs[0].outcome)



def _one_axis_budget_study(name: str, profiles: dict, batches=(32, 64, 128, 256)):
    """A budget study whose grids are the learning rate alone (x = log2 lr = 0..5): at every batch
    size, each optimizer's three seeds end at the accuracies of `profiles[opt]` (no seed noise)."""
    import pandas as pd

    from kfaclab.results.study import StudyResults

    rows = []
    for opt, accs in profiles.items():
        for b in batches:
            for k, acc in enumerate(accs):
                for seed in (0, 1, 2):
                    rows.append({"name": f"{opt}-b{b}-lr{2.0 ** k:g}-s{seed}", "status": "completed",
                                 "optimizer": opt, "base_optimizer": opt, "batch_schedule": "fixed",
                                 "batch_size": b, "seed": seed, "hp_lr": 2.0 ** k, "peak_lr": 2.0 ** k,
                                 "final_accuracy": acc})
    runs = pd.DataFrame(rows)
    runs["status"] = pd.Categorical(runs["status"], categories=("completed", "diverged", "failed", "interrupted",
                                                                "pending"))
    return StudyResults(name, None, "", runs, pd.DataFrame(), {o: ["lr"] for o in profiles}, [0.45], {})


def test_widths_and_robustness_verdicts_on_grids_of_the_learning_rate_alone():
    """The ResNet and gpu sets tune the learning rate alone: each cell is one row. Their widths, and
    (d) and (e) from them, are computed as for two-axis grids (not skipped as 'no runs yet')."""
    # SGD: best 0.50 at x = 3, 0.495 at x = 2 and 4, 0.40 beyond: ends 1/19 of a step past x = 2 and 4
    # K-FAC: 0.50 at x = 2 and 3, 0.495 at 1 and 4; 0.30 at 0: ends 1/39 past x = 1, 1/19 past x = 4
    profiles = {"sgd": [0.30, 0.40, 0.495, 0.50, 0.495, 0.40], "kfac": [0.30, 0.495, 0.50, 0.50, 0.495, 0.40]}
    w_sgd, w_kfac = 2 + 2 / 19, 3 + 1 / 39 + 1 / 19
    epochs, iterations = (_one_axis_budget_study(n, profiles) for n in ("one-axis-epochs", "one-axis-iterations"))
    table = v3.width_table(epochs)
    assert len(table) == 8 and not table["censored"].any()
    widths = table.set_index("optimizer")["width (log2 effective lr)"]
    assert widths["sgd"].to_numpy() == pytest.approx(w_sgd) and widths["kfac"].to_numpy() == pytest.approx(w_kfac)
    out = v3.robustness_verdicts(epochs, iterations, n=100)
    assert len(out["d"].parts) == 4 and not out["d"].detail
    assert all(p["slope"] == pytest.approx(0, abs=1e-9) for p in out["d"].parts)  # the same width at every batch
    assert [p["difference"] for p in out["e"].parts] == pytest.approx([w_kfac - w_sgd] * 2)
    assert out["e"].outcome == REPRODUCED  # K-FAC's region less than twice as wide (0.97 < 1 in log2)
    # a part without an optimizer (e's, per budget) is named by its budget alone in the notes
    from kfaclab.results.verdict_display import verdict_display

    notes = verdict_display([out["e"]])["notes"].iloc[0]
    assert notes.startswith("epochs: reproduced") and "None" not in notes
    assert "censored" not in judged_v3.summary(out["d"]) + notes  # nothing to explain


def test_a_robustness_part_left_open_by_a_censored_width_says_so():
    """K-FAC's region reaching the top of its row at every batch size is a lower bound: the parts
    resting on it are not resolved, and the summary and the notes say which widths are censored,
    while SGD's parts (bracketed) carry no such reason."""
    from kfaclab.results.verdict_display import verdict_display

    profiles = {"sgd": [0.30, 0.40, 0.495, 0.50, 0.495, 0.40], "kfac": [0.30, 0.40, 0.495, 0.50, 0.50, 0.50]}
    epochs, iterations = (_one_axis_budget_study(n, profiles) for n in ("cut-epochs", "cut-iterations"))
    out = v3.robustness_verdicts(epochs, iterations, n=100)
    parts = {(p["optimizer"], p["budget"]): p for p in out["d"].parts}
    assert parts[("kfac", "epochs")]["outcome"] == NOT_RESOLVED
    assert "] (censored width at b32, b64, b128, b256); SGD iterations" in judged_v3.summary(out["d"])
    assert not parts[("sgd", "epochs")]["why"]
    notes = verdict_display([out["d"], out["e"]])["notes"].tolist()
    assert "kfac epochs: not resolved at this scale (censored width at b32, b64, b128, b256)" in notes[0]
    assert notes[1] == ("epochs: not resolved at this scale (a censored width); iterations: not resolved at this "
                        "scale (a censored width)")


def test_claim_b_says_why_a_part_with_a_clear_interval_is_not_resolved():
    """A part of (b) whose interval lies below 0.5 but whose bootstrap replicates often lack the
    statistic (the target not reached at its largest batch size) is not resolved, and its text
    says so beside the interval; a part with every replicate says nothing of the kind."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    bs = [32, 64, 128, 256]
    steps = np.array([[1000.0, 600.0, 400.0, 300.0]])  # the estimate's row: reached at every batch size
    full = np.r_[0.2, rng.normal(0.2, 0.01, 400)]
    holed = full.copy()
    holed[1:121] = np.nan  # 30% of replicates without the statistic
    res = SimpleNamespace(name="constructed", bracket_cells={})
    v = v3._claim_b(res, {"b_sgd": holed, "b_kfac": full}, bs, steps, steps, "")
    sgd, kfac = v.parts
    assert sgd["interval"][1] < 0.5 and sgd["outcome"] == NOT_RESOLVED and kfac["outcome"] == REPRODUCED
    assert "SGD 0.2 [" in v.detail and "not resolved at this scale (30% of bootstrap replicates lack it" in v.detail
    assert v.detail.count("replicates lack") == 1 and v.outcome == NOT_RESOLVED


def test_each_optimizers_b_crit_has_version_3s_interval_in_the_chapters():
    """The critical-batch tables and chart of a version-3 study give each fitted B_crit (the same
    estimate as the fit of versions 1-2) the 90% hull interval of the pooled seed bootstrap, which
    surrounds it (the percentile interval over grid points can end at the estimate)."""
    from test_verdicts import TARGET

    from kfaclab import plots, report
    from kfaclab.results import critical_batch_size
    from kfaclab.results.bootstrap import crossings

    def with_crossings(res):  # the loader's column of steps to the target, which fits read
        res.runs[f"iteration_to_{TARGET:g}"] = res.runs["name"].map(crossings(res, "accuracy", TARGET))
        return res

    res = with_crossings(study(both(curve(1000, 300), curve(800, 600)), noise=0.05, name="miniature3"))
    got = v3.b_crit_intervals(res, TARGET)
    for opt, truth in (("sgd", 300), ("kfac", 600)):
        est, lo, hi = got[opt]
        assert est == pytest.approx(critical_batch_size(res, opt, TARGET)["b_crit"], rel=1e-4)
        assert lo < est < hi and lo < truth < hi
    fits = report.fit_table(res, n_boot=50)
    assert "90% interval (rules v3)" in fits and "68% interval" not in fits
    lo, hi = got["kfac"][1:]
    assert fits.loc[("kfac", TARGET), "90% interval (rules v3)"] == f"{lo:,.0f}-{hi:,.0f}"
    chart = json.dumps(plots.critical_batch_chart(res, n_boot=20).to_dict())
    assert "its 90%" in chart and "rules version 3" in chart
    # a study of versions 1-2 keeps their 68% interval
    old = with_crossings(study(both(curve(1000, 300), curve(800, 600)), noise=0.05, name="miniature"))
    assert "68% interval" in report.fit_table(old, n_boot=50)


BS = [32, 64, 128, 256, 512, 1024, 2048]


@pytest.mark.parametrize("key,flags,outcome,target,used,says", [
    ("g", {("kfac", 32)}, CONTRADICTED, 0.53, 7, "cannot overturn it: a grid grown further could only lower the "
                                                 "steps in K-FAC b32, which moves the statistic down"),
    ("g", {("kfac", 32)}, REPRODUCED, 0.53, 7, "could only move down"),
    ("g", {("sgd", 32)}, REPRODUCED, 0.53, 7, "cannot overturn it: a grid grown further could only lower the "
                                               "steps in SGD b32, which moves the statistic up"),
    ("g", {("sgd", 32), ("kfac", 32)}, CONTRADICTED, 0.53, 7, "either way"),
    ("g", {("kfac", 32)}, CONTRADICTED, 0.50, 7, "either way"),  # a higher target could become primary
    ("g", {("kfac", 64)}, CONTRADICTED, 0.53, 7, "none of the flagged cells can move this statistic"),
    ("h", {("kfac", 2048)}, CONTRADICTED, 0.53, 6, "either way"),  # beyond (h)'s batch: it could move there
    ("h", {("kfac", 64)}, CONTRADICTED, 0.53, 7, "none of the flagged cells"),
    ("h", {("kfac", 2048)}, CONTRADICTED, 0.53, 7, "cannot overturn it"),
    # (a): the slope of y against log2 B; K-FAC's steps falling at small batches raise it, at large lower it
    ("a", {("kfac", 32), ("kfac", 64)}, REPRODUCED, 0.53, 7, "cannot overturn it: a grid grown further could only "
                                                            "lower the steps in K-FAC b32, K-FAC b64, which moves "
                                                            "the statistic up"),
    ("a", {("kfac", 32), ("kfac", 2048)}, REPRODUCED, 0.53, 7, "either way"),
    ("a", {("kfac", 1024), ("sgd", 32)}, CONTRADICTED, 0.53, 7, "cannot overturn it"),  # both push it down
    ("a", {("kfac", 256)}, REPRODUCED, 0.53, 7, "none of the flagged cells"),  # at the mean of log2 B: no lever
    ("a", {("kfac", 2048)}, REPRODUCED, 0.53, 6, "either way"),  # a new reach would add a batch size
    ("g", {("adam", 32)}, CONTRADICTED, 0.53, 7, "none of the flagged cells"),  # Adam's cells do not enter
    ("a", {("adam", 2048)}, REPRODUCED, 0.53, 6, "none of the flagged cells"),
])
def test_what_the_flagged_cells_can_do_to_a_statistic_of_the_step_ratio(key, flags, outcome, target, used, says):
    """Steps are a minimum over the grid, so a grid grown past its limit can only lower the flagged
    optimizer's steps: K-FAC's lower log2(K-FAC/SGD) at that batch size, SGD's raise it. `used`: how
    many of the batch sizes, from the smallest, both optimizers reach."""
    res = study(both({32: 1000, 2048: 300}, {32: 700, 2048: 200}))
    res.targets = [0.45, 0.50, 0.53]
    res.bracket_cells = {cell: {"state": "edge"} for cell in flags}
    effects, shifts = reading.flag_effects(res, key, BS, list(range(used)))
    assert says in reading.flag_reach(res, outcome, effects, shifts, target)


def test_a_flagged_verdict_on_one_batch_size_says_what_its_flags_can_do():
    res = study(both(curve(1000, 300), curve(500, 300)), noise=0.02)  # K-FAC 2x faster everywhere
    res.bracket_cells = {("kfac", 32): {"state": "edge"}}
    out = v3.steps_verdicts(res, n=200, claims="gh")
    assert out["g"].outcome == CONTRADICTED and "flags cannot overturn it" in out["g"].detail
    assert "none of the flagged cells can move this statistic" in out["h"].detail


@pytest.mark.parametrize("flagged,says", [
    (32, "the flags cannot overturn it: a grid grown further could only lower the steps in K-FAC b32, which moves "
         "the statistic down"),  # efficiency = S(32) x 32 / 2048 / S(2048): K-FAC's S(32) falling lowers it
    (2048, "could only move up"),
    (256, "none of the flagged cells can move this statistic"),
])
def test_claim_b_says_what_its_flags_can_do_per_optimizer(flagged, says):
    res = study(both(curve(1000, 300), curve(500, 300)), noise=0.02)  # both far below 0.5: reproduced
    res.bracket_cells = {("kfac", flagged): {"state": "edge"}}
    b = v3.steps_verdicts(res, n=200, claims="b")["b"]
    parts = {p["optimizer"]: p for p in b.parts}
    assert b.outcome == REPRODUCED and says in parts["kfac"]["flags"] and "flags" not in parts["sgd"]
    assert f"reproduced ({parts['kfac']['flags']})" in b.detail


def test_a_verdict_judged_in_pairs_names_each_pair_in_its_summary():
    """(k) is judged per pair of optimizers: the versions table names each pair, not ': cannot tell'."""
    from kfaclab.results.claims import Verdict

    v = Verdict("k", "statement", "source", "study", NOT_RESOLVED, "pairs", parts=[
        {"pair": "K-FAC over SGD", "claim": "c", "outcome": "cannot tell"},
        {"pair": "Adam over SGD", "claim": "i", "outcome": "agree"}])
    assert judged_v3.summary(v) == "K-FAC over SGD: cannot tell; Adam over SGD: agree"


def test_a_flagged_cell_that_already_reaches_the_target_adds_no_batch_size():
    """(h) is read at the largest batch size both optimizers reach. K-FAC flagged at 2048 where it
    already reaches the target and SGD does not: a grid grown further can only lower K-FAC's steps
    there, never make SGD reach it, so (h) cannot move to 2048."""
    res = study(both({32: 1000, 2048: 300}, {32: 700, 2048: 200}))
    res.targets = [0.45, 0.50, 0.53]
    res.bracket_cells = {("kfac", 2048): {"state": "edge"}}
    used = list(range(6))  # both reach 32 to 1024
    reached = {("sgd", b) for b in BS[:6]} | {("kfac", b) for b in BS}
    effects, shifts = reading.flag_effects(res, "h", BS, used, reached)
    assert not shifts and "none of the flagged cells" in reading.flag_reach(res, CONTRADICTED, effects, shifts, 0.53)
    # K-FAC not reaching 2048 yet: its new reach there still needs SGD's, whose grid is bracketed
    effects, shifts = reading.flag_effects(res, "h", BS, used, reached - {("kfac", 2048)})
    assert not shifts
    # ... unless SGD reaches 2048 already, or could (its cell flagged too): then (h) could move there
    sgd_there = (reached - {("kfac", 2048)}) | {("sgd", 2048)}
    assert reading.flag_effects(res, "h", BS, used, sgd_there)[1] == [("kfac", 2048)]
    res.bracket_cells[("sgd", 2048)] = {"state": "edge"}
    effects, shifts = reading.flag_effects(res, "h", BS, used, reached - {("kfac", 2048)})
    assert shifts == [("kfac", 2048), ("sgd", 2048)]
    assert "either way" in reading.flag_reach(res, CONTRADICTED, effects, shifts, 0.53)
    # unknown reach: conservative, as before
    assert reading.flag_effects(res, "h", BS, used)[1] == [("kfac", 2048), ("sgd", 2048)]


def _fit_case(kfac_b_crit, flags):
    res = study(both(curve(1000, 300), curve(1000, kfac_b_crit)), noise=0.02)
    res.targets = [TARGET_V]
    res.bracket_cells = {cell: {"state": "edge"} for cell in flags}
    return res


TARGET_V = 0.5  # test_verdicts' TARGET: the one target of these constructed studies


@pytest.mark.parametrize("flags,says", [
    # S(B) = S_min (1 + B_crit / B): K-FAC's steps falling at its smallest batch size lower its fitted
    # B_crit, at its largest they lower S_min and raise B_crit; SGD's do the opposite to the ratio
    ({("kfac", 32)}, "the statistic could only move down; lowering the steps in K-FAC b32 moves it toward"),
    ({("kfac", 2048)}, "the flags cannot overturn it: a grid grown further could only lower the steps in K-FAC "
                       "b2048, which moves the statistic up, away from its threshold"),
    ({("sgd", 32)}, "the flags cannot overturn it: a grid grown further could only lower the steps in SGD b32, which "
                    "moves the statistic up"),
    ({("sgd", 32), ("kfac", 32)}, "either way; lowering the steps in K-FAC b32 moves it toward its threshold"),
    ({("adam", 32)}, ""),  # another optimizer's cell does not enter (c)
])
def test_what_the_flagged_cells_can_do_to_a_ratio_of_critical_batch_sizes(flags, says):
    res = _fit_case(1200, flags)
    c = v3.steps_verdicts(res, n=200, claims="c")["c"]
    assert c.outcome == REPRODUCED  # log2(1200 / 300) = 2, far above 0.5
    if says:
        assert says in c.detail
    else:
        assert "flagged" not in c.detail


def test_the_margin_a_flagged_verdict_names_is_where_it_changes():
    """(c) just above its threshold (log2(500/300) = 0.74 > 0.5), K-FAC flagged at its two smallest
    batch sizes: the notes name the factor at which lowering their steps changes the verdict. Judged
    again from the study's own steps, lowered by that factor (and not by the one before it), the
    verdict is another; by the one before it, it is not."""
    import re

    res = _fit_case(500, {("kfac", 32), ("kfac", 64)})
    c = v3.steps_verdicts(res, n=200, claims="c")["c"]
    assert c.outcome == REPRODUCED
    m = re.search(r"it would no longer be reproduced were they ([0-9.]+)x what the grid found \((\d+)% fewer\)",
                  c.detail)
    assert m, c.detail
    f = float(m.group(1))
    assert round(100 * (1 - f)) == int(m.group(2)) and 0.25 <= f < 1 and c.overturned_at == f

    def outcome_at(factor):
        plain = _fit_case(500, set())  # no flags: the verdict alone
        st = v3.StepRows(plain, v3.primary_target(plain), 200, v3.SEED)
        for b in (32, 64):
            st.rows["kfac"][b] = st.rows["kfac"][b] * factor
        return v3._b_crit("c", plain, st).outcome

    assert outcome_at(f) != REPRODUCED
    assert outcome_at(round(f + 0.05, 2)) == REPRODUCED


def test_the_margin_is_not_named_when_the_flags_cannot_overturn_or_could_add_a_batch_size():
    effects = {("kfac", 32): -1}
    text, at = reading.flag_margin(REPRODUCED, effects, [], lambda scale: CONTRADICTED)
    assert text.startswith("lowering the steps in K-FAC") and at == 0.95
    assert reading.flag_margin(CONTRADICTED, effects, [], lambda scale: REPRODUCED) == ("", None)  # moves away
    assert reading.flag_margin(REPRODUCED, effects, [("sgd", 2048)], lambda scale: CONTRADICTED) == ("", None)
    assert reading.flag_margin(NOT_RESOLVED, effects, [], lambda scale: REPRODUCED) == ("", None)
    text, at = reading.flag_margin(REPRODUCED, effects, [], lambda scale: REPRODUCED)
    assert "stays reproduced even were they 0.25x" in text and at is None
    # the factor is where the verdict first changes, scanning down from 0.95x
    text, at = reading.flag_margin(REPRODUCED, effects, [], lambda scale: REPRODUCED if scale[("kfac", 32)] > 0.6
                              else NOT_RESOLVED)
    assert at == 0.6 and "were they 0.6x what the grid found (40% fewer)" in text
