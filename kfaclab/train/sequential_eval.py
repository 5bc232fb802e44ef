"""Sequential evaluation (`eval_mode: sequential`): every evaluation point of a run, but the full
test set only where it can decide a target's first crossing.

The verdicts read one thing from a run's evaluations: its first crossing of each accuracy target,
the first evaluation whose full-test-set accuracy meets it (book/verdicts.md). An evaluation far
below every target not yet crossed cannot be that crossing, and a prefix of the test set shows
so. Here each evaluation reads the test set in a fixed class-interleaved order, batch after batch,
and stops as soon as the accuracy so far lies more than Z standard errors below the lowest target
not yet met (the standard error of a sample of that size drawn without replacement from the test
set, at the target's accuracy). Otherwise it reads the whole test set. So:
- every target crossing, and the final evaluation, is decided on the full test set;
- an evaluation that stopped early reports its prefix's accuracy with `test_examples` (< the test
  set) in its history entry; its accuracy is below every target it could have crossed;
- the evaluation points, and so the steps-to-target resolution, are those of the full schedule.

A stop is wrong only if the prefix lies Z standard errors below the full set's accuracy. With
Z = 4 and at most ten looks per evaluation (batches of 1,000 of 10,000), that is under
10 x 3.2e-5 = 3e-4 per evaluation point near a target (Bonferroni), and its only effect would be a
crossing recorded one evaluation later. tests/test_sequential_eval.py checks that runs evaluated
both ways agree.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from kfaclab.models import fold_batchnorm

EVAL_MODES = ("full", "sequential")
Z = 4.0


def interleaved_order(labels, seed: int = 0) -> np.ndarray:
    """A fixed order of the test set in which every prefix is nearly class-balanced: each class's
    images shuffled (seeded, the same for every run, so prefixes are paired across runs), then
    taken round-robin, class by class, spread in proportion to the class sizes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        # the k-th image of a class of n goes at (k + u) / n of the way: prefixes stay proportional
        keys[idx] = (np.arange(len(idx)) + rng.uniform()) / len(idx)
    return np.lexsort((labels, keys))


def targets_left(history: list[dict], targets, target_loss: float | None) -> list[float]:
    """The accuracy targets no evaluation so far has met (as race_to_targets counts meeting)."""
    def met(h, t):
        return h["test_accuracy"] >= t and (target_loss is None or
                                            (h.get("train_loss") is not None and h["train_loss"] <= target_loss))
    return [t for t in sorted(targets) if not any(met(h, t) for h in history)]


def decided_below(correct: int, seen: int, total: int, target: float, z: float = Z) -> bool:
    """Whether `correct` of the first `seen` of `total` test images puts the whole set's accuracy
    below `target`: the prefix's accuracy is more than z standard errors (without replacement,
    at accuracy `target`) under it."""
    if seen >= total:
        return False
    se = math.sqrt(target * (1 - target) / seen * (total - seen) / (total - 1))
    return correct / seen < target - z * se


@torch.no_grad()
def evaluate_sequential(model, loader, target: float | None, autocast_dtype=None) -> tuple[float, float, int]:
    """(mean loss, accuracy, images read) on a prefix of `loader`'s split, in eval mode: the whole
    split unless the accuracy is decided below `target`; with `target` None (no target can be met
    here) the first batch only."""
    was_training = model.training
    model.eval()
    net = fold_batchnorm(model)  # as kfaclab.train.loop.evaluate does
    total = loader.num_examples
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        with torch.autocast(loader.device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            out = net(x)
        loss_sum += F.cross_entropy(out.to(torch.promote_types(out.dtype, torch.float32)), y,
                                    reduction="sum").double().item()
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
        if seen < total and (target is None or decided_below(correct, seen, total, target)):
            break
    model.train(was_training)
    return loss_sum / seen, correct / seen, seen
