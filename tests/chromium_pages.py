"""Open HTML reports in headless Chromium and say what went wrong: JavaScript errors, failed
loads, links to files that do not exist, plotly figures that did not render.

A small Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (file descriptors 3 and
4, NUL-terminated JSON), standard library only: no browser download, no websocket, no driver.
The browser runs with a fresh profile and resolves no host name at all
(``--host-resolver-rules``), so a page can reach nothing beyond the files it links; a page that
loads plotly.js from a CDN fails offline, and :func:`check_pages` reports that load as
``failed_loads`` (its ``ReferenceError: Plotly is not defined`` among ``errors``).

Use::

    with Chromium("/usr/bin/chromium") as browser:
        report = check_pages(browser, Path("saetools-demo/index.html"))
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no DNS look-up leaves the machine
)

# Chromium reads commands on fd 3 and writes on fd 4: a launcher moves the pipes given as stdin
# and stdout there, points 0 and 1 at /dev/null, and becomes the browser.
_LAUNCH = (
    "import os, sys; os.dup2(0, 3); os.dup2(1, 4); n = os.open(os.devnull, os.O_RDWR); "
    "os.dup2(n, 0); os.dup2(n, 1); os.execv(sys.argv[1], sys.argv[1:])"
)
# Every element attribute that points at another file.
LINKS_JS = """Array.from(document.querySelectorAll('[href],[src]')).map(
    e => e.getAttribute('href') ?? e.getAttribute('src'))"""
# Plotly figures on the page, and how many of them drew their SVG.
PLOTS_JS = """(() => { const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
    return [divs.length, divs.filter(d => d.querySelector('.main-svg')).length]; })()"""


def require_chrome_or_skip() -> str:
    """The Chrome saetools would use (:func:`saetools.plots.find_chrome`); skips the test when
    there is none, or fails it when ``SAETOOLS_REQUIRE_CHROME=1`` (run.sh sets that when it has
    Chromium, so CI cannot silently skip)."""
    import pytest

    from saetools.plots import find_chrome

    chrome = find_chrome()
    if chrome is not None:
        return chrome
    why = (
        "no Chrome or Chromium found ($BROWSER_PATH, or chromium/google-chrome on PATH): "
        "`bash run.sh setup` installs Debian's chromium where apt-get is available"
    )
    if os.environ.get("SAETOOLS_REQUIRE_CHROME") == "1":
        pytest.fail(f"SAETOOLS_REQUIRE_CHROME=1 but {why}")
    pytest.skip(why)


class Chromium:
    """One headless Chromium, driven through the DevTools protocol over a pipe."""

    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="saetools-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _LAUNCH,
                path,
                *FLAGS,
                f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=to_browser_r,
            stdout=from_browser_w,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self._events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_browser, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *whole, buf = buf.split(b"\0")
                for raw in whole:
                    self._messages.put(json.loads(raw))
        self._messages.put(None)  # the browser closed the pipe

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._get(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict:
        """The first event ``method`` of ``session`` not yet consumed (waits for it)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self._events.pop(i)
            self._events.append(self._get(deadline, method))

    def take_events(self, session: str) -> list[dict]:
        """Every event of ``session`` received so far (and forget them)."""
        mine = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    def _get(self, deadline: float, what: str) -> dict:
        left = deadline - time.monotonic()
        try:
            msg = self._messages.get(timeout=max(left, 0.01))
        except queue.Empty:
            raise TimeoutError(f"Chromium: no answer to {what} in {self.timeout:g} s") from None
        if msg is None:
            raise RuntimeError(f"Chromium exited (code {self.proc.poll()}) during {what}")
        return msg

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close")
                except (RuntimeError, TimeoutError, OSError):
                    pass
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            os.close(self._to_browser)
            self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pages(browser: Chromium, paths: list[Path], settle_s: float = 0.3) -> list[dict]:
    """Load files, each in its own tab, all at once (their renderers work in parallel), and return
    what each did: ``errors`` (uncaught exceptions, ``console.error`` calls, error log entries),
    ``failed_loads`` (URL and reason), ``links`` (every href/src as written), ``plots`` and
    ``plots_drawn`` (plotly divs, and those that drew their SVG)."""
    tabs = []
    try:
        for path in paths:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            tabs.append((target, session))
            for domain in ("Page", "Runtime", "Log", "Network"):
                browser.send(f"{domain}.enable", session=session)
            nav = browser.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
            if nav.get("errorText"):
                raise RuntimeError(f"{path}: {nav['errorText']}")
        for _, session in tabs:
            browser.wait_for("Page.loadEventFired", session)
        time.sleep(settle_s)  # let promise callbacks (plotly draws asynchronously) run
        out = []
        for _, session in tabs:
            links = _evaluate(browser, session, LINKS_JS)
            plots, drawn = _evaluate(browser, session, PLOTS_JS)
            events = browser.take_events(session)
            urls = _request_urls(events)
            out.append(
                {
                    "errors": _errors(events),
                    "failed_loads": [
                        (urls.get(e["params"]["requestId"], "?"), e["params"]["errorText"])
                        for e in events
                        if e.get("method") == "Network.loadingFailed"
                    ],
                    "links": links,
                    "plots": plots,
                    "plots_drawn": drawn,
                }
            )
        return out
    finally:
        for target, _ in tabs:
            browser.send("Target.closeTarget", {"targetId": target})


def _evaluate(browser: Chromium, session: str, expression: str):
    res = browser.send(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    if "exceptionDetails" in res:
        raise RuntimeError(f"evaluating {expression!r}: {res['exceptionDetails']}")
    return res["result"]["value"]


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append((d.get("exception") or {}).get("description") or d.get("text", "?"))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            )
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
    return out


def _request_urls(events: list[dict]) -> dict[str, str]:
    return {
        e["params"]["requestId"]: e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    }


def check_pages(browser: Chromium, start: Path, tabs: int = 4) -> dict[str, dict]:
    """Open ``start`` and, transitively, every HTML file it links inside its folder (up to
    ``tabs`` at a time). Returns one :func:`open_pages` result per page (keyed by path relative to
    ``start``'s folder), each with ``missing``: the local links whose file does not exist, and
    ``external``: http(s) links (the page's own loads of them are in ``failed_loads``)."""
    root = start.resolve().parent
    todo, seen, report = [start.resolve()], {start.resolve()}, {}
    while todo:
        batch, todo = todo[:tabs], todo[tabs:]
        for page, res in zip(batch, open_pages(browser, batch), strict=True):
            res["missing"], res["external"] = [], []
            for link in res["links"]:
                parts = urlsplit(link)
                if parts.scheme in ("http", "https", "data", "mailto", "javascript"):
                    if parts.scheme in ("http", "https"):
                        res["external"].append(link)
                    continue
                if not parts.path:  # "#anchor"
                    continue
                target = (page.parent / unquote(parts.path)).resolve()
                if not target.is_file():
                    res["missing"].append(link)
                elif target.suffix == ".html" and target.is_relative_to(root):
                    if target not in seen:
                        seen.add(target)
                        todo.append(target)
            report[str(page.relative_to(root))] = res
    return report
