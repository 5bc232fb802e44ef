"""Bracketing (kfaclab.sweep.bracket): grids grow until their optimum lies inside.

Records are fabricated from a known response surface (accuracy and crossings as functions of
the grid point), so each case knows where the optimum is and what must grow."""

import math

import pytest
import yaml

from kfaclab.errors import UsageError
from kfaclab.sweep import bracket
from kfaclab.sweep.grid_axes import next_value
from kfaclab.sweep.spec import load_study

SPEC = {
    "fixed": {"dataset": "synthetic", "model": "mlp:8", "device": "cpu"},
    "batch_sizes": [32, 64], "budget": {"epochs": 1}, "targets": [0.3, 0.5], "seeds": [0, 1, 2],
    "optimizers": {"sgd": {"grid": {"lr": [0.01, 0.03, 0.1], "momentum": [0.0, 0.5, 0.9]}}},
    "bracket": {"max_steps": 2},
}


def study_from(tmp_path, **changes):
    spec = {**SPEC, **changes}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    return load_study(tmp_path / "study.yaml")


def records_from(monkeypatch, surface):
    """Every run's record comes from surface(lr, momentum, batch size, seed) -> (status, accuracy)."""
    def get(self, run):
        status, acc = surface(float(run.grid_point["lr"]), float(run.grid_point["momentum"]),
                              run.config.batch_size, run.config.seed)
        targets = [{"test_accuracy": t, "reached": acc >= t, "iteration": round(1000 * (1 + t - acc))
                    if acc >= t else None} for t in (0.3, 0.5)]
        return {"status": status, "targets": targets, "final": {"test_accuracy": acc}}
    monkeypatch.setattr(bracket._Records, "get", get)


def peak(lr_opt, m_opt=0.5, width=1.0):
    """Accuracy peaked at (lr_opt, m_opt): 0.6 at the peak, falling with log10 distance."""
    def surface(lr, m, b, seed):
        return "completed", 0.6 - 0.2 * (math.log10(lr / lr_opt) / width) ** 2 - 0.3 * abs(m - m_opt)
    return surface


def grid_of(study, opt="sgd", b=32):
    runs = [r for r in study.runs if r.config.optimizer == opt and r.config.batch_size == b]
    return sorted({float(r.grid_point["lr"]) for r in runs}), sorted({float(r.grid_point["momentum"]) for r in runs})


def test_an_interior_optimum_adds_nothing(tmp_path, monkeypatch):
    records_from(monkeypatch, peak(0.03, width=0.2))  # a narrow peak: its one-point region is inside too
    study = study_from(tmp_path)
    grown = bracket.grow(study)
    assert len(grown.runs) == len(study.runs) == 2 * 9 * 3
    assert {c["state"] for c in grown.bracket_cells.values()} == {"bracketed"}


def test_an_optimum_past_the_high_edge_grows_one_step_at_a_time_up_to_the_limit(tmp_path, monkeypatch):
    records_from(monkeypatch, peak(10.0, width=0.3))  # far above the grid: never bracketed in 2 steps
    grown = bracket.grow(study_from(tmp_path))
    lrs, moms = grid_of(grown)
    assert lrs == [0.01, 0.03, 0.1, 0.333, 1.11]  # two geometric steps of the outermost ratio
    assert moms == [0.0, 0.5, 0.9]
    cell = grown.bracket_cells[("sgd", 32)]
    assert cell["state"] == "edge" and cell["edges"] == ["lr high"] and cell["configurations"] == 15
    assert len(grown.runs) == 2 * 15 * 3  # every seed, every momentum, both batch sizes


def test_growth_stops_once_the_optimum_is_inside(tmp_path, monkeypatch):
    records_from(monkeypatch, peak(0.3, width=0.15))
    grown = bracket.grow(study_from(tmp_path))
    # 0.1 is best on the base grid: 0.333 is added, is best and on the new edge, so 1.11 is added;
    # then 0.333 is inside and the cell is bracketed, within the limit of two steps.
    assert grid_of(grown)[0] == [0.01, 0.03, 0.1, 0.333, 1.11]
    assert grown.bracket_cells[("sgd", 32)]["state"] == "bracketed"
    assert grown.bracket_cells[("sgd", 32)]["steps"] == {"lr high": 2}


def test_a_side_whose_edge_diverges_is_bracketed(tmp_path, monkeypatch):
    def surface(lr, m, b, seed):
        if lr >= 0.1:
            return "diverged", 0.1
        return "completed", 0.5 + 0.05 * math.log10(lr / 0.01)  # best at the highest stable rate
    records_from(monkeypatch, surface)
    grown = bracket.grow(study_from(tmp_path))
    lrs, _ = grid_of(grown)
    assert max(lrs) == 0.1  # nothing above a diverged edge
    assert grown.bracket_cells[("sgd", 32)]["state"] == "bracketed"


def test_a_tie_inside_counts_as_bracketed_on_the_other_axis(tmp_path, monkeypatch):
    # Momentum does nothing (ties along it, interior included); lr peaked inside.
    records_from(monkeypatch, lambda lr, m, b, s: ("completed", 0.6 - 0.2 * (math.log10(lr / 0.03) / 0.2) ** 2))
    grown = bracket.grow(study_from(tmp_path))
    assert grid_of(grown) == ([0.01, 0.03, 0.1], [0.0, 0.5, 0.9])


def test_momentum_grows_towards_one_and_stops_at_zero(tmp_path, monkeypatch):
    records_from(monkeypatch, peak(0.03, m_opt=0.99, width=0.2))
    grown = bracket.grow(study_from(tmp_path))
    assert grid_of(grown)[1] == [0.0, 0.5, 0.9, 0.98, 0.996]
    records_from(monkeypatch, peak(0.03, m_opt=0.0, width=0.2))
    assert grid_of(bracket.grow(study_from(tmp_path)))[1] == [0.0, 0.5, 0.9]  # 0 is the axis's end


def test_unfinished_cells_do_not_grow_and_growth_is_reproducible(tmp_path, monkeypatch):
    surface = peak(10.0, width=0.3)
    records_from(monkeypatch, lambda lr, m, b, s: ("pending", 0.0) if b == 64 else surface(lr, m, b, s))
    a = bracket.grow(study_from(tmp_path))
    b = bracket.grow(study_from(tmp_path))
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert a.bracket_cells[("sgd", 64)]["state"] == "running" and grid_of(a, b=64)[0] == [0.01, 0.03, 0.1]
    names = [r.name for r in a.runs]
    assert len(set(names)) == len(names) and any("lr0.333" in n for n in names)


@pytest.mark.parametrize("values,side,scale,expected", [
    ([0.003, 0.01, 0.03, 0.1], "high", "log", 0.333), ([0.003, 0.01, 0.03, 0.1], "low", "log", 0.0009),
    ([0.0, 0.5, 0.9, 0.95], "high", "one_minus_log", 0.975), ([0.0, 0.5, 0.9], "low", "one_minus_log", None),
    ([0.5, 0.9, 0.95], "low", "one_minus_log", 0.0), ([1.0, 2.0, 3.0], "low", "linear", 0.0),
])
def test_next_grid_value(values, side, scale, expected):
    assert next_value(values, side, scale) == expected


@pytest.mark.parametrize("change,says", [
    ({"bracket": {"max_steps": 0}}, "bracket.max_steps"),
    ({"bracket": {"max_steps": 2, "bogus": 1}}, "bracket.bogus"),
    ({"bracket": {"max_steps": 2, "scales": {"lr": "cubic"}}}, "bracket.scales.lr"),
    ({"optimizers": {"sgd": {"grid": {"lr": [0.01, 0.1], "momentum": [0.0, 0.5, 0.9]}}}}, "at least three"),
    ({"optimizers": {"sgd": {"grid": {"lr": [0.01, 0.03, 0.1], "nesterov": [True, False, True]}}}},
     "nesterov"),
])
def test_bad_bracket_specs_are_one_line_errors(tmp_path, change, says):
    with pytest.raises(UsageError, match=says):
        study_from(tmp_path, **change)
