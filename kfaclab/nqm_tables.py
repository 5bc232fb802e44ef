"""The noisy quadratic model's tables for its chapter (book/nqm.md): the grid of tuned curves
over spectra, powers and momenta; Zhang et al.'s own setting reproduced; and how far the pooled
spectrum's steps lie from the full model's. Built on kfaclab.nqm."""

from __future__ import annotations

import numpy as np

from kfaclab.nqm import (
    STUDY_TARGET_FRACTION,
    Spectrum,
    critical_batch_size,
    learning_rates,
    steps_to_target,
    tuned_steps,
)

# ------------------------------------------------------------------------- the chapter's grid

MOMENTUM_CHOICES = (0.0, 0.5, 0.9, 0.99)
TUNED = "tuned"


CURVE_BATCH_SIZES = 2.0 ** np.arange(0, 21)  # the chapter's grid: batch sizes 1 to 2^20


def curve_table(decays=(0.5, 1.0, 1.5), powers=(0.0, 0.25, 0.5, 0.75, 1.0), batch_sizes=CURVE_BATCH_SIZES,
                target_fraction: float = STUDY_TARGET_FRACTION, progress: bool = False) -> tuple:
    """The chapter's precomputed grid: tuned steps to target for every spectrum decay,
    preconditioning power and momentum (each of MOMENTUM_CHOICES, and the best of them, "tuned"),
    with the fit S_min (1 + B_crit / B). Returns (curves, fits): one row per batch size with the
    steps, the perfect-scaling line from the smallest batch size and the fitted curve; one row per
    curve with S_min, B_crit and whether any best learning rate lies on the grid's edge."""
    from kfaclab import computed

    # Kept by kfaclab.computed (keyed by the code and the arguments): a minute of the chapter's
    # build, the same at every build until the code changes.
    inputs = repr((tuple(decays), tuple(powers), [float(b) for b in batch_sizes], float(target_fraction)))
    return computed.cached("nqm_tables.curve_table", inputs,
                           lambda: _curve_table(decays, powers, batch_sizes, target_fraction, progress))


def _curve_table(decays, powers, batch_sizes, target_fraction, progress) -> tuple:
    import pandas as pd

    rows, fits = [], []
    cases = [(d, p) for d in decays for p in powers]
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="NQM grid", unit="curve")
    bs = np.asarray(batch_sizes, dtype=float)
    for decay, power in cases:
        spec = Spectrum(decay=decay)
        target = target_fraction * spec.initial_loss()
        single = {m: tuned_steps(spec, bs, power, [m], target) for m in MOMENTUM_CHOICES}
        best = np.minimum.reduce([r["steps"] for r in single.values()])
        edge = np.any([r["lr_at_edge"] for r in single.values()], axis=0)
        curves = {**{f"{m:g}": (r["steps"], r["lr_at_edge"]) for m, r in single.items()}, TUNED: (best, edge)}
        for label, (steps, at_edge) in curves.items():
            try:
                fit = critical_batch_size(bs, steps)
            except ValueError:
                fit = {"s_min": np.nan, "b_crit": np.nan, "at_edge": True}
            finite = np.isfinite(steps)
            first = int(np.argmax(finite)) if finite.any() else 0
            for i, b in enumerate(bs):
                rows.append({"decay": decay, "power": power, "momentum": label, "batch_size": b,
                             "steps": steps[i] if finite[i] else np.nan,
                             "ideal": steps[first] * bs[first] / b if finite.any() else np.nan,
                             "fit": fit["s_min"] * (1 + fit["b_crit"] / b)})
            fits.append({"decay": decay, "power": power, "momentum": label, "s_min": fit["s_min"],
                         "b_crit": fit["b_crit"], "fit_at_edge": bool(fit["at_edge"]),
                         "lr_at_edge": int(np.sum(at_edge)), "reached": int(finite.sum())})
    return pd.DataFrame(rows), pd.DataFrame(fits)


# ------------------------------------------------------------------------- Zhang et al.'s own setting

# As in the authors' released notebook: an absolute target loss of 0.01 (about 0.2% of the initial
# loss of h_i = 1/i over 10,000 coordinates started at theta_i = 1), momenta 1 - logspace(-5, 0, 20)
# (0 to 0.99999), and preconditioning powers 0 to 3/4 (their proxy for a preconditioner's quality;
# they never use p = 1). Steps are the first crossing. The learning-rate grid (powers of sqrt(2)
# from 2^-30 to 8) and the batch sizes (4^0 to 4^10) are ours, coarser than the chapter's.
AUTHORS_TARGET = 0.01
AUTHORS_MOMENTA = tuple(float(m) for m in 1 - np.logspace(-5, 0, 20))
AUTHORS_POWERS = (0.0, 0.25, 0.5, 0.75)
AUTHORS_BATCH_SIZES = 2.0 ** np.arange(0, 21, 2)


def authors_table(targets: dict | None = None, progress: bool = False):
    """Fitted B_crit per preconditioning power in Zhang et al.'s setting, at their absolute target
    and at the chapter's 1% target (or `targets`: {label: target loss}). One row per (target,
    power): S_min, B_crit, whether the fit or a best learning rate lies on a grid's edge."""
    from kfaclab import computed

    # Kept by kfaclab.computed, as curve_table is.
    return computed.cached("nqm_tables.authors_table", repr(targets), lambda: _authors_table(targets, progress))


def _authors_table(targets, progress):
    import pandas as pd

    spec = Spectrum()
    targets = targets or {"theirs: 0.01 (absolute)": AUTHORS_TARGET,
                          "ours: 1% of the initial loss": STUDY_TARGET_FRACTION * spec.initial_loss()}
    lrs = learning_rates(per_octave=2, smallest=2.0 ** -30, largest=8.0)
    cases = [(label, t, p) for label, t in targets.items() for p in AUTHORS_POWERS]
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="NQM, the authors' setting", unit="curve")
    rows = []
    for label, target, power in cases:
        r = tuned_steps(spec, AUTHORS_BATCH_SIZES, power, AUTHORS_MOMENTA, target, lrs=lrs)
        fit = critical_batch_size(AUTHORS_BATCH_SIZES, r["steps"])
        rows.append({"target": label, "power": power, "s_min": fit["s_min"], "b_crit": fit["b_crit"],
                     "fit_at_edge": bool(fit["at_edge"]), "lr_at_edge": int(r["lr_at_edge"].sum())})
    return pd.DataFrame(rows)


def pooling_error(settings, count: str = "first") -> np.ndarray:
    """The pooled spectrum's (Spectrum()) steps to 1% of the initial loss relative to the full
    10,000-coordinate model's, |pooled - full| / full, for each (lr, momentum, power, batch).
    Kept by kfaclab.computed, as curve_table is."""
    from kfaclab import computed

    settings = [tuple(float(x) for x in s) for s in settings]
    return computed.cached(f"nqm_tables.pooling_error:{count}", repr(settings), lambda: _pooling_error(settings, count))


def _pooling_error(settings, count):
    full, pooled = Spectrum(levels=None), Spectrum()
    target = STUDY_TARGET_FRACTION * full.initial_loss()
    out = []
    for lr, momentum, power, batch in settings:
        a = float(steps_to_target(full, lr, momentum, power, batch, target, count))
        b = float(steps_to_target(pooled, lr, momentum, power, batch, target, count))
        out.append(abs(b - a) / a if np.isfinite(a) and np.isfinite(b) else (0.0 if a == b else np.inf))
    return np.array(out)


def full_model_reaches(settings) -> np.ndarray:
    """Whether the full 10,000-coordinate model reaches 1% of its initial loss at each (lr,
    momentum, power, batch): the settings pooling_error's differences are read over. Kept by
    kfaclab.computed, as curve_table is."""
    from kfaclab import computed

    settings = [tuple(float(x) for x in s) for s in settings]

    def compute():
        full = Spectrum(levels=None)
        target = STUDY_TARGET_FRACTION * full.initial_loss()
        return np.array([np.isfinite(float(steps_to_target(full, *s, target))) for s in settings])

    return computed.cached("nqm_tables.full_model_reaches", repr(settings), compute)


COUNT_TABLE_POWERS = ((0.0, "p = 0 (SGD), momentum tuned"), (0.5, "p = 1/2 (Adam-like), momentum tuned"),
                      (1.0, "p = 1 (K-FAC-like), momentum tuned"))


def count_table():
    """B_crit per preconditioning power counted both ways (the first crossing, and from when the
    loss stays below): the paper's spectrum, 1% of the initial loss, learning rate and momentum
    (MOMENTUM_CHOICES) tuned per batch size over CURVE_BATCH_SIZES. Kept by kfaclab.computed,
    as curve_table is."""
    from kfaclab import computed

    def compute():
        import pandas as pd

        spec = Spectrum()
        target = STUDY_TARGET_FRACTION * spec.initial_loss()
        rows = []
        for power, label in COUNT_TABLE_POWERS:
            row = {"model optimizer": label}
            for count, name in (("first", "first crossing"), ("stays", "stays below")):
                r = tuned_steps(spec, CURVE_BATCH_SIZES, power, MOMENTUM_CHOICES, target, count=count)
                row[f"B_crit, {name}"] = critical_batch_size(CURVE_BATCH_SIZES, r["steps"])["b_crit"]
            rows.append(row)
        return pd.DataFrame(rows)

    return computed.cached("nqm_tables.count_table", "", compute)
