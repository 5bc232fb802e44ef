"""The verdict rules of book/verdicts.md on constructed studies with known answers: every
outcome is reached, seeds and ties included."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from kfaclab.results import claims_robustness
from kfaclab.results import verdicts as vd
from kfaclab.results.bootstrap import (
    Cell,
    _Steps,
    bootstrap_steps,
    cells,
    crossings,
    fit_b_crit_rows,
    primary_target,
)
from kfaclab.results.claims import (
    CONTRADICTED,
    NOT_RESOLVED,
    OUTCOMES,
    REPRODUCED,
    Verdict,
)
from kfaclab.results.claims_adaptive import claim_f
from kfaclab.results.claims_critical_batch import claim_c, claim_i, claim_j, claim_k
from kfaclab.results.claims_robustness import _accuracy_cells, claim_d, claim_e
from kfaclab.results.claims_steps import claim_a, claim_b, claim_g, claim_h
from kfaclab.results.study import StudyResults
from kfaclab.results.verdict_display import (
    chapter_verdicts,
    verdict_display,
    verdict_table,
)

BATCHES = [32, 64, 128, 256, 512, 1024, 2048]
TARGET = 0.5


GRID = {0.01: 1.0, 0.02: 1.02, 0.05: 1.04, 0.1: 1.5}  # learning rate -> crossing relative to the best


def study(steps, seeds=(0, 1, 2), noise=0.0, grid=GRID, rng_seed=0, name="constructed",
          never=None) -> StudyResults:
    """A study whose runs cross TARGET at known iterations: steps[(opt, b)] is the best
    configuration's crossing; the others of the grid cross at the multiples GRID gives (two
    near the best, one far: a resampled grid rarely loses every good configuration). `noise`
    multiplies each seed's crossing by exp(N(0, noise)); `never` is a set of (opt, b, lr, seed)
    that never cross. Each run is evaluated at 0, at its crossing and at twice it."""
    rng = np.random.default_rng(rng_seed)
    rows, evals = [], []
    for (opt, b), s in steps.items():
        for lr, factor in grid.items():
            for seed in seeds:
                name_ = f"{opt}-b{b}-lr{lr}-s{seed}"
                it = s * factor * math.exp(rng.normal(0, noise))
                it = max(1, int(round(it)))
                crosses = not never or (opt, b, lr, seed) not in never
                end = 2 * it
                accs = [0.1, TARGET + 0.01 if crosses else TARGET - 0.05, TARGET + 0.02 if crosses else TARGET - 0.04]
                rows.append({"name": name_, "status": "completed", "optimizer": opt, "base_optimizer": opt,
                             "batch_schedule": "fixed", "batch_size": b, "seed": seed, "hp_lr": lr,
                             "final_accuracy": accs[-1], "planned_iterations": end, "planned_epochs": end * b / 50000,
                             "iterations": end, "epochs": end * b / 50000, "examples": end * b})
                for i, a in zip((0, it, end), accs):
                    evals.append({"name": name_, "status": "completed", "optimizer": opt, "batch_size": b,
                                  "seed": seed, "hp_lr": lr, "iteration": i, "epoch": i * b / 50000,
                                  "test_accuracy": a, "train_loss": None if i == 0 else 2.0 - a})
    runs = pd.DataFrame(rows)
    runs["status"] = pd.Categorical(runs["status"], categories=("completed", "diverged", "failed", "interrupted",
                                                                "pending"))
    return StudyResults(name, None, "", runs, pd.DataFrame(evals), {"sgd": ["lr"], "kfac": ["lr"]}, [TARGET], {})


def curve(s_min, b_crit, factor=1.0):
    return {b: factor * s_min * (1 + b_crit / b) for b in BATCHES}


def both(sgd, kfac):
    return {**{("sgd", b): v for b, v in sgd.items()}, **{("kfac", b): v for b, v in kfac.items()}}


N = 300  # replicates: enough for these clear cases, quick


# ------------------------------------------------------------------------------ steps to target with seeds

def test_steps_are_the_grid_minimum_of_the_median_over_seeds():
    res = study(both({32: 1000}, {32: 800}), noise=0.0)
    by_cell = cells(res, "accuracy", TARGET)
    assert by_cell[("sgd", 32)].point() == 1000 and by_cell[("kfac", 32)].point() == 800
    # One of three seeds of the best configuration never crosses: its median is its middle seed.
    res = study(both({32: 1000}, {32: 800}), never={("sgd", 32, 0.01, 0)})
    assert cells(res, "accuracy", TARGET)[("sgd", 32)].point() == 1000
    # Two of three never cross: the configuration no longer counts; the next one (1.02x) does.
    res = study(both({32: 1000}, {32: 800}), never={("sgd", 32, 0.01, 0), ("sgd", 32, 0.01, 1)})
    assert cells(res, "accuracy", TARGET)[("sgd", 32)].point() == 1020


def test_loss_targets_race_the_training_loss():
    res = study(both({32: 1000}, {32: 800}))
    cross = crossings(res, "loss", 2.0 - TARGET - 0.005)  # the loss at the crossing is 2 - 0.51
    assert cross["sgd-b32-lr0.01-s0"] == 1000 and cross["kfac-b32-lr0.01-s0"] == 800


def test_the_bootstrap_resamples_configurations_and_seeds():
    res = study(both({32: 1000}, {32: 800}), noise=0.3, seeds=(0, 1, 2, 3, 4))
    cell = cells(res, "accuracy", TARGET)[("sgd", 32)]
    boot = bootstrap_steps(cell, np.random.default_rng(0), 2000)
    # Every replicate is a median of seeds drawn from one configuration's runs, then a minimum.
    values = np.sort(cell.values[~np.isnan(cell.values)])
    assert boot.min() >= values.min() and boot.max() <= values.max()
    assert len(np.unique(boot)) > 5  # seeds vary
    # Without noise and one configuration, the bootstrap has nothing to vary.
    fixed = Cell(np.array([[1000.0, 1000.0, 1000.0]]), ["a"])
    assert set(bootstrap_steps(fixed, np.random.default_rng(0), 100)) == {1000.0}


# ------------------------------------------------------------------------------ claims on steps

@pytest.mark.parametrize("kfac_factor,expected", [
    ({b: 0.5 for b in BATCHES}, REPRODUCED),  # K-FAC twice as fast at every batch: same scaling
    ({b: 0.5 * (32 / b) ** 0.5 for b in BATCHES}, CONTRADICTED),  # K-FAC's ratio halves every 2 doublings
])
def test_claim_a_scaling_of_the_ratio(kfac_factor, expected):
    sgd = curve(1000, 256)
    kfac = {b: v * kfac_factor[b] for b, v in sgd.items()}
    v = claim_a(study(both(sgd, kfac), noise=0.02), target=TARGET)
    assert v.outcome == expected, v
    assert v.estimate == pytest.approx(0.0 if expected == REPRODUCED else -0.5, abs=0.03)


def test_claim_a_is_not_resolved_when_noise_swamps_the_slope():
    sgd = curve(1000, 256)
    kfac = {b: v * 0.5 * (32 / b) ** 0.1 for b, v in sgd.items()}  # a slope of -0.1 exactly
    v = claim_a(study(both(sgd, kfac), noise=0.4, rng_seed=3), target=TARGET)
    assert v.outcome == NOT_RESOLVED and v.interval[0] < -0.1 < v.interval[1]


def test_claim_b_efficiency_at_the_largest_batch():
    flat = {b: 1000.0 for b in BATCHES}  # no speed-up at all: efficiency 1/64
    perfect = {b: 64000.0 / b for b in BATCHES}  # perfect scaling: efficiency 1
    assert claim_b(study(both(flat, flat), noise=0.02), target=TARGET).outcome == REPRODUCED
    v = claim_b(study(both(flat, perfect), noise=0.02), target=TARGET)
    assert v.outcome == CONTRADICTED
    assert {p["optimizer"]: p["outcome"] for p in v.parts} == {"sgd": REPRODUCED, "kfac": CONTRADICTED}
    # Reaching the target over less than an 8x range of batch sizes resolves nothing.
    short = {("sgd", b): 1000.0 for b in (32, 64, 128)} | {("kfac", b): 1000.0 for b in (32, 64, 128)}
    assert claim_b(study(short), target=TARGET).outcome == NOT_RESOLVED


def test_claim_c_critical_batch_ratio():
    v = claim_c(study(both(curve(1000, 100), curve(1000, 800)), noise=0.02), target=TARGET)
    assert v.outcome == REPRODUCED and v.estimate == pytest.approx(3.0, abs=0.1)
    v = claim_c(study(both(curve(1000, 200), curve(700, 200)), noise=0.02), target=TARGET)
    assert v.outcome == CONTRADICTED and v.estimate == pytest.approx(0.0, abs=0.1)
    # K-FAC scaling perfectly up to the largest batch: its B_crit is beyond what was measured.
    v = claim_c(study(both(curve(1000, 200), {b: 64000.0 / b for b in BATCHES}), noise=0.02), target=TARGET)
    assert v.outcome == NOT_RESOLVED and "not identified for K-FAC" in v.detail


def test_claims_g_and_h_ratio_at_the_ends():
    sgd = curve(1000, 256)
    faster_small_slower_large = {b: v * (0.5 if b == 32 else 1.0 if b < 2048 else 1.6) for b, v in sgd.items()}
    res = study(both(sgd, faster_small_slower_large), noise=0.02)
    assert claim_g(res, target=TARGET).outcome == CONTRADICTED  # superior at small batch
    assert claim_h(res, target=TARGET).outcome == REPRODUCED  # slower at the largest
    comparable = {b: v * (0.95 if b == 32 else 0.6) for b, v in sgd.items()}
    res = study(both(sgd, comparable), noise=0.02)
    assert claim_g(res, target=TARGET).outcome == REPRODUCED
    assert claim_h(res, target=TARGET).outcome == CONTRADICTED
    noisy = study(both(sgd, {b: v * 0.8 for b, v in sgd.items()}), noise=0.5, rng_seed=1)
    assert claim_g(noisy, target=TARGET).outcome == NOT_RESOLVED


def test_a_study_without_a_shared_target_resolves_nothing():
    sgd = {("sgd", b): 1000.0 for b in BATCHES}
    never = {("kfac", b, lr, s) for b in BATCHES for lr in GRID for s in (0, 1, 2)}
    res = study({**sgd, **{("kfac", b): 1000.0 for b in BATCHES}}, never=never)
    assert primary_target(res) is None
    assert all(v.outcome == NOT_RESOLVED for v in vd.verdicts(res, n=50) if v.claim in "abcgh")


def test_too_many_replicates_without_the_target_resolve_nothing():
    sgd = curve(1000, 256)
    # At the largest batch, only one configuration of four reaches the target, and in only 2 of 3
    # seeds: resampling loses it in many replicates.
    never = {("kfac", 2048, lr, s) for lr in (0.02, 0.05, 0.1) for s in (0, 1, 2)} | {("kfac", 2048, 0.01, 0)}
    v = claim_h(study(both(sgd, {b: x * 1.5 for b, x in sgd.items()}), never=never), target=TARGET)
    assert v.outcome == NOT_RESOLVED and "bootstrap replicates lack" in v.detail


def test_no_verdict_depends_on_how_ties_are_broken():
    """Two configurations tie at every cell; listing them in the other order (which is what a
    different tie-breaking would pick first) changes no outcome, estimate or interval."""
    sgd = curve(1000, 256)
    kfac = {b: v * 0.7 for b, v in sgd.items()}
    tied = study(both(sgd, kfac), noise=0.05, grid={0.01: 1.0, 0.1: 1.0})
    # Make the second configuration's crossings equal to the first's (a tie), seed by seed.
    ev = tied.evals.copy()
    for (_, g) in ev.groupby(["optimizer", "batch_size", "seed"]):
        first = g[g["hp_lr"] == 0.01]["iteration"].to_numpy()
        ev.loc[g.index[g["hp_lr"] == 0.1], "iteration"] = first
    tied.evals = ev
    reordered = StudyResults(tied.name, None, "", tied.runs.iloc[::-1].reset_index(drop=True),
                             tied.evals.iloc[::-1].reset_index(drop=True), tied.grid_keys, tied.targets, {})
    a = {v.claim: (v.outcome, v.estimate, v.interval) for v in vd.verdicts(tied, n=200)}
    b = {v.claim: (v.outcome, v.estimate, v.interval) for v in vd.verdicts(reordered, n=200)}
    for claim in "abcgh":
        assert a[claim][0] == b[claim][0] and a[claim][1] == pytest.approx(b[claim][1])


def test_vectorised_b_crit_fit_matches_the_scalar_fit():
    from kfaclab.results.scaling import fit_steps_curve, steps_curve

    rng = np.random.default_rng(0)
    rows = np.array([steps_curve({"s_min": 1000.0, "b_crit": c}, BATCHES) * np.exp(rng.normal(0, 0.05, 7))
                     for c in rng.uniform(60, 1500, 40)])
    got = fit_b_crit_rows(BATCHES, rows)
    want = [fit_steps_curve(BATCHES, r)["b_crit"] for r in rows]
    ok = np.isfinite(got)
    assert ok.sum() >= 30
    np.testing.assert_allclose(got[ok], np.array(want)[ok], rtol=1e-6)
    assert np.isnan(fit_b_crit_rows(BATCHES, [64000.0 / np.array(BATCHES)]))[0]  # perfect scaling


# ------------------------------------------------------------------------------ robustness claims

def _accuracy_matrices(shares_by_budget, configs=4):
    """(optimizer, batch) -> configurations x 3 seeds of accuracies with the given number of
    configurations at the best (0.60) and the rest far below, per budget."""
    def make(k):
        m = np.full((configs, 3), 0.40)
        m[:k] = 0.60
        return m
    return {budget: {(o, b): make(k) for (o, b), k in table.items()} for budget, table in shares_by_budget.items()}


@pytest.mark.parametrize("epochs_k,iters_k,expected", [
    (lambda i: 4 - i // 2, lambda i: 1 + i // 2, REPRODUCED),  # shrinks under epochs, grows under iterations
    (lambda i: 1 + i // 2, lambda i: 1 + i // 2, CONTRADICTED),  # grows under both
    (lambda i: 2, lambda i: 2, NOT_RESOLVED),  # flat: no slope either way
])
def test_claim_d_region_slopes(monkeypatch, epochs_k, iters_k, expected):
    tables = _accuracy_matrices({
        "epochs": {(o, b): epochs_k(i) for o in ("sgd", "kfac") for i, b in enumerate(BATCHES)},
        "iterations": {(o, b): iters_k(i) for o in ("sgd", "kfac") for i, b in enumerate(BATCHES)}})
    monkeypatch.setattr(claims_robustness, "_accuracy_cells", lambda results, budget: tables[budget])
    v = claim_d(_named("d"), n=200)
    assert v.outcome == expected, v.parts
    assert len(v.parts) == 4


def _named(name):
    return StudyResults(name, None, "", pd.DataFrame(), pd.DataFrame(), {}, [], {})


@pytest.mark.parametrize("kfac_k,sgd_k,expected", [(14, 14, REPRODUCED), (16, 4, CONTRADICTED),
                                                   (12, 9, NOT_RESOLVED)])
def test_claim_e_robustness_difference(monkeypatch, kfac_k, sgd_k, expected):
    """4x4 grids: K-FAC's good region as large as SGD's (reproduced), far larger (contradicted),
    somewhat larger within the grid's resampling noise (not resolved)."""
    tables = _accuracy_matrices({"rule": {**{("kfac", b): kfac_k for b in BATCHES},
                                          **{("sgd", b): sgd_k for b in BATCHES}}}, configs=16)
    monkeypatch.setattr(claims_robustness, "_accuracy_cells", lambda results, budget: tables[budget])
    v = claim_e(_named("e"), n=500)
    assert v.outcome == expected, v.interval
    assert v.estimate == pytest.approx((kfac_k - sgd_k) / 16)


def test_claim_e_noise_leaves_it_open(monkeypatch):
    rng = np.random.default_rng(0)
    table = {(o, b): 0.55 + rng.normal(0, 0.01, (4, 3)) for o in ("sgd", "kfac") for b in BATCHES}
    monkeypatch.setattr(claims_robustness, "_accuracy_cells", lambda results, budget: table)
    assert claim_e(_named("e"), n=300).outcome == NOT_RESOLVED


def test_accuracy_cells_hold_each_configuration_and_seed():
    res = study(both({b: 1000.0 for b in BATCHES}, {b: 800.0 for b in BATCHES}))
    cells = _accuracy_cells(res, "rule")
    assert cells[("sgd", 32)].shape == (4, 3)
    np.testing.assert_allclose(cells[("sgd", 32)], TARGET + 0.02)


# ------------------------------------------------------------------------------ adaptive batch sizes

def _adaptive(change, seeds=(0, 1, 2), spread=0.001, iterations=(1000, 500)):
    rows = []
    for method, delta, its in (("sgd", 0.0, iterations[0]), ("sgd+abs", change, iterations[1])):
        for lr, offset in ((0.01, -0.05), (0.1, 0.0)):
            for s in seeds:
                rows.append({"name": f"{method}-{lr}-{s}", "status": "completed", "optimizer": method,
                             "base_optimizer": "sgd", "batch_schedule": "fixed" if method == "sgd" else "abs",
                             "batch_size": 128, "seed": s, "hp_lr": lr,
                             "final_accuracy": 0.55 + delta + offset + spread * (s - 1), "iterations": its,
                             "examples": its * 128, "seconds": 1.0, "final_batch_size": 128})
    runs = pd.DataFrame(rows)
    runs["status"] = pd.Categorical(runs["status"], categories=("completed", "diverged", "failed", "interrupted",
                                                                "pending"))
    return StudyResults("abs", None, "", runs, pd.DataFrame(), {}, [], {})


@pytest.mark.parametrize("change,expected", [(0.0, REPRODUCED), (-0.03, CONTRADICTED),
                                             (-0.01, NOT_RESOLVED)])
def test_claim_f_accuracy_within_one_point(change, expected):
    v = claim_f(_adaptive(change, spread=0.004), n=500)
    assert v.outcome == expected, v
    assert v.estimate == pytest.approx(change, abs=1e-9)
    assert "fewest iterations: 2.00x (the paper's up to 5x: not resolved at this scale)" in v.detail
    five = claim_f(_adaptive(0.0, iterations=(1000, 180)), n=100)
    assert "up to 5x: reproduced" in five.detail


def test_verdicts_of_a_study_are_those_it_can_carry():
    steps = study(both(curve(1000, 100), curve(1000, 800)), noise=0.02)
    assert [v.claim for v in vd.verdicts(steps, n=50)] == list("abcdegh")
    assert [v.claim for v in vd.verdicts(_adaptive(0.0), n=50)] == ["f"]
    table = verdict_table(vd.verdicts(steps, n=50))
    assert set(table["verdict"]) <= set(OUTCOMES) and len(table) == 7


def test_claim_g_looks_at_the_smallest_batch_size_itself():
    sgd = curve(1000, 256)
    never = {("sgd", 32, lr, s) for lr in GRID for s in (0, 1, 2)}  # SGD misses the target at batch 32
    v = claim_g(study(both(sgd, {b: x * 0.9 for b, x in sgd.items()}), never=never), target=TARGET)
    assert v.outcome == NOT_RESOLVED and "not reached by both optimizers at batch 32" in v.detail


def test_csv_export_writes_the_tables_and_verdicts_only_of_a_finished_study(tmp_path):
    from kfaclab.results.export import write_csv

    res = study(both(curve(1000, 100), curve(1000, 800)), noise=0.02)
    paths = write_csv(res, tmp_path)
    assert sorted(p.name for p in paths) == ["constructed-evaluations.csv", "constructed-runs.csv",
                                             "constructed-steps-to-target.csv", "constructed-verdicts.csv"]
    table = pd.read_csv(tmp_path / "constructed-verdicts.csv")
    assert list(table["claim"]) == list("abcdegh") and set(table["verdict"]) <= set(OUTCOMES)
    runs = pd.read_csv(tmp_path / "constructed-runs.csv")
    assert len(runs) == len(res.runs)
    res.runs.loc[0, "status"] = "pending"
    assert not any(p.name.endswith("verdicts.csv") for p in write_csv(res, tmp_path / "partial"))


def test_verdict_display_shows_each_claim_with_its_interval():
    vs = vd.verdicts(study(both(curve(1000, 100), curve(1000, 800)), noise=0.02), n=100)
    shown = verdict_display(vs, "ac")
    assert list(shown["claim"].str[:3]) == ["(a)", "(c)"]
    assert shown["estimate [90% interval]"].str.match(r"-?[\d.]+ \[-?[\d.e-]+, -?[\d.e-]+\]").all()


def test_every_claim_has_the_papers_own_statement_beside_it():
    from kfaclab.results.published import PUBLISHED, published

    assert set(PUBLISHED) == set(vd.CLAIMS)  # no claim without its published statement, none extra
    for key, p in PUBLISHED.items():
        assert p.claim == key and p.says and p.source
        shown = p.display()
        # Where the text gives no number, the book says so instead of inventing one.
        assert (p.number in shown) if p.number else ("no number" in shown)
        assert (f"“{p.says}”" in shown) if p.quoted else ("paraphrase" in shown and "“" not in shown)
    assert "1%" in published("f").number and "3x" in published("f").number and "5x" in published("f").number
    with pytest.raises(KeyError, match="claims: a, b"):
        published("z")


# ------------------------------------------------------------------------------ Adam and the NQM (version 2)

def three(sgd, kfac, adam):
    return {**both(sgd, kfac), **{("adam", b): v for b, v in adam.items()}}


def test_claims_i_and_j_judge_adam_against_sgd_and_kfac():
    res = study(three(curve(1000, 100), curve(1000, 800), curve(1000, 300)), noise=0.02)
    i, j = claim_i(res, target=TARGET), claim_j(res, target=TARGET)
    assert i.outcome == REPRODUCED and i.estimate == pytest.approx(math.log2(3), abs=0.1)
    assert i.statistic == "log2(Adam B_crit / SGD B_crit)"
    assert j.outcome == REPRODUCED and j.estimate == pytest.approx(math.log2(800 / 300), abs=0.1)
    # Adam's B_crit as SGD's contradicts (i) (threshold 0.5); K-FAC's below Adam's contradicts (j) (threshold 0)
    res = study(three(curve(1000, 200), curve(1000, 150), curve(600, 200)), noise=0.02)
    assert claim_i(res, target=TARGET).outcome == CONTRADICTED
    assert claim_j(res, target=TARGET).outcome == CONTRADICTED
    # 1.2x is above (j)'s threshold of 0 but below (i)'s 0.5: (i) contradicted, (j) reproduced
    res = study(three(curve(1000, 250), curve(1000, 300 * 1.2 * 1.2), curve(1000, 300)), noise=0.01)
    assert claim_i(res, target=TARGET).outcome == CONTRADICTED
    assert claim_j(res, target=TARGET).outcome == REPRODUCED


def test_the_pair_is_judged_at_its_own_primary_target():
    # K-FAC never reaches the target: (c) and (j) have no primary target, (i) still does
    never = {("kfac", b, lr, s) for b in BATCHES for lr in GRID for s in (0, 1, 2)}
    res = study(three(curve(1000, 100), curve(1000, 800), curve(1000, 400)), noise=0.02, never=never)
    assert primary_target(res, ("sgd", "adam")) == TARGET and primary_target(res) is None
    assert claim_i(res).outcome == REPRODUCED
    assert claim_j(res).outcome == NOT_RESOLVED and "no accuracy target" in claim_j(res).detail


@pytest.mark.parametrize("outcomes,prediction,expected,parts", [
    # the model predicts all three claims: the runs agree where reproduced
    ("RRR", {"c": 4.8, "i": 1.0, "j": 3.0}, REPRODUCED, ["agree"] * 3),
    ("RRC", {"c": 4.8, "i": 1.0, "j": 3.0}, CONTRADICTED, ["agree", "agree", "disagree"]),
    ("RNR", {"c": 4.8, "i": 1.0, "j": 3.0}, NOT_RESOLVED, ["agree", "cannot tell", "agree"]),
    # the model predicts Adam's B_crit below 1.41x SGD's: (i) contradicted is agreement
    ("RCR", {"c": 4.8, "i": -0.4, "j": 5.2}, REPRODUCED, ["agree"] * 3),
    ("RRR", {"c": 4.8, "i": -0.4, "j": 5.2}, CONTRADICTED, ["agree", "disagree", "agree"]),
])
def test_claim_k_compares_each_pair_with_the_models_side_of_the_threshold(outcomes, prediction, expected, parts):
    code = {"R": REPRODUCED, "C": CONTRADICTED, "N": NOT_RESOLVED}
    pairs = {k: Verdict(k, "", "", "s", code[o], "x", 1.0, (0.5, 1.5)) for k, o in zip("cij", outcomes)}
    v = claim_k(study(both(curve(1000, 100), curve(1000, 100))), pairs, prediction)
    assert v.outcome == expected and [p["outcome"] for p in v.parts] == parts
    assert [p["pair"] for p in v.parts] == ["K-FAC over SGD", "Adam over SGD", "K-FAC over Adam"]


def test_claim_k_is_judged_on_the_nqm_prediction_its_caller_passes_and_only_then():
    from kfaclab import nqm

    prediction = nqm.study_prediction()
    assert prediction["c"] > 0.5 and prediction["j"] > 0  # more preconditioning, larger B_crit
    pairs = {k: Verdict(k, "", "", "s", REPRODUCED, "x") for k in "cij"}
    v = claim_k(study(both(curve(1000, 100), curve(1000, 100))), pairs, prediction)
    assert [p["nqm_log2_ratio"] for p in v.parts] == pytest.approx([prediction[k] for k in "cij"])
    # The verdicts do not reach up to the model: without a prediction, (k) is not drawn (nor
    # waited for as ready); with one, it is, on the same pairs (c), (i), (j).
    res = study(three(curve(1000, 100), curve(1000, 800), curve(1000, 300)), noise=0.02)
    assert "k" not in [v.claim for v in vd.verdicts(res, n=50)]
    assert "k" not in [v.claim for v in vd.ready_verdicts(res, n=50)[0]]
    with_k = {v.claim: v for v in vd.ready_verdicts(res, n=50, prediction=prediction)[0]}
    assert "k" in with_k and [p["runs_verdict"] for p in with_k["k"].parts] == [with_k[c].outcome for c in "cij"]


def _with_pending(res, optimizer, count):
    names = res.runs.index[res.runs["optimizer"] == optimizer][:count]
    res.runs.loc[names, "status"] = "pending"
    return dataclasses.replace(res, evals=res.evals[~res.evals["name"].isin(res.runs.loc[names, "name"])])


def test_a_verdict_waits_only_for_the_runs_it_compares(tmp_path):
    from kfaclab.results.export import csv_links, write_csv

    res = _with_pending(study(three(curve(1000, 100), curve(1000, 800), curve(1000, 300)), noise=0.02), "adam", 5)
    ready, waiting = vd.ready_claims(res)
    assert ready == list("abcdegh") and waiting == {"i": 5, "j": 5, "k": 5}
    vs, _ = vd.ready_verdicts(res, n=100)
    assert [v.claim for v in vs] == list("abcdegh")
    html = chapter_verdicts(res, "ci").data
    assert "(c) K-FAC raises" in html and "No verdict yet</b> on (i): 5 of SGD and Adam runs" in html
    assert "verdicts" in csv_links(res) and any(p.name.endswith("verdicts.csv") for p in write_csv(res, tmp_path))
    # an SGD run pending holds back every claim that compares SGD, and only those
    res = _with_pending(study(three(curve(1000, 100), curve(1000, 800), curve(1000, 300)), noise=0.02), "sgd", 1)
    ready, waiting = vd.ready_claims(res)
    assert ready == ["j"] and set(waiting) == set("abcdeghik")
    html = chapter_verdicts(res, "abgh").data
    # the four claims wait for the same runs: one line names them all
    assert html.count("No verdict yet") == 1 and "kfaclab-verdicts" not in html
    assert "No verdict yet</b> on (a), (b), (g) and (h): 1 of SGD and K-FAC runs have not finished" in html


def test_a_study_of_two_optimizers_carries_no_adam_claims():
    res = study(both(curve(1000, 100), curve(1000, 800)), noise=0.02)
    assert vd.carried_claims(res) == list("abcdegh")
    assert [v.claim for v in vd.verdicts(res, n=50)] == list("abcdegh")


def test_nqm_against_runs_puts_each_world_in_units_of_its_own_sgd_fit():
    from kfaclab import plots

    res = study(three(curve(1000, 100), curve(1000, 800), curve(1000, 300)))
    bs = np.array([1.0, 2.0, 4.0, 8.0])
    fake = {o: {"batch_sizes": bs, "steps": 40.0 * (1 + k / bs), "fit": {"b_crit": k, "s_min": 40.0}}
            for o, k in (("sgd", 2.0), ("adam", 4.0), ("kfac", 8.0))}
    data, info = plots.nqm_against_runs_data(res, fake)
    assert info["target"] == TARGET and info["b_crit"] == pytest.approx(100, rel=1e-3)
    runs = data[data["source"] == "runs (constructed)"].set_index(["optimizer", "batch_size"])
    assert runs.loc[("kfac", 256.0), "x"] == pytest.approx(2.56, rel=1e-3)
    assert runs.loc[("kfac", 256.0), "y"] == pytest.approx(1000 * (1 + 800 / 256) / 1000, rel=1e-3)
    model = data[data["source"] == "NQM (exact)"].set_index(["optimizer", "batch_size"])
    assert model.loc[("adam", 4.0), "x"] == 2.0 and model.loc[("adam", 4.0), "y"] == pytest.approx(2.0)


def test_the_chapters_b_crit_fit_counts_steps_as_the_verdicts_do():
    """critical_batch_size (the chapters' fits) takes each configuration's median over seeds, as
    steps_to_target and the verdicts do: with noisy seeds, the min over all runs would differ."""
    from kfaclab.results.scaling import critical_batch_size

    res = study(both(curve(1000, 100), curve(1000, 800)), noise=0.3, rng_seed=3)
    cross = crossings(res, "accuracy", TARGET)
    res.runs[f"iteration_to_{TARGET:g}"] = res.runs["name"].map(cross).replace(np.inf, np.nan)
    st = _Steps(res, TARGET, n=10)
    for opt in ("sgd", "kfac"):
        fit = critical_batch_size(res, opt, TARGET, n_boot=20)
        assert fit["steps"] == pytest.approx([st.point[(opt, b)] for b in fit["batch_sizes"]])
        per_run_min = res.runs[res.runs["optimizer"] == opt].groupby("batch_size")[f"iteration_to_{TARGET:g}"].min()
        assert list(per_run_min) != pytest.approx(fit["steps"])  # the seeds' noise: not the same count
