"""ABS/ABSA (Yao et al. 2018): the Hessian's top eigenvalue, the batch-size rule, FGSM,
gradient accumulation, and the adaptive training loop."""

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, hessian

from kfaclab.errors import UsageError
from kfaclab.hessian import fixed_batch, top_eigenvalue
from kfaclab.optim import build_optimizer
from kfaclab.train import RunConfig, train, validate_record
from kfaclab.train import adaptive as ad
from kfaclab.train.adversarial import fgsm, with_adversarial
from kfaclab.train.schedule import LRSchedule

# --------------------------------------------------------------------------- Hessian


def _tiny_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (32,))
    return model, x, y


def _dense_hessian(model, x, y):
    """The loss Hessian over all parameters, by torch.func on a flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(v):
        parts = v.split([s.numel() for s in shapes])
        return F.cross_entropy(functional_call(model, {n: t.view(s) for n, t, s in zip(names, parts, shapes)}, (x,)), y)

    return hessian(loss_of)(flat)


def test_power_iteration_matches_the_dense_top_eigenvalue():
    model, x, y = _tiny_problem()
    eigenvalues = torch.linalg.eigvalsh(_dense_hessian(model, x, y))
    top = eigenvalues[eigenvalues.abs().argmax()].item()
    assert top > 0
    e = top_eigenvalue(model, F.cross_entropy, x, y, max_iterations=500, tolerance=1e-12)
    assert e.converged and e.value == pytest.approx(top, rel=1e-8)
    # ABS's budget (10 products, 1e-2): a Rayleigh quotient, so never above the top eigenvalue,
    # and close to it for every start vector.
    for seed in range(5):
        quick = top_eigenvalue(model, F.cross_entropy, x, y, seed=seed)
        assert quick.iterations <= 10
        assert top * 0.9 <= quick.value <= top + 1e-12


def test_eigenvalue_measurement_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    rng = torch.get_rng_state()
    top_eigenvalue(model, F.cross_entropy, x, y)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running statistics did not move
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


def test_eigenvalue_in_eval_mode_differs_from_train_mode_batchnorm():
    """The measurement uses the running statistics (eval mode), not the batch's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(32, 5, dtype=torch.float64) * 3 + 1, torch.randint(0, 3, (32,))
    got = top_eigenvalue(model, F.cross_entropy, x, y, max_iterations=300, tolerance=1e-12).value
    model.eval()
    H = _dense_hessian(model, x, y)
    ev = torch.linalg.eigvalsh(H)
    assert got == pytest.approx(ev[ev.abs().argmax()].item(), rel=1e-6)


# --------------------------------------------------------------------------- the rule


def _rule(**kw):
    args = dict(base_batch=128, max_batch=128 * 128, total_epochs=100, patience_epochs=10, eigen_drop=2.0,
                initial_adv_ratio=0.2)
    args.update(kw)
    return ad.AdaptiveBatchSchedule(**args)


def _drive(rule, eigenvalues):
    return [rule.end_of_epoch(i, e) for i, e in enumerate(eigenvalues)]


def test_rule_doubles_when_the_eigenvalue_halves():
    rule = _rule()
    log = _drive(rule, [10.0, 6.0, 5.01, 5.0, 3.0, 2.5])
    assert [e["action"] for e in log] == [None, None, None, "eigenvalue", None, "eigenvalue"]
    assert [e["batch_size"] for e in log] == [128, 128, 128, 256, 256, 512]
    assert [e["lr_multiplier"] for e in log] == [1, 1, 1, 2, 2, 4]
    assert log[3]["reference"] == 10.0 and log[5]["reference"] == 5.0  # the reference moved to 5
    assert [e["adv_ratio"] for e in log] == pytest.approx([0.2, 0.2, 0.2, 0.1, 0.1, 0.05])


def test_rule_doubles_anyway_after_the_patience_and_keeps_the_reference():
    rule = _rule(total_epochs=200)
    log = _drive(rule, [10.0] * 25)
    doublings = [e["epoch"] for e in log if e["action"]]
    assert doublings == [10, 20]
    assert all(e["action"] in (None, "patience") for e in log)
    assert rule.reference == 10.0
    # A halving restarts the patience count.
    rule = _rule(total_epochs=200)
    log = _drive(rule, [10.0] * 6 + [5.0] + [5.0] * 12)
    assert [(e["epoch"], e["action"]) for e in log if e["action"]] == [(7, "eigenvalue"), (17, "patience")]


def test_rule_stops_at_the_cap_and_then_has_no_adversarial_examples():
    rule = _rule(max_batch=128 * 4)
    log = _drive(rule, [16.0, 8.0, 4.0, 2.0, 1.0])
    assert [e["batch_size"] for e in log] == [128, 256, 512, 512, 512]
    assert [e["action"] for e in log] == [None, "eigenvalue", "eigenvalue", None, None]
    assert rule.capped and rule.lr_multiplier == 4
    assert log[2]["adv_ratio"] == 0.0 and rule.adv_ratio(3) == 0.0
    with pytest.raises(ValueError):
        _rule(max_batch=128 * 3)


def test_adversarial_ratio_is_zero_in_the_second_half():
    rule = _rule(total_epochs=10)
    assert [rule.adv_ratio(e) for e in range(10)] == [0.2] * 5 + [0.0] * 5
    rule = _rule(total_epochs=7)  # the seed's code: from epoch 7 // 2 on
    assert rule.adv_ratio(2) == 0.2 and rule.adv_ratio(3) == 0.0


def test_rule_ignores_failed_measurements_but_counts_them():
    rule = _rule(patience_epochs=3)
    log = _drive(rule, [math.nan, 4.0, math.nan, 1.0])
    assert [e["action"] for e in log] == [None, None, "patience", "eigenvalue"]


def test_cap_fits_the_training_split():
    assert ad.max_batch_for(128, 128, 50_000) == 16_384
    assert ad.max_batch_for(128, 512, 50_000) == 32_768
    assert ad.max_batch_for(128, 128, 10_000) == 8_192
    assert ad.max_batch_for(128, 4, 50_000) == 512
    assert ad.max_batch_for(128, 128, 100) == 128


def test_options_are_checked():
    assert ad.resolve_options("abs", {})["adv_ratio"] == 0.0  # ABS has no adversarial part
    assert ad.resolve_options("absa", {"patience_epochs": 5})["patience_epochs"] == 5
    for schedule, given in [("absa", {"patience": 5}), ("absa", {"max_batch_multiple": 6}),
                            ("absa", {"adv_ratio": 1.5}), ("absa", {"eigen_drop": 1}), ("fixed", {"adv_eps": 0.1}),
                            ("sometimes", {}), ("absa", {"eigen_batch": "all"})]:
        with pytest.raises(UsageError):
            ad.resolve_options(schedule, given)
    with pytest.raises(UsageError, match="whole number of epochs"):
        RunConfig(batch_schedule="abs", budget="iterations", budget_value=100).validate()
    with pytest.raises(UsageError, match="whole number of epochs"):
        RunConfig(batch_schedule="abs", budget="epochs", budget_value=2.5).validate()


# --------------------------------------------------------------------------- FGSM


def test_fgsm_step_has_the_gradient_sign_the_pixel_size_and_stays_valid():
    torch.manual_seed(0)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    pixels = torch.rand(20, 3, 4, 4)
    pixels[0, :, 0, 0] = 0.0  # at the valid range's ends: the step is clipped there
    pixels[1, :, 0, 0] = 1.0
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = (pixels - m) / s
    y = torch.randint(0, 5, (20,))
    eps = 0.03
    adv = fgsm(model, F.cross_entropy, x, y, eps, mean, std)
    adv_pixels = adv * s + m
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    delta = adv_pixels - pixels
    inside = (pixels + eps * grad.sign()).clamp(0, 1) == pixels + eps * grad.sign()
    moved = grad != 0
    # Where not clipped, every pixel moved by exactly eps in the gradient's sign...
    assert torch.allclose(delta[inside & moved], (eps * grad.sign())[inside & moved], atol=1e-6)
    # ...and where clipped, it stopped at the edge of [0, 1].
    clipped = ~inside & moved
    assert clipped.any()
    assert torch.allclose(adv_pixels[clipped], (pixels + eps * grad.sign()).clamp(0, 1)[clipped], atol=1e-6)
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_fgsm_leaves_batchnorm_and_grads_alone_and_replaces_the_first_share():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(10, 3, 4, 4), torch.randint(0, 3, (10,))
    out, k = with_adversarial(model, F.cross_entropy, x, y, 0.2, 0.005, (0.5,) * 3, (0.25,) * 3)
    assert k == 2 and torch.equal(out[2:], x[2:]) and not torch.equal(out[:2], x[:2])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())
    assert with_adversarial(model, F.cross_entropy, x, y, 0.0, 0.005, (0.5,) * 3, (0.25,) * 3)[1] == 0


# --------------------------------------------------------------------------- accumulation


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 4)).double()


@pytest.mark.parametrize("name,hp", [
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("kfac", {"lr": 0.1, "fisher_type": "exact", "cov_update_freq": 1, "inv_update_freq": 1,
              "factor_dtype": "float64"}),
    ("kfac", {"lr": 0.1, "fisher_type": "empirical", "cov_update_freq": 1, "inv_update_freq": 2,
              "factor_dtype": "float64", "inverse_method": "inverse"}),
])
def test_gradient_accumulation_gives_the_large_batch_update(name, hp):
    torch.manual_seed(1)
    batches = [(torch.randn(10, 12, dtype=torch.float64), torch.randint(0, 4, (10,))) for _ in range(3)]
    params = []
    for micro in (None, 3):  # 10 = 3 + 3 + 3 + 1: uneven chunks
        model = _mlp()
        opt = build_optimizer(name, model, F.cross_entropy, hp)
        opt.set_micro_batch(micro)
        losses = [opt.step(x, y).item() for x, y in batches]
        params.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), losses, opt))
    (p_full, l_full, o_full), (p_acc, l_acc, o_acc) = params
    assert l_acc == pytest.approx(l_full, rel=1e-12)
    assert torch.allclose(p_acc, p_full, rtol=0, atol=1e-12)
    if name == "kfac":
        for layer_full, layer_acc in zip(o_full.layers.values(), o_acc.layers.values()):
            assert torch.allclose(layer_full.A, layer_acc.A, atol=1e-13)
            assert torch.allclose(layer_full.G, layer_acc.G, atol=1e-13)
        # Accumulation gives the curvature pass a forward of its own (n more per factor update).
        extra = 0 if hp["fisher_type"] == "empirical" else 10 * o_acc.counters["factor_updates"]
        assert o_acc.counters["propagations"] == o_full.counters["propagations"] + extra


def test_kfac_mc_accumulation_gives_the_same_A_factor():
    """MC labels are drawn chunk by chunk (a different random stream), but A does not depend on them."""
    torch.manual_seed(1)
    x, y = torch.randn(10, 12, dtype=torch.float64), torch.randint(0, 4, (10,))
    opts = []
    for micro in (None, 4):
        opt = build_optimizer("kfac", _mlp(), F.cross_entropy, {"factor_dtype": "float64"})
        opt.set_micro_batch(micro)
        opt.step(x, y)
        opts.append(opt)
    for a, b in zip(opts[0].layers.values(), opts[1].layers.values()):
        assert torch.allclose(a.A, b.A, atol=1e-13)


def test_kfac_running_average_weights_examples_equally_across_batch_sizes():
    opt = build_optimizer("kfac", _mlp(), F.cross_entropy, {"stat_decay": 0.9, "factor_dtype": "float64"})
    layer = next(iter(opt.layers.values()))
    d_a, d_g = 13, 7
    old_A, old_G = torch.eye(d_a, dtype=torch.float64), torch.eye(d_g, dtype=torch.float64)
    new_A, new_G = 3 * torch.eye(d_a, dtype=torch.float64), 5 * torch.eye(d_g, dtype=torch.float64)
    for lay in opt.layers.values():
        lay.A = lay.G = None
    layer.A, layer.G = old_A.clone(), old_G.clone()
    layer.batch_A, layer.batch_G = new_A.clone(), new_G.clone()
    opt.on_batch_size_change(4.0)  # the batch is now 4x the base: one update stands for four
    opt._update_factors()
    w = 0.9 ** 4
    assert torch.allclose(layer.A, w * old_A + (1 - w) * new_A)
    assert torch.allclose(layer.G, w * old_G + (1 - w) * new_G)


def test_trcg_refuses_micro_batches():
    opt = build_optimizer("trcg", _mlp(), F.cross_entropy, {})
    with pytest.raises(UsageError, match="chunk_size"):
        opt.set_micro_batch(4)


# --------------------------------------------------------------------------- the loop


def _abs_cfg(**kw):
    base = dict(dataset="synthetic", model="mlp:32", batch_size=32, budget="epochs", budget_value=4.0, device="cpu",
                hparams={"lr": 0.05}, batch_schedule="absa", min_evals=4, eval_batch_size=200,
                schedule_options={"max_batch_multiple": 4})
    base.update(kw)
    return RunConfig(**base)


def test_abs_run_follows_a_scripted_eigenvalue_sequence(tiny_dataset, monkeypatch):
    from kfaclab.hessian import Eigenvalue

    script = iter([8.0, 4.0, 1.9, 0.5])
    monkeypatch.setattr(ad, "top_eigenvalue", lambda *a, **k: Eigenvalue(next(script), 3, True))
    rec = train(_abs_cfg(), dataset=tiny_dataset, progress=False)
    assert validate_record(rec) == []
    log = rec["adaptive"]["epochs"]
    assert [e["eigenvalue"] for e in log] == [8.0, 4.0, 1.9, 0.5]
    assert [e["action"] for e in log] == [None, "eigenvalue", "eigenvalue", None]  # 128 = 4 x 32: capped
    assert [e["batch_size"] for e in log] == [32, 64, 128, 128]
    # Iterations per epoch follow the batch size (512 examples, drop-last).
    assert [e["iteration"] for e in log] == [16, 32, 40, 44]
    assert rec["final"]["iteration"] == 44 and rec["final"]["epoch"] == 4.0
    assert rec["final"]["examples"] == 4 * 512
    # History entries carry the batch size and adversarial ratio of their epoch, and the
    # learning rate is the base schedule times the batch multiplier.
    sched = LRSchedule(0.05, rec["resolved"]["iterations"], 0, "cosine")
    spe = rec["resolved"]["steps_per_epoch"]
    for h in rec["history"][1:]:
        epoch = math.ceil(h["epoch"]) - 1
        b = [32, 32, 64, 128][epoch]
        assert h["batch_size"] == b
        assert h["adv_ratio"] == pytest.approx([0.2, 0.2, 0.0, 0.0][epoch])
        steps = 512 // b
        i = round((h["epoch"] - epoch) * steps)
        assert h["lr"] == pytest.approx(sched((epoch + (i - 1) / steps) * spe) * b / 32)
    # FGSM examples: round(20% of 32) = 6 per batch in the first two epochs (the batch doubles
    # only after the second); none in the second half.
    assert rec["optimizer"]["adversarial_examples"] == 16 * 6 + 16 * 6


def test_abs_with_kfac_trains_and_records(tiny_dataset, tmp_path, monkeypatch):
    from kfaclab.optim.kfac import KFAC

    ratios = []
    original = KFAC.on_batch_size_change
    monkeypatch.setattr(KFAC, "on_batch_size_change", lambda self, r: (ratios.append(r), original(self, r)))
    cfg = _abs_cfg(optimizer="kfac", batch_schedule="abs", hparams={"lr": 0.05, "damping": 0.03},
                   schedule_options={"max_batch_multiple": 4, "patience_epochs": 1}, output=str(tmp_path / "r.json"))
    rec = train(cfg, dataset=tiny_dataset, progress=False)
    assert rec["status"] == "completed" and validate_record(rec) == []
    log = rec["adaptive"]["epochs"]
    assert all(math.isfinite(e["eigenvalue"]) and e["eigenvalue"] > 0 for e in log)
    assert [e["batch_size"] for e in log] == [64, 128, 128, 128]  # patience 1: doubles every epoch to the cap
    assert "adversarial_examples" not in rec["optimizer"]  # abs: no FGSM
    assert json.loads((tmp_path / "r.json").read_text())["adaptive"]["max_batch"] == 128
    assert ratios == [2.0, 4.0, 4.0, 4.0]  # K-FAC's running averages told of every epoch's batch


def test_abs_capped_at_the_base_batch_is_the_fixed_batch_run(tiny_dataset):
    """The eigenvalue measurements change nothing: with the cap at the base batch (no doubling
    possible) and no adversarial examples, an ABS run is the fixed-batch run, step for step."""
    common = dict(dataset="synthetic", model="mlp:32", batch_size=32, budget="epochs", budget_value=3.0, device="cpu",
                  hparams={"lr": 0.05}, min_evals=3, eval_batch_size=200)
    fixed = train(RunConfig(**common), dataset=tiny_dataset, progress=False)
    capped = train(RunConfig(**common, batch_schedule="abs", schedule_options={"max_batch_multiple": 1}),
                   dataset=tiny_dataset, progress=False)
    assert [e["action"] for e in capped["adaptive"]["epochs"]] == [None, None, None]
    assert [(h["iteration"], h["test_accuracy"], h["train_loss"]) for h in capped["history"]] == \
        [(h["iteration"], h["test_accuracy"], h["train_loss"]) for h in fixed["history"]]


def test_fixed_runs_can_measure_the_top_eigenvalue(tiny_dataset):
    rec = train(RunConfig(dataset="synthetic", model="mlp:32", batch_size=64, budget="epochs", budget_value=1.0,
                          device="cpu", min_evals=2, measure_top_eigenvalue=True), dataset=tiny_dataset, progress=False)
    assert validate_record(rec) == []
    assert all(h["top_eigenvalue"] > 0 for h in rec["history"])
    # The same measurement by hand at the end of training.
    assert "adaptive" not in rec


def test_fixed_batch_is_reproducible_and_unaugmented(tiny_dataset):
    from kfaclab.train.loop import make_loaders

    cfg = RunConfig(dataset="synthetic", model="mlp", batch_size=64, device="cpu")
    loader, _ = make_loaders(cfg, tiny_dataset, torch.device("cpu"))
    x1, y1 = fixed_batch(loader, 128, seed=3)
    x2, y2 = fixed_batch(loader, 128, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and len(set(y1.tolist())) > 1
    idx = torch.randperm(loader.num_examples, generator=torch.Generator().manual_seed(3))[:128]
    assert torch.equal(x1, loader.normalize(loader.images[idx]))
    with pytest.raises(ValueError):
        fixed_batch(loader, 10_000)


def test_adaptive_runs_refuse_data_parallelism_and_trcg(tiny_dataset):
    for extra in ({"batch_schedule": "abs"}, {"micro_batch": 16}, {"measure_top_eigenvalue": True}):
        with pytest.raises(UsageError, match="nproc"):
            RunConfig(nproc=2, **extra).validate()
    with pytest.raises(UsageError, match="no learning rate"):
        train(_abs_cfg(optimizer="trcg", hparams={}), dataset=tiny_dataset, progress=False)


# --------------------------------------------------------------------------- results and charts


@pytest.fixture(scope="module")
def adaptive_study(tmp_path_factory):
    """Fixed-batch SGD, ABS and ABSA runs (two learning rates each) written as bare records,
    with a scripted eigenvalue sequence, so that every derived number is known."""
    from kfaclab.data.sources import make_synthetic
    from kfaclab.data.split import Dataset
    from kfaclab.hessian import Eigenvalue

    tr, te, classes = make_synthetic(n_train=512, n_test=200, size=8, contrast=30.0, seed=1)
    ds = Dataset("synthetic", tr, te, classes, source="test")
    d = tmp_path_factory.mktemp("abs-study")
    original = ad.top_eigenvalue
    try:
        for schedule in ("fixed", "abs", "absa"):
            for lr in (0.02, 0.05):
                script = iter([8.0, 4.0, 1.9, 0.5])
                ad.top_eigenvalue = lambda *a, script=script, **k: Eigenvalue(next(script), 3, True)
                cfg = _abs_cfg(batch_schedule=schedule, hparams={"lr": lr}, targets=(0.3, 0.6),
                               schedule_options={} if schedule == "fixed" else {"max_batch_multiple": 4},
                               measure_top_eigenvalue=schedule == "fixed",
                               output=str(d / f"{schedule}-{lr}.json"))
                train(cfg, dataset=ds, progress=False)
    finally:
        ad.top_eigenvalue = original
    return d


def test_adaptive_results_tables(adaptive_study):
    from kfaclab.results import load_results
    from kfaclab.results.adaptive import (
        best_configurations,
        comparison,
        final_sharpness,
        trajectories,
    )

    res = load_results(adaptive_study)
    assert set(res.runs["optimizer"]) == {"sgd", "sgd+abs", "sgd+absa"}  # never mixed with the fixed runs
    recs = {p.stem: json.loads(p.read_text()) for p in adaptive_study.glob("*.json")}
    best = best_configurations(res).set_index("method")
    for method, schedule in [("sgd", "fixed"), ("sgd+abs", "abs"), ("sgd+absa", "absa")]:
        accs = {lr: recs[f"{schedule}-{lr}"]["final"]["test_accuracy"] for lr in (0.02, 0.05)}
        lr = max(accs, key=accs.get)
        assert best.loc[method, "lr"] == lr and best.loc[method, "final_accuracy"] == accs[lr]
        assert best.loc[method, "iterations"] == recs[f"{schedule}-{lr}"]["final"]["iteration"]
    assert best.loc["sgd+abs", "final_batch_size"] == 128 and best.loc["sgd", "final_batch_size"] == 32
    table = comparison(res)
    for _, row in table.iterrows():
        schedule = {"sgd": "fixed", "sgd+abs": "abs", "sgd+absa": "absa"}[row["method"]]

        def first(s, t=row["target"]):
            hits = [r["targets"][[x["test_accuracy"] for x in r["targets"]].index(t)]["iteration"]
                    for name, r in recs.items() if name.startswith(s + "-")]
            hits = [h for h in hits if h is not None]
            return min(hits) if hits else None

        mine, base = first(schedule), first("fixed")
        if mine is not None and base is not None:
            assert row["fewer_iterations"] == pytest.approx(base / mine)
        assert row["accuracy_change"] == pytest.approx(best.loc[row["method"], "final_accuracy"]
                                                       - best.loc["sgd", "final_accuracy"])

        def at_best(method, s, t=row["target"]):  # one seed: the best configuration is one run
            r = recs[f"{s}-{best.loc[method, 'lr']}"]
            return r["targets"][[x["test_accuracy"] for x in r["targets"]].index(t)]["iteration"]

        mine, base = at_best(row["method"], schedule), at_best("sgd", "fixed")
        if mine is not None and base is not None:
            assert row["fewer_iterations_best_config"] == pytest.approx(base / mine)
        else:
            assert math.isnan(row["iterations_to_target_best_config"]) or base is None
    t = trajectories(res)
    assert len(t) == 4 * (4 + 1)  # 4 adaptive runs x (start + 4 epochs)
    one = t[(t["method"] == "sgd+abs") & (t["lr"] == 0.05)].sort_values("epoch")
    assert list(one["batch_size"]) == [32, 32, 64, 128, 128]
    assert list(one["action"].fillna("-")) == ["-", "-", "eigenvalue", "eigenvalue", "-"]
    sharp = final_sharpness(res)
    fixed = sharp[sharp["optimizer"] == "sgd"]
    assert len(fixed) == 2 and (fixed["top_eigenvalue"] > 0).all()
    last = {lr: recs[f"fixed-{lr}"]["history"][-1]["top_eigenvalue"] for lr in (0.02, 0.05)}
    assert sorted(fixed["top_eigenvalue"]) == sorted(last.values())


def test_adaptive_charts_bind_their_controls(adaptive_study):
    from test_plots import (
        params as bound,  # the bound Vega-Lite parameters of a chart spec
    )

    from kfaclab import plots
    from kfaclab.results import load_results

    res = load_results(adaptive_study)

    curves = plots.adaptive_curves_chart(res).to_dict()
    p = bound(curves)
    # One base optimizer: a fixed value (a select of one would change nothing), named in the title.
    assert "base_optimizer" not in p and {"name": "base_optimizer", "value": "sgd"} in curves["params"]
    assert curves["title"]["text"]["expr"].startswith('base_optimizer + ": test accuracy')
    # The accuracy axis spans the second half of training (where the methods differ), not the first epochs.
    data = plots.adaptive_curves_data(res)
    low, high = curves["encoding"]["y"]["scale"]["domain"]
    late = data[data["epoch"] >= data["epoch"].max() / 2]["test_accuracy"]
    assert low <= late.min() and high >= data["test_accuracy"].max() and low > data["test_accuracy"].min()
    assert p["x_axis"]["bind"]["options"] == ["iteration", "epoch"]
    assert "(datum.axis === x_axis)" in json.dumps(curves)
    # Runs of one schedule differ only in their seed: each seed has its own line style.
    assert curves["encoding"]["strokeDash"]["field"] == "seed"
    traj = plots.adaptive_trajectory_chart(res).to_dict()
    assert bound(traj)["adaptive_method"]["bind"]["options"] == ["sgd+abs", "sgd+absa"]
    assert '"base": 2' in json.dumps(traj)  # batch sizes on a log2 axis
    assert '"strokeDash": {"field": "seed"' in json.dumps(traj)
    sharp = plots.sharpness_chart(res).to_dict()
    assert '"type": "log"' in json.dumps(sharp)


def test_the_doubling_control_ignores_the_eigenvalue_and_doubles_on_its_patience_alone():
    """The control of ABS: the same rule with the curvature signal taken away. A halving
    eigenvalue that would make ABS double does nothing; the patience doubles it every 10 epochs."""
    falling = [10.0, 4.0, 1.0, 0.2] + [0.1] * 21
    control = _drive(_rule(total_epochs=200, curvature=False), falling)
    assert [(e["epoch"], e["action"]) for e in control if e["action"]] == [(10, "patience"), (20, "patience")]
    abs_log = _drive(_rule(total_epochs=200), falling)
    assert abs_log[1]["action"] == "eigenvalue"  # the same sequence drives ABS


def test_a_doubling_run_is_an_abs_run_whose_eigenvalue_never_halves_without_measuring_it(tiny_dataset, monkeypatch):
    """With an eigenvalue that never halves, ABS doubles on its patience alone: the doubling
    control is then the same run step for step, and it never measures the eigenvalue (no
    propagations spent on it); doubling-adv keeps ABSA's adversarial examples."""
    from kfaclab.hessian import Eigenvalue

    monkeypatch.setattr(ad, "top_eigenvalue", lambda *a, **k: Eigenvalue(5.0, 3, True))
    opts = {"max_batch_multiple": 4, "patience_epochs": 2}
    abs_run = train(_abs_cfg(batch_schedule="abs", schedule_options=opts), dataset=tiny_dataset, progress=False)

    def never(*a, **k):
        raise AssertionError("the control measured the eigenvalue")

    monkeypatch.setattr(ad, "top_eigenvalue", never)
    control = train(_abs_cfg(batch_schedule="doubling", schedule_options=opts), dataset=tiny_dataset, progress=False)
    assert validate_record(control) == []
    assert [e["action"] for e in control["adaptive"]["epochs"]] == [None, "patience", None, "patience"]
    assert [e["batch_size"] for e in control["adaptive"]["epochs"]] == \
        [e["batch_size"] for e in abs_run["adaptive"]["epochs"]] == [32, 64, 64, 128]
    assert all(e["eigenvalue"] is None for e in control["adaptive"]["epochs"])
    assert [(h["iteration"], h["test_accuracy"], h["train_loss"]) for h in control["history"]] == \
        [(h["iteration"], h["test_accuracy"], h["train_loss"]) for h in abs_run["history"]]
    spent = sum(2 * 128 * (1 + 3) for _ in abs_run["adaptive"]["epochs"])  # 2n(1 + iterations) per measurement
    assert abs_run["optimizer"]["propagations"] - control["optimizer"]["propagations"] == spent
    assert "adversarial_examples" not in control["optimizer"]
    adv = train(_abs_cfg(batch_schedule="doubling-adv", schedule_options=opts), dataset=tiny_dataset, progress=False)
    assert adv["optimizer"]["adversarial_examples"] > 0


@pytest.mark.parametrize("intervals, outcome, says", [
    ([(-0.008, 0.002), (-0.004, 0.001)], "reproduced", "every method's interval lies above -1 point"),
    ([(-0.011, 0.0), (-0.004, 0.001)], "not resolved at this scale", "neither confirms nor contradicts"),
    ([(-0.03, -0.015), (-0.004, 0.001)], "contradicted", "entirely below -1 point"),
])
def test_the_chapters_accuracy_sentence_follows_verdict_f(intervals, outcome, says):
    """The adaptive chapter's prose on accuracy is computed from verdict (f): its outcome, the
    worst method's change in points with its interval, never "within 1%" when (f) is unresolved."""
    from kfaclab.results.claims import CLAIMS, Verdict
    from kfaclab.results.claims_adaptive import describe_f

    parts = [{"method": "kfac+abs", "accuracy_change": sum(intervals[0]) / 2, "interval": intervals[0]},
             {"method": "sgd+absa", "accuracy_change": sum(intervals[1]) / 2, "interval": intervals[1]}]
    v = Verdict(claim="f", statement=CLAIMS["f"][0], source=CLAIMS["f"][1], statistic="x",
                estimate=parts[0]["accuracy_change"], interval=intervals[0], outcome=outcome, detail="",
                study="abs", parts=parts)
    text = describe_f(v)
    assert f"verdict (f) is **{outcome}**" in text and says in text
    assert f"kfac+abs's, {100 * parts[0]['accuracy_change']:+.2f} points" in text
    assert f"{100 * intervals[0][0]:+.2f} to {100 * intervals[0][1]:+.2f} points" in text
    assert ("as Yao et al. report" in text) == (outcome == "reproduced")


def test_verdict_f_is_shown_in_points_like_the_chapters_table_and_prose():
    """One unit throughout: (f)'s statistic is computed as a fraction of accuracy and its rule
    speaks of points, so every display of it (verdict tables, the front page's number) is in points."""
    from kfaclab.results.claims import CLAIMS, Verdict
    from kfaclab.results.judged_v3 import summary
    from kfaclab.results.verdict_display import verdict_display

    v = Verdict(claim="f", statement=CLAIMS["f"][0], source=CLAIMS["f"][1],
                statistic="accuracy change of the worst method (points as a fraction)", estimate=-0.0055,
                interval=(-0.011, 0.0), outcome="not resolved at this scale", detail="", study="abs")
    assert summary(v) == "-0.55 [-1.10, +0.00] points"
    row = verdict_display([v]).iloc[0]
    assert row["estimate [90% interval]"] == "-0.55 [-1.10, +0.00] points" and "(points)" in row["statistic"]
    other = Verdict(claim="a", statement=CLAIMS["a"][0], source=CLAIMS["a"][1], statistic="slope", estimate=-0.08,
                    interval=(-0.12, -0.04), outcome="not resolved at this scale", detail="", study="m")
    assert summary(other) == "-0.08 [-0.12, -0.04]"
