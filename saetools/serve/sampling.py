"""Choosing each row's next token and reporting log-probabilities, on one batch's logits.

Reported log-probabilities are ``log_softmax`` of the (steered) float32 logits, **before**
temperature and top-p, as OpenAI does (:func:`logprobs_of`); the token is sampled from those same
logits divided by the row's temperature, then nucleus-filtered (:func:`sample`); ``temperature=0``
is greedy (argmax). Each sampling row draws from its own seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def logprobs_of(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]
) -> list[tuple[float, list[tuple[int, float]]]]:
    """Per row of ``logits [n, V]``: the log-probability of ``targets[row]`` and the ``ks[row]``
    likeliest ``(token id, log-probability)`` pairs (float32 ``log_softmax``)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, targets[:, None])[:, 0].tolist()
    k = max(ks, default=0)
    vals, idx = ([], []) if not k else (t.tolist() for t in logp.topk(k, dim=-1))
    return [
        (chosen[j], list(zip(idx[j][:kk], vals[j][:kk], strict=True)) if kk else [])
        for j, kk in enumerate(ks)
    ]


def sample(
    logits: torch.Tensor, rows: Sequence, crashed: Callable[[Any], None] | None = None
) -> torch.Tensor:
    """Greedy rows take the argmax; the others sample at their temperature within their top-p.
    A row whose sampling raises is handed to ``crashed`` (in the ``except`` block) and keeps its
    argmax; without ``crashed`` the exception propagates."""
    out = logits.argmax(dim=-1)
    hot = [i for i, r in enumerate(rows) if r.params.temperature > 0]
    if not hot:
        return out
    dev = logits.device
    sub = logits[torch.tensor(hot, device=dev)]
    temp = torch.tensor([rows[i].params.temperature for i in hot], device=dev, dtype=sub.dtype)
    probs = torch.softmax(sub / temp[:, None], dim=-1)
    top_p = [rows[i].params.top_p for i in hot]
    if any(p < 1.0 for p in top_p):
        tp = torch.tensor(top_p, device=dev, dtype=probs.dtype)
        sp, order = probs.sort(dim=-1, descending=True)
        before = sp.cumsum(dim=-1) - sp  # mass of the more likely tokens
        sp = sp.masked_fill(before >= tp[:, None], 0.0)  # the first token always stays
        probs = torch.zeros_like(probs).scatter_(-1, order, sp)
    for j, i in enumerate(hot):
        try:
            out[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        except RuntimeError:
            if crashed is None:
                raise
            crashed(rows[i])
    return out
