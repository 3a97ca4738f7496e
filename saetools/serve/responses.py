"""OpenAI response bodies: what both endpoints share (the ``id``/``object``/``created`` header,
``usage``, server-sent event lines, collecting an engine's events per choice) and the
``/v1/chat/completions`` response and stream chunks. The legacy ``/v1/completions`` layout is in
:mod:`saetools.serve.completions`.

Events come from :class:`~saetools.serve.engine.Engine` through an ``asyncio.Queue``, with the
choice index already offset (``prompt * n + j``); see :meth:`saetools.serve.app.ChatServer._submit`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from .. import __version__
from .engine import EngineRequest
from .protocol import ChatRequest


def response_base(kind: str, model_name: str) -> dict:
    """The fields every response and chunk starts with; ``kind`` is the ``object``."""
    prefix = "cmpl" if kind == "text_completion" else "chatcmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model_name,
        "system_fingerprint": f"saetools-{__version__}",
    }


def usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def sse(d: dict) -> str:
    """One server-sent event carrying ``d`` as JSON."""
    return f"data: {json.dumps(d)}\n\n"


@dataclass
class Collected:
    deltas: list[list[str]]  # text pieces per choice
    entries: list[list[dict]]  # logprob entries of generated tokens per choice
    prompt: list[list[dict]]  # prompt logprob entries per choice (prompt_logprobs only)
    reasons: list[str | None]
    completion_tokens: int


async def collect(q: asyncio.Queue, total: int, handles: Sequence[EngineRequest]) -> Collected:
    """Wait for the engine events of ``total`` choices; an error event raises its APIError. The
    handles are cancelled on the way out (a no-op when done; stops the rows if the client left)."""
    got = Collected(
        [[] for _ in range(total)], [[] for _ in range(total)], [[] for _ in range(total)],
        [None] * total, 0,
    )  # fmt: skip
    left = total
    try:
        while left:
            ev = await q.get()
            if ev[0] == "prompt":
                got.prompt[ev[1]] = ev[2]
            elif ev[0] == "delta":
                got.deltas[ev[1]].append(ev[2])
                got.entries[ev[1]].extend(ev[3])
            elif ev[0] == "finish":
                got.reasons[ev[1]] = ev[2]
                got.completion_tokens += ev[3]
                left -= 1
            else:
                raise ev[2]
    finally:
        for h in handles:
            h.cancelled = True
    return got


def chat_completion(req: ChatRequest, n_prompt: int, got: Collected, base: dict) -> dict:
    """The ``chat.completion`` body of ``req`` (a prompt of ``n_prompt`` tokens) from its events."""
    texts, lps, reasons = got.deltas, got.entries, got.reasons
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": "".join(texts[i])},
            "logprobs": {"content": lps[i], "refusal": None} if req.params.logprobs else None,
            "finish_reason": reasons[i],
        }
        for i in range(req.n)
    ]
    return dict(base, choices=choices, usage=usage(n_prompt, got.completion_tokens))


async def chat_events(
    req: ChatRequest, n_prompt: int, q: asyncio.Queue, base: dict
) -> AsyncIterator[str]:
    """The ``chat.completion.chunk`` events of a streaming ``req``, from the engine's events on
    ``q``; an error event is sent as an error body and ends the stream."""

    def chunk(choices, totals=None):
        d = dict(base, choices=choices)
        if req.include_usage:
            d["usage"] = totals
        return sse(d)

    completion = 0
    left = req.n
    for i in range(req.n):
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
    while left:
        ev = await q.get()
        if ev[0] == "delta":
            lp = {"content": ev[3], "refusal": None} if req.params.logprobs else None
            yield chunk(
                [
                    {
                        "index": ev[1],
                        "delta": {"content": ev[2]},
                        "logprobs": lp,
                        "finish_reason": None,
                    }
                ]
            )
        elif ev[0] == "finish":
            completion += ev[3]
            left -= 1
            yield chunk([{"index": ev[1], "delta": {}, "logprobs": None, "finish_reason": ev[2]}])
        else:
            yield sse(ev[2].body())
            break
    if req.include_usage and not left:
        yield chunk([], usage(n_prompt, completion))
    yield "data: [DONE]\n\n"
