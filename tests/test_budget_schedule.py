import math

import pytest

from kfaclab.errors import UsageError
from kfaclab.train import (
    LRSchedule,
    evaluation_iterations,
    scaled_lr,
    stopping_rule_epochs,
    total_iterations,
)


@pytest.mark.parametrize("b,epochs", [(128, 100), (256, 200), (512, 300), (1024, 400), (8192, 700), (32768, 900)])
def test_stopping_rule_of_the_paper(b, epochs):
    assert stopping_rule_epochs(b) == pytest.approx(epochs)


def test_stopping_rule_parameters_keep_its_shape():
    assert stopping_rule_epochs(64, b0=32, e0=2) == pytest.approx(4)
    assert stopping_rule_epochs(32, b0=32, e0=2.5) == pytest.approx(2.5)
    with pytest.raises(UsageError, match="B0"):
        stopping_rule_epochs(64, b0=128)


def test_budget_kinds():
    assert total_iterations("epochs", 3, 128, steps_per_epoch=390) == 1170
    assert total_iterations("epochs", 0.5, 128, steps_per_epoch=391) == 196
    assert total_iterations("iterations", 77, 128, steps_per_epoch=390) == 77
    assert total_iterations("examples", 1000, 128, steps_per_epoch=390) == 8  # ceil(1000 / 128)
    assert total_iterations("rule", None, 256, steps_per_epoch=10, b0=128, e0=3) == 60
    with pytest.raises(UsageError):
        total_iterations("hours", 1, 128, 10)
    with pytest.raises(UsageError):
        total_iterations("epochs", 0, 128, 10)
    with pytest.raises(UsageError):
        total_iterations("iterations", 2.5, 128, 10)


@pytest.mark.parametrize("total,spe,min_evals", [(1000, 100, 20), (30, 100, 20), (7, 3, 20), (390, 39, 5), (1, 1, 20)])
def test_evaluation_cadence(total, spe, min_evals):
    points = evaluation_iterations(total, spe, 1.0, min_evals)
    assert points[0] == 0 and points[-1] == total
    assert max(b - a for a, b in zip(points, points[1:])) <= spe  # at least every epoch
    assert len(points) - 1 >= min(min_evals, total)  # at least min_evals (or every step)
    assert points == sorted(set(points))


def test_linear_warmup_then_cosine():
    s = LRSchedule(peak_lr=1.0, total_iterations=110, warmup_iterations=10, decay="cosine")
    assert [s(t) for t in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_step_decay_at_milestones():
    s = LRSchedule(peak_lr=0.4, total_iterations=100, decay="step", milestones=(0.5, 0.75), gamma=0.1)
    assert [s(t) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.4, 0.4, 0.04, 0.04, 0.004, 0.004])
    assert LRSchedule(0.3, 10, decay="constant")(9) == 0.3


def test_learning_rate_scaling():
    assert scaled_lr(0.1, 1024, 128, "linear") == pytest.approx(0.8)
    assert scaled_lr(0.1, 512, 128, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 512, 128, "none") == 0.1
    with pytest.raises(UsageError):
        scaled_lr(0.1, 512, 128, "cubic")
