"""Plotly figures. Every function returns a ``plotly.graph_objects.Figure``; ``write_html`` saves one."""

from __future__ import annotations

import os
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


def write_html(fig, path: str | os.PathLike, include_plotlyjs: bool | str = True) -> Path:
    """Write a figure as a standalone HTML file (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.write_html(str(tmp), include_plotlyjs=include_plotlyjs)
    os.replace(tmp, path)
    return path
