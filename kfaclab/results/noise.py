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
