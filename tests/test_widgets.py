"""The ipywidgets explorer: its controls drive its tables (no browser needed for the logic)."""

import shutil

import pytest

from kfaclab.errors import UsageError
from kfaclab.widgets import Explorer, studies


@pytest.fixture(scope="module")
def root(smoke_study, tmp_path_factory):
    r = tmp_path_factory.mktemp("runs")
    shutil.copytree(smoke_study, r / "smoke")
    (r / "unrun").mkdir()
    shutil.copy(smoke_study / "study.yaml", r / "unrun" / "study.yaml")  # a spec without results
    return r


def test_lists_only_studies_with_results(root):
    assert studies(root) == ["smoke"]


def test_controls_drive_the_tables(root):
    ex = Explorer(root)
    assert list(ex.optimizer.options) == ["sgd", "kfac"] and ex.batch_size.options == (32, 64)
    steps = ex.steps_table()
    assert set(steps["optimizer"]) == {ex.optimizer.value} and list(steps["batch_size"]) == [32, 64]
    ex.optimizer.value = "kfac"
    assert set(ex.steps_table()["optimizer"]) == {"kfac"}
    grid_epochs = ex.grid_table()
    ex.budget.value = "iterations"
    ex.batch_size.value = 64
    grid_iters = ex.grid_table()
    assert grid_epochs.shape == grid_iters.shape == (1, 2)  # K-FAC: damping (1) x lr (2)
    assert not grid_epochs.equals(grid_iters)
    ex.target.value = ex.target.options[-1][1]
    kind, target = ex.target.value
    assert kind == "loss"  # the smoke study's training-loss targets follow its accuracy targets
    table = ex.steps_table()
    assert (table["target"] == target).all() and (table["kind"] == "loss").all()
    ex.widget()


def test_every_control_changes_the_chart(root):
    ex = Explorer(root)
    seen = [ex.chart().to_json()]

    def changed(widget, value):
        widget.value = value
        spec = ex.chart().to_json()
        assert spec not in seen, f"the chart ignored {widget.description} = {value}"
        seen.append(spec)

    changed(ex.optimizer, "kfac")
    changed(ex.target, ex.target.options[1][1])  # another accuracy target
    changed(ex.target, ex.target.options[-1][1])  # a training-loss target
    changed(ex.budget, "iterations")
    changed(ex.batch_size, 64)
    assert "firebrick" in seen[-1] and "batch 64" in seen[-1]


def test_opens_on_the_books_study(root, tmp_path):
    import kfaclab.widgets as w

    assert Explorer(root).study.value == "smoke"  # no "cpu" here: the first study
    shutil.copytree(root / "smoke", tmp_path / w.MAIN_STUDY)
    shutil.copytree(root / "smoke", tmp_path / "aaa")
    assert Explorer(tmp_path).study.value == w.MAIN_STUDY
    with pytest.raises(UsageError, match="no study 'nope'"):
        Explorer(tmp_path, study="nope")


def test_no_studies_is_a_one_line_error(tmp_path):
    with pytest.raises(UsageError, match="no study with results"):
        Explorer(tmp_path)
