"""What one request may cost the server, and the checks that hold it to that.

Each limit is a :class:`~saetools.serve.protocol.ServeConfig` field with a ``saetools serve`` flag
(``None`` or the flag's ``0``: unbounded); docs/serve.md lists them under "Limits".

* ``max_body_bytes`` (``--max-body-bytes``): a larger body gets **413** before it is parsed
  (:func:`read_body`: the ``Content-Length`` header, then the bytes actually received, so a
  chunked body is cut off too).
* ``max_request_tokens`` (``--max-request-tokens``): the work one request asks for
  (:func:`request_work`: every choice's prompt and ``max_tokens``, tokens whose logprobs are
  returned counting once per reported alternative too); more is a **400** naming the limit.
* ``max_steer_magnitude`` (``--max-steer-magnitude``): the largest steering a request may ask
  for (:func:`magnitude_problem`): ``|alpha| x |vector|`` of ``add``, ``|value|`` of ``clamp`` and
  SAE latent clamp values. Beyond it float32 activations (and bfloat16 ones, which share its
  range) overflow into infinities and NaN logits; more is a **400**.
* ``max_queue`` (``--max-queue``): rows waiting for the worker (:func:`admit`); a request that
  would pass it gets **429** (or a 400 when it alone needs more rows than the queue holds).

The shape checks of a request (types, ranges, the JSON nesting depth) are in
:mod:`saetools.serve.protocol`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from starlette.requests import ClientDisconnect

from .protocol import APIError, ChatRequest, CompletionRequest, ServeConfig, bad_request

# --------------------------------------------------------------------------------------------
# The body


def body_too_large(limit: int, size: int | None = None) -> APIError:
    """The 413 answer to a body over ``limit`` bytes (``size``: its Content-Length, if known)."""
    got = f"{size} bytes" if size is not None else "more bytes"
    return APIError(
        413,
        f"the request body is {got}, more than this server accepts ({limit} bytes, "
        "--max-body-bytes)",
        code="request_too_large",
    )


async def read_body(request, limit: int | None) -> bytes:
    """The body of ``request`` (a Starlette request), refused with 413 as soon as it is known to
    pass ``limit`` bytes: from its ``Content-Length`` before reading anything, else while its
    chunks arrive. A client that leaves while sending gets 499 (nobody reads it)."""
    if limit is None:
        return await request.body()
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise bad_request("the Content-Length header is not a number") from None
        if size > limit:
            raise body_too_large(limit, size)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(499, "the client closed the request") from None
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------
# The work a request asks for


def request_work(req: ChatRequest | CompletionRequest, prompt_lengths: Sequence[int]) -> int:
    """The tokens a request makes the server hold: for every choice (prompts times ``n``), its
    prompt and its ``max_tokens``; a token whose logprobs are returned counts ``1 + k`` times
    (``k`` alternatives reported), since each reported alternative costs memory too."""
    p = req.params
    per_prompt = 1 + p.prompt_logprobs if p.prompt_logprobs is not None else 1
    per_new = 1 + p.top_logprobs if p.logprobs else 1
    return req.n * sum(n * per_prompt + p.max_tokens * per_new for n in prompt_lengths)


def check_work(
    req: ChatRequest | CompletionRequest, prompt_lengths: Sequence[int], cfg: ServeConfig
) -> None:
    """Refuse (400) a request whose :func:`request_work` passes ``cfg.max_request_tokens``."""
    limit = cfg.max_request_tokens
    if limit is None:
        return
    work = request_work(req, prompt_lengths)
    if work > limit:
        chat = isinstance(req, ChatRequest)
        raise bad_request(
            f"this request asks for {work} tokens of work, more than this server allows per "
            f"request ({limit}, --max-request-tokens): every choice counts its prompt tokens "
            "and max_tokens, and tokens whose logprobs are returned count once more per "
            "alternative (top_logprobs / logprobs). Lower n, max_tokens or the number of "
            "alternatives, or send fewer or shorter prompts per request",
            "messages" if chat else "prompt",
            "request_too_large",
        )


# --------------------------------------------------------------------------------------------
# Steering magnitudes


def magnitude_problem(iv, limit: float) -> str | None:
    """What is too large in intervention ``iv`` (an :class:`~saetools.steer.Intervention` or a
    :class:`~saetools.sae.LatentClamp`) for the bound ``limit``, or None when nothing is."""
    if iv.op == "add":
        size = abs(iv.alpha) * float(iv.vector.double().norm())
        what = f"adds a vector of norm {size:.3g} (|alpha| x |vector|)"
    elif iv.op == "clamp":
        size = abs(float(iv.value))
        what = f"clamps to {size:.3g}"
    elif iv.op == "latent_clamp":
        size = float(iv.values.double().abs().max()) if iv.values.numel() else 0.0
        what = f"clamps a latent to {size:.3g}"
    else:
        return None
    if math.isfinite(size) and size <= limit:
        return None
    return (
        f"{iv.op} at {iv.site} {what}: at most {limit:g} is allowed (--max-steer-magnitude), "
        "beyond it the activations overflow"
    )


# --------------------------------------------------------------------------------------------
# The worker's queue


def admit(req: ChatRequest | CompletionRequest, cfg: ServeConfig, waiting: int) -> None:
    """Refuse a request (429) when its rows would make the worker's queue (``waiting`` rows now)
    longer than ``max_queue``: a burst gets a clear retry-later answer instead of unbounded
    memory."""
    limit = cfg.max_queue
    rows = req.n * len(getattr(req, "prompts", [None]))
    if limit is not None and rows > limit:
        raise bad_request(
            f"this request needs {rows} rows (prompts times n), more than the server queues "
            f"at once ({limit}, --max-queue); split it",
            "prompt" if hasattr(req, "prompts") else "n",
        )
    if limit is not None and waiting + rows > limit:
        raise APIError(
            429,
            f"the server is busy: {waiting} rows wait for the model (at most "
            f"{limit}, --max-queue); retry later",
            type="rate_limit_error",
            code="queue_full",
        )
