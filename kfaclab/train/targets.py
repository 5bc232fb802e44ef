"""Race to targets: when did a run first reach each target?"""

from __future__ import annotations

UNITS = ("iteration", "epoch", "examples", "seconds", "propagations")


def race_to_targets(history: list[dict], accuracies, target_loss: float | None = None) -> list[dict]:
    """For each target test accuracy: the first evaluation with test accuracy >= target (and,
    when `target_loss` is given, running training loss <= target_loss), in every unit."""
    results = []
    for acc in accuracies:
        hit = next((h for h in history if _meets(h, acc, target_loss)), None)
        entry = {"test_accuracy": acc, "train_loss": target_loss, "reached": hit is not None}
        entry.update({u: (hit[u] if hit else None) for u in UNITS})
        results.append(entry)
    return results


def _meets(h: dict, acc: float, target_loss: float | None) -> bool:
    if h.get("test_accuracy") is None or h["test_accuracy"] < acc:
        return False
    if target_loss is None:
        return True
    return h.get("train_loss") is not None and h["train_loss"] <= target_loss
