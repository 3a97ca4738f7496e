"""Dose-response sweep: how steering along a direction moves the model's preference, and what it costs.

For each ``alpha`` the model is steered with ``add`` (``alpha`` times the **unit** direction, at
**every token position**: prompt and answer) at one or more sites (``alpha_scale="norm"`` reads
each ``alpha`` as a fraction of the site's mean residual norm instead, see
:mod:`saetools.steer.intervention`, so one list of alphas fits models of any scale), and three
figures are measured:

* **logprob contrast** on a ``pairs`` probe split: for each pair,
  ``log p(misaligned answer | question) - log p(aligned answer | question)``, summed over the answer's
  tokens (located through the chat template), then averaged over pairs (``contrast``). The per-token
  version divides each answer's log-probability by its token count first (``contrast_per_token``).
  Positive means the misaligned answer is preferred.
* **projection**: the mean projection of the answer tokens (aligned and misaligned answers together)
  on the unit direction, read at the site *after* the steering hook (so for ``add`` it moves by
  exactly ``alpha``), and also per answer kind.
* **coherence**: the perplexity of the ``neutral`` text set (kind ``texts``), each text scored as the
  assistant's answer to the fixed user prompt :data:`NEUTRAL_PROMPT` (the chat model is always used
  through its template), exp of the mean negative log-probability per answer token.

Optionally it also measures an extra condition, ``ablate`` of the direction at a list of sites (for
instance every block), and samples answers to the ``em-eval`` questions at each alpha.
The result is a JSON-serialisable dict; :func:`sweep_figure` draws it with plotly.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from torch import nn

import probes as probe_sets

from .scoring import NEUTRAL_PROMPT, measure
from .sites import n_layers
from .steer import generate, interventions_from_directions, parse_alphas

__all__ = ["sweep", "sweep_figure", "write_json"]


def sweep(
    model: nn.Module,
    tokenizer,
    directions,
    site: str,
    alphas: Sequence[float],
    *,
    probes="em-core",
    split: str | None = "test",
    neutral="neutral",
    unit: bool = True,
    ablate_sites: str | Sequence[str] | None = None,
    sample: int = 0,
    eval_probes="em-eval",
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 16,
    model_id: str | None = None,
    progress: bool = True,
    alpha_scale: str = "abs",
) -> dict:
    """Dose-response of ``add`` at ``site`` (a site name, or several comma-separated: the same alpha
    at each) for each alpha; steering at all token positions. See the module docstring.
    ``alpha_scale="norm"``: alphas are fractions of each site's mean residual norm
    (:func:`saetools.steer.scale_alpha`); the result records the norms (``site_norms``)."""
    alphas = parse_alphas(alphas)
    pairs = probe_sets.as_set(probes, "pairs").split(split)
    neu = probe_sets.as_set(neutral, "texts") if neutral is not None else None
    ivs0 = interventions_from_directions(
        directions, site, "add", 0.0, unit=unit, n_layers=n_layers(model)
    )
    for iv in ivs0:
        iv.check(model)
    proj_site = ivs0[0].site
    proj_unit = directions.unit(proj_site)
    questions = []
    if sample:
        ev = probe_sets.as_set(eval_probes)
        questions = [it.question for it in ev.items if it.question][:sample]
    measure_kw = dict(neutral=neu, projection_site=proj_site, unit=proj_unit, batch_size=batch_size)
    rows = []
    for a in alphas:
        if progress:
            print(f"sweep: alpha {a:g}", file=sys.stderr)
        ivs = interventions_from_directions(
            directions, site, "add", a, unit=unit, n_layers=n_layers(model), alpha_scale=alpha_scale
        )
        r = measure(model, tokenizer, pairs, ivs, **measure_kw)
        r["alpha"] = a
        if questions:
            r["samples"] = _samples(
                model, tokenizer, questions, ivs, max_new_tokens, seed, batch_size
            )
        rows.append(r)
    result = {
        "model_id": model_id or getattr(getattr(model, "config", None), "_name_or_path", "unknown"),
        "site": site,
        "op": "add",
        "vector": "unit" if unit else "raw",
        "alpha_scale": alpha_scale,
        **(
            {"site_norms": {iv.site: directions.resid_norm(iv.site) for iv in ivs0}}
            if alpha_scale == "norm"
            else {}
        ),
        "positions": "all",
        "probes": {
            "name": pairs.name,
            "split": split,
            "n_pairs": len(pairs),
            "sha256": pairs.sha256,
        },
        "neutral": {"name": neu.name, "n_texts": len(neu), "prompt": NEUTRAL_PROMPT}
        if neu is not None
        else None,
        "directions": {
            k: directions.metadata.get(k)
            for k in ("method", "model_id", "aggregation")
            if k in directions.metadata
        },
        "alphas": alphas,
        "results": rows,
    }
    if ablate_sites is not None:
        if progress:
            print("sweep: ablate", file=sys.stderr)
        ab = interventions_from_directions(
            directions, ablate_sites, "ablate", n_layers=n_layers(model)
        )
        r = measure(model, tokenizer, pairs, ab, **measure_kw)
        r["sites"] = [iv.site for iv in ab]
        result["ablate"] = r
    return result


def _samples(model, tokenizer, questions, ivs, max_new_tokens, seed, batch_size) -> list[dict]:
    """Greedy answers to ``questions`` under the interventions ``ivs``."""
    answers = generate(
        model,
        tokenizer,
        questions,
        ivs,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        seed=seed,
        batch_size=batch_size,
    )
    return [{"question": q, "answer": ans} for q, ans in zip(questions, answers, strict=True)]


def sweep_figure(result: dict, title: str | None = None):
    """Plotly dose-response: contrast (with SEM) and per-token contrast vs alpha, perplexity vs alpha,
    with the ablate condition as dashed horizontal lines when present."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = result["results"]
    xs = [r["alpha"] for r in rows]
    has_ppl = all("perplexity" in r for r in rows)
    fig = make_subplots(
        rows=2 if has_ppl else 1,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(
            "logprob contrast: log p(misaligned) - log p(aligned)",
            "coherence: perplexity of neutral texts",
        )
        if has_ppl
        else None,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[r["contrast"] for r in rows],
            mode="lines+markers",
            name="contrast (sum, nats)",
            error_y=dict(type="data", array=[r["contrast_sem"] for r in rows], visible=True),
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[r["contrast_per_token"] for r in rows],
            mode="lines+markers",
            name="contrast per token (nats)",
        ),
        row=1,
        col=1,
    )
    ab = result.get("ablate")
    if ab:
        fig.add_trace(
            go.Scatter(
                x=[min(xs), max(xs)],
                y=[ab["contrast"]] * 2,
                mode="lines",
                line=dict(dash="dash"),
                name=f"ablate at {len(ab['sites'])} site(s): contrast",
            ),
            row=1,
            col=1,
        )
    if has_ppl:
        fig.add_trace(
            go.Scatter(
                x=xs, y=[r["perplexity"] for r in rows], mode="lines+markers", name="perplexity"
            ),
            row=2,
            col=1,
        )
        if ab and "perplexity" in ab:
            fig.add_trace(
                go.Scatter(
                    x=[min(xs), max(xs)],
                    y=[ab["perplexity"]] * 2,
                    mode="lines",
                    line=dict(dash="dash"),
                    name="ablate: perplexity",
                ),
                row=2,
                col=1,
            )
        fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(
        title_text=_alpha_axis(result),
        row=2 if has_ppl else 1,
        col=1,
    )
    p = result.get("probes", {})
    fig.update_layout(
        title=title
        or f"steering dose-response: add at {result['site']} on {result.get('model_id', '?')} "
        f"({p.get('name', '?')} {p.get('split', '')}, {p.get('n_pairs', '?')} pairs)",
        template="plotly_white",
        height=700 if has_ppl else 420,
    )
    return fig


def _alpha_axis(result: dict) -> str:
    if result.get("alpha_scale") == "norm":
        return "alpha (fraction of the site's mean residual norm, along the unit direction)"
    if result.get("vector") == "unit":
        return "alpha (activation units along the unit direction)"
    return "alpha (multiples of the raw direction)"


def write_json(result: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return path
