"""The book in a real browser, offline: build it from the committed runs, serve it on localhost,
open each chapter with charts in headless Chromium with every non-localhost request blocked,
and check that every chart renders, that every input changes its chart, and that the console
stays clean.

Marked `browser` (skip locally with `-m "not browser"`). Without Chromium the test skips,
unless KFACLAB_REQUIRE_BROWSER=1 (CI sets it, after installing Chromium) makes that a failure.
Set KFACLAB_SCREENSHOTS=DIR to keep a full-page screenshot of each chapter.
"""

import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS_WITH_CHARTS = ["book/trcg", "book/distributed", "book/scaling", "book/robustness", "book/critical-batch",
                        "book/nqm", "book/adaptive"]
CHROMIUM = os.environ.get("KFACLAB_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.browser


def _need(condition: bool, reason: str):
    if condition:
        return
    if os.environ.get("KFACLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (KFACLAB_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    _need(importlib.util.find_spec("playwright") is not None,
          "playwright is not installed (pip install -r requirements-dev.txt)")
    out = tmp_path_factory.mktemp("book")
    build = subprocess.run([str(Path(sys.executable).with_name("jupyter-book")), "build", str(ROOT), "-W", "-n",
                            "--keep-going", "--path-output", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    html = out / "_build" / "html"
    assert (html / "_static" / "vega-bundle.js").exists()
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking",
                                                                "--disable-component-update"])
        yield b
        b.close()


def _open(browser, url):
    """A page that can reach localhost only, with its console errors and blocked requests."""
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    errors, blocked = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="load")
    return page, errors, blocked


def _chart_markup(page, i):
    return page.locator(".kfaclab-chart").nth(i).locator("svg.marks").inner_html()


def _controls(chart):
    """(name, [ways to set another value]) for each input vega-embed bound to the chart."""
    out = []
    selects = chart.locator(".vega-bindings select")
    for k in range(selects.count()):
        sel = selects.nth(k)
        values = [o.get_attribute("value") for o in sel.locator("option").all()]
        current = sel.input_value()
        out.append((f"select {k}", [lambda s=sel, v=v: s.select_option(v) for v in values if v != current]))
    ranges = chart.locator(".vega-bindings input[type=range]")
    for k in range(ranges.count()):
        rng = ranges.nth(k)
        out.append((f"slider {k}", [lambda r=rng, end=end: r.evaluate(
            f"e => {{ e.value = e.{end}; e.dispatchEvent(new Event('input', {{bubbles: true}})); }}")
            for end in ("max", "min")]))
    radios = chart.locator(".vega-bindings input[type=radio]")
    groups: dict = {}
    for k in range(radios.count()):
        groups.setdefault(radios.nth(k).get_attribute("name"), []).append(radios.nth(k))
    for name, buttons in groups.items():
        out.append((f"radio {name}", [lambda b=b: b.check() for b in buttons if not b.is_checked()]))
    return out


ALL_PAGES = ["book/intro", "book/protocol", "book/verdicts", "book/kfac", "book/trcg", "book/distributed",
             "book/scaling", "book/robustness", "book/critical-batch", "book/nqm", "book/adaptive", "book/reproduce",
             "book/run-record"]

# Tables, figures and code outputs whose right edge passes the article column's: a reader at
# 1366 px would have to scroll inside them to see their last columns, or never see them.
OVERFLOW_JS = """() => {
  const column = document.querySelector('article.bd-article') || document.querySelector('main');
  const right = column.getBoundingClientRect().right + 2;
  const out = [];
  for (const el of column.querySelectorAll('table, .kfaclab-chart svg, img')) {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > right) {
      const where = el.closest('section');
      out.push(`${el.tagName.toLowerCase()} in "${where ? where.querySelector('h1,h2,h3')?.textContent.trim() : '?'}" `
               + `ends at ${Math.round(r.right)} px, the column at ${Math.round(right)} px`);
    }
  }
  return out;
}"""


def _wait_rendered(page, n):
    page.wait_for_function(
        f"document.querySelectorAll('.kfaclab-chart svg.marks, .kfaclab-chart canvas').length >= {n}", timeout=30000)


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_CHARTS)
def test_chapter_charts_render_and_respond_offline(site, browser, chapter):
    page, errors, blocked = _open(browser, f"{site}/{chapter}.html")
    charts = page.locator(".kfaclab-chart").count()
    assert charts >= 1, f"{chapter}: no charts"
    _wait_rendered(page, charts)
    for i in range(charts):
        chart = page.locator(".kfaclab-chart").nth(i)
        assert chart.locator("svg.marks").count() == 1, f"{chapter}: chart {i} did not render"
        assert chart.locator("svg.marks path, svg.marks rect, svg.marks line").count() > 0
        for name, choices in _controls(chart):
            before = _chart_markup(page, i)
            changed = False
            for choose in choices:  # some other value of every input must change its chart
                choose()
                page.wait_for_timeout(300)
                if _chart_markup(page, i) != before:
                    changed = True
                    break
            assert changed, f"{chapter}: no value of input {name!r} changed chart {i}"
    shots = os.environ.get("KFACLAB_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(shots) / f"{Path(chapter).name}.png"), full_page=True)
    assert not errors, f"{chapter}: console errors: {errors[:5]}"
    assert not blocked, f"{chapter}: the page tried to reach the network: {blocked[:5]}"
    page.close()


# Legend swatches a reader cannot see: no visible fill and no visible stroke, or no size.
INVISIBLE_SWATCHES_JS = """() => {
  const seen = (paint, opacity) => paint && paint !== 'none' && paint !== 'transparent'
      && !/rgba\\([^)]*,\\s*0\\)$/.test(paint) && parseFloat(opacity) > 0;
  const out = [];
  document.querySelectorAll('.kfaclab-chart').forEach((chart, i) => {
    chart.querySelectorAll('.role-legend-symbol path').forEach(el => {
      const s = getComputedStyle(el), box = el.getBBox();
      const filled = seen(s.fill, s.fillOpacity);
      const stroked = seen(s.stroke, s.strokeOpacity) && parseFloat(s.strokeWidth) > 0;
      if (!(filled || stroked) || parseFloat(s.opacity) === 0 || (box.width === 0 && box.height === 0)) {
        const label = el.closest('.role-legend-entry, .role-scope')?.textContent || '?';
        out.push(`chart ${i}: the swatch of "${label.trim().slice(0, 40)}" is invisible`);
      }
    });
  });
  return out;
}"""


@pytest.mark.parametrize("chapter", CHAPTERS_WITH_CHARTS)
def test_every_legend_swatch_is_visible(site, browser, chapter):
    page, _, _ = _open(browser, f"{site}/{chapter}.html")
    _wait_rendered(page, page.locator(".kfaclab-chart").count())
    invisible = page.evaluate(INVISIBLE_SWATCHES_JS)
    swatches = page.locator(".kfaclab-chart .role-legend-symbol path").count()
    page.close()
    if chapter == "book/scaling":  # its charts have legends: the check finds swatches to judge
        assert swatches > 0, f"{chapter}: no legend swatches found (the check would pass vacuously)"
    assert not invisible, f"{chapter}: " + "; ".join(invisible[:6])


# A chart's title and subtitle: the study it shows ("study 'name': ..."), or, for a chart that
# shows no study, what it shows instead (a model that is not a study, a measurement's runs/
# folder, a cost model that is not a measurement).
CHART_TITLES_JS = """() => [...document.querySelectorAll('.kfaclab-chart')].map(c =>
  [...c.querySelectorAll('.role-title text')].map(t => t.textContent).join(' '))"""
NOT_A_STUDY = ("not a study", "runs/", "not a measurement")


@pytest.mark.parametrize("chapter", [*CHAPTERS_WITH_CHARTS, "book/kfac"])
def test_every_chart_is_titled_with_its_study_or_says_it_shows_none(site, browser, chapter):
    page, _, _ = _open(browser, f"{site}/{chapter}.html")
    _wait_rendered(page, page.locator(".kfaclab-chart").count())
    titles = page.evaluate(CHART_TITLES_JS)
    page.close()
    assert titles, f"{chapter}: no chart titles found (the check would pass vacuously)"
    untitled = [t or "(no title)" for t in titles if "study '" not in t and not any(m in t for m in NOT_A_STUDY)]
    assert not untitled, f"{chapter}: charts that name no study: {untitled[:4]}"


@pytest.mark.parametrize("chapter", ALL_PAGES)
def test_no_table_or_figure_overflows_its_column(site, browser, chapter):
    page, _, _ = _open(browser, f"{site}/{chapter}.html")
    charts = page.locator(".kfaclab-chart").count()
    if charts:
        _wait_rendered(page, charts)
    overflowing = page.evaluate(OVERFLOW_JS)
    page.close()
    assert not overflowing, f"{chapter}: " + "; ".join(overflowing[:6])


def test_every_page_loads_without_errors_or_network(site, browser):
    for chapter in ["book/intro", "book/protocol", "book/verdicts", "book/kfac", "book/reproduce", "book/run-record"]:
        page, errors, blocked = _open(browser, f"{site}/{chapter}.html")
        assert page.locator("h1").count() >= 1
        assert not errors, f"{chapter}: console errors: {errors[:5]}"
        assert not blocked, f"{chapter}: the page tried to reach the network: {blocked[:5]}"
        page.close()


FRONT_JS = """() => {
  const y = el => el ? el.getBoundingClientRect().top + window.scrollY : null;
  const lead = [...document.querySelectorAll('p')]
    .find(p => p.textContent.startsWith('The studies that have run so far trained'));
  const table = document.querySelector('table.kfaclab-front');
  const list = lead ? lead.nextElementSibling : null;
  return {lead: y(lead), leadText: lead ? lead.textContent : '',
          listBottom: list && list.tagName === 'UL' ? list.getBoundingClientRect().bottom + window.scrollY : null,
          listText: list ? list.textContent : '',
          table: table ? table.getBoundingClientRect().height : null,
          rows: table ? table.querySelectorAll('tbody tr').length : 0,
          details: table ? table.querySelectorAll('details').length : 0};
}"""


def test_front_page_says_what_was_found_on_which_model_on_its_first_screen(site, browser):
    """At 1366 x 900 the first screen holds the computed findings, which name every study's model
    (the lead names the models, one line per study that ran says what it found); the claims
    table, one row per claim with its details folded, is about one screen tall."""
    page, _, _ = _open(browser, f"{site}/book/intro.html")
    front = page.evaluate(FRONT_JS)
    page.close()
    assert front["lead"] is not None and front["lead"] < 900, front
    assert "MLP 768-256-10" in front["leadText"] and "ResNet" in front["leadText"]
    assert front["listBottom"] is not None and front["listBottom"] <= 900, front
    assert "miniature3" in front["listText"] and "resnet-cpu" in front["listText"]
    assert front["rows"] == 11 and front["details"] == 11
    assert front["table"] <= 1000, f"the claims table is {front['table']:.0f} px tall"
