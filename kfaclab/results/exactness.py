"""How exact K-FAC is, read back: the cosines `kfaclab.exactness` wrote, as tables for the book.

The file is checked before it is read (its kind, version and columns), so a stale or foreign
JSON is an error that names itself, not a wrong table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kfaclab.errors import UsageError

KIND, VERSION = "kfaclab.exactness", 1
COLUMNS = ("model", "state", "batch_size", "damping", "fisher", "parameters", "layer", "kfac_cosine",
           "gradient_cosine")
WHOLE = "all K-FAC layers"


def load_exactness(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """(rows, the file's description) of an exactness file (runs/exactness/exactness.json)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the exactness file {path} ({e}); make it with runs/exactness/run.sh") from None
    if not isinstance(data, dict) or data.get("kind") != KIND or data.get("version") != VERSION:
        raise UsageError(f"{path} is not a version-{VERSION} {KIND} file; make it with runs/exactness/run.sh")
    rows = pd.DataFrame(data.get("rows", []))
    missing = [c for c in COLUMNS if c not in rows]
    if rows.empty or missing:
        raise UsageError(f"{path} has no rows or lacks columns {missing}; make it again with runs/exactness/run.sh")
    return rows, {k: v for k, v in data.items() if k != "rows"}


def whole_model_table(rows: pd.DataFrame, fisher: str = "exact") -> pd.DataFrame:
    """K-FAC's and the plain gradient's cosine with the exact step over all of K-FAC's layers:
    one row per (model, state, batch size), one column pair per damping."""
    whole = rows[(rows["layer"] == WHOLE) & (rows["fisher"] == fisher)]
    table = whole.pivot_table(index=["model", "state", "batch_size"], columns="damping",
                              values=["kfac_cosine", "gradient_cosine"])
    table.columns = [f"{'K-FAC' if what == 'kfac_cosine' else 'gradient'}, damping {d:g}" for what, d in table.columns]
    order = [c for d in sorted(whole["damping"].unique())
             for c in (f"K-FAC, damping {d:g}", f"gradient, damping {d:g}")]
    return table[order]


def summary(rows: pd.DataFrame, damping: float, fisher: str = "exact") -> pd.DataFrame:
    """Per (model, state): the whole-model cosine of K-FAC and of the gradient, over batch sizes
    (min and max), at one damping."""
    whole = rows[(rows["layer"] == WHOLE) & (rows["fisher"] == fisher) & (rows["damping"] == damping)]
    return whole.groupby(["model", "state"], sort=False).agg(
        kfac_min=("kfac_cosine", "min"), kfac_max=("kfac_cosine", "max"),
        gradient_min=("gradient_cosine", "min"), gradient_max=("gradient_cosine", "max"))
