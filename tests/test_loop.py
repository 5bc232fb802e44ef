import json

import pytest

from kfaclab.optim.sgd import SGD
from kfaclab.train import RunConfig, race_to_targets, train, validate_record


def cfg(**kw):
    base = dict(model="mlp:32", batch_size=64, budget="epochs", budget_value=2.0, hparams={"lr": 0.05},
                min_evals=5, eval_batch_size=100, device="cpu", crop_padding=1)
    return RunConfig(**{**base, **kw})


@pytest.mark.parametrize("budget,value,iters", [("epochs", 2.0, 16), ("iterations", 11.0, 11),
                                                ("examples", 700.0, 11), ("epochs", 0.5, 4)])
def test_budget_is_respected_exactly(tiny_dataset, monkeypatch, budget, value, iters):
    steps = []
    real = SGD.step
    monkeypatch.setattr(SGD, "step", lambda self, x, y: steps.append(len(x)) or real(self, x, y))
    r = train(cfg(budget=budget, budget_value=value), dataset=tiny_dataset, progress=False)
    assert r["status"] == "completed"
    assert len(steps) == iters == r["final"]["iteration"] == r["resolved"]["iterations"]
    assert set(steps) == {64}  # drop_last: every step sees a full batch
    assert r["final"]["examples"] == 64 * iters and r["optimizer"]["propagations"] == 2 * 64 * iters
    assert r["history"][-1]["iteration"] == iters and r["history"][0]["iteration"] == 0


def test_stopping_rule_budget(tiny_dataset):
    r = train(cfg(budget="rule", budget_value=None, batch_size=128, rule_b0=64, rule_e0=0.5),
              dataset=tiny_dataset, progress=False)
    # (log2(128/64) + 1) x 0.5 = 1 epoch = 512 // 128 steps
    assert r["resolved"]["rule_epochs"] == 1.0 and r["final"]["iteration"] == 4


def test_history_fields_and_cadence(tiny_dataset):
    r = train(cfg(budget_value=3.0, min_evals=12), dataset=tiny_dataset, progress=False)
    its = [h["iteration"] for h in r["history"]]
    assert its == r["resolved"]["evaluation_iterations"] and len(its) >= 13
    assert max(b - a for a, b in zip(its, its[1:])) <= r["resolved"]["steps_per_epoch"]
    h = r["history"][-1]
    assert h["epoch"] == pytest.approx(3.0) and h["examples"] == 3 * 512 // 64 * 64
    assert 0 <= h["test_accuracy"] <= 1 and h["train_loss"] > 0 and h["seconds"] > 0
    seconds = [h["seconds"] for h in r["history"]]
    assert seconds == sorted(seconds) and r["final"]["eval_seconds"] > 0


def test_learning_happens_and_record_is_valid(tiny_dataset):
    r = train(cfg(budget_value=10.0, targets=(0.2, 0.99), hparams={"lr": 0.1}), dataset=tiny_dataset,
              progress=False)
    assert validate_record(r) == []
    assert r["history"][-1]["test_accuracy"] > r["history"][0]["test_accuracy"] + 0.15
    t30, t99 = r["targets"]
    assert t30["reached"] and not t99["reached"] and t99["iteration"] is None
    first = next(h for h in r["history"] if h["test_accuracy"] >= 0.2)
    assert t30["iteration"] == first["iteration"] and t30["seconds"] == first["seconds"]
    json.dumps(r, allow_nan=False)


def test_deterministic_on_cpu(tiny_dataset):
    a = train(cfg(augment=True), dataset=tiny_dataset, progress=False)
    b = train(cfg(augment=True), dataset=tiny_dataset, progress=False)
    strip = lambda r: [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]
    assert strip(a) == strip(b)
    c = train(cfg(augment=True, seed=1), dataset=tiny_dataset, progress=False)
    assert strip(a) != strip(c)


def test_divergence_is_a_status_not_a_crash(tiny_dataset):
    r = train(cfg(hparams={"lr": 1e4, "momentum": 0.9}), dataset=tiny_dataset, progress=False)
    assert r["status"] == "diverged"
    assert r["divergence"]["iteration"] < r["resolved"]["iterations"]
    assert validate_record(r) == []


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "kfac"])
def test_an_overflowing_learning_rate_diverges(tiny_dataset, optimizer):
    """1e300 cannot be a float32 step size (SGD and Adam: torch refuses it; K-FAC: lr^2 overflows in
    the KL clip): the run is diverged, with the reason, not failed with a traceback."""
    r = train(cfg(optimizer=optimizer, hparams={"lr": 1e300}), dataset=tiny_dataset, progress=False)
    assert r["status"] == "diverged" and r["error"] is None
    assert "overflow" in r["divergence"]["reason"]
    assert validate_record(r) == []


def test_interrupt_and_failure_write_a_record(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = SGD.step

    def flaky(self, x, y, exc):
        calls.append(1)
        if len(calls) == 5:
            raise exc
        return real(self, x, y)

    for exc, status in ((KeyboardInterrupt(), "interrupted"), (RuntimeError("out of memory"), "failed")):
        calls.clear()
        monkeypatch.setattr(SGD, "step", lambda self, x, y, exc=exc: flaky(self, x, y, exc))
        out = tmp_path / f"{status}.json"
        with pytest.raises(type(exc)):
            train(cfg(output=str(out)), dataset=tiny_dataset, progress=False)
        rec = json.loads(out.read_text())
        assert rec["status"] == status and rec["final"]["iteration"] == 4 and validate_record(rec) == []
        if status == "failed":
            assert "out of memory" in rec["error"]


def test_race_to_targets_on_a_constructed_history():
    history = [
        {"iteration": 0, "epoch": 0.0, "examples": 0, "seconds": 0.0, "propagations": 0, "train_loss": None,
         "test_accuracy": 0.1},
        {"iteration": 10, "epoch": 0.5, "examples": 1280, "seconds": 2.0, "propagations": 2560, "train_loss": 1.5,
         "test_accuracy": 0.62},
        {"iteration": 20, "epoch": 1.0, "examples": 2560, "seconds": 4.0, "propagations": 5120, "train_loss": 0.9,
         "test_accuracy": 0.58},
        {"iteration": 30, "epoch": 1.5, "examples": 3840, "seconds": 6.0, "propagations": 7680, "train_loss": 0.4,
         "test_accuracy": 0.75},
    ]
    a, b, c = race_to_targets(history, [0.6, 0.7, 0.9])
    assert (a["iteration"], a["epoch"], a["examples"], a["seconds"]) == (10, 0.5, 1280, 2.0)
    assert b["iteration"] == 30 and b["propagations"] == 7680
    assert not c["reached"] and c["iteration"] is None
    # With a training-loss target, the first evaluation must meet both.
    (d,) = race_to_targets(history, [0.6], target_loss=1.0)
    assert d["iteration"] == 30 and d["train_loss"] == 1.0


def test_config_from_dict_rejects_unknown_keys_and_types():
    from kfaclab.errors import UsageError

    assert RunConfig.from_dict({"batch_size": 32, "targets": [0.5], "budget_value": 2}).targets == (0.5,)
    with pytest.raises(UsageError, match="spec.yaml: unknown key.*batchsize"):
        RunConfig.from_dict({"batchsize": 32}, where="spec.yaml")
    with pytest.raises(UsageError, match="batch_size must be int"):
        RunConfig.from_dict({"batch_size": "32"})
    with pytest.raises(UsageError, match="targets"):
        RunConfig.from_dict({"targets": [1.5]})
    with pytest.raises(UsageError, match="batch_size must be positive"):
        RunConfig.from_dict({"batch_size": 0})


def test_run_id_ignores_locations_only():
    a = RunConfig(output="a.json", cache_dir="/x")
    assert a.run_id() == RunConfig(output="b.json").run_id() != RunConfig(seed=1).run_id()


def _conv_cfg(**kw):
    kw = {"precision": "fp32", "channels_last": False, **kw}  # explicit: "auto" may pick the fast path here
    return cfg(model="resnet20", batch_size=32, budget="iterations", budget_value=6.0, min_evals=2,
               optimizer="kfac", hparams={"lr": 0.01, "cov_update_freq": 2, "inv_update_freq": 3}, **kw)


def test_speed_options_are_recorded_and_change_only_what_they_should(tiny_dataset):
    """channels_last: the same run up to float32 rounding (other convolution algorithms); bf16
    autocast: a bounded difference, with K-FAC's factors still float32; both in the record and
    its run id (only where they are not at their defaults, so earlier ids stay valid)."""
    plain = train(_conv_cfg(), dataset=tiny_dataset, progress=False)
    cl = train(_conv_cfg(channels_last=True), dataset=tiny_dataset, progress=False)
    bf = train(_conv_cfg(precision="bf16"), dataset=tiny_dataset, progress=False)
    assert validate_record(cl) == [] and validate_record(bf) == []
    assert cl["config"]["channels_last"] is True and bf["config"]["precision"] == "bf16"
    assert len({plain["run_id"], cl["run_id"], bf["run_id"]}) == 3
    # float32 without channels-last is left out of the id, so ids from before these options hold
    explicit = _conv_cfg().to_dict()
    assert RunConfig(**explicit).run_id() == RunConfig(**{k: v for k, v in explicit.items()
                                                          if k not in ("precision", "channels_last")},
                                                       precision="fp32").run_id()
    losses = {name: [h["train_loss"] for h in r["history"][1:]] for name, r in
              (("plain", plain), ("cl", cl), ("bf", bf))}
    # Other convolution algorithms round differently, and six K-FAC steps (inverses from those
    # rounded factors) amplify it: on this Zen 4 CPU the losses differ by 1.1e-3 relative.
    assert losses["cl"] == pytest.approx(losses["plain"], rel=5e-3)
    assert losses["bf"] == pytest.approx(losses["plain"], rel=5e-2) and losses["bf"] != losses["plain"]


def test_bf16_autocast_keeps_kfac_factors_and_updates_in_float32(tiny_dataset):
    import torch
    import torch.nn.functional as F

    from kfaclab.models import build_model
    from kfaclab.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model("resnet20", (3, 8, 8), 10)
    opt = build_optimizer("kfac", model, F.cross_entropy, {"cov_update_freq": 1, "inv_update_freq": 1})
    opt.set_precision("bf16")
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    loss = opt.step(x, y)
    # One forward (the MC Fisher's backward reuses it), in bf16; the loss in float32.
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    for layer in opt.layers.values():
        assert layer.A.dtype == layer.G.dtype == torch.float32
        assert all(v.dtype == torch.float32 for v in layer.decomposition.values())
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("change,says", [({"precision": "fp16"}, "precision must be one of fp32, bf16"),
                                         ({"precision": "bf16", "optimizer": "trcg", "hparams": {}},
                                          "must be fp32 for trcg")])
def test_bad_precision_is_a_usage_error(change, says):
    from kfaclab.errors import UsageError

    with pytest.raises(UsageError, match=says):
        RunConfig.from_dict({**cfg().to_dict(), **change})


@pytest.mark.parametrize("iterations,refreshes,inv,cov", [(3124, 40, 78, 8), (336, 40, 8, 1), (60, 40, 1, 1),
                                                         (100_000, 40, 100, 10), (3124, 0, 100, 10)])
def test_kfac_cadence_scaled_to_the_run(iterations, refreshes, inv, cov):
    from kfaclab.optim import hyperparameters_for_run

    h = hyperparameters_for_run("kfac", {"refreshes_per_run": refreshes, "cov_update_freq": 10,
                                         "inv_update_freq": 100}, iterations)
    assert (h["inv_update_freq"], h["cov_update_freq"]) == (inv, cov)
    if refreshes:
        assert iterations // h["inv_update_freq"] >= min(refreshes, iterations)


def test_a_run_uses_and_records_the_scaled_cadence(tiny_dataset):
    """16 iterations with at least 8 refreshes: inverses every 2 steps, factors every step, as the
    record's resolved hyperparameters and counters say; the clip statistics are in the record."""
    r = train(cfg(optimizer="kfac", hparams={"lr": 0.05, "refreshes_per_run": 8, "damping": 0.1}),
              dataset=tiny_dataset, progress=False)
    h, o = r["resolved"]["hparams"], r["optimizer"]
    assert (h["inv_update_freq"], h["cov_update_freq"]) == (2, 1)
    assert o["inverse_updates"] == 8 and o["factor_updates"] == 16
    assert o["kl_clip_steps"] == 16 and 0 <= o["kl_clip_bound_share"] <= 1
    assert 0 < o["effective_lr_geomean"] <= 0.05 + 1e-12
    assert validate_record(r) == []


def test_run_id_reads_the_fields_as_to_dict_gives_them():
    """run_id hashes the fields without copying them; the hash must be the one of to_dict's
    values (tuples as lists, later fields left out at their defaults), or every recorded run
    would stop matching its spec."""
    import hashlib

    from kfaclab.train.config import LATER_FIELDS, LOCATION_FIELDS

    def reference(c):
        d = {k: v for k, v in c.to_dict().items()
             if k not in LOCATION_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    for c in (cfg(), cfg(targets=(0.5, 0.6), lr_milestones=(0.3, 0.9), hparams={"lr": 0.1, "momentum": 0.9}),
              cfg(precision="bf16", channels_last=True, micro_batch=16, output="x.json", cache_dir="/tmp"),
              cfg(batch_schedule="abs", budget="epochs", budget_value=2.0, schedule_options={"patience": 3})):
        assert c.run_id() == reference(c)
