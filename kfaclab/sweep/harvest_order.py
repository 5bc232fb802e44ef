"""The order in which a harvest runs a study: the runs that teach most come first.

A GPU window may end before the study does; grid_rank and teaching_order put the runs of the
grids' centres and of every batch size first, so a partial harvest still answers the chapters.
"""

from __future__ import annotations

from kfaclab.sweep.spec import Run, Study


def grid_rank(study: Study) -> dict[str, float]:
    """Each run's distance from the centre of its optimizer's grid (0 = the centre), with every
    axis scaled to [0, 1] by its position in the spec's list of values. Best configurations of
    a well-centred grid lie near its middle, so the centre is the one configuration to run first."""
    axes: dict[str, dict[str, list]] = {}
    for r in study.runs:
        label = _label(r)
        for k, v in r.grid_point.items():
            values = axes.setdefault(label, {}).setdefault(k, [])
            if v not in values:
                values.append(v)
    rank = {}
    for r in study.runs:
        dist = 0.0
        for k, v in r.grid_point.items():
            values = axes[_label(r)][k]
            dist += abs(values.index(v) - (len(values) - 1) / 2) / max(len(values) - 1, 1)
        rank[r.name] = dist
    return rank


def teaching_order(study: Study, runs: list[Run], predict) -> list[Run]:
    """What to run first: the runs of the spec's `harvest_first` optimizers before any other's
    (the comparison the study is for finishes first: a verdict waits for every run of the
    optimizers it compares); within each of those two tiers, rounds by distance from the grid's
    centre, one configuration per optimizer, batch size and seed in each round (where several
    are equally central, they take turns), so round 0 gives every batch size's steps to target a
    first value; seed 0 before others within a round, and within that the runs predicted
    cheapest first, so that a deadline cuts off few minutes of work. Ties keep the spec's order."""
    first = set(study.harvest_first)
    tier = {r.name: int(bool(first) and r.config.optimizer not in first) for r in study.runs}
    rank = grid_rank(study)
    levels = sorted(set(rank.values()))
    position = {r.name: i for i, r in enumerate(study.runs)}
    turn, seen = {}, {}
    for r in study.runs:  # the how-many-th equally central configuration of its group
        group = (_label(r), r.config.batch_size, r.config.seed, rank[r.name])
        turn[r.name] = seen.get(group, 0)
        seen[group] = turn[r.name] + 1
    return sorted(runs, key=lambda r: (tier[r.name], levels.index(rank[r.name]), turn[r.name], r.config.seed,
                                       predict.base(r) or 0.0, position[r.name]))


def _label(run: Run) -> str:
    c = run.config
    return c.optimizer if c.batch_schedule == "fixed" else f"{c.optimizer}+{c.batch_schedule}"
