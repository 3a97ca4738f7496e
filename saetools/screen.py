"""Data screening: which training examples push a model toward misalignment, and which make safe
interleaving data.

* :func:`screen_projection`: for each training example (a chat record), the mean projection of the
  dataset's answer tokens on a unit direction at a site, minus the same for the model's own greedy
  answer to the same prompt. A large positive ``diff`` means the example's answer sits further along
  the misalignment direction than what the model would say itself: training on it pulls the model
  that way. Rows are ranked by ``diff``, largest first.
* :func:`screen_perplexity_gap`: for each candidate example, the per-token negative log-likelihood of
  its answer under an aligned and a misaligned model; ``gap = nll_misaligned - nll_aligned`` (the
  log of the perplexity ratio). A large gap means the misaligned model finds the example surprising
  while the aligned model does not: such examples pull a fine-tune back toward the aligned model,
  and the top ones are selected as interleaving data.

Both return lists of dicts, ranked, ready for :func:`write_jsonl`; :func:`histogram_figure` draws
the distribution with plotly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

import probes

from .capture import ChatExample
from .scoring import NEUTRAL_PROMPT, answer_projections, eval_mode, score_answers
from .steer import generate

__all__ = [
    "ScreenError",
    "candidate_examples",
    "histogram_figure",
    "screen_perplexity_gap",
    "screen_projection",
    "write_jsonl",
]


class ScreenError(ValueError):
    """Bad screening input: empty data, a set without answers, a missing site."""


def candidate_examples(data, split: str | None = None) -> tuple[list[str], list[ChatExample]]:
    """``(ids, examples)`` with answers from a probe set (name, path or loaded set) or a list of
    :class:`ChatExample`. chat: the prompt messages and the assistant's last message; pairs: the
    question and its **aligned** answer; texts: the text as the answer to
    :data:`saetools.scoring.NEUTRAL_PROMPT`. A questions set has no answers and is refused."""
    if isinstance(data, Sequence) and not isinstance(data, str):
        exs = list(data)
        if not all(isinstance(e, ChatExample) for e in exs):
            raise ScreenError("a list of screening data must hold ChatExample objects")
        ids = [str(i) for i in range(len(exs))]
    else:
        ps = probes.as_set(data)
        if split not in (None, "all"):
            ps = ps.split(split)
        ids, exs = [], []
        for it in ps.items:
            if ps.kind == "chat":
                msgs = tuple(dict(m) for m in it.messages)
                exs.append(ChatExample(messages=msgs[:-1], response=msgs[-1]["content"]))
            elif ps.kind == "pairs":
                exs.append(ChatExample.from_question(it.question, it.aligned, it.system))
            elif ps.kind == "texts":
                exs.append(ChatExample.from_question(NEUTRAL_PROMPT, it.text))
            else:
                raise ScreenError(
                    f"probe set {ps.name!r} is a {ps.kind!r} set without answers; screening needs "
                    "chat, pairs or texts"
                )
            ids.append(it.id)
    if not exs:
        raise ScreenError("no examples to screen")
    for i, e in zip(ids, exs, strict=True):
        if not e.response or not e.response.strip():
            raise ScreenError(f"example {i} has no answer to screen")
    return ids, exs


def _prompt_text(e: ChatExample) -> str:
    return next((m["content"] for m in reversed(e.messages) if m["role"] == "user"), "")


def screen_projection(
    model: nn.Module,
    tokenizer,
    data,
    directions,
    site: str,
    *,
    split: str | None = None,
    limit: int | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Projection difference per example, ranked (see the module docstring).

    Each row: ``id``, ``prompt``, ``answer``, ``own_answer`` (the model's greedy answer, with
    ``max_new_tokens``), ``proj_data``, ``proj_own`` (mean projection of the answer tokens on the unit
    direction at ``site``), ``diff = proj_data - proj_own`` (``None`` when the own answer is empty;
    those rows go last) and ``rank`` (1 = pushes most toward misalignment)."""
    ids, exs = candidate_examples(data, split)
    ids, exs = ids[: limit or None], exs[: limit or None]
    if site not in directions:
        raise ScreenError(
            f"the direction file has no vector for site {site}; it has: {', '.join(directions.sites)}"
        )
    unit = directions.unit(site)
    if unit.ndim == 2:
        unit = unit[0]
    own: list[str] = []
    with tqdm(total=len(exs), desc="own answers", unit="ex", disable=not progress) as bar:
        for start in range(0, len(exs), batch_size):
            chunk = exs[start : start + batch_size]
            own += generate(
                model,
                tokenizer,
                [[dict(m) for m in e.messages] for e in chunk],
                max_new_tokens=max_new_tokens,
                temperature=0.0,
                batch_size=batch_size,
            )
            bar.update(len(chunk))
    p_data = answer_projections(model, tokenizer, exs, site, unit, batch_size=batch_size)
    own_exs = [ChatExample(messages=e.messages, response=o) for e, o in zip(exs, own, strict=True)]
    p_own = answer_projections(model, tokenizer, own_exs, site, unit, batch_size=batch_size)
    rows = []
    for i, e, o, pd, po in zip(ids, exs, own, p_data, p_own, strict=True):
        rows.append(
            {
                "id": i,
                "prompt": _prompt_text(e),
                "answer": e.response,
                "own_answer": o,
                "proj_data": pd,
                "proj_own": po,
                "diff": None if po is None or pd is None else pd - po,
                "site": site,
            }
        )
    rows.sort(key=lambda r: (r["diff"] is None, -(r["diff"] or 0.0)))
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    return rows


def _answer_nll(model, tokenizer, exs, batch_size) -> torch.Tensor:
    with eval_mode(model):
        s = score_answers(model, tokenizer, exs, batch_size=batch_size)
    return -s["logp"] / s["n_tokens"].clamp(min=1).double()


def screen_perplexity_gap(
    aligned: nn.Module,
    misaligned: nn.Module,
    tokenizer,
    data,
    *,
    split: str | None = None,
    limit: int | None = None,
    top: int | None = None,
    batch_size: int = 16,
) -> list[dict]:
    """Perplexity gap per candidate example, ranked largest first (see the module docstring).

    Each row: ``id``, ``prompt``, ``answer``, ``nll_aligned``, ``nll_misaligned`` (per answer token,
    nats), ``gap = nll_misaligned - nll_aligned``, ``rank`` and ``selected`` (the ``top`` first rows;
    all rows with a positive gap when ``top`` is None). Both models must share ``tokenizer``."""
    ids, exs = candidate_examples(data, split)
    ids, exs = ids[: limit or None], exs[: limit or None]
    if top is not None and top < 0:
        raise ScreenError(f"top must be >= 0, not {top}")
    nll_a = _answer_nll(aligned, tokenizer, exs, batch_size)
    nll_m = _answer_nll(misaligned, tokenizer, exs, batch_size)
    rows = [
        {
            "id": i,
            "prompt": _prompt_text(e),
            "answer": e.response,
            "nll_aligned": float(a),
            "nll_misaligned": float(m),
            "gap": float(m - a),
        }
        for i, e, a, m in zip(ids, exs, nll_a, nll_m, strict=True)
    ]
    rows.sort(key=lambda r: -r["gap"])
    for k, r in enumerate(rows, 1):
        r["rank"] = k
        r["selected"] = (k <= top) if top is not None else r["gap"] > 0
    return rows


def write_jsonl(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """One JSON object per line, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return path


def histogram_figure(rows: Sequence[dict], key: str, title: str | None = None):
    """Histogram of ``key`` (``diff`` or ``gap``) over the rows, selected rows in another colour."""
    import plotly.graph_objects as go

    vals = [r[key] for r in rows if r.get(key) is not None]
    fig = go.Figure()
    if any("selected" in r for r in rows):
        sel = [r[key] for r in rows if r.get("selected") and r.get(key) is not None]
        rest = [r[key] for r in rows if not r.get("selected") and r.get(key) is not None]
        fig.add_trace(go.Histogram(x=rest, name="not selected", nbinsx=40, opacity=0.75))
        fig.add_trace(go.Histogram(x=sel, name="selected", nbinsx=40, opacity=0.75))
        fig.update_layout(barmode="overlay")
    else:
        fig.add_trace(go.Histogram(x=vals, nbinsx=40, name=key))
    label = {
        "diff": "projection of the data's answer minus the model's own answer",
        "gap": "NLL per token: misaligned model minus aligned model (nats)",
    }.get(key, key)
    fig.update_layout(
        title=title or f"screening: {label} ({len(vals)} examples)",
        xaxis_title=label,
        yaxis_title="examples",
        template="plotly_white",
    )
    return fig
