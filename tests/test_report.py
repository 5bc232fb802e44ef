"""kfaclab.report: a results chapter's sections for any study, and a partly run study shown as
partial. The studies are slices of the committed `miniature` (seed 0, SGD and K-FAC) under
specs of their own, so each partial study has an independent twin: the same records under a
spec that names only the batch sizes that finished, whose answers the partial study's must equal.
"""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kfaclab import report
from kfaclab.results import (
    critical_batch_size,
    default_budget,
    load_results,
    steps_to_target,
)
from kfaclab.results.device_bench import load_benches, step_table, throughput_table

ROOT = Path(__file__).resolve().parents[1]
MINIATURE = ROOT / "runs" / "miniature"
SIZES = [32, 64, 128, 256]


def slice_study(directory: Path, batch_sizes, keep) -> Path:
    """A study of the miniature's SGD and K-FAC runs at `batch_sizes`, seed 0, holding the
    records whose file names `keep` accepts (run ids do not depend on the spec's lists)."""
    spec = yaml.safe_load((MINIATURE / "study.yaml").read_text())
    spec.update(name=directory.name, batch_sizes=list(batch_sizes), seeds=[0])
    spec["optimizers"] = {k: v for k, v in spec["optimizers"].items() if k in ("sgd", "kfac")}
    spec.pop("loss_targets", None)
    directory.mkdir(parents=True)
    (directory / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    pattern = re.compile(r"^(sgd|kfac)-b(\d+)-.*-s0-[0-9a-f]+\.json$")
    for p in MINIATURE.glob("*.json"):
        m = pattern.match(p.name)
        if m and int(m.group(2)) in batch_sizes and keep(p.name):
            shutil.copy(p, directory / p.name)
    return directory


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    if not MINIATURE.exists():
        pytest.skip("runs/miniature is not there")
    d = tmp_path_factory.mktemp("report")
    # 32-128 complete; at 256 SGD has half its grid (lr 0.003 and 0.01) and K-FAC none.
    half = re.compile(r"^sgd-b256-lr0\.0(03|1)-")
    partial = slice_study(d / "partial", SIZES, lambda n: "-b256-" not in n or half.match(n))
    twin = slice_study(d / "twin", SIZES[:3], lambda n: True)
    complete = slice_study(d / "complete", SIZES, lambda n: True)
    empty = slice_study(d / "empty", SIZES, lambda n: False)
    centres = slice_study(d / "centres", SIZES, lambda n: "-lr0.03-momentum0.9-" in n or "-lr0.03-damping0.3-" in n)
    return {k: load_results(v) for k, v in dict(partial=partial, twin=twin, complete=complete, empty=empty,
                                                 centres=centres).items()}


def kinds(items):
    return [type(i).__name__ for i in items]


def text(items):
    return "\n".join(getattr(i, "data", "") for i in items if isinstance(getattr(i, "data", None), str))


def test_a_partial_grid_is_not_yet_and_the_finished_batch_sizes_equal_their_independent_twin(studies):
    partial, twin = studies["partial"], studies["twin"]
    assert report.unfinished(partial) == 16 + 8  # K-FAC's 16 and SGD's other 8 at batch 256
    table = report.steps_table(partial).set_index(["optimizer", "batch_size", "target"])
    assert table.xs(256, level="batch_size")["partial"].all()
    assert not table.drop(index=256, level="batch_size")["partial"].any()
    # Half of SGD's grid at 256 gives a minimum "so far", never a plain number; K-FAC's, none.
    so_far = steps_to_target(partial).set_index(["optimizer", "batch_size", "target"])["iterations"]
    shown = report.steps_view(partial).data
    for (target, opt), cell in shown.loc[256].items():
        value = so_far[(opt, 256, float(target.rstrip("%")) / 100)]
        expected = "not yet (0 of 16 run)" if opt == "kfac" else \
            f"{value:,.0f} so far (8 of 16 run)" if np.isfinite(value) else "not yet (8 of 16 run)"
        assert cell == expected
    assert so_far[("sgd", 256)].notna().any()  # the case is there
    assert not shown.drop(index=256).map(lambda c: "run)" in c).any().any()
    expected = steps_to_target(twin).set_index(["optimizer", "batch_size", "target"])
    got = table.drop(index=256, level="batch_size")
    np.testing.assert_array_equal(got["iterations"].to_numpy(), expected.loc[got.index, "iterations"].to_numpy())
    # The fits use the finished batch sizes only: the twin's fit, not one that includes 256.
    fits = report.fit_table(partial, n_boot=50)
    for opt in ("sgd", "kfac"):
        for t in partial.targets:
            try:
                f = critical_batch_size(twin, opt, t, n_boot=50)
            except ValueError:
                assert math.isnan(fits.loc[(opt, t)].get("B_crit", math.nan))
                continue
            assert fits.loc[(opt, t), "B_crit"] == pytest.approx(f["b_crit"], rel=1e-12)


def test_a_partial_study_is_read_at_the_budgets_it_will_have_when_complete(studies):
    partial, complete, twin = studies["partial"], studies["complete"], studies["twin"]
    # The stopping rule (B0 32, E0 2) gives batch 256 (log2(256/32) + 1) x 2 = 8 epochs of
    # 50,000 // 256 = 195 steps: the iteration budget of the complete study, before 256 has run.
    assert default_budget(partial, "iterations") == default_budget(complete, "iterations") == 8 * 195
    assert default_budget(partial, "epochs") == default_budget(complete, "epochs") == 2
    assert default_budget(twin, "iterations") == 6 * (50000 // 128)  # its own largest batch
    pending = partial.runs[partial.runs["status"] == "pending"]
    assert (pending["planned_iterations"] == 8 * 195).all()
    view = report.region_table(partial)
    assert 256 not in view.index and list(view.index) == SIZES[:3]


def test_verdicts_wait_and_sections_say_partial(studies):
    partial = studies["partial"]
    items = report.scaling_section(partial)
    words = text(items)
    assert "**Partial results**: 104 of 128 runs have a result" in words
    verdict_html = items[-1].data
    assert "No verdict yet" in verdict_html and "kfaclab-verdicts" not in verdict_html
    for section in (report.robustness_section, report.critical_batch_section):
        out = section(partial)
        assert "No verdict yet" in out[-1].data and "Partial results" in text(out)
    done = report.scaling_section(studies["complete"])
    assert "Partial results" not in text(done) and "kfaclab-verdicts" in done[-1].data


def test_a_study_with_no_result_shows_what_will_run_and_nothing_derived(studies):
    empty = studies["empty"]
    for section in (report.scaling_section, report.robustness_section, report.critical_batch_section):
        items = section(empty)
        assert kinds(items) == ["Markdown", "Markdown", "HTML"]
        assert "0 completed, 0 diverged, 0 failed and 128 have not run" in items[0].data
        assert "Ran on: nothing yet" in items[0].data and "None of the `empty` study's 128 runs" in items[1].data
    # Runs that failed are results too: they are counted and listed, not called "none".
    import dataclasses

    runs = empty.runs.copy()
    runs.loc[runs.index[:2], "status"] = "failed"
    items = report.scaling_section(dataclasses.replace(empty, runs=runs))
    assert "(2 failed: listed below" in items[1].data and len(items[-1].data) == 2


def test_while_no_grid_has_finished_the_runs_are_listed_as_they_are(studies):
    centres = studies["centres"]
    assert not report.has_results(report.complete_cells(centres))
    items = report.scaling_section(centres)
    assert not any("Chart" in k for k in kinds(items))
    tables = [i.data for i in items if type(i).__name__ == "Styler"]
    steps, listed = tables
    assert steps.map(lambda c: c.endswith("of 16 run)")).all().all()  # every grid: its one run so far
    assert len(listed) == 8 and set(listed["status"]) <= {"completed", "diverged"}
    assert "No verdict yet" in items[-1].data


def test_what_ran_is_read_from_the_spec_and_the_records(studies, tmp_path):
    text_ = report.what_ran(studies["complete"]).data
    assert "**128 runs**" in text_ and "downsampled to 16x16, no augmentation" in text_
    assert "SGD over learning rate x momentum (4x4); K-FAC over learning rate x damping (4x4)" in text_
    assert "all 50,000 training images and all 10,000 test images" in text_ and "CPU" in text_
    # A record from a GPU says so.
    d = shutil.copytree(studies["twin"].directory, tmp_path / "ongpu")
    spec = yaml.safe_load((d / "study.yaml").read_text())
    (d / "study.yaml").write_text(yaml.safe_dump({**spec, "name": "ongpu"}))
    rec_path = next(d.glob("sgd-*.json"))
    rec = json.loads(rec_path.read_text())
    rec["environment"]["gpu"] = "NVIDIA H100 80GB HBM3"
    rec_path.write_text(json.dumps(rec))
    assert "Ran on: NVIDIA H100 80GB HBM3 GPU;" in report.what_ran(load_results(d)).data


def test_the_hardware_line_says_how_the_records_computed():
    """Precision and layout come from the records (what ran), not the spec (which may say auto)."""
    from kfaclab.report.study import _hardware

    def frame(precisions, layouts, gpu=None):
        return pd.DataFrame({"precision": precisions, "channels_last": layouts, "gpu": gpu, "cpu": "AMD EPYC",
                             "cpu_count": 2, "threads": 1})
    assert _hardware(frame(["bf16"] * 3, [True] * 3)) == \
        "AMD EPYC CPU (2 cores, 1 thread per run, bf16 autocast, channels-last)"
    assert _hardware(frame(["fp32"] * 3, [False] * 3)) == "AMD EPYC CPU (2 cores, 1 thread per run)"
    assert _hardware(frame(["bf16", "fp32", "bf16"], [True, False, False], gpu="H200")) == \
        "H200 GPU (bf16 autocast in 2 of 3 runs, channels-last in 1 of 3 runs)"


# ------------------------------------------------------------------------------ device benches

def bench(study, rows, throughput=None, gpu="NVIDIA H200"):
    return {"kind": "kfaclab.harvest-bench", "study": study, "created": "2026-11-27T00:00:00+00:00",
            "amortized_steps": 100, "model": "resnet20", "environment": {"gpu": gpu, "cpu": "x"},
            "step_times": [{"batch_size": b, "results": [{"optimizer": o, "amortized_step_s": t} for o, t in r.items()]}
                           for b, r in rows.items()], "throughput": throughput}


def write(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def test_device_bench_tables_and_their_ratios(tmp_path):
    tp = {"alone": [{"runs": 1, "epochs_per_s": 0.5, "examples_per_s": 25000.0,
                     "per_run": [{"optimizer": "sgd", "batch_size": 128, "steps_per_s": 195.3, "slowdown": 1.0}]}],
          "rows": [{"runs": 8, "epochs_per_s": 2.4, "examples_per_s": 120000.0,
                    "per_run": [{"optimizer": o, "batch_size": 128, "steps_per_s": 117.0, "slowdown": s}
                                for o, s in (("sgd", 1.5), ("kfac", 2.5))]}]}
    write(tmp_path / "gpu" / "bench" / "bench-gpu.json",
          bench("gpu", {128: {"sgd": 0.004, "kfac": 0.006}, 512: {"sgd": 0.010, "kfac": 0.011}}, tp))
    write(tmp_path / "gpu" / "bench" / "notes.json", {"kind": "something else"})  # skipped by kind
    benches = load_benches(tmp_path)
    steps = step_table(benches).set_index(["batch size", "optimizer"])
    assert steps.loc[(128, "kfac"), "x SGD"] == pytest.approx(1.5) and steps.loc[(512, "kfac"), "x SGD"] == \
        pytest.approx(1.1)
    assert steps.loc[(128, "sgd"), "ms per step"] == pytest.approx(4.0) and set(steps["hardware"]) == {"NVIDIA H200"}
    tpt = throughput_table(benches).set_index("runs sharing")
    assert tpt.loc[8, "epochs per second"] == 2.4 and tpt.loc[8, "slowdown per run"] == pytest.approx(2.0)
    import pandas as pd

    cpu = pd.DataFrame([{"model": "resnet20", "batch size": 128, "optimizer": "kfac", "x SGD": 1.11}])
    view = report.device_bench_view(benches, cpu).data
    assert view["x SGD on the CPU"].iloc[0] == 1.11 and math.isnan(view["x SGD on the CPU"].iloc[1])  # 512: none
    assert view["SGD ms per step"].tolist() == pytest.approx([4.0, 10.0])
    assert type(report.throughput_view(benches)).__name__ == "Styler"
    # Nothing merged yet: sentences, the assumed throughput named as an assumption.
    empty = tmp_path / "none"
    empty.mkdir()
    assert "No GPU bench" in report.device_bench_view(load_benches(empty), cpu).data
    said = report.throughput_view([], {"epochs_per_second": {"sgd": 2.0, "kfac": 1.4}, "runs_sharing": 8}).data
    assert "assumed 2 epochs per second for SGD, 1.4 epochs per second for K-FAC, with 8 runs" in said


@pytest.mark.parametrize("content, problem", [
    ("{not json", "unreadable JSON"),
    (json.dumps({"kind": "kfaclab.harvest-bench", "step_times": [{"batch_size": 128}]}), "step_times must list"),
    (json.dumps({"kind": "kfaclab.harvest-bench", "step_times": [
        {"batch_size": 128, "results": [{"optimizer": "sgd", "amortized_step_s": -1}]}]}), "positive amortized_step_s"),
    (json.dumps({"kind": "kfaclab.harvest-bench", "step_times": [], "throughput": {"rows": []}}),
     "throughput must hold"),
])
def test_a_malformed_bench_is_an_error_naming_the_file(tmp_path, content, problem):
    write(tmp_path / "gpu" / "bench" / "bench-gpu.json", content)
    with pytest.raises(ValueError, match=problem) as e:
        load_benches(tmp_path)
    assert "bench-gpu.json" in str(e.value)


def test_the_results_command_marks_a_partial_grid_and_fits_the_finished_batch_sizes(studies, capsys):
    from kfaclab.cli import main

    assert main(["results", str(studies["partial"].directory)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if re.match(r"^(32|64|128|256) ", line)}
    assert all(c.endswith("*") for c in rows["256"]) and not any(c.endswith("*") for c in rows["128"])
    assert "*: best so far, the grid has runs still to come" in out
    assert "(batch sizes whose grid has finished)" in out
    twin = critical_batch_size(studies["twin"], "sgd", 0.45, n_boot=200)
    assert f"sgd 0.45: B_crit {twin['b_crit']:,.0f}" in out


def test_the_status_table_never_hides_a_status_that_occurs(studies):
    import dataclasses

    partial = studies["partial"]
    assert "interrupted" not in set(report.status_table(partial).columns.get_level_values(1))
    runs = partial.runs.copy()
    runs.loc[runs.index[runs["status"] == "pending"][0], "status"] = "interrupted"
    shown = report.status_table(dataclasses.replace(partial, runs=runs))
    assert int(shown.xs("interrupted", axis=1, level=1).to_numpy().sum()) == 1
    assert int(shown.to_numpy().sum()) == len(runs)  # every run counted once


def test_what_ran_says_evaluations_share_of_the_runs_time(studies):
    study = studies["complete"]
    done = study.runs[study.runs["status"].isin(["completed", "diverged", "failed"])]
    share = done["eval_seconds"].sum() / (done["seconds"].sum() + done["eval_seconds"].sum())
    assert 0 < share < 1
    assert f"and evaluation took {share:.0%} of the runs' time" in report.what_ran(study).data
