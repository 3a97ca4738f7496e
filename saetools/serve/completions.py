"""The legacy ``/v1/completions`` response layout (``text_completion``): choices of raw text, the
prompt echoed when asked, and logprobs as ``tokens``, ``token_logprobs``, ``top_logprobs`` maps and
``text_offset`` (what lm-evaluation-harness's ``local-completions`` reads to score a prompt).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from .protocol import CompletionRequest
from .responses import Collected, sse, usage


def text_completion(
    req: CompletionRequest,
    ids: list[list[int]],
    texts: list[str],
    got: Collected,
    base: dict,
    special: frozenset[str],
) -> dict:
    """The ``text_completion`` body of ``req`` (prompts ``ids``, whose texts are ``texts``) from
    its collected events; ``special``: the texts of the tokenizer's special tokens."""
    total = req.n * len(ids)
    deltas, gen, prompt_lp, reasons = got.deltas, got.entries, got.prompt, got.reasons
    choices = []
    for c in range(total):
        head = texts[c // req.n] if req.echo else ""
        lp = None
        if req.params.logprobs:
            lp, _ = _legacy_logprobs(prompt_lp[c], 0, special)
            more, _ = _legacy_logprobs(gen[c], len(head), special)
            lp = {k: lp[k] + more[k] for k in lp}
        choices.append(
            {
                "text": head + "".join(deltas[c]),
                "index": c,
                "logprobs": lp,
                "finish_reason": reasons[c],
            }
        )
    return dict(base, choices=choices, usage=usage(sum(len(p) for p in ids), got.completion_tokens))


async def text_events(
    req: CompletionRequest,
    ids: list[list[int]],
    texts: list[str],
    q: asyncio.Queue,
    base: dict,
    special: frozenset[str],
) -> AsyncIterator[str]:
    """The ``text_completion`` events of a streaming ``req``, from the engine's events on ``q``;
    an error event is sent as an error body and ends the stream."""
    total = req.n * len(ids)
    offset = [0] * total

    def chunk(c, text, entries=None, finish=None):
        lp = None
        if req.params.logprobs:
            lp, offset[c] = _legacy_logprobs(entries or [], offset[c], special)
        choice = {"text": text, "index": c, "logprobs": lp, "finish_reason": finish}
        d = dict(base, choices=[choice])
        if req.include_usage:
            d["usage"] = None
        return sse(d)

    completion, left = 0, total
    if req.echo and req.params.prompt_logprobs is None:
        for c in range(total):
            offset[c] = len(texts[c // req.n])
            yield chunk(c, texts[c // req.n])
    while left:
        ev = await q.get()
        if ev[0] == "prompt":
            c = ev[1]
            yield chunk(c, texts[c // req.n], ev[2])
            offset[c] = len(texts[c // req.n])
        elif ev[0] == "delta":
            yield chunk(ev[1], ev[2], ev[3])
        elif ev[0] == "finish":
            completion += ev[3]
            left -= 1
            yield chunk(ev[1], "", finish=ev[2])
        else:
            yield sse(ev[2].body())
            break
    if req.include_usage and not left:
        yield sse(dict(base, choices=[], usage=usage(sum(len(p) for p in ids), completion)))
    yield "data: [DONE]\n\n"


def _legacy_logprobs(
    entries: list[dict], offset: int, special: frozenset[str] = frozenset()
) -> tuple[dict, int]:
    """Engine logprob entries in the legacy completions layout (``tokens``, ``token_logprobs``,
    ``top_logprobs`` as token-to-logprob maps, ``text_offset``); returns it and the next offset.
    Special tokens (``special``: their texts; BOS, end-of-sequence) take no room in the text."""
    out: dict[str, list] = {
        "tokens": [],
        "token_logprobs": [],
        "top_logprobs": [],
        "text_offset": [],
    }
    for e in entries:
        out["tokens"].append(e["token"])
        out["token_logprobs"].append(e["logprob"])
        top = None
        if e["logprob"] is not None:
            top = {}
            for t in e["top_logprobs"]:
                top.setdefault(t["token"], t["logprob"])  # two ids with one text: keep the likelier
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += 0 if e["token"] in special else len(e["token"])
    return out, offset
