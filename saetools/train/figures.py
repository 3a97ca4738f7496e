"""The training curves (``OUT/curves.html``): task loss, regularizer terms, general shift."""

from __future__ import annotations

from collections.abc import Sequence


def curves_figure(rows: Sequence[dict], title: str = "training"):
    """Three panels over the steps of ``rows`` (``metrics.jsonl``): the train and held-out task
    loss, each regularizer term (unweighted), and the general shift with its standard error."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        subplot_titles=("task loss", "regularizer terms (unweighted)", "general shift (em-core)"),
    )
    steps = [r["step"] for r in rows]
    fig.add_trace(
        go.Scatter(x=steps, y=[r.get("task_loss") for r in rows], name="train task loss"), 1, 1
    )
    ev = [r for r in rows if r.get("eval_task_loss") is not None]
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in ev],
            y=[r["eval_task_loss"] for r in ev],
            name="held-out task loss",
            mode="lines+markers",
        ),
        1,
        1,
    )
    skip = {"step", "loss", "task_loss", "n_tokens", "lr", "seconds", "eval_task_loss", "shift"}
    skip |= {"shift_se", "contrast"}
    keys = sorted({k for r in rows for k in r if k not in skip})
    for k in keys:
        fig.add_trace(go.Scatter(x=steps, y=[r.get(k) for r in rows], name=k), 2, 1)
    sh = [r for r in rows if r.get("shift") is not None]
    fig.add_trace(
        go.Scatter(
            x=[r["step"] for r in sh],
            y=[r["shift"] for r in sh],
            error_y=dict(type="data", array=[r.get("shift_se") or 0 for r in sh]),
            name="general shift (nats/token)",
            mode="lines+markers",
        ),
        3,
        1,
    )
    fig.update_layout(title=title, height=900)
    fig.update_xaxes(title_text="step", row=3, col=1)
    return fig
