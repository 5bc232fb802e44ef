"""scripts/compare-book.py: two builds of the book compared output by output, so a refactor that
changes a number a reader sees is caught, and only what is random by nature is ignored."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare-book.py"


@pytest.fixture(scope="module")
def cb():
    spec = importlib.util.spec_from_file_location("compare_book", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(root: Path, cells: list[list[dict]], tables: dict[str, str] | None = None,
          chapter: str = "scaling") -> Path:
    """A minimal `_build`: one executed chapter whose code cells have these outputs, and CSV tables."""
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": outs} for outs in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "jupyter_execute" / "book").mkdir(parents=True)
    (root / "jupyter_execute" / "book" / f"{chapter}.ipynb").write_text(json.dumps(nb))
    (root / "data-static" / "data").mkdir(parents=True)
    for name, text in (tables or {"miniature-runs": "a,b\n1,2\n"}).items():
        (root / "data-static" / "data" / f"{name}.csv").write_text(text)
    return root


def html(text):
    return {"output_type": "display_data", "data": {"text/html": text, "text/plain": "<IPython.core.display.HTML>"}}


def chart(div):
    return html(f'<div id="{div}"></div><script>vegaEmbed("#{div}", {{"data": [1, 2]}})</script>')


def test_builds_that_differ_only_in_chart_ids_agree(cb, tmp_path):
    a = build(tmp_path / "a", [[chart("altair-viz-3f2a")], [html("<td>0.368</td>")]])
    b = build(tmp_path / "b", [[chart("altair-viz-91bc")], [html("<td>0.368</td>")]])
    assert cb.compare_builds(a, b) == []


@pytest.mark.parametrize("after,what", [
    ([[chart("altair-viz-1")], [html("<td>0.369</td>")]], "scaling.ipynb differs"),  # one digit of one table
    ([[chart("altair-viz-1")]], "2 outputs, then 1"),  # a cell's outputs gone
    ([[html('<div id="altair-viz-1"></div><script>vegaEmbed("#altair-viz-1", {"data": [1, 3]})</script>')],
      [html("<td>0.368</td>")]], "scaling.ipynb differs"),  # a chart's data
])
def test_a_changed_number_or_a_missing_output_is_a_difference(cb, tmp_path, after, what):
    a = build(tmp_path / "a", [[chart("altair-viz-1")], [html("<td>0.368</td>")]])
    b = build(tmp_path / "b", after)
    problems = cb.compare_builds(a, b)
    assert problems and what in problems[0]


def table(header: str, value: str) -> dict:
    return html(f"<table><thead><tr><th></th><th>iteration</th><th>{header}</th></tr></thead>"
                f"<tbody><tr><th>0</th><td>19</td><td>{value}</td></tr></tbody></table>")


def test_only_the_wall_clock_of_the_run_the_book_trains_is_masked(cb, tmp_path):
    record = lambda s: {"output_type": "stream", "name": "stdout", "text": f'{{"seconds": {s}, "iteration": 19}}'}
    a = build(tmp_path / "a", [[table("seconds", "0.627"), record(0.6275)]])
    b = build(tmp_path / "b", [[table("seconds", "4.560"), record(4.56e-1)]])
    assert cb.compare_builds(a, b) == []
    # a column of seconds read from records is content, and so is any other number in a timed table
    c = build(tmp_path / "c", [[table("training seconds", "0.627")]])
    d = build(tmp_path / "d", [[table("training seconds", "4.560")]])
    assert cb.compare_builds(c, d)
    e = build(tmp_path / "e", [[html(table("seconds", "0.627")["data"]["text/html"].replace("19", "20"))]])
    assert cb.compare_builds(a, e)


def test_a_changed_table_or_a_chapter_only_in_one_build_is_a_difference(cb, tmp_path):
    a = build(tmp_path / "a", [[html("x")]], {"miniature-runs": "a,b\n1,2\n"})
    b = build(tmp_path / "b", [[html("x")]], {"miniature-runs": "a,b\n1,3\n"}, chapter="robustness")
    problems = "\n".join(cb.compare_builds(a, b))
    assert "table miniature-runs.csv differs" in problems
    assert "scaling.ipynb: only in the first build" in problems and "robustness.ipynb: only in the second" in problems


def test_the_command_exits_1_on_a_difference_and_2_on_bad_input(tmp_path):
    a = build(tmp_path / "a", [[html("<td>1</td>")]])
    b = build(tmp_path / "b", [[html("<td>2</td>")]])
    run = lambda *args: subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)
    same = run("--outputs", str(a), str(a))
    assert same.returncode == 0 and "the books agree: 1 chapters, 1 outputs and 1 CSV tables identical" in same.stdout
    differ = run("--outputs", str(a), str(b))
    assert differ.returncode == 1 and "<td>2</td>" in differ.stdout
    bad = run("--outputs", str(a), str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "is not a built book" in bad.stderr and "Traceback" not in bad.stderr
    not_a_commit = run("no-such-commit")
    assert not_a_commit.returncode == 2 and "is not a commit" in not_a_commit.stderr
