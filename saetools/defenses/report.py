"""The report of a benchmark folder: ``table.md`` (:mod:`.table`) and the Pareto figure
``defenses.html`` (general-shift reduction against the benign task's accuracy with its 95%
interval, the judged misaligned-answer rate and the tasks' held-out losses), written after every
call, or
from every finished run in the folder by :func:`write_report` (``--report-only``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..plots import write_html
from .config import BenchmarkConfig, BenchmarkError
from .folder import load_config, read_results
from .summary import summarize
from .table import data_names, method_label, table_markdown

# The panels of the figure: (y: summary key, panel title, x: summary key). Titles may name the data
# sets ({benign}, {pairs}, {transfer}: table.data_names). The first is the Pareto front: the benign
# task's accuracy against the reduction of the general shift.
PARETO_PANELS = (
    ("benign_accuracy", "{benign} exact-match accuracy", "reduction_pct"),
    ("judged_rate", "misaligned-answer rate (probe judge)", "reduction_pct"),
    ("narrow_loss", "narrow held-out loss (lower: learned)", "reduction_pct"),
    ("benign_loss", "{benign} held-out loss (lower: learned)", "reduction_pct"),
    (
        "benign_accuracy",
        "{benign} accuracy against the reduction on {transfer}",
        "reduction_transfer_pct",
    ),
)
_X_TITLES = {
    "reduction_pct": "general-shift reduction on {pairs} vs none (%)",
    "reduction_transfer_pct": "general-shift reduction on {transfer} vs none (%)",
}
_Y_TITLES = {
    "benign_accuracy": "{benign} accuracy",
    "judged_rate": "misaligned / coherent answers",
    "narrow_loss": "held-out loss",
    "benign_loss": "held-out loss",
}


def _trace_name(r) -> str:
    name = method_label(r)
    return name if r["source"] == "-" else f"{name} ({r['source']} @ {r['sites']})"


def error_bars(rows: Sequence[dict], key: str) -> dict:
    """Plotly error bars of summary field ``key`` for ``rows``: its 95% interval ``key_ci`` where
    the summary has one (asymmetric: interval minus mean; the benign accuracy's t interval over
    seeds or Wilson interval of one run, the reductions' t interval, the judged rate's Wilson
    interval), else ± its standard error ``key_se``; 0 where neither is known."""
    plus, minus = [], []
    for r in rows:
        m, ci = r.get(key), r.get(key + "_ci")
        if m is not None and ci is not None and ci[0] is not None and ci[1] is not None:
            plus.append(max(ci[1] - m, 0.0))
            minus.append(max(m - ci[0], 0.0))
        else:
            se = r.get(key + "_se") or 0.0
            plus.append(se)
            minus.append(se)
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus)


def pareto_figure(table: Sequence[dict], names: dict[str, str] | None = None):
    """The Pareto figure: general-shift reduction (x) against the benign task's exact-match
    accuracy (the first panel), the probe judge's misaligned-answer rate, the narrow and benign
    held-out losses, and the benign accuracy against the reduction on the transfer pairs
    (:data:`PARETO_PANELS`): one trace per method, direction variant and term variant, its
    strengths as labelled points; error bars are 95% intervals where the summary has them
    (:func:`error_bars`), else ± one standard error. ``names``: the data sets' names for the titles
    (:func:`~.table.data_names`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = names or data_names(None)
    fig = make_subplots(
        rows=1,
        cols=len(PARETO_PANELS),
        subplot_titles=[title.format(**names) for _, title, _ in PARETO_PANELS],
        horizontal_spacing=0.04,
    )
    groups: dict[str, list[dict]] = {}
    for r in table:
        groups.setdefault(_trace_name(r), []).append(r)
    palette = (
        "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b #e377c2 #7f7f7f #bcbd22 #17becf "
        "#393b79 #637939 #8c6d31 #843c39 #7b4173"
    ).split()
    for i, (name, rs) in enumerate(groups.items()):
        rs = sorted(rs, key=lambda r: r["strength"])
        color = palette[i % len(palette)]
        for col, (key, _, xkey) in enumerate(PARETO_PANELS, 1):
            fig.add_trace(
                go.Scatter(
                    x=[r.get(xkey) for r in rs],
                    y=[r.get(key) for r in rs],
                    error_x=error_bars(rs, xkey),
                    error_y=error_bars(rs, key),
                    text=[f"{r['strength']:g}" for r in rs],
                    mode="lines+markers+text",
                    textposition="top center",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line=dict(color=color),
                    marker=dict(color=color),
                ),
                row=1,
                col=col,
            )
            fig.update_xaxes(title_text=_X_TITLES[xkey].format(**names), row=1, col=col)
            fig.update_yaxes(title_text=_Y_TITLES[key].format(**names), row=1, col=col)
    fig.update_layout(
        title="Defenses: reduction of the general shift against the benign task's accuracy "
        "(mean over seeds; error bars 95% intervals: t over seeds, Wilson over items or answers; "
        "labels: strength)",
        height=640,
        width=2700,
    )
    return fig


def write_report(out: str | os.PathLike, *, include_plotlyjs: bool | str = True) -> dict:
    """Rewrite ``table.md`` and ``defenses.html`` of a benchmark folder from *every* finished run in
    its ``results.jsonl`` (also runs of earlier calls with other methods or direction variants);
    runs nothing. ``include_plotlyjs="cdn"`` writes a small HTML that loads plotly.js online."""
    out = Path(out)
    cfg = load_config(out)
    rows = read_results(out / "results.jsonl")
    if not any(r.get("final") for r in rows):
        raise BenchmarkError(f"{out / 'results.jsonl'} holds no finished run")
    table = write_outputs(out, rows, cfg, include_plotlyjs)
    return {"table": str(out / "table.md"), "html": str(out / "defenses.html"), "rows": table}


def write_outputs(
    out: Path, rows: Sequence[dict], cfg: BenchmarkConfig, include_plotlyjs: bool | str
) -> list[dict]:
    """Summarize ``rows`` into ``table.md`` and the Pareto figure ``defenses.html``."""
    table = summarize(rows)
    (out / "table.md").write_text(table_markdown(table, cfg))
    figure = pareto_figure(table, data_names(cfg))
    write_html(figure, out / "defenses.html", include_plotlyjs=include_plotlyjs)
    return table
