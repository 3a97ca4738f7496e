"""A plotly report of a latent ranking: the top latents and the answers and tokens that fire them.

:func:`latent_report` draws, for the top latents of a :class:`~saetools.extract.latents.LatentRanking`,
the difference of mean activations, the AUROC (ranking split and held-out) and a table of the answers
whose largest activation of each latent is highest, with the firing token marked.
"""

from __future__ import annotations

from .latents import LatentRanking

__all__ = ["latent_report"]


def _top_examples(r: LatentRanking, j: int, k: int, context: int = 6) -> list[str]:
    """The ``k`` examples (over every group) whose largest activation of latent ``j`` is highest,
    with the firing token marked ``[[...]]`` inside a few tokens of context."""
    cands = []
    for key, a in r.acts.items():
        for i in range(len(a)):
            cands.append((float(a.max[i, j]), key, i))
    cands.sort(key=lambda t: -t[0])
    out = []
    for val, key, i in cands[:k]:
        if val <= 0:
            break
        a = r.acts[key]
        label = (
            key.replace("test_", "held-out ")
            .replace("pos", r.labels[0])
            .replace("neg", r.labels[1])
        )
        if a.tokens is not None:
            t = int(a.argmax[i, j])
            toks = a.tokens[i]
            lo, hi = max(0, t - context), min(len(toks), t + context + 1)
            snippet = (
                ("…" if lo > 0 else "")
                + "".join(toks[lo:t])
                + "<b>[["
                + toks[t]
                + "]]</b>"
                + "".join(toks[t + 1 : hi])
                + ("…" if hi < len(toks) else "")
            )
        else:
            snippet = f"token {int(a.argmax[i, j])}"
        texts = r.texts.get(key)
        head = (
            (texts[i][:80] + "…")
            if texts and len(texts[i]) > 80
            else (texts[i] if texts else f"example {i}")
        )
        out.append(f"{val:.2f} [{label}] {snippet}<br><i>{_html(head)}</i>")
    return out


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def latent_report(
    r: LatentRanking, top: int = 20, examples_per_latent: int = 3, title: str | None = None
):
    """Plotly figure: difference and AUROC of the top latents, and the answers/tokens firing them most."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ids = r.top(top)
    names = [str(j) for j in ids]
    fig = make_subplots(
        rows=3,
        cols=1,
        vertical_spacing=0.06,
        row_heights=[0.22, 0.22, 0.56],
        specs=[[{"type": "xy"}], [{"type": "xy"}], [{"type": "table"}]],
        subplot_titles=(
            f"mean activation, {r.labels[0]} minus {r.labels[1]} (ranked by {r.by})",
            "AUROC of the per-answer mean activation" + (" (train and held-out)" if r.test else ""),
            "answers that fire each latent most (the firing token in [[...]])",
        ),
    )
    fig.add_trace(
        go.Bar(
            x=names,
            y=[float(r.diff[j]) for j in ids],
            name="difference",
            hovertext=[
                f"freq {r.labels[0]} {float(r.freq_pos[j]):.3f}, {r.labels[1]} {float(r.freq_neg[j]):.3f}"
                for j in ids
            ],
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=names,
            y=[float(r.auroc[j]) for j in ids],
            mode="markers",
            name="AUROC (ranking split)",
        ),
        row=2,
        col=1,
    )
    if r.test is not None:
        fig.add_trace(
            go.Scatter(
                x=names,
                y=[float(r.test["auroc"][j]) for j in ids],
                mode="markers",
                name="AUROC (held-out)",
            ),
            row=2,
            col=1,
        )
    cells = [
        names,
        [f"{float(r.diff[j]):.3f}" for j in ids],
        [
            f"{float(r.auroc[j]):.3f}" + (f" / {float(r.test['auroc'][j]):.3f}" if r.test else "")
            for j in ids
        ],
        [f"{float(r.freq_pos[j]):.3f} / {float(r.freq_neg[j]):.3f}" for j in ids],
        ["<br>".join(_top_examples(r, j, examples_per_latent)) or "(never fires)" for j in ids],
    ]
    fig.add_trace(
        go.Table(
            columnwidth=[40, 50, 70, 70, 500],
            header=dict(
                values=[
                    "latent",
                    "diff",
                    "AUROC" + (" train / test" if r.test else ""),
                    f"freq {r.labels[0]} / {r.labels[1]}",
                    "top activations",
                ]
            ),
            cells=dict(values=cells, align="left"),
        ),
        row=3,
        col=1,
    )
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(type="category", row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], row=2, col=1)
    ps = r.meta.get("probe_set", {}).get("name", "?")
    fig.update_layout(
        title=title
        or f"SAE latents at {r.sae.site} ({r.sae.architecture}, {r.sae.d_sae} latents) on {ps}",
        height=700 + 110 * len(ids),
        template="plotly_white",
    )
    return fig
