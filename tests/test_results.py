"""kfaclab.results on constructed studies: hand-made run records whose answers are known."""

import json

import numpy as np
import pandas as pd
import pytest

from kfaclab.results import (
    accuracy_at_budget,
    critical_batch_size,
    default_budget,
    fit_steps_curve,
    high_accuracy_region,
    load_results,
    noise_scale_by_run,
    status_counts,
    steps_curve,
    steps_to_target,
    with_ideal_scaling,
)
from kfaclab.train import RunConfig, validate_record
from kfaclab.train.targets import race_to_targets

N_TRAIN = 3200


def make_record(optimizer, batch_size, hparams, curve, status="completed", targets=(0.5, 0.6), noise=None):
    """A valid run record whose history is `curve`: [(iteration, test accuracy), ...]."""
    cfg = RunConfig(dataset="synthetic", model="mlp:8", optimizer=optimizer, batch_size=batch_size, hparams=hparams,
                    budget="epochs", budget_value=curve[-1][0] * batch_size / N_TRAIN, targets=targets, device="cpu")
    spe = N_TRAIN // batch_size
    history = []
    for i, (it, acc) in enumerate(curve):
        h = {"iteration": it, "epoch": it / spe, "examples": it * batch_size, "seconds": 0.01 * it,
             "propagations": 2 * it * batch_size, "lr": None if it == 0 else 0.1,
             "train_loss": None if it == 0 else 1.0,
             "test_loss": 2.0 - acc, "test_accuracy": acc}
        if noise is not None:
            h["noise"] = {"b_small": batch_size, "b_big": 4 * batch_size, "small_sq": 1.0, "big_sq": 0.5,
                          "grad_sq": noise[i][0], "trace": noise[i][1]}
        history.append(h)
    last = history[-1]
    planned = curve[-1][0] if status != "diverged" else curve[-1][0] * 2
    rec = {
        "schema_version": 1, "kind": "kfaclab.run", "run_id": cfg.run_id(), "status": status,
        "config": cfg.to_dict(),
        "resolved": {"iterations": planned, "epochs": planned / spe, "examples": planned * batch_size,
                     "steps_per_epoch": spe, "rule_epochs": None, "peak_lr": hparams.get("lr"), "warmup_iterations": 0,
                     "evaluation_iterations": [c[0] for c in curve], "hparams": hparams, "train_examples": N_TRAIN,
                     "test_examples": 100, "input_shape": [3, 8, 8], "num_classes": 10, "num_parameters": 100,
                     "device": "cpu", "dataset_source": "test"},
        "environment": {"device": "cpu", "cpu": "test", "gpu": None},
        "history": history if status != "failed" else [],
        "targets": race_to_targets(history if status != "failed" else [], targets),
        "final": {"iteration": last["iteration"], "epoch": last["epoch"], "examples": last["examples"],
                  "seconds": last["seconds"], "eval_seconds": 0.0, "train_loss": 1.0, "test_loss": last["test_loss"],
                  "test_accuracy": last["test_accuracy"]},
        "optimizer": {"name": optimizer, "steps": last["iteration"], "propagations": last["propagations"]},
        "divergence": {"iteration": last["iteration"], "reason": "test"} if status == "diverged" else None,
        "error": "RuntimeError: boom" if status == "failed" else None,
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
    }
    assert validate_record(rec) == []
    return rec


def write_study(directory, records):
    directory.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(records):
        c = rec["config"]
        values = "-".join(f"{k}{v:g}" for k, v in c["hparams"].items())
        name = f"{c['optimizer']}-b{c['batch_size']}-{values}-{i}"
        (directory / f"{name}.json").write_text(json.dumps(rec))
    return directory


@pytest.fixture
def constructed(tmp_path):
    """SGD over lr x momentum and K-FAC over lr x damping at batch sizes 32 and 64."""
    recs = [
        # SGD, batch 32: first reached 0.5 at 100 (lr .1) and 80 (lr .2); lr .05 never; 0.6 only by lr .2 at 160
        make_record("sgd", 32, {"lr": 0.1, "momentum": 0.9}, [(0, 0.1), (50, 0.3), (100, 0.55), (150, 0.58)]),
        make_record("sgd", 32, {"lr": 0.2, "momentum": 0.9}, [(0, 0.1), (40, 0.4), (80, 0.52), (160, 0.61)]),
        make_record("sgd", 32, {"lr": 0.05, "momentum": 0.9}, [(0, 0.1), (80, 0.3), (160, 0.45)]),
        make_record("sgd", 32, {"lr": 0.05, "momentum": 0.0}, [(0, 0.1)], status="failed"),
        # SGD, batch 64: a diverged run reached 0.5 at 45 before diverging: it counts
        make_record("sgd", 64, {"lr": 0.1, "momentum": 0.9}, [(0, 0.1), (25, 0.3), (50, 0.51), (75, 0.56)]),
        make_record("sgd", 64, {"lr": 0.2, "momentum": 0.9}, [(0, 0.1), (45, 0.5), (60, 0.2)], status="diverged"),
        make_record("sgd", 64, {"lr": 0.05, "momentum": 0.9}, [(0, 0.1), (40, 0.3), (80, 0.4)]),
        make_record("sgd", 64, {"lr": 0.05, "momentum": 0.0}, [(0, 0.1), (40, 0.2), (80, 0.3)]),
        # K-FAC: only batch 32 reaches 0.5
        make_record("kfac", 32, {"lr": 0.1, "damping": 0.01}, [(0, 0.1), (30, 0.5), (60, 0.55)]),
        make_record("kfac", 32, {"lr": 0.1, "damping": 0.1}, [(0, 0.1), (30, 0.4), (60, 0.52)]),
        make_record("kfac", 64, {"lr": 0.1, "damping": 0.01}, [(0, 0.1), (40, 0.45)]),
        make_record("kfac", 64, {"lr": 0.1, "damping": 0.1}, [(0, 0.1), (40, 0.3)], status="interrupted"),
    ]
    return load_results(write_study(tmp_path / "constructed", recs))


def test_every_run_is_listed_with_its_status(constructed):
    r = constructed
    assert len(r.runs) == 12
    counts = status_counts(r)
    assert counts.loc[("sgd", 32), "failed"] == 1 and counts.loc[("sgd", 64), "diverged"] == 1
    assert counts.loc[("kfac", 64), "interrupted"] == 1
    assert counts.to_numpy().sum() == 12
    assert r.grid_keys == {"sgd": ["lr", "momentum"], "kfac": ["damping"]}  # what varies
    # the failed run has no evaluations; the interrupted one's are not results either
    assert set(r.evals["status"]) == {"completed", "diverged"}


def test_steps_to_target_is_the_minimum_over_the_grid_of_first_crossings(constructed):
    t = steps_to_target(constructed).set_index(["optimizer", "batch_size", "target"])
    row = t.loc[("sgd", 32, 0.5)]
    assert row["iterations"] == 80 and row["best_run"].startswith("sgd-b32-lr0.2")
    assert row["epochs"] == pytest.approx(80 / 100) and row["examples"] == 80 * 32
    assert row["reached"] == 2 and row["failed"] == 1 and row["runs"] == 4 and row["finished"] == 3
    assert row["hp_lr"] == 0.2 and row["hp_momentum"] == 0.9
    assert t.loc[("sgd", 32, 0.6), "iterations"] == 160
    assert t.loc[("sgd", 64, 0.5), "iterations"] == 45  # the diverged run's crossing counts
    assert t.loc[("sgd", 64, 0.5), "diverged"] == 1
    assert np.isnan(t.loc[("sgd", 64, 0.6), "iterations"]) and t.loc[("sgd", 64, 0.6), "reached"] == 0
    assert t.loc[("kfac", 32, 0.5), "iterations"] == 30 and np.isnan(t.loc[("kfac", 64, 0.5), "iterations"])
    assert t.loc[("kfac", 64, 0.5), "pending"] == 1  # the interrupted run


def test_ideal_line_and_efficiency_from_the_smallest_batch(constructed):
    t = with_ideal_scaling(steps_to_target(constructed, [0.5])).set_index(["optimizer", "batch_size"])
    assert t.loc[("sgd", 32), "ideal"] == 80 and t.loc[("sgd", 32), "efficiency"] == 1
    assert t.loc[("sgd", 64), "ideal"] == 40 and t.loc[("sgd", 64), "efficiency"] == pytest.approx(40 / 45)
    e = with_ideal_scaling(steps_to_target(constructed, [0.5]), "examples").set_index(["optimizer", "batch_size"])
    assert e.loc[("sgd", 64), "ideal"] == 80 * 32  # perfect scaling: the same number of examples
    assert e.loc[("sgd", 64), "efficiency"] == pytest.approx(80 * 32 / (45 * 64))


def test_fit_recovers_known_s_min_and_b_crit():
    b = 2.0 ** np.arange(5, 13)
    exact = fit_steps_curve(b, 1000 * (1 + 512 / b))
    assert exact["s_min"] == pytest.approx(1000, rel=1e-4) and exact["b_crit"] == pytest.approx(512, rel=1e-4)
    assert exact["e_min"] == pytest.approx(512_000, rel=1e-3) and exact["rms_log_residual"] < 1e-6
    assert steps_curve(exact, [512])[0] == pytest.approx(2000, rel=1e-4)
    rng = np.random.default_rng(0)
    noisy = fit_steps_curve(b, 1000 * (1 + 512 / b) * np.exp(rng.normal(0, 0.05, len(b))))
    assert noisy["s_min"] == pytest.approx(1000, rel=0.15) and noisy["b_crit"] == pytest.approx(512, rel=0.25)
    with pytest.raises(ValueError, match="3 or more batch sizes"):
        fit_steps_curve([32, 64, 128], [100, np.nan, 30])


def test_bootstrap_interval_of_the_fit_covers_the_truth(tmp_path):
    # 6 grid points per batch size; each crosses the target at S(B) x a factor >= 1 (a worse
    # configuration), the best at exactly S(B): the point fit is exact, the bootstrap spreads.
    recs = []
    for b in [32, 64, 128, 256, 512, 1024]:
        s = 1000 * (1 + 256 / b)
        for j, factor in enumerate([1.0, 1.1, 1.3, 1.6, 2.0, 3.0]):
            hit = int(round(s * factor))
            recs.append(make_record("sgd", b, {"lr": 0.01 * (j + 1), "momentum": 0.9},
                                    [(0, 0.1), (hit - 1, 0.3), (hit, 0.55)], targets=(0.5,)))
    r = load_results(write_study(tmp_path / "fit", recs))
    fit = critical_batch_size(r, "sgd", 0.5, n_boot=100)
    assert fit["b_crit"] == pytest.approx(256, rel=0.01) and fit["s_min"] == pytest.approx(1000, rel=0.01)
    lo, hi = fit["b_crit_interval"]
    assert lo <= fit["b_crit"] <= hi and hi > lo and fit["bootstrap"] == 1.0


def test_accuracy_at_budgets_and_the_high_accuracy_region(constructed):
    # default budgets, over finished runs: the fewest epochs and the fewest iterations planned
    assert default_budget(constructed, "epochs") == pytest.approx(0.6)  # kfac b32: 60 it / 100 per epoch
    assert default_budget(constructed, "iterations") == 40
    it = accuracy_at_budget(constructed, "iterations", 50).set_index("name")
    sgd32 = it[(it["optimizer"] == "sgd") & (it["batch_size"] == 32)]
    assert sorted(sgd32["accuracy"].dropna()) == [0.1, 0.3, 0.4]  # last evaluation at or before 50
    assert sgd32["accuracy"].isna().sum() == 1  # the failed run
    div = it[(it["optimizer"] == "sgd") & (it["status"] == "diverged")]
    assert div["accuracy"].iloc[0] == 0.5  # diverged at 60, after the budget: its accuracy at 45 stands
    late = accuracy_at_budget(constructed, "iterations", 70).set_index("name")
    assert np.isnan(late[late["status"] == "diverged"]["accuracy"].iloc[0])  # diverged before the budget

    ep = accuracy_at_budget(constructed, "epochs", 1.0)
    region = high_accuracy_region(ep, tolerance=0.05).set_index(["optimizer", "batch_size"])
    # SGD at 1 epoch: b32 accuracies 0.55, 0.52, 0.3 (+failed); b64 (50 it/epoch): 0.51, 0.5 (it 45), 0.2, 0.2.
    # Best overall 0.55: within 0.05 -> b32: 0.55, 0.52 (2 of 4); b64: 0.51, 0.5 (2 of 4)
    assert region.loc[("sgd", 32), "in_region"] == 2 and region.loc[("sgd", 32), "share"] == 0.5
    assert region.loc[("sgd", 64), "in_region"] == 2 and region.loc[("sgd", 64), "reference"] == 0.55
    per_batch = high_accuracy_region(ep, tolerance=0.005, relative_to="batch_size")
    per_batch = per_batch.set_index(["optimizer", "batch_size"])
    assert per_batch.loc[("sgd", 64), "reference"] == 0.51 and per_batch.loc[("sgd", 64), "in_region"] == 1
    rule = accuracy_at_budget(constructed, "rule").set_index("name")
    assert rule[rule["status"] == "diverged"]["accuracy"].isna().all()  # no final accuracy for diverged runs
    with pytest.raises(ValueError, match="budget_type must be one of"):
        accuracy_at_budget(constructed, "weeks")


def test_noise_scale_by_run_is_the_ratio_of_means_after_the_first(tmp_path):
    rec = make_record("sgd", 32, {"lr": 0.1}, [(0, 0.1), (10, 0.2), (20, 0.3)],
                      noise=[(100.0, 1.0), (2.0, 300.0), (4.0, 500.0)])
    other = make_record("sgd", 32, {"lr": 0.2}, [(0, 0.1), (10, 0.2)])
    r = load_results(write_study(tmp_path / "noise", [rec, other]))
    table = noise_scale_by_run(r)
    assert len(table) == 1 and table["b_simple"].iloc[0] == pytest.approx(800 / 6)
    assert table["measurements"].iloc[0] == 2


def test_a_folder_without_records_is_a_one_line_error(tmp_path):
    from kfaclab.errors import UsageError

    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no study.yaml and no run records"):
        load_results(tmp_path / "empty")
    with pytest.raises(UsageError, match="no study folder"):
        load_results(tmp_path / "nope")


def _seeded_runs(crossings):
    """crossings: {(lr, momentum): [iteration per seed, None = never]} at batch 64, target 0.5."""
    import pandas as pd

    from kfaclab.results.study import STATUSES, StudyResults

    rows = []
    for (lr, mom), its in crossings.items():
        for seed, it in enumerate(its):
            row = {"name": f"sgd-lr{lr}-m{mom}-s{seed}", "status": "completed", "optimizer": "sgd", "batch_size": 64,
                   "seed": seed, "hp_lr": lr, "hp_momentum": mom}
            for _unit, field in (("iterations", "iteration"), ("epochs", "epoch"), ("examples", "examples"),
                                ("seconds", "seconds"), ("propagations", "propagations")):
                scale = {"iteration": 1, "epoch": 0.01, "examples": 64, "seconds": 0.5, "propagations": 128}[field]
                row[f"{field}_to_0.5"] = None if it is None else it * scale
            rows.append(row)
    runs = pd.DataFrame(rows)
    runs["status"] = pd.Categorical(runs["status"], categories=STATUSES)
    return StudyResults("seeded", None, "", runs, pd.DataFrame(), {"sgd": ["lr", "momentum"]}, [0.5], {})


def test_steps_to_target_with_seeds_is_the_grid_minimum_of_seed_medians():
    res = _seeded_runs({(0.1, 0.9): [100, 200, None],  # median 200
                        (0.03, 0.9): [150, 160, 140],  # median 150: the best
                        (0.01, 0.9): [90, None, None]})  # most seeds never cross: does not count
    row = steps_to_target(res).iloc[0]
    assert row["iterations"] == 150 and row["epochs"] == pytest.approx(1.5) and row["seconds"] == 75
    assert row["hp_lr"] == 0.03 and (row["seed_low"], row["seed_high"]) == (140, 160)
    assert row["best_run"] == "sgd-lr0.03-m0.9-s0"  # the seed at the median
    assert row["reached"] == 6


def test_steps_to_target_ties_go_to_the_smallest_learning_rate_then_momentum():
    res = _seeded_runs({(0.1, 0.5): [100, 100, 100], (0.03, 0.9): [100, 100, 100], (0.03, 0.5): [100, 100, 100]})
    row = steps_to_target(res).iloc[0]
    assert row["iterations"] == 100 and (row["hp_lr"], row["hp_momentum"]) == (0.03, 0.5)


def test_seed_medians_give_one_accuracy_per_configuration_and_count_a_missing_seed_as_the_worst():
    import pandas as pd

    from kfaclab.results.robustness import high_accuracy_region, seed_medians

    rows = []
    for (lr, accs) in {0.1: [0.50, 0.60, None], 0.03: [0.55, None, None], 0.01: [0.40, 0.42, 0.41]}.items():
        for seed, a in enumerate(accs):
            rows.append({"name": f"r{lr}-s{seed}", "optimizer": "sgd", "batch_size": 64, "seed": seed,
                         "status": "completed" if a is not None else "diverged", "hp_lr": lr,
                         "budget_type": "epochs", "budget": 2.0, "accuracy": a})
    table = seed_medians(pd.DataFrame(rows)).set_index("hp_lr")
    assert len(table) == 3 and (table["seeds"] == 3).all()  # one row per configuration
    assert table.loc[0.1, "accuracy"] == 0.50  # median of 0.5, 0.6 and a diverged seed (the worst)
    assert pd.isna(table.loc[0.03, "accuracy"]) and table.loc[0.03, "status"] == "diverged"  # most seeds failed
    assert table.loc[0.01, "accuracy"] == pytest.approx(0.41)
    region = high_accuracy_region(table.reset_index(), tolerance=0.05).iloc[0]
    assert region["grid_points"] == 3 and region["in_region"] == 1  # shares count configurations, not runs


def test_vectorised_fit_returns_the_scalar_fits_s_min_and_b_crit():
    from kfaclab.results.scaling import fit_steps_rows

    bs = [32, 64, 128, 256, 512, 1024, 2048]
    rng = np.random.default_rng(0)
    rows = np.array([[s * (1 + bc / b) * np.exp(rng.normal(0, 0.05)) for b in bs]
                     for s, bc in [(100, 50), (40, 700), (900, 3000), (10, 200)]])
    got = fit_steps_rows(bs, rows)
    for i, row in enumerate(rows):
        ref = fit_steps_curve(bs, row)
        assert got["s_min"][i] == pytest.approx(ref["s_min"], rel=1e-6)
        assert got["b_crit"][i] == pytest.approx(ref["b_crit"], rel=1e-6)
    assert list(got["count"]) == [7] * 4 and not got["at_edge"].any()


def test_vectorised_fit_with_missing_steps_matches_the_scalar_fit_on_each_rows_finite_points():
    # The bootstrap's rows miss batch sizes (never reached, diverged): the expanded loss
    # (kfaclab.results.scaling.grid_loss) must weigh each row's own points only.
    from kfaclab.results.scaling import fit_steps_rows, grid_loss

    bs = np.array([32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384.0])
    rng = np.random.default_rng(1)
    rows = np.array([s * (1 + bc / bs) * np.exp(rng.normal(0, 0.1, len(bs)))
                     for s, bc in rng.uniform([10, 30], [1000, 8000], (40, 2))])
    rows[rng.random(rows.shape) < 0.3] = np.nan
    rows[0, :7] = np.inf  # a row reached at the largest batch sizes only
    ok = np.isfinite(rows)
    grid = np.linspace(np.log(32) - 8, np.log(16384) + 8, 101)
    loss = grid_loss(grid, bs, np.where(ok, np.log(np.where(ok, rows, 1.0)), 0.0), ok.astype(float))
    for i, row in enumerate(rows):  # the direct definition: variance of log S less the shape
        keep = ok[i]
        resid = np.log(row[keep])[None, :] - np.log1p(np.exp(grid)[:, None] / bs[keep])
        assert loss[i] == pytest.approx(resid.var(axis=1), abs=1e-10)
    got = fit_steps_rows(bs, rows)
    for i, row in enumerate(rows):
        if ok[i].sum() < 3:
            continue
        ref = fit_steps_curve(bs, row)
        assert got["count"][i] == ok[i].sum()
        assert got["s_min"][i] == pytest.approx(ref["s_min"], rel=1e-6)
        assert got["b_crit"][i] == pytest.approx(ref["b_crit"], rel=1e-6)


def test_config_medians_match_a_plain_loop_over_configurations_with_ties_misses_and_missing_keys():
    # The grouped computation (kfaclab.results.scaling._config_medians) against the definition,
    # one configuration at a time: medians with never-crossed seeds as inf, the seeds' range, and
    # the first seed nearest the median (its median where the median is inf).
    from kfaclab.results.scaling import UNITS, _config_medians

    rng = np.random.default_rng(3)
    n = 60
    df = pd.DataFrame({"name": [f"r{i}" for i in range(n)],
                       "hp_lr": rng.choice([0.1, 0.3, 1.0], n), "hp_momentum": rng.choice([0.0, 0.9, np.nan], n)})
    for field in UNITS.values():
        df[f"{field}_to_0.5"] = np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 6, n) * 10.0)
    df = df.sample(frac=1.0, random_state=0).set_index(rng.permutation(1000)[:n])  # any order, any index
    got = _config_medians(df, ["hp_lr", "hp_momentum"], "0.5")
    seen = []
    for _, r in df.iterrows():
        key = (r["hp_lr"], r["hp_momentum"])
        if not any(k[0] == key[0] and (k[1] == key[1] or (np.isnan(k[1]) and np.isnan(key[1]))) for k in seen):
            seen.append(key)
    assert len(got) == len(seen)
    for (lr, mom), row in zip(seen, got.itertuples(index=False)):
        g = df[(df["hp_lr"] == lr) & ((df["hp_momentum"] == mom) | (np.isnan(mom) & df["hp_momentum"].isna()))]
        assert row.hp_lr == lr and (row.hp_momentum == mom or (np.isnan(mom) and np.isnan(row.hp_momentum)))
        for unit, field in UNITS.items():
            med = float(np.median(g[f"{field}_to_0.5"].fillna(np.inf)))
            want = med if np.isfinite(med) else np.nan
            assert getattr(row, unit) == want or (np.isnan(want) and np.isnan(getattr(row, unit)))
        its = g["iteration_to_0.5"]
        assert row.seed_low == its.min() or (its.isna().all() and np.isnan(row.seed_low))
        assert row.seed_high == its.max() or (its.isna().all() and np.isnan(row.seed_high))
        reached = its.dropna()
        if len(reached):
            centre = row.iterations if np.isfinite(row.iterations) else reached.median()
            dev = (reached - centre).abs()
            assert row.best_run == g.loc[dev[dev == dev.min()].index[0], "name"]
        else:
            assert row.best_run is None
