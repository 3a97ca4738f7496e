"""The HTML the toolkit writes, opened in a real browser (headless Debian Chromium, driven by
``chromium_pages``): the demo's ``index.html`` and every page it links (the layer report, the
sweep, the training curves, the evaluation reports ``saetools eval`` writes, the comparison) load
without a JavaScript error, load nothing from outside, draw every plotly figure, and link only
files that exist.

Skipped without a Chrome, except with ``SAETOOLS_REQUIRE_CHROME=1`` (set by run.sh when it has
one): then a missing browser fails."""

from __future__ import annotations

import time

import plotly.graph_objects as go
import pytest
from chromium_pages import Chromium, check_pages, require_chrome_or_skip

from saetools.plots import write_html

# The only outside address a page written with plotly.js inline links to: the modebar's logo link,
# an <a href> that is never loaded.
PLOTLY_LOGO = "https://plotly.com/"


def test_checker_catches_errors_missing_files_and_an_offline_cdn(tmp_path):
    """The checker itself: a clean inline-plotly page passes; a page that loads plotly.js from
    the CDN fails offline as expected (the load, then ``Plotly is not defined``); a script error,
    a console error and a link to a missing file are each reported."""
    chrome = require_chrome_or_skip()
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[2, 1, 3]))
    write_html(fig, tmp_path / "inline.html")
    write_html(fig, tmp_path / "cdn.html", include_plotlyjs="cdn")
    (tmp_path / "bad.html").write_text(
        "<html><body><script>console.error('boom'); notDefined();</script></body></html>"
    )
    (tmp_path / "index.html").write_text(
        "<html><body><a href='inline.html'>a</a> <a href='cdn.html'>b</a> "
        "<a href='bad.html'>c</a> <a href='missing.json'>d</a> <a href='#top'>e</a></body></html>"
    )
    with Chromium(chrome) as browser:
        report = check_pages(browser, tmp_path / "index.html")
    assert set(report) == {"index.html", "inline.html", "cdn.html", "bad.html"}
    assert report["index.html"]["missing"] == ["missing.json"]
    ok = report["inline.html"]
    assert ok["errors"] == [] and ok["failed_loads"] == [] and ok["missing"] == []
    assert ok["plots"] == ok["plots_drawn"] == 1
    cdn = report["cdn.html"]
    assert [url for url, _ in cdn["failed_loads"]] == [cdn["external"][0]]
    assert cdn["external"][0].startswith("https://cdn.plot.ly/")
    assert any("Plotly is not defined" in e for e in cdn["errors"]) and cdn["plots_drawn"] == 0
    bad = report["bad.html"]["errors"]
    assert "console.error: boom" in bad and any("notDefined is not defined" in e for e in bad)


@pytest.mark.embedded
def test_demo_pages_load_in_chromium(demo_quick):
    """Every page of ``saetools demo --quick`` (run once per session, shared with test_demo)."""
    chrome = require_chrome_or_skip()
    assert demo_quick.rc == 0
    t0 = time.monotonic()
    with Chromium(chrome) as browser:
        report = check_pages(browser, demo_quick.out / "index.html")
    seconds = time.monotonic() - t0
    expected = {
        "index.html",
        "em-layers.html",
        "sweep.html",
        "train/plain/curves.html",
        "train/directional-kl/curves.html",
        "eval/compare.html",
        "eval/base/report.html",
        "eval/plain/report.html",
        "eval/directional-kl/report.html",
    }
    assert set(report) == expected
    for page, r in report.items():
        assert r["errors"] == [], (page, r["errors"])
        assert r["failed_loads"] == [], (page, r["failed_loads"])
        assert r["missing"] == [], (page, r["missing"])
        assert set(r["external"]) <= {PLOTLY_LOGO}, (page, r["external"])
        assert r["plots_drawn"] == r["plots"] == (0 if page == "index.html" else 1), page
    # index.html links every file of the demo, and each exists (checked above)
    assert len(report["index.html"]["links"]) >= 15
    print(f"{len(report)} pages checked in {seconds:.1f} s")
