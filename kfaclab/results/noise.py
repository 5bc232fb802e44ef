"""The gradient noise scale measured during training (RunConfig.noise_scale_batches), as the
predicted critical batch size: B_crit ~ B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018).

Each evaluation of such a run recorded unbiased estimates of |G|^2 and tr(Sigma)
(`kfaclab.train.noise_scale`); single ones are noisy, so both are smoothed with an exponential
moving average before their ratio is taken (their recommendation), and a run's overall value
is the ratio of the two means over its evaluations after the first (the gradient at
initialisation is not typical of training).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kfaclab.results.study import StudyResults
from kfaclab.train.noise_scale import noise_scale


def noise_scale_series(results: StudyResults, smoothing: float = 0.8) -> pd.DataFrame:
    """One row per evaluation of runs that measured it: the raw ratio and the smoothed B_simple
    (exponential moving averages with weight `smoothing` on the past; NaN while the averaged
    |G|^2 estimate is not positive, which happens late in training, when |G|^2 is small
    against its own estimation noise)."""
    ev = results.evals
    if "noise_trace" not in ev or ev["noise_trace"].isna().all():
        return pd.DataFrame(columns=["name", "optimizer", "batch_size", "epoch", "b_simple", "b_simple_raw"])
    ev = ev[ev["noise_trace"].notna()].sort_values(["name", "iteration"]).copy()
    out = []
    for _, g in ev.groupby("name", sort=False):
        g = g.copy()
        num = g["noise_trace"].ewm(alpha=1 - smoothing, adjust=True).mean()
        den = g["noise_grad_sq"].ewm(alpha=1 - smoothing, adjust=True).mean()
        g["b_simple"] = np.where(den > 0, num / den, np.nan)
        g["b_simple_raw"] = np.where(g["noise_grad_sq"] > 0, g["noise_trace"] / g["noise_grad_sq"], np.nan)
        out.append(g)
    return pd.concat(out, ignore_index=True)


def noise_scale_by_run(results: StudyResults) -> pd.DataFrame:
    """One row per run that measured it: B_simple over its evaluations after the first."""
    ev = results.evals
    if "noise_trace" not in ev:
        return pd.DataFrame(columns=["name", "optimizer", "batch_size", "b_simple", "measurements"])
    rows = []
    hp = [c for c in ev.columns if c.startswith("hp_")]
    for name, g in ev[ev["noise_trace"].notna()].sort_values("iteration").groupby("name", sort=False):
        later = g.iloc[1:] if len(g) > 1 else g
        rows.append({"name": name, "optimizer": g["optimizer"].iloc[0], "batch_size": int(g["batch_size"].iloc[0]),
                     **{k: g[k].iloc[0] for k in hp},
                     "b_simple": noise_scale(list(later["noise_grad_sq"]), list(later["noise_trace"])),
                     "measurements": len(later)})
    return pd.DataFrame(rows)


PLAIN_GRADIENTS = ("sgd",)  # B_simple is a property of plain (unpreconditioned) gradients


def noise_scale_at_targets(results: StudyResults, targets: list[float] | None = None, window: int = 1,
                           optimizers: tuple = PLAIN_GRADIENTS) -> pd.DataFrame:
    """B_simple where it predicts the critical batch size for a target (McCandlish et al.: the
    noise scale at the loss the target asks for, not averaged over a run): for each run of the
    plain-gradient optimizers and each accuracy target it reaches, the ratio of the summed
    tr(Sigma) and |G|^2 estimates over its first evaluation at or above the target and the
    `window` evaluations on either side. One row per (run, target), with the training loss there
    and the run's setting and seed, so that a table can say how many settings and seeds it rests on."""
    ev = results.evals
    targets = list(targets if targets is not None else results.targets)
    cols = ["target", "name", "optimizer", "batch_size", "seed", "setting", "iteration", "train_loss", "b_simple"]
    if "noise_trace" not in ev or not targets:
        return pd.DataFrame(columns=cols)
    hp = sorted(c for c in ev.columns if c.startswith("hp_"))
    rows = []
    measured = ev[ev["noise_trace"].notna() & ev["optimizer"].isin(optimizers)]
    for name, g in measured.sort_values("iteration").groupby("name", sort=False):
        g = g.reset_index(drop=True)
        setting = (int(g["batch_size"].iloc[0]), *((k[3:], g[k].iloc[0]) for k in hp if pd.notna(g[k].iloc[0])))
        for target in targets:
            hits = np.flatnonzero(g["test_accuracy"].to_numpy() >= target)
            if not len(hits):
                continue
            i = int(hits[0])
            near = g.iloc[max(i - window, 1 if i > 0 else 0):i + window + 1]  # never the initialisation's
            rows.append({"target": target, "name": name, "optimizer": g["optimizer"].iloc[0],
                         "batch_size": setting[0], "seed": int(g["seed"].iloc[0]), "setting": setting,
                         "iteration": int(g["iteration"].iloc[i]), "train_loss": float(g["train_loss"].iloc[i]),
                         "b_simple": noise_scale(list(near["noise_grad_sq"]), list(near["noise_trace"]))})
    return pd.DataFrame(rows, columns=cols)


def noise_scale_summary(at_targets: pd.DataFrame, n_train: int) -> pd.DataFrame:
    """Per optimizer and target: the median B_simple over runs with its range, how many settings
    (batch size and hyperparameters) and seeds it rests on, and how many values reach the size of
    the training set (where |G|^2 is small against its own estimation noise: not a measurement)."""
    rows = []
    for (opt, target), g in at_targets.groupby(["optimizer", "target"]):
        ok = g[g["b_simple"].notna() & (g["b_simple"] < n_train)]
        rows.append({"optimizer": opt, "target": target, "B_simple (median)": ok["b_simple"].median(),
                     "low": ok["b_simple"].min(), "high": ok["b_simple"].max(),
                     "training loss there": g["train_loss"].median(), "settings": g["setting"].nunique(),
                     "seeds": g["seed"].nunique(), "runs": len(g), "at or past the training set's size":
                     int(len(g) - len(ok))})
    return pd.DataFrame(rows)
