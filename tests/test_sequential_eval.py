"""Sequential evaluation: the same evaluation points and the same first crossings as evaluating the
full test set every time, with the full set read only where a crossing could be decided."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import stats

from kfaclab.errors import UsageError
from kfaclab.train import RunConfig, train, validate_record
from kfaclab.train.sequential_eval import decided_below, interleaved_order, targets_left

TARGETS = (0.5, 0.7, 0.85)


@pytest.fixture(scope="module")
def learnable():
    """Synthetic 8x8 images an MLP learns to about 90% in a few epochs, with a test set of 2,000
    read in batches of 200: ten looks per evaluation, as the ResNet study has."""
    from kfaclab.data import Dataset
    from kfaclab.data.sources import make_synthetic

    train_split, test_split, classes = make_synthetic(n_train=1024, n_test=2000, size=8, contrast=60.0, seed=3)
    return Dataset("synthetic", train_split, test_split, classes, source="test")


def cfg(**kw):
    base = dict(model="mlp:32", batch_size=32, budget="epochs", budget_value=3.0, min_evals=30, eval_batch_size=200,
                device="cpu", augment=False, optimizer="sgd", hparams={"lr": 0.02, "momentum": 0.9},
                targets=TARGETS)
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def both(learnable):
    return {mode: train(cfg(eval_mode=mode), dataset=learnable, progress=False) for mode in ("full", "sequential")}


def test_sequential_evaluation_finds_the_same_first_crossings(both):
    full, seq = both["full"], both["sequential"]
    assert validate_record(seq) == [] and validate_record(full) == []
    assert [t["reached"] for t in full["targets"]] == [True] * 3  # the run crosses all three, mid-run
    assert 0 < full["targets"][0]["iteration"] < full["targets"][-1]["iteration"] < full["final"]["iteration"]
    def crossing(t):
        return {k: v for k, v in t.items() if k != "seconds"}  # wall time is not the same twice
    assert [crossing(t) for t in full["targets"]] == [crossing(t) for t in seq["targets"]]
    # evaluation does not touch training: the same trajectory, evaluation point by point
    assert [h["train_loss"] for h in full["history"]] == [h["train_loss"] for h in seq["history"]]
    assert [h["iteration"] for h in full["history"]] == [h["iteration"] for h in seq["history"]]


def test_every_full_read_matches_the_full_evaluation_and_every_partial_one_is_below_the_targets_left(both):
    full, seq = both["full"], both["sequential"]
    n = seq["resolved"]["test_examples"]
    partial = 0
    for i, (f, s) in enumerate(zip(full["history"], seq["history"], strict=True)):
        if s["test_examples"] == n:  # the same images, another order: the same count right
            assert s["test_accuracy"] == pytest.approx(f["test_accuracy"], abs=1e-12)
            assert s["test_loss"] == pytest.approx(f["test_loss"], rel=1e-5)
        else:
            partial += 1
            left = targets_left(seq["history"][:i], TARGETS, None)
            assert not left or s["test_accuracy"] < left[0]
            assert not left or f["test_accuracy"] < left[0]  # and the full set agrees: no crossing was missed
    assert seq["history"][-1]["test_examples"] == n and seq["final"]["test_accuracy"] == full["final"]["test_accuracy"]
    read = sum(h["test_examples"] for h in seq["history"])
    assert partial >= len(seq["history"]) // 3 and read < 0.7 * n * len(seq["history"]), (partial, read)


def test_a_run_without_targets_reads_one_batch_until_its_last_evaluation(learnable):
    rec = train(cfg(eval_mode="sequential", targets=(), budget_value=1.0, min_evals=5), dataset=learnable,
                progress=False)
    assert [h["test_examples"] for h in rec["history"]] == [200] * (len(rec["history"]) - 1) + [2000]


def test_the_stopping_rule_uses_the_exact_sampling_error_without_replacement():
    """The standard error in decided_below is that of a hypergeometric draw (scipy's), so the
    one-sided error of a stop is what Z says."""
    total, target = 10_000, 0.55
    for seen in (1000, 3000, 9000):
        sd = stats.hypergeom(total, round(target * total), seen).std() / seen
        edge = target - 4 * sd
        below, above = int(np.floor(edge * seen)) - 1, int(np.ceil(edge * seen)) + 1
        assert decided_below(below, seen, total, target) and not decided_below(above, seen, total, target)
        # The chance that a prefix this far below comes from a full set at the target: under Z=4's
        assert stats.hypergeom(total, round(target * total), seen).cdf(below) < 1e-4
    assert not decided_below(0, total, total, target)  # the whole set is never "decided below"


def test_every_prefix_of_the_order_is_nearly_class_balanced():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 5000)
    order = interleaved_order(labels)
    assert sorted(order) == list(range(len(labels)))
    share = np.bincount(labels, minlength=10) / len(labels)
    for m in (50, 200, 1000, 3000):
        counts = np.bincount(labels[order[:m]], minlength=10)
        assert np.all(np.abs(counts - share * m) <= 1.5), (m, counts)
    assert np.array_equal(order, interleaved_order(labels))  # fixed: paired across runs


@pytest.mark.parametrize("change,says", [
    ({"eval_mode": "quick"}, "eval_mode must be one of full, sequential"),
    ({"eval_mode": "sequential", "nproc": 2}, "sequential runs with nproc 1"),
])
def test_bad_evaluation_modes_are_usage_errors(change, says):
    with pytest.raises(UsageError, match=says):
        RunConfig.from_dict({"model": "mlp:16", **change})


def test_a_record_claiming_a_crossing_on_a_partial_read_is_refused(both):
    rec = copy.deepcopy(both["sequential"])
    partial = next(h for h in rec["history"] if h["test_examples"] < rec["resolved"]["test_examples"])
    rec["targets"][0]["iteration"] = partial["iteration"]
    assert any("read only part of the test set" in p for p in validate_record(rec))
    rec = copy.deepcopy(both["sequential"])
    rec["history"][1]["test_examples"] = 10**6
    assert any("not within the 2,000 test images" in p for p in validate_record(rec))


def test_the_evaluation_mode_is_left_out_of_earlier_run_ids():
    assert RunConfig(model="mlp:16").run_id() == RunConfig(model="mlp:16", eval_mode="full").run_id()
    assert RunConfig(model="mlp:16", eval_mode="sequential").run_id() != RunConfig(model="mlp:16").run_id()


def test_the_committed_pilot_pairs_agree():
    """runs/resnet-pilot-eval: ResNet-8 runs made twice, evaluated fully and sequentially, with
    the same seed. The pairs must have the same first crossings and final accuracy, and the
    sequential ones must have read less (what the README and the book quote)."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "runs" / "resnet-pilot-eval"
    recs = {}
    for p in folder.glob("*.json"):
        r = json.loads(p.read_text())
        c = r["config"]
        recs[(c["optimizer"], c["batch_size"], c["eval_mode"])] = r
    pairs = {(o, b) for o, b, _ in recs}
    if not pairs:
        pytest.skip("the pilot's records are not there")
    for o, b in pairs:
        full, seq = recs.get((o, b, "full")), recs.get((o, b, "sequential"))
        if full is None or seq is None:
            continue  # a pair still running
        assert [t["iteration"] for t in full["targets"]] == [t["iteration"] for t in seq["targets"]], (o, b)
        assert full["final"]["test_accuracy"] == seq["final"]["test_accuracy"]
        read = sum(h["test_examples"] for h in seq["history"])
        assert read < 0.5 * full["resolved"]["test_examples"] * len(full["history"]), (o, b, read)
