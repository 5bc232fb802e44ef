"""Sphinx extension: the book works offline, with a clean browser console.

- Vega, Vega-Lite and vega-embed are served from the built book itself: the chapters render
  Altair charts with `kfaclab.plots.use_offline_renderer`, as HTML that calls
  `window.vegaEmbed`; this extension writes that function's bundle (from vl-convert, no
  network) into the build's static files and loads it on every page. (MathJax comes from the
  `sphinx-mathjax-offline` extension.)
- Inline scripts registered twice (sphinx-thebe's configuration is, under Jupyter Book 1.x)
  are dropped the second time: a repeated top-level `const` is a page error.
"""

from pathlib import Path

# Vega-embed's inputs, spaced and labelled so that they read as controls of the chart above;
# table cells with room between their numbers, wrapping within the column.
CSS = """
.kfaclab-chart .vega-bindings { margin: 0.4em 0 1em; font-size: 0.9em; }
.kfaclab-chart .vega-bind { margin: 0.25em 0; }
.kfaclab-chart .vega-bind-name { font-weight: 600; margin-right: 0.5em; }
.kfaclab-chart .vega-bind-radio label { margin: 0 1.2em 0 0.3em; }
.kfaclab-chart .vega-bind-radio input { margin: 0; vertical-align: middle; }
.cell_output table th, .cell_output table td { padding: 0.2em 0.7em; }
/* Tables fit their column: cells wrap (long run names break anywhere) rather than push the
   last columns out of sight; the browser test checks this at 1366 px. */
.cell_output table { max-width: 100%; table-layout: auto; font-size: 0.85em; }
.cell_output table th, .cell_output table td { white-space: normal; min-width: 3.5em; overflow-wrap: anywhere; }
/* prose cells (the verdict tables): whole words, in a table exactly as wide as its column (a
   fixed layout, so a long token breaks inside its cell instead of widening the table); as
   specific as the theme's `.bd-content div.output table { table-layout: auto }`, and later */
.cell_output table.kfaclab-verdicts,
.bd-content div.output table.kfaclab-verdicts { table-layout: fixed; width: 100%; }
.cell_output table.kfaclab-verdicts th,
.cell_output table.kfaclab-verdicts td { overflow-wrap: break-word; min-width: 0; }
/* the front page's tables: small type, so that every claim fits about one screen */
.cell_output table.kfaclab-front, .cell_output table.kfaclab-studies { font-size: 0.72em; }
.cell_output table.kfaclab-front details summary { cursor: pointer; }
.cell_output table.kfaclab-front th, .cell_output table.kfaclab-front td { padding: 0.3em 0.25em; }
.cell_output table.kfaclab-front th { font-size: 0.9em; overflow-wrap: normal; }
"""


def _add_static_dir(app, config):
    from kfaclab.plots import write_vega_bundle

    directory = Path(app.outdir).parent / "vega-static"
    write_vega_bundle(directory)
    (directory / "kfaclab-charts.css").write_text(CSS)
    config.html_static_path.append(str(directory))


def _script_key(script):
    if isinstance(script, str):  # older Sphinx: plain file names
        return script
    # The same inline script may come once with filename None and once with "".
    return (script.filename or "", script.priority, tuple(sorted(script.attributes.items())))


def _drop_repeated_scripts(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for script in context.get("script_files", []):
        if _script_key(script) not in seen:
            seen.add(_script_key(script))
            kept.append(script)
    context["script_files"] = kept


def setup(app):
    from kfaclab.plots import VEGA_BUNDLE

    app.connect("config-inited", _add_static_dir)
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    app.add_js_file(VEGA_BUNDLE)
    app.add_css_file("kfaclab-charts.css")
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
