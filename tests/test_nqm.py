"""The noisy quadratic model: the exact expected loss against Monte Carlo and a step-by-step
scan, its limit cases, and the regimes and ordering of critical batch sizes Zhang et al. report."""

import numpy as np
import pytest

from kfaclab import nqm
from kfaclab.errors import UsageError

BATCHES = 2.0 ** np.arange(0, 21)


@pytest.mark.parametrize("decay", [1.0, 0.5])
@pytest.mark.parametrize("lr,momentum,power,batch", [
    (0.5, 0.0, 0.0, 4), (0.2, 0.9, 0.0, 16), (0.1, 0.5, 0.5, 2), (0.3, 0.0, 1.0, 8),
])
def test_exact_expected_loss_is_the_monte_carlo_mean(decay, lr, momentum, power, batch):
    spec = nqm.Spectrum(decay=decay, dim=40, levels=None)
    mean, se = nqm.simulate(spec, lr, momentum, power, batch, steps=40, samples=3000, seed=7)
    exact = nqm.expected_loss(spec, lr, momentum, power, batch, np.arange(41))
    assert exact[0] == pytest.approx(spec.initial_loss())
    z = np.abs(mean[1:] - exact[1:]) / se[1:]
    assert z.max() < 4.5, z.max()
    # the check can fail: a model with the noise's variance off by 20% is rejected
    wrong = nqm.expected_loss(nqm.Spectrum(decay=decay, dim=40, levels=None, noise=1.2), lr, momentum, power,
                              batch, np.arange(41))
    assert (np.abs(mean[1:] - wrong[1:]) / se[1:]).max() > 4.5


def _scan(spec, lr, momentum, power, batch, steps):
    """The second-moment recursion stepped one step at a time (written out here, independently
    of the module's closed form): the expected loss after each of steps 0..steps."""
    h, w = spec.arrays()
    a, s2 = lr * h ** (1 - power), lr ** 2 * h ** (-2 * power) * spec.noise * h / batch
    x, y, z = np.ones_like(h), np.zeros_like(h), np.zeros_like(h)
    out = [0.5 * np.sum(w * h * x)]
    for _ in range(steps):
        x, y, z = ((1 - a) ** 2 * x + 2 * (1 - a) * momentum * y + momentum ** 2 * z + s2,
                   -a * (1 - a) * x + momentum * (1 - 2 * a) * y + momentum ** 2 * z + s2,
                   a ** 2 * x - 2 * a * momentum * y + momentum ** 2 * z + s2)
        out.append(0.5 * np.sum(w * h * x))
    return np.array(out)


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_steps_to_target_is_the_first_crossing_of_a_step_by_step_scan(momentum):
    spec = nqm.Spectrum(dim=200, levels=None)
    target = 0.05 * spec.initial_loss()
    lrs = [0.01, 0.1, 0.5, 1.0, 1.9]
    steps = nqm.steps_to_target(spec, np.array(lrs), momentum, 0.0, 64, target)
    for lr, s in zip(lrs, steps):
        with np.errstate(all="ignore"):
            scan = _scan(spec, lr, momentum, 0.0, 64, 20000)
        below = np.nonzero(scan <= target)[0]
        assert s == (below[0] if len(below) else np.inf), (lr, s)
        if np.isfinite(s):  # and the closed form is the recursion's value at every step
            ts = np.arange(0, int(s) + 1)
            np.testing.assert_allclose(nqm.expected_loss(spec, lr, momentum, 0.0, 64, ts), scan[ts], rtol=1e-9)


def test_without_noise_steps_do_not_depend_on_the_batch_size():
    spec = nqm.Spectrum(noise=0.0)
    target = 0.01 * spec.initial_loss()
    for power in (0.0, 0.5):
        fixed = nqm.steps_to_target(spec, 0.5, 0.9, power, BATCHES, target)
        assert np.isfinite(fixed).all() and (fixed == fixed[0]).all()
        tuned = nqm.tuned_steps(spec, BATCHES[::4], power, [0.0, 0.9], target)["steps"]
        assert (tuned == tuned[0]).all()


@pytest.mark.parametrize("power,momenta", [(0.0, [0.0]), (0.0, [0.0, 0.5, 0.9, 0.99]), (0.5, [0.0, 0.9]),
                                           (1.0, [0.0])])
def test_tuned_steps_never_increase_with_the_batch_size(power, momenta):
    spec = nqm.Spectrum()
    r = nqm.tuned_steps(spec, BATCHES, power, momenta, 0.01 * spec.initial_loss())
    assert np.isfinite(r["steps"]).all() and not r["lr_at_edge"].any()
    assert (np.diff(r["steps"]) <= 0).all()


def test_exact_curvature_without_noise_converges_in_one_step():
    spec = nqm.Spectrum(noise=0.0)
    loss = nqm.expected_loss(spec, 1.0, 0.0, 1.0, 1, [0, 1, 2])
    assert loss[0] == pytest.approx(spec.initial_loss()) and abs(loss[1]) < 1e-14 and abs(loss[2]) < 1e-14
    assert nqm.steps_to_target(spec, 1.0, 0.0, 1.0, 1, 1e-9) == 1
    # SGD at the same rate needs many steps on this spectrum (h from 1 down to 1e-4)
    assert nqm.steps_to_target(spec, 1.0, 0.0, 0.0, 1, 0.01 * spec.initial_loss()) > 1000


def test_unstable_learning_rates_never_reach_the_target():
    spec = nqm.Spectrum()
    assert np.isinf(nqm.steps_to_target(spec, 2.05, 0.0, 0.0, 1e6, 0.01 * spec.initial_loss()))
    assert np.isinf(nqm.expected_loss(spec, 2.05, 0.0, 0.0, 1e6, 10))
    # heavy ball is stable up to lr h = 2 (1 + momentum)
    assert np.isfinite(nqm.steps_to_target(spec, 3.0, 0.9, 0.0, 1e6, 0.01 * spec.initial_loss()))


def test_pooled_spectrum_matches_the_full_one():
    full, pooled = nqm.Spectrum(levels=None), nqm.Spectrum()
    assert len(pooled.arrays()[0]) < 100 and pooled.arrays()[1].sum() == full.dim
    assert pooled.initial_loss() == pytest.approx(full.initial_loss(), rel=1e-12)
    target = 0.01 * full.initial_loss()
    for lr, momentum, power, batch in [(0.5, 0.0, 0.0, 64), (0.3, 0.9, 0.0, 1024), (0.5, 0.5, 0.5, 4096),
                                       (0.5, 0.0, 1.0, 65536)]:
        a = nqm.steps_to_target(full, lr, momentum, power, batch, target)
        assert np.isfinite(a)
        b = nqm.steps_to_target(pooled, lr, momentum, power, batch, target)
        assert abs(a - b) <= 0.01 * a + 1, (lr, momentum, power, batch, a, b)


def _curve(power, momenta):
    spec = nqm.Spectrum()
    return nqm.tuned_steps(spec, BATCHES, power, momenta, 0.01 * spec.initial_loss())["steps"]


def test_perfect_scaling_then_saturation():
    steps = _curve(0.0, [0.0, 0.5, 0.9, 0.99])
    ratio = steps[1:] / steps[:-1]
    assert np.all(np.abs(ratio[:4] - 0.5) < 0.03), ratio[:4]   # doubling B halves the steps
    assert np.all(ratio[-3:] > 0.97), ratio[-3:]               # and then buys nothing


def test_critical_batch_sizes_are_ordered_as_zhang_et_al_report():
    b = {name: nqm.critical_batch_size(BATCHES, _curve(p, m))["b_crit"]
         for name, p, m in [("sgd", 0.0, [0.0]), ("momentum", 0.0, [0.0, 0.5, 0.9, 0.99]),
                            ("adam-like", 0.5, [0.0, 0.5, 0.9, 0.99]), ("kfac-like", 1.0, [0.0, 0.5, 0.9, 0.99])]}
    assert b["kfac-like"] > 2 * b["adam-like"] > 4 * b["momentum"] > 8 * b["sgd"], b


def test_bad_input_is_a_usage_error():
    for bad in [dict(decay=-1.0), dict(dim=0), dict(levels=0), dict(noise=-0.1)]:
        with pytest.raises(UsageError, match="NQM"):
            nqm.Spectrum(**bad)
    with pytest.raises(UsageError, match="target loss must be positive"):
        nqm.steps_to_target(nqm.Spectrum(), 0.1, 0.0, 0.0, 1, 0.0)
    with pytest.raises(UsageError, match="levels=None"):
        nqm.simulate(nqm.Spectrum(), 0.1, 0.0, 0.0, 1, 5, 10)
    with pytest.raises(UsageError, match="whole numbers"):
        nqm.expected_loss(nqm.Spectrum(), 0.1, 0.0, 0.0, 1, 1.5)
