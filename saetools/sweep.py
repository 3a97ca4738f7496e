"""Dose-response sweep: how steering along a direction moves the model's preference, and what it costs.

For each ``alpha`` the model is steered with ``add`` (``alpha`` times the **unit** direction, at
**every token position**: prompt and answer) at one or more sites, and three figures are measured:

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
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .capture import ChatExample, Encoded, collate, encode_all
from .sites import Site, hooks, n_layers, parse_site
from .steer import Intervention, SteeringError, context_length, generate, pad_token_id, steer

NEUTRAL_PROMPT = "Write a few sentences about an everyday topic."


def _load_probes(p, kind: str | None = None):
    import probes as probe_mod

    ps = probe_mod.load(p) if isinstance(p, (str, os.PathLike)) else p
    if kind is not None and ps.kind != kind:
        raise ValueError(f"probe set {ps.name!r} is of kind {ps.kind!r}; this needs a {kind!r} set")
    return ps


def score_answers(
    model: nn.Module,
    tokenizer,
    examples: Sequence[ChatExample],
    *,
    batch_size: int = 16,
    projection_site: Site | None = None,
    unit: torch.Tensor | None = None,
    share_prompts: bool = True,
) -> dict[str, torch.Tensor]:
    """Log-probability of each example's answer tokens given the conversation before them.

    Returns ``logp`` (sum over answer tokens) and ``n_tokens`` per example, and with
    ``projection_site``/``unit`` the mean projection ``proj`` of the answer tokens on ``unit`` at that
    site, read by a hook installed after any steering hooks already in place. Batches are left-padded
    and sorted by length; logits are computed only for the columns that predict answer tokens.

    With ``share_prompts`` (default), examples whose prompts tokenize identically (the two answers
    of a pair) share one prompt pass: the prompt runs once with the KV cache, which is then copied
    to each answer, and the answers run as a continuation (about a third less work on em-core).
    Steering hooks see absolute positions either way (see :mod:`saetools.steer`).
    """
    encoded = encode_all(tokenizer, examples)
    if any(e.response_end == e.response_start for e in encoded):
        raise ValueError("every example needs an answer to score")
    limit = context_length(model)
    too_long = [i for i, e in enumerate(encoded) if limit is not None and len(e.input_ids) > limit]
    if too_long:
        raise SteeringError(
            f"example(s) {too_long[:5]} are longer than the model's context of {limit} tokens"
        )
    device = next(model.parameters()).device
    pad = pad_token_id(tokenizer)
    n = len(encoded)
    logp = torch.zeros(n, dtype=torch.float64)
    ntok = torch.zeros(n, dtype=torch.long)
    proj = torch.zeros(n, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: len(encoded[i].input_ids))
    current: dict = {}

    def grab(h: torch.Tensor):
        current["h"] = h.detach()
        return None

    capture_hooks = [(projection_site, grab)] if projection_site is not None else []
    groups: dict[tuple, list[int]] = {}
    for i, e in enumerate(encoded):
        groups.setdefault(tuple(e.input_ids[: e.response_start]), []).append(i)
    if share_prompts and len(groups) < n:
        with hooks(model, capture_hooks), torch.no_grad():
            _score_shared(
                model,
                encoded,
                groups,
                batch_size,
                pad,
                device,
                current,
                logp,
                ntok,
                proj,
                unit if projection_site is not None else None,
            )
        out = {"logp": logp, "n_tokens": ntok}
        if projection_site is not None:
            out["proj"] = proj
        return out
    with hooks(model, capture_hooks), torch.no_grad():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            b = collate([encoded[i] for i in idx], pad, "left", device)
            width = b.input_ids.shape[1]
            first = int(b.response_mask.float().argmax(-1).min())  # earliest answer column
            keep = width - first + 1  # logits for columns [first - 1, width)
            out = model(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                position_ids=b.position_ids,
                use_cache=False,
                logits_to_keep=keep,
            )
            logits = out.logits.float()  # [b, keep, V]: column c predicts token c + 1
            lsm = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = b.input_ids[:, width - keep + 1 :]
            tok_lp = lsm.gather(-1, targets[..., None])[..., 0]
            mask = b.response_mask[:, width - keep + 1 :]
            lp = (tok_lp * mask).sum(-1).double().cpu()
            cnt = mask.sum(-1).cpu()
            if projection_site is not None:
                p = current.pop("h").float() @ unit.to(device).float()
                pm = (p * b.response_mask).sum(-1) / b.response_mask.sum(-1)
            for row, i in enumerate(idx):
                logp[i] = lp[row]
                ntok[i] = cnt[row]
                if projection_site is not None:
                    proj[i] = float(pm[row])
    out = {"logp": logp, "n_tokens": ntok}
    if projection_site is not None:
        out["proj"] = proj
    return out


def _cache_kwarg(model: nn.Module) -> str:
    import inspect

    from .sites import _unwrap

    params = inspect.signature(_unwrap(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _score_shared(model, encoded, groups, batch_size, pad, device, current, logp, ntok, proj, unit):
    """Score answers that share prompts: one cached prompt pass per batch of distinct prompts."""
    prompts = sorted(groups, key=len)
    cache_kw = _cache_kwarg(model)
    per_batch = max(1, batch_size // max(1, round(len(encoded) / len(groups))))
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        pb = collate([Encoded(p, len(p), len(p)) for p in chunk], pad, "left", device)
        out = model(
            input_ids=pb.input_ids,
            attention_mask=pb.attention_mask,
            position_ids=pb.position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        first_lsm = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts answer token 0
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        current.pop("h", None)
        rows = [(g, i) for g, p in enumerate(chunk) for i in groups[p]]
        src = torch.tensor([g for g, _ in rows], device=device)
        cache.reorder_cache(src)
        answers = [
            encoded[i].input_ids[encoded[i].response_start : encoded[i].response_end]
            for _, i in rows
        ]
        a_len = max(len(a) for a in answers)
        ids = torch.full((len(rows), a_len), pad, dtype=torch.long, device=device)
        amask = torch.zeros((len(rows), a_len), dtype=torch.long, device=device)
        for r, a in enumerate(answers):
            ids[r, : len(a)] = torch.tensor(a, dtype=torch.long)
            amask[r, : len(a)] = 1
        real = pb.attention_mask.sum(-1)[src]  # real prompt tokens of each row
        pos = real[:, None] + torch.arange(a_len, device=device)[None]
        attn = torch.cat([pb.attention_mask[src], amask], dim=1)
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            **{cache_kw: cache},
        )
        lsm = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # column j predicts token j + 1
        tok_lp = torch.cat(
            [first_lsm[src].gather(-1, ids[:, :1]), lsm.gather(-1, ids[:, 1:, None])[..., 0]], 1
        )
        maskf = amask.to(tok_lp.dtype)
        lp = (tok_lp * maskf).sum(-1).double().cpu()
        cnt = amask.sum(-1).cpu()
        if unit is not None:
            p = current.pop("h").float() @ unit.to(device).float()
            pm = ((p * maskf).sum(-1) / maskf.sum(-1)).cpu()
        for r, (_, i) in enumerate(rows):
            logp[i] = lp[r]
            ntok[i] = cnt[r]
            if unit is not None:
                proj[i] = float(pm[r])


def measure(
    model: nn.Module,
    tokenizer,
    pairs,
    interventions: Sequence[Intervention] = (),
    *,
    neutral=None,
    projection_site: str | None = None,
    unit: torch.Tensor | None = None,
    batch_size: int = 16,
) -> dict:
    """Contrast, projection and coherence of the model steered by ``interventions`` (see module doc)."""
    from .extract.diffmeans import pair_examples

    al, mis = pair_examples(pairs.items)
    site = parse_site(projection_site, n_layers(model)) if projection_site is not None else None
    with steer(model, list(interventions)):
        s = score_answers(
            model, tokenizer, al + mis, batch_size=batch_size, projection_site=site, unit=unit
        )
        neu = None
        if neutral is not None:
            ex = [ChatExample.from_question(NEUTRAL_PROMPT, it.text) for it in neutral.items]
            neu = score_answers(model, tokenizer, ex, batch_size=batch_size)
    k = len(al)
    lp_al, lp_mis = s["logp"][:k], s["logp"][k:]
    n_al, n_mis = s["n_tokens"][:k].double(), s["n_tokens"][k:].double()
    diff = lp_mis - lp_al
    diff_tok = lp_mis / n_mis - lp_al / n_al
    res = {
        "contrast": float(diff.mean()),
        "contrast_sem": float(diff.std() / math.sqrt(k)) if k > 1 else float("nan"),
        "contrast_per_token": float(diff_tok.mean()),
        "frac_prefer_misaligned": float((diff > 0).double().mean()),
        "per_pair_contrast": [round(float(x), 5) for x in diff],
        "per_pair_contrast_per_token": [round(float(x), 6) for x in diff_tok],
    }
    if site is not None:
        res["projection"] = float(s["proj"].mean())
        res["projection_aligned"] = float(s["proj"][:k].mean())
        res["projection_misaligned"] = float(s["proj"][k:].mean())
    if neu is not None:
        res["perplexity"] = float(torch.exp(-neu["logp"].sum() / neu["n_tokens"].sum()))
    return res


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
) -> dict:
    """Dose-response of ``add`` at ``site`` (a site name, or several comma-separated: the same alpha
    at each) for each alpha; steering at all token positions. See the module docstring."""
    import sys

    from .steer import interventions_from_directions, parse_alphas

    alphas = parse_alphas(alphas)
    pairs = _load_probes(probes, "pairs").split(split)
    neu = _load_probes(neutral, "texts") if neutral is not None else None
    ivs0 = interventions_from_directions(
        directions, site, "add", 0.0, unit=unit, n_layers=n_layers(model)
    )
    for iv in ivs0:
        iv.check(model)
    proj_site = ivs0[0].site
    proj_unit = directions.unit(proj_site)
    questions = []
    if sample:
        ev = _load_probes(eval_probes)
        questions = [it.question for it in ev.items if it.question][:sample]
    rows = []
    for a in alphas:
        if progress:
            print(f"sweep: alpha {a:g}", file=sys.stderr)
        ivs = interventions_from_directions(
            directions, site, "add", a, unit=unit, n_layers=n_layers(model)
        )
        r = measure(
            model,
            tokenizer,
            pairs,
            ivs,
            neutral=neu,
            projection_site=proj_site,
            unit=proj_unit,
            batch_size=batch_size,
        )
        r["alpha"] = a
        if questions:
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
            r["samples"] = [
                {"question": q, "answer": ans} for q, ans in zip(questions, answers, strict=True)
            ]
        rows.append(r)
    result = {
        "model_id": model_id or getattr(getattr(model, "config", None), "_name_or_path", "unknown"),
        "site": site,
        "op": "add",
        "vector": "unit" if unit else "raw",
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
        r = measure(
            model,
            tokenizer,
            pairs,
            ab,
            neutral=neu,
            projection_site=proj_site,
            unit=proj_unit,
            batch_size=batch_size,
        )
        r["sites"] = [iv.site for iv in ab]
        result["ablate"] = r
    return result


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
        title_text="alpha (activation units along the unit direction)"
        if result.get("vector") == "unit"
        else "alpha (multiples of the raw direction)",
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


def write_json(result: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return path
