"""The CPU fast path (bf16 autocast of the forward passes, channels-last layout): it learns what
float32 learns, within the noise between seeds, it is deterministic for a seed, and the bench
times it beside float32."""

from __future__ import annotations

import statistics

import pytest

from kfaclab.bench import _fp32_twin, fast_path_variants, format_table, parse_variant, run_bench
from kfaclab.errors import UsageError
from kfaclab.train import RunConfig, train

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def learnable():
    """Synthetic 8x8 images a narrow ResNet-8 learns to about 90% in four epochs: high enough
    to show learning, low enough that a worse path would show."""
    from kfaclab.data import Dataset
    from kfaclab.data.sources import make_synthetic

    train_split, test_split, classes = make_synthetic(n_train=512, n_test=200, size=8, contrast=60.0, seed=1)
    return Dataset("synthetic", train_split, test_split, classes, source="test")


def cfg(**kw):
    base = dict(model="resnet8x0.5", batch_size=32, budget="epochs", budget_value=4.0, min_evals=2,
                eval_batch_size=200, device="cpu", augment=False, optimizer="sgd",
                hparams={"lr": 0.1, "momentum": 0.9})
    return RunConfig(**{**base, **kw})


FAST = dict(precision="bf16", channels_last=True)
FP32 = dict(precision="fp32", channels_last=False)  # explicit: "auto" would pick the fast path here


@pytest.mark.parametrize("optimizer,hparams", [
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("kfac", {"lr": 0.05, "damping": 0.03, "cov_update_freq": 2, "inv_update_freq": 8}),
])
def test_the_fast_path_reaches_float32s_accuracy_within_the_noise_between_seeds(learnable, optimizer, hparams):
    acc = {path: [train(cfg(seed=s, optimizer=optimizer, hparams=hparams, **extra), dataset=learnable,
                        progress=False)["final"]["test_accuracy"] for s in SEEDS]
           for path, extra in (("fp32", FP32), ("fast", FAST))}
    fp32, fast = statistics.mean(acc["fp32"]), statistics.mean(acc["fast"])
    assert fp32 > 0.7, acc  # it learns (10 classes: chance is 0.1)
    noise = max(statistics.stdev(acc["fp32"]), statistics.stdev(acc["fast"]), 0.01)
    # two means of three seeds each: their difference within 3 standard errors of such a difference
    assert abs(fast - fp32) <= 3 * noise * (2 / len(SEEDS)) ** 0.5, acc


def test_a_fast_path_run_is_deterministic_for_its_seed(learnable):
    c = cfg(budget_value=1.0, optimizer="kfac", hparams={"lr": 0.02, "cov_update_freq": 2, "inv_update_freq": 4},
            augment=True, crop_padding=1, **FAST)  # augmentation draws from the seeded generator too
    a, b = (train(c, dataset=learnable, progress=False) for _ in range(2))
    keys = ("train_loss", "test_loss", "test_accuracy")
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert a["config"]["precision"] == "bf16" and a["config"]["channels_last"] is True


def test_fast_path_variants_pair_each_optimizer_with_its_twin():
    assert fast_path_variants(["sgd", "kfac[low_rank=false]", "adam[precision=fp32]"]) == [
        "sgd", "sgd[precision=bf16;channels_last=true]",
        "kfac[low_rank=false]", "kfac[low_rank=False;precision=bf16;channels_last=true]",
        "adam[precision=fp32]"]  # an entry that sets how it runs is left as it is
    for twin in fast_path_variants(["sgd", "kfac[low_rank=false]"])[1::2]:
        assert parse_variant(_fp32_twin(twin))[1:] == parse_variant(twin.split("[")[0] + (
            "[low_rank=False]" if "low_rank" in twin else ""))[1:]


def test_the_bench_times_the_fast_path_beside_float32(tiny_dataset, monkeypatch):
    import kfaclab.bench as bench

    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: tiny_dataset)
    c = RunConfig(dataset="synthetic", model="resnet8x0.25", batch_size=32, device="cpu", hparams={"lr": 0.01})
    out = run_bench(c, fast_path_variants(["sgd", "kfac"]), steps=2, warmup=1, rounds=1, amortize=4,
                    amortize_rounds=1, progress=False)
    rows = {r["optimizer"]: r for r in out["results"]}
    assert rows["sgd"]["speedup_over_fp32"] is None and rows["sgd"]["precision"] == "fp32"
    fast = rows["kfac[precision=bf16;channels_last=true]"]
    assert fast["precision"] == "bf16" and fast["channels_last"] is True
    assert fast["speedup_over_fp32"] == pytest.approx(rows["kfac"]["amortized_step_s"] / fast["amortized_step_s"])
    text = format_table(out)
    assert "fast path (bf16 autocast, channels-last) over float32, amortized step: sgd " in text
    assert "K-FAC's step over SGD's: float32 " in text


@pytest.mark.parametrize("entry,says", [("sgd[precision=fp16]", "precision must be one of"),
                                        ("sgd[channels_last=maybe]", "channels_last must be true or false"),
                                        ("trcg[precision=bf16]", "runs in fp32 only")])
def test_a_bad_fast_path_variant_is_a_usage_error(tiny_dataset, monkeypatch, entry, says):
    import kfaclab.bench as bench

    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: tiny_dataset)
    c = RunConfig(dataset="synthetic", model="resnet8x0.25", batch_size=32, device="cpu", hparams={})
    with pytest.raises(UsageError, match=says):
        run_bench(c, [entry], steps=1, warmup=1, rounds=1, amortize=1, amortize_rounds=1, progress=False)
