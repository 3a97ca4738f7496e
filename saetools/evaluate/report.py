"""The report of an :func:`~saetools.evaluate.evaluate` result: the headline table
(:func:`headline`), a plotly figure (:func:`report_figure`), and the result folder
(:func:`write_results`: ``eval.json``, ``samples.jsonl``, ``report.html``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..plots import write_html
from ..sweep import write_json
from .judge import MISALIGNED_ALIGNMENT_BELOW, MISALIGNED_COHERENCE_ABOVE

__all__ = ["headline", "report_figure", "write_results"]


def headline(res: dict) -> list[tuple[str, str]]:
    """The headline numbers of a result as ``(label, value)`` rows, formatted for reading (the
    table of :func:`report_figure` and of ``saetools eval``'s output)."""

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    rows = [("model", str(res.get("model_id"))), ("suites", ", ".join(res.get("suites", [])))]
    if res.get("steering"):
        rows.append(
            (
                "steering",
                "; ".join(
                    f"{s['op']} {s['site']} {s['alpha'] or s['value'] or ''}"
                    for s in res["steering"]
                ),
            )
        )
    em = res.get("em")
    if em:
        rows.append(
            ("em-core contrast (nats, sum)", f"{f(em['contrast'])} ± {f(em['contrast_sem'])}")
        )
        rows.append(("em-core contrast per token", f(em["contrast_per_token"], "{:.4f}")))
        if "projection" in em:
            p = em["projection"]
            rows.append(
                (f"projection of own answers ({p['site']})", f"{f(p['mean'])} ± {f(p['sem'])}")
            )
        j = em.get("judged")
        if j:
            ci = j["misaligned_ci95"]
            rows.append(
                (
                    "misaligned rate (judge)",
                    f"{f(j['misaligned_rate'])} [{f(ci[0]) if ci else '-'}, {f(ci[1]) if ci else '-'}] "
                    f"({j['misaligned']}/{j['n_scored']} scored of {j['n_answers']})",
                )
            )
            rows.append(
                (
                    "mean alignment / coherence (judge)",
                    f"{f(j['mean_alignment'], '{:.1f}')} / {f(j['mean_coherence'], '{:.1f}')}",
                )
            )
            rows.append(("refusals / code", f"{j['n_refusal']} / {j['n_code']}"))
    rows += _probe_rows(res.get("judged_rate"), f)
    co = res.get("coherence")
    if co:
        rows.append(("neutral perplexity", f(co["neutral_perplexity"], "{:.2f}")))
    nr = res.get("narrow")
    if nr:
        for k, v in nr["held_out_loss"].items():
            rows.append((f"held-out loss: {k}", f(v)))
        if "in_domain_contrast" in nr:
            c = nr["in_domain_contrast"]
            rows.append(
                (
                    "in-domain contrast bad - good (per token)",
                    f"{f(c['contrast_per_token'], '{:.4f}')} ± {f(c['contrast_sem'], '{:.4f}')}",
                )
            )
        if "opswap" in nr:
            rows.append(
                (
                    "opswap exact-match accuracy",
                    f"{f(nr['opswap']['accuracy'])} (n={nr['opswap']['n']})",
                )
            )
    if res.get("judge"):
        rows.append(
            (
                "judge",
                f"{res['judge']['model']} at {res['judge']['base_url']} (prompts v{res['judge']['prompts_version']})",
            )
        )
    rows.append(("wall time (s)", f(res.get("timings_s", {}).get("total"), "{:.1f}")))
    return rows


def _probe_rows(jr: dict | None, f) -> list[tuple[str, str]]:
    """Headline rows of the ``judged-rate`` suite (the probe judge)."""
    if not jr:
        return []
    ci = jr["ci95"] or [None, None]
    return [
        (
            "misaligned rate (probe judge, coherent answers)",
            f"{f(jr['rate'])} [{f(ci[0])}, {f(ci[1])}] "
            f"({jr['misaligned']}/{jr['n_coherent']} coherent of {jr['n']})",
        ),
        (
            "incoherent share (probe judge)",
            f"{f(jr['incoherent_share'])} ({jr['n_incoherent']}/{jr['n']}, {jr['n_empty']} empty)",
        ),
    ]


def report_figure(res: dict, title: str | None = None):
    """Plotly report: a table of headline numbers, judge scores (alignment vs coherence, with the
    misaligned region), the misaligned rate per theme, and the projections of sampled answers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    samples = res.get("samples", [])
    fig = make_subplots(
        rows=3,
        cols=2,
        specs=[[{"type": "table", "colspan": 2}, None], [{}, {}], [{"colspan": 2}, None]],
        row_heights=[0.4, 0.35, 0.25],
        vertical_spacing=0.08,
        subplot_titles=(
            "",
            "judge: alignment vs coherence (one point per answer)",
            "misaligned rate per theme",
            "projection of the model's own answers on the direction",
        ),
    )
    head = headline(res)
    fig.add_trace(
        go.Table(
            header=dict(values=["metric", "value"], align="left"),
            cells=dict(values=[[h[0] for h in head], [h[1] for h in head]], align="left"),
            columnwidth=[0.45, 0.55],
        ),
        row=1,
        col=1,
    )
    scored = [
        s for s in samples if s.get("alignment") is not None and s.get("coherence") is not None
    ]
    if scored:
        fig.add_trace(
            go.Scatter(
                x=[s["coherence"] for s in scored],
                y=[s["alignment"] for s in scored],
                mode="markers",
                marker=dict(
                    color=["crimson" if s.get("misaligned") else "steelblue" for s in scored],
                    size=7,
                    opacity=0.7,
                ),
                text=[f"{s['question_id']}: {s['answer'][:160]}" for s in scored],
                hoverinfo="text",
                name="answers",
                showlegend=False,
            ),
            row=2,
            col=1,
        )
        fig.add_shape(
            type="rect",
            x0=MISALIGNED_COHERENCE_ABOVE,
            x1=100,
            y0=0,
            y1=MISALIGNED_ALIGNMENT_BELOW,
            line=dict(color="crimson", dash="dot"),
            row=2,
            col=1,
        )
        fig.update_xaxes(title_text="coherence", range=[0, 100], row=2, col=1)
        fig.update_yaxes(title_text="alignment", range=[0, 100], row=2, col=1)
    themes = (res.get("em") or {}).get("judged_by_theme") or {}
    if themes:
        fig.add_trace(
            go.Bar(
                x=list(themes),
                y=[t["rate"] or 0 for t in themes.values()],
                text=[f"{t['misaligned']}/{t['n_scored']}" for t in themes.values()],
                showlegend=False,
            ),
            row=2,
            col=2,
        )
        fig.update_yaxes(title_text="rate", range=[0, 1], row=2, col=2)
    projs = [s["projection"] for s in samples if s.get("projection") is not None]
    if projs:
        fig.add_trace(go.Histogram(x=projs, nbinsx=30, showlegend=False), row=3, col=1)
        fig.update_xaxes(title_text=f"projection at {res.get('projection_site')}", row=3, col=1)
    fig.update_layout(
        title=title or f"saetools eval: {res.get('model_id')}",
        template="plotly_white",
        height=1100,
    )
    return fig


def write_results(res: dict, out: str | os.PathLike) -> dict[str, str]:
    """Write ``eval.json`` (everything), ``samples.jsonl`` (one answer per line) and ``report.html``
    into the folder ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "eval.json",
        "samples": out / "samples.jsonl",
        "html": out / "report.html",
    }
    write_json(res, paths["json"])
    tmp = paths["samples"].with_name(".samples.jsonl.tmp")
    tmp.write_text("".join(json.dumps(s) + "\n" for s in res.get("samples", [])))
    os.replace(tmp, paths["samples"])
    write_html(report_figure(res), paths["html"])
    return {k: str(v) for k, v in paths.items()}
