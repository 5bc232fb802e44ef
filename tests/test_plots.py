"""Each chart builds from the smoke study, with its interactivity as bound Vega-Lite parameters."""

import json
import math

import altair as alt
import numpy as np
import pandas as pd
import pytest

from kfaclab import plots
from kfaclab.plots.style import _seed_dash
from kfaclab.results import UNITS, load_results


@pytest.fixture(scope="module")
def results(smoke_study):
    return load_results(smoke_study)


def params(spec: dict) -> dict:
    """Bound parameters of a chart spec, wherever they are declared, by name."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for p in node.get("params", []):
                if "bind" in p:
                    found[p["name"]] = p
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return found


def data_rows(spec: dict) -> int:
    return sum(len(v) for v in spec.get("datasets", {}).values())


def test_scaling_chart_binds_target_and_unit(results):
    spec = plots.scaling_chart(results).to_dict()
    p = params(spec)
    goals = p["goal"]["bind"]["options"]
    assert p["goal"]["bind"]["input"] == "select"
    # The accuracy targets, then the training-loss targets the smoke spec adds (where reached).
    assert goals[:2] == ["test accuracy ≥ 30%", "test accuracy ≥ 50%"]
    assert set(goals[2:]) <= {"training loss ≤ 2.2", "training loss ≤ 1.5"} and goals[2:]
    assert p["unit"]["bind"]["input"] == "radio" and "epochs" in p["unit"]["bind"]["options"]
    text = json.dumps(spec)
    assert "((datum.goal === goal) && (datum.unit === unit))" in text  # both inputs filter the data
    assert '"type": "log"' in text and "strokeDash" in text  # log-log, with the ideal line dotted
    assert data_rows(spec) > 0
    data = plots.scaling_data(results)
    assert set(data["optimizer"]) == {"sgd", "kfac"} and set(data["unit"]) == set(UNITS)


def test_heatmaps_bind_batch_size_select_and_budget(results):
    spec = plots.robustness_heatmaps(results).to_dict()
    p = params(spec)
    assert p["batch"]["bind"]["input"] == "select"
    assert p["batch"]["bind"]["options"] == [32, 64] and p["batch"]["bind"]["labels"] == ["32", "64"]
    assert p["budget_type"]["bind"]["input"] == "radio"
    assert p["budget_type"]["bind"]["options"] == ["epochs", "iterations", "rule"]
    assert len(spec["hconcat"]) == 2  # one heatmap per optimizer
    text = json.dumps(spec)
    assert "((datum.batch_size === batch) && (datum.budget_type === budget_type))" in text


def test_boxplots_region_and_critical_batch_charts_build(results):
    box = plots.robustness_boxplots(results).to_dict()
    assert params(box)["budget_type"]["bind"]["input"] == "radio" and box["mark"]["type"] == "boxplot"
    region = plots.region_chart(results).to_dict()
    assert params(region)["budget_type_region"]["bind"]["input"] == "radio"
    noise = pd.DataFrame({"optimizer": ["sgd"], "b_simple": [48.0]})
    crit = plots.critical_batch_chart(results, noise_scale=noise, n_boot=10).to_dict()
    # Two batch sizes give no fit: no target to choose, the first named in the title.
    assert "target" not in params(crit) and {"name": "target", "value": 0.3} in crit["params"]
    assert "Critical batch size at test accuracy ≥ ' + format(target, '.0%')" in json.dumps(crit, ensure_ascii=False)
    assert "b_simple" in json.dumps(crit)


def test_critical_batch_chart_offers_the_targets_with_a_fit(results, monkeypatch):
    import kfaclab.plots.critical_batch as cb

    points = pd.DataFrame({"optimizer": "sgd", "target": [0.3, 0.3, 0.5], "batch_size": [32, 64, 32],
                           "steps": [100.0, 60.0, 400.0]})
    monkeypatch.setattr(cb, "critical_batch_data", lambda *a, **k: (points, points, pd.DataFrame()))
    crit = plots.critical_batch_chart(results).to_dict()
    bind = params(crit)["target"]["bind"]
    assert bind["input"] == "select" and bind["options"] == [0.3, 0.5] and bind["labels"] == ["30%", "50%"]


def test_charts_are_valid_vega_lite_and_carry_their_data(results):
    for chart in (plots.scaling_chart(results), plots.robustness_heatmaps(results),
                  plots.robustness_boxplots(results), plots.region_chart(results),
                  plots.critical_batch_chart(results, n_boot=10)):
        spec = chart.to_dict(validate=True)  # against Altair's Vega-Lite schema
        assert "url" not in json.dumps(spec.get("data", {}))  # inline data only: no fetch at view time
        assert isinstance(chart, alt.TopLevelMixin)


def test_offline_html_embeds_with_the_pages_own_bundle(results, tmp_path):
    chart = plots.scaling_chart(results)
    html = plots.chart_html(chart.to_dict())
    assert "<script src" not in html and "window.vegaEmbed(el, spec" in html and "renderer: \"svg\"" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    tricky = alt.Chart(pd.DataFrame({"a": ["</script><b>x"]})).mark_text().encode(text="a")
    assert plots.chart_html(tricky.to_dict()).count("</script>") == 1  # data cannot close the script early
    bundle = plots.write_vega_bundle(tmp_path)
    text = bundle.read_text()
    assert bundle.name == plots.VEGA_BUNDLE and "window.vegaEmbed" in text and len(text) > 100_000
    assert "import(" not in text.replace("import()", "")  # one self-contained script
    plots.use_offline_renderer()
    try:
        bundle_out = chart._repr_mimebundle_()
        out = bundle_out[0] if isinstance(bundle_out, tuple) else bundle_out
        assert "window.vegaEmbed" in out["text/html"]
    finally:
        alt.renderers.enable("default")


def test_every_chart_names_its_study_model_data_and_hardware(results):
    label = plots.study_label(results)
    assert label.startswith("study 'smoke': mlp:16 on synthetic images at 8x8; CPU: ")
    charts = [plots.scaling_chart(results), plots.robustness_heatmaps(results), plots.robustness_boxplots(results),
              plots.region_chart(results), plots.critical_batch_chart(results, n_boot=20),
              plots.learning_curves(results, list(results.runs["name"][:2]))]
    for chart in charts:
        assert json.dumps(chart.to_dict()).count(json.dumps(label)[1:-1]) >= 1, chart.to_dict().get("title")


def series_layers(spec: dict) -> list[tuple[str, dict]]:
    """(series name, strokeDash encoding) of every layer that names its series for the legend."""
    out = []
    for layer in spec.get("layer", []):
        dash = layer.get("encoding", {}).get("strokeDash")
        names = [json.loads(t["calculate"]) for t in layer.get("transform", []) if t.get("as") == "series"]
        if dash is not None:
            out.append((names[0] if names else None, dash))
    return out


def assert_legend_tells_series_apart(spec: dict, expected: list[str]):
    layers = series_layers(spec)
    names = [n for n, _ in layers]
    assert sorted(names) == sorted(expected), names  # every line layer names its series, none twice
    for _, dash in layers:
        assert dash["field"] == "series" and dash["scale"]["domain"] == expected and "legend" in dash
        styles = [tuple(r) for r in dash["scale"]["range"]]
        assert len(set(styles)) == len(expected)  # one line style per series: no shared legend symbol


def test_series_that_share_a_colour_differ_in_line_style_in_the_legend(results):
    assert_legend_tells_series_apart(plots.scaling_chart(results).to_dict(),
                                     ["measured (best of the grid)", "perfect scaling",
                                      "range over the best configuration's seeds"])
    noise = pd.DataFrame({"optimizer": ["sgd"], "b_simple": [48.0]})
    crit = plots.critical_batch_chart(results, noise_scale=noise, n_boot=10).to_dict()
    expected = ["fit S(B)", "fitted B_crit", "noise scale B_simple"]
    names = [n for n, _ in series_layers(crit)]
    assert "fit S(B)" in names and "noise scale B_simple" in names  # B_crit only where it lies in view
    for _, dash in series_layers(crit):
        assert dash["scale"]["domain"] == expected and len({tuple(r) for r in dash["scale"]["range"]}) == 3


def test_runs_differing_only_in_seed_get_their_own_line_style():
    dash = _seed_dash([2, 0, 1, 0]).to_dict()
    assert dash["field"] == "seed" and dash["scale"]["domain"] == [0, 1, 2] and "legend" in dash
    assert len({tuple(r) for r in dash["scale"]["range"]}) == 3


def test_loss_targets_race_the_running_training_loss(results):
    """Steps to a training-loss target, recomputed from the evaluation history by hand: the
    first evaluation whose running training loss is at or below the target, least over the grid."""
    from kfaclab.results import steps_to_target

    assert results.loss_targets == [2.2, 1.5]
    table = steps_to_target(results, kind="loss")
    assert set(table["kind"]) == {"loss"} and set(table["target"]) == {2.2, 1.5}
    ev = results.evals
    for _, row in table.iterrows():
        g = ev[(ev["optimizer"] == row["optimizer"]) & (ev["batch_size"] == row["batch_size"])
               & (ev["train_loss"] <= row["target"])]
        first = g.groupby("name")["iteration"].min()
        if len(first):
            assert row["iterations"] == first.min() and row["reached"] == len(first)
        else:
            assert math.isnan(row["iterations"]) and row["reached"] == 0
    with pytest.raises(ValueError, match="accuracy' or 'loss"):
        steps_to_target(results, kind="losses")


def test_phase_chart_stacks_the_phases_per_variant_and_selects_the_case():
    rows = []
    for version, scale in (("before", 2.0), ("after", 1.0)):
        for model, batch in (("resnet20", 128), ("mlp:512,512", 128)):
            for phase, ms in (("forward_backward", 300.0), ("factor_statistics", 40.0 * scale), ("other", 0.5)):
                rows.append({"version": version, "model": model, "batch_size": batch, "optimizer": "kfac",
                             "phase": phase, "ms": ms, "step_ms": 340.5 * scale, "ratio_to_sgd": 1.1 * scale,
                             "sgd_ms": 310.0, "hardware": "cpu"})
    chart = plots.phase_chart(pd.DataFrame(rows))
    spec = chart.to_dict(validate=True)
    text = json.dumps(spec)
    assert "url" not in json.dumps(spec.get("datasets", {})) and "factor_statistics" in text
    (param,) = spec["params"]
    assert param["bind"]["options"] == ["resnet20, batch 128", "mlp:512,512, batch 128"]
    bars = spec["layer"][0]
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["x"]["aggregate"] == "sum"
    assert bars["encoding"]["y"]["sort"] == ["kfac (before)", "kfac (after)"]


def test_phase_chart_of_benches_without_kfac_says_so():
    from kfaclab.bench import phase_table

    with pytest.raises(ValueError, match="no K-FAC phases"):
        plots.phase_chart(phase_table({}))


def test_nqm_chart_selects_every_precomputed_curve_and_tells_its_lines_apart():
    import numpy as np

    from kfaclab import nqm_tables

    curves, fits = nqm_tables.curve_table(decays=(0.5, 1.0), powers=(0.0, 1.0), batch_sizes=2.0 ** np.arange(0, 12))
    chart = plots.nqm_chart(curves, fits)
    spec = chart.to_dict(validate=True)
    bound = params(spec)
    assert set(bound) == {"nqm_decay", "nqm_momentum"}  # the powers are drawn together, a colour each
    assert bound["nqm_decay"]["bind"]["options"] == [0.5, 1.0]
    assert bound["nqm_momentum"]["bind"]["options"] == ["0", "0.5", "0.9", "0.99", "tuned"]
    # every combination is in the data, and every layer filters on both selects
    assert len(curves.groupby(["decay", "power", "momentum"])) == 2 * 2 * 5 == len(fits)
    for layer in spec["layer"]:
        f = json.dumps([t for t in layer.get("transform", []) if "filter" in t])
        assert all(name in f for name in ("nqm_decay", "nqm_momentum")), f
        colour = layer["encoding"]["color"]
        assert colour["field"] == "preconditioner"
        assert colour["scale"]["domain"] == ["p = 0 (SGD)", "p = 1 (exact curvature, K-FAC-like)"]
        assert len(set(colour["scale"]["range"])) == 2
    dashes = [layer["encoding"]["strokeDash"] for layer in spec["layer"] if "strokeDash" in layer["encoding"]]
    assert dashes and all(len({tuple(r) for r in d["scale"]["range"]}) == 3 for d in dashes)
    assert "not a study" in json.dumps(spec["title"])


def test_heatmaps_of_three_optimizers_wrap_two_per_row():
    from pathlib import Path

    miniature = load_results(Path(__file__).resolve().parents[1] / "runs" / "miniature")
    spec = plots.robustness_heatmaps(miniature).to_dict()
    assert spec["columns"] == 2 and len(spec["concat"]) == 3
    titles = [c["title"] for c in spec["concat"]]
    assert titles == [f"{o}: test accuracy over its grid" for o in miniature.optimizers()]


def test_choice_param_binds_an_input_only_where_there_is_a_choice():
    from kfaclab.plots.style import choice_param

    one = choice_param("target", [0.4, 0.4], "target ").param.to_dict()
    assert one == {"name": "target", "value": 0.4}  # a fixed value: a select of one would change nothing
    two = choice_param("budget", ["epochs", "iterations", "epochs"], "budget ", value="iterations",
                       labels=["E", "I", "E again"], radio=True).param.to_dict()
    assert two["value"] == "iterations"
    assert two["bind"] == {"input": "radio", "options": ["epochs", "iterations"], "labels": ["E", "I"],
                           "name": "budget "}
    assert choice_param("x", [1, 2], "x ", value=7).param.to_dict()["value"] == 1  # a value the data lacks: the first
    with pytest.raises(ValueError, match="2 labels for 3 options"):
        choice_param("x", [1, 2, 3], "x ", labels=["a", "b"])
    with pytest.raises(ValueError, match="no values"):
        choice_param("x", [], "x ")


def _charts(items):
    return [i for i in items if isinstance(i, alt.TopLevelMixin)]


def test_a_study_with_one_finished_cell_offers_no_input_that_changes_nothing(results):
    """While one (optimizer, batch size) cell has run, every input on its charts has at least two
    values, each with data: the book's browser test clicks every value and fails on an input
    that changes nothing (a select of the one target with a fit, of batch sizes not run)."""
    import dataclasses

    from kfaclab import report

    runs = results.runs
    keep = runs[(runs["optimizer"] == "sgd") & (runs["batch_size"] == 32)]
    one = dataclasses.replace(results, runs=keep.reset_index(drop=True),
                              evals=results.evals[results.evals["name"].isin(set(keep["name"]))])
    items = report.scaling_section(one) + report.robustness_section(one) + report.critical_batch_section(one)
    charts = _charts(items)
    assert len(charts) >= 4
    for chart in charts:
        for name, p in params(chart.to_dict()).items():
            assert len(p["bind"]["options"]) >= 2, (name, p)
    heat = params(plots.robustness_heatmaps(one).to_dict())
    assert "batch" not in heat  # one batch size with accuracies: a fixed value, named in the title
    # No fit at one batch size: a line says so where the chart would be.
    crit = [i for i in report.critical_batch_section(one) if not isinstance(i, alt.TopLevelMixin)]
    assert any("No critical-batch fit" in getattr(i, "data", "") for i in crit)
    full = params(plots.critical_batch_chart(results, n_boot=10).to_dict())
    points, _, _ = plots.critical_batch_data(results, n_boot=10)
    options = full["target"]["bind"]["options"] if "target" in full else []
    assert set(options) <= set(points["target"]) if len(points) else not options


def test_scaling_chart_shows_the_seed_range_and_fits_its_axis_to_the_data(results):
    data = plots.scaling_data(results)
    its = data[(data["unit"] == "iterations") & data["steps"].notna()]
    assert len(its) and (its["seed_low"] <= its["steps"]).all() and (its["steps"] <= its["seed_high"]).all()
    # carried to epochs in proportion (same batch size), and not to seconds
    ep = data[(data["unit"] == "epochs") & data["steps"].notna()].set_index(["optimizer", "batch_size", "goal"])
    it = its.set_index(["optimizer", "batch_size", "goal"])
    common = ep.index.intersection(it.index)
    np.testing.assert_allclose(ep.loc[common, "seed_high"] / it.loc[common, "seed_high"],
                               ep.loc[common, "steps"] / it.loc[common, "steps"])
    assert data.loc[data["unit"] == "seconds", "seed_low"].isna().all()
    spec = plots.scaling_chart(results).to_dict()
    assert spec["layer"][0]["encoding"]["y"]["scale"]["nice"] is False
    rule = spec["layer"][2]
    assert rule["mark"]["type"] == "rule" and rule["encoding"]["y2"]["field"] == "seed_high"


def test_the_noise_scale_rule_follows_the_selected_target_when_measured_per_target(results):
    """B_simple measured where the runs reach each target is drawn for the target selected, not
    for all targets at once; without a target column one rule per optimizer stays."""
    per_target = pd.DataFrame({"optimizer": ["sgd"] * 2, "target": results.targets[:2], "b_simple": [40.0, 90.0]})
    spec = plots.critical_batch_chart(results, noise_scale=per_target, n_boot=10).to_dict()
    rules = [layer for layer in spec["layer"] if any(t.get("calculate") == json.dumps("noise scale B_simple")
                                                     for t in layer.get("transform", []))]
    assert len(rules) == 1
    filters = [t["filter"] for t in rules[0]["transform"] if "filter" in t]
    assert filters and "target" in json.dumps(filters)
    plain = pd.DataFrame({"optimizer": ["sgd"], "b_simple": [48.0]})
    spec = plots.critical_batch_chart(results, noise_scale=plain, n_boot=10).to_dict()
    rules = [layer for layer in spec["layer"] if any(t.get("calculate") == json.dumps("noise scale B_simple")
                                                     for t in layer.get("transform", []))]
    assert rules and not [t for t in rules[0]["transform"] if "filter" in t]
