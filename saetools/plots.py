"""Plotly figures. Every function returns a ``plotly.graph_objects.Figure``; ``write_html`` saves one.

Every figure the toolkit writes goes through :func:`write_html`, which also exports it as PNG, SVG
or PDF (same name, other suffix) through kaleido and a Chrome: for one call (``formats=``), or for
every figure written inside a :func:`figure_formats` block (what the commands' ``--figure-formats``
sets). :func:`find_chrome` says which browser is used (``$BROWSER_PATH``, else ``chromium``,
``google-chrome`` ... on ``PATH``); nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .directions import DirectionSet
from .sites import parse_sites


def layer_report(ds: DirectionSet, title: str | None = None):
    """Held-out separation (AUROC, Cohen's d) and vector norm by layer, one line per site kind."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = max(int(s.split(".")[1]) for s in ds.sites) + 1
    by_kind: dict[str, list] = {}
    for site in parse_sites(ds.sites, n):
        by_kind.setdefault(site.kind, []).append(site)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
        subplot_titles=(
            "held-out AUROC (misaligned vs aligned)",
            "Cohen's d",
            "direction norm (raw)",
        ),
    )
    for kind, sites in by_kind.items():
        xs = [s.layer for s in sites]
        st = [ds.stats(s.name) for s in sites]
        for row, key in ((1, "auroc"), (2, "cohens_d"), (3, "norm")):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=[x.get(key) for x in st],
                    mode="lines+markers",
                    name=f"{kind}",
                    legendgroup=kind,
                    showlegend=row == 1,
                    hovertext=[s.name for s in sites],
                ),
                row=row,
                col=1,
            )
    try:
        best = ds.best_site()
        fig.add_annotation(
            text=f"best: {best} (AUROC {ds.stats(best)['auroc']:.3f})",
            xref="paper",
            yref="paper",
            x=0,
            y=1.08,
            showarrow=False,
            xanchor="left",
        )
    except ValueError:
        pass
    meta = ds.metadata
    fig.update_layout(
        title=title
        or f"{meta.get('method', '?')} directions on {meta.get('model_id', '?')} "
        f"({meta.get('probe_set', {}).get('name', '?')}, {meta.get('aggregation', '?')})",
        height=800,
        template="plotly_white",
    )
    fig.update_xaxes(title_text="block", row=3, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    return fig


def write_html(
    fig,
    path: str | os.PathLike,
    include_plotlyjs: bool | str = True,
    formats: Iterable[str] | str | None = None,
) -> Path:
    """Write a figure as a standalone HTML file (atomically), and as each image format of
    ``formats`` (default: those of the enclosing :func:`figure_formats` block, usually none) next
    to it: ``report.html`` -> ``report.png``, ``report.svg``, ``report.pdf``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.write_html(str(tmp), include_plotlyjs=include_plotlyjs)
    os.replace(tmp, path)
    fmts = _FORMATS.get() if formats is None else parse_figure_formats(formats)
    if fmts:
        write_images(fig, path, fmts)
    return path


# --- image export (kaleido + Chrome) ---------------------------------------------------------

FIGURE_FORMATS = ("png", "svg", "pdf")
PNG_SCALE = 2  # PNG pixels per layout pixel (a 1000-wide figure is a 2000-pixel PNG)
DEFAULT_WIDTH = 1000  # layout pixels, for figures that set no width
DEFAULT_HEIGHT = 600
CHROME_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Added to the flags kaleido's browser gets: no background connections (update checks, field
# trials, QUIC probes) from a browser that only renders local pages.
CHROME_QUIET_FLAGS = (
    "--disable-background-networking",
    "--disable-quic",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

_FORMATS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "saetools_figure_formats", default=()
)
# Inside a figure_formats block: {"started": bool}, one kaleido browser kept for the whole block.
_SERVER: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "saetools_figure_server", default=None
)


def parse_figure_formats(formats: Iterable[str] | str | None) -> tuple[str, ...]:
    """``"png,svg"`` or ``["png", "svg"]`` -> ``("png", "svg")`` (lower case, no repeats);
    ``None``, ``""`` and ``"none"`` -> ``()``. Anything but png, svg, pdf is a ValueError."""
    if formats is None:
        return ()
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        f = item.strip().lower().lstrip(".")
        if f in ("", "none"):
            continue
        if f not in FIGURE_FORMATS:
            raise ValueError(
                f"unknown figure format {item.strip()!r}: use a comma list of "
                f"{', '.join(FIGURE_FORMATS)}"
            )
        if f not in out:
            out.append(f)
    return tuple(out)


def find_chrome() -> str | None:
    """The Chrome or Chromium kaleido renders with: ``$BROWSER_PATH`` (kaleido's own variable;
    run.sh sets it to Debian's ``/usr/bin/chromium``) when set, else the first of
    :data:`CHROME_NAMES` on ``PATH``; None when there is none."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if Path(env).is_file() and os.access(env, os.X_OK) else None
    for name in CHROME_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chrome() -> str:
    """:func:`find_chrome`, or a RuntimeError that says how to get one (nothing is downloaded)."""
    chrome = find_chrome()
    if chrome is not None:
        return chrome
    env = os.environ.get("BROWSER_PATH")
    where = (
        f"BROWSER_PATH={env!r} is not an executable file"
        if env
        else f"none of {', '.join(CHROME_NAMES)} is on PATH"
    )
    raise RuntimeError(
        f"exporting figures as images needs a Chrome or Chromium, and {where}. Install one "
        "(Debian/Ubuntu: apt-get install chromium; `bash run.sh setup` does this where it can) "
        "or set BROWSER_PATH to its executable"
    )


@contextlib.contextmanager
def figure_formats(formats: Iterable[str] | str | None) -> Iterator[tuple[str, ...]]:
    """Inside the block, :func:`write_html` also writes each figure in ``formats`` (``"png,svg"``).
    Checks for a Chrome at once (so a long command fails before its work, not after) and keeps
    one browser open for all the figures of the block."""
    fmts = parse_figure_formats(formats)
    if fmts:
        require_chrome()
    token = _FORMATS.set(fmts)
    state_token = _SERVER.set({"started": False} if fmts else None)
    try:
        yield fmts
    finally:
        state = _SERVER.get()
        _SERVER.reset(state_token)
        _FORMATS.reset(token)
        if state and state["started"]:
            import kaleido

            kaleido.stop_sync_server(silence_warnings=True)


def image_size(fig, fmt: str) -> tuple[int, int]:
    """The (width, height) of ``fig`` exported as ``fmt``: layout pixels for SVG and PDF (the
    figure's own width and height, else :data:`DEFAULT_WIDTH` x :data:`DEFAULT_HEIGHT`), times
    :data:`PNG_SCALE` for PNG. (A PDF page measures 0.75 points per layout pixel.)"""
    w = fig.layout.width or DEFAULT_WIDTH
    h = fig.layout.height or DEFAULT_HEIGHT
    k = PNG_SCALE if fmt == "png" else 1
    return int(w * k), int(h * k)


def write_images(
    fig, path: str | os.PathLike, formats: Iterable[str] | str = FIGURE_FORMATS
) -> list[Path]:
    """Export ``fig`` as each of ``formats`` next to ``path`` (its suffix replaced: ``sweep.html``
    -> ``sweep.png``), atomically, in one browser session; returns the files written. PNG is
    rendered at :data:`PNG_SCALE` x the layout size (see :func:`image_size`)."""
    import kaleido

    fmts = parse_figure_formats(formats)
    chrome = require_chrome()
    base = Path(path)
    targets = [base.with_suffix(f".{f}") for f in fmts]
    tmps = [t.with_name(f".{t.name}.tmp") for t in targets]
    w, h = image_size(fig, "svg")
    spec_fig = fig.to_dict()
    specs = [
        {
            "fig": spec_fig,
            "path": tmp,
            "opts": {"format": f, "width": w, "height": h, "scale": PNG_SCALE if f == "png" else 1},
        }
        for f, tmp in zip(fmts, tmps, strict=True)
    ]
    state = _SERVER.get()
    try:
        if state is not None:  # one browser for every figure of the figure_formats block
            if not state["started"]:
                kaleido.start_sync_server(**_kaleido_options(chrome), silence_warnings=True)
                state["started"] = True
            kaleido.write_fig_from_object_sync(specs)
        else:
            kaleido.write_fig_from_object_sync(specs, kopts=_kaleido_options(chrome))
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return targets


def _kaleido_options(chrome: str) -> dict:
    """kaleido's options: this browser, no MathJax (loaded from a CDN otherwise; the figures use
    no LaTeX), the quiet flags; plotly.js comes from the installed plotly package."""
    from choreographer.browsers.chromium import Chromium

    class QuietChromium(Chromium):
        def get_cli(self):
            return [*super().get_cli(), *CHROME_QUIET_FLAGS]

    return {"path": chrome, "mathjax": False, "browser_cls": QuietChromium}
