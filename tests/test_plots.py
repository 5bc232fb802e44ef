"""Each chart builds from the smoke study, with its interactivity as bound Vega-Lite parameters."""

import json

import altair as alt
import pandas as pd
import pytest

from kfaclab import plots
from kfaclab.results import load_results


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
    assert p["target"]["bind"]["input"] == "select" and p["target"]["bind"]["options"] == results.targets
    assert p["unit"]["bind"]["input"] == "radio" and "epochs" in p["unit"]["bind"]["options"]
    text = json.dumps(spec)
    assert "((datum.target === target) && (datum.unit === unit))" in text  # both inputs filter the data
    assert '"type": "log"' in text and "strokeDash" in text  # log-log, with the ideal line dotted
    assert data_rows(spec) > 0
    data = plots.scaling_data(results)
    assert set(data["optimizer"]) == {"sgd", "kfac"} and set(data["unit"]) == set(plots.UNITS)


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
    assert params(crit)["target"]["bind"]["input"] == "select"
    assert "b_simple" in json.dumps(crit)


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
