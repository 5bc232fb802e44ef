"""Charts that render offline: the Vega bundle written into the book, and a renderer that calls it (no CDN)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import altair as alt

VEGA_BUNDLE = "vega-bundle.js"


def vega_lite_version() -> str:
    """The Vega-Lite minor version Altair's schema targets, as vl-convert names it (v5.20)."""
    major, minor = alt.SCHEMA_VERSION.lstrip("v").split(".")[:2]
    return f"v{major}.{minor}"


def write_vega_bundle(directory: str | Path) -> Path:
    """Write Vega + Vega-Lite + vega-embed as one script defining window.vegaEmbed."""
    import vl_convert

    path = Path(directory) / VEGA_BUNDLE
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"/* Vega {vl_convert.get_vega_version()}, Vega-Lite {vega_lite_version()}, vega-embed "
              f"{vl_convert.get_vega_embed_version()}: bundled by vl-convert for offline pages */\n")
    # In a function scope: the bundle's top-level `const` names would otherwise be globals of
    # the page, clashing with any other classic script that declares the same short names.
    path.write_text(header + "(function () {\n" + vl_convert.javascript_bundle(vl_version=vega_lite_version())
                    + "\n})();\n")
    return path


def chart_html(spec: dict, div_id: str | None = None) -> str:
    """A chart as HTML that embeds itself with the page's own vegaEmbed (no external script)."""
    div_id = div_id or f"kfaclab-chart-{uuid.uuid4().hex[:12]}"
    payload = json.dumps(spec, separators=(",", ":")).replace("</", "<\\/")  # no early </script>
    return f"""<div id="{div_id}" class="kfaclab-chart"></div>
<script type="text/javascript">
(function () {{
  var spec = {payload};
  function embed() {{
    var el = document.getElementById("{div_id}");
    if (!window.vegaEmbed) {{
      el.textContent = "This chart needs {VEGA_BUNDLE}, which this page did not load.";
      console.error("kfaclab: vegaEmbed is missing; serve {VEGA_BUNDLE} with the page");
      return;
    }}
    window.vegaEmbed(el, spec, {{actions: false, mode: "vega-lite", renderer: "svg"}}).catch(function (e) {{ console.error(e); }});
  }}
  if (document.readyState === "complete") {{ embed(); }} else {{ window.addEventListener("load", embed); }}
}})();
</script>"""  # noqa: E501 (the script as it was, byte for byte)


def _offline_renderer(spec: dict, **kwargs) -> dict:
    return {"text/html": chart_html(spec), "text/plain": "<Altair chart: needs the page's vega bundle>"}


def use_offline_renderer() -> None:
    """Render Altair charts as `chart_html` (for pages that serve VEGA_BUNDLE themselves)."""
    alt.renderers.register("kfaclab-offline", _offline_renderer)
    alt.renderers.enable("kfaclab-offline")
