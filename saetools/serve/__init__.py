"""An OpenAI-compatible HTTP server for a (steered) model: ``/v1/chat/completions``, the legacy
``/v1/completions`` (raw prompts or token ids; ``echo`` with ``logprobs`` scores the prompt, as
lm-evaluation-harness's loglikelihood tasks ask) and ``/v1/models``.

Three pieces, usable alone:

* :class:`Engine`: the model in one worker thread, batching rows that arrive together and
  decoding them with the KV cache, rows leaving and joining between steps (continuous batching).
* :class:`ChatServer`: request validation (OpenAI-style 4xx errors), tokenization through the chat
  template, the ``saetools`` steering extension field, response and SSE stream formatting.
  :meth:`ChatServer.app` is the FastAPI application; the event loop only awaits queues and never
  runs the model.
* :func:`serve` (blocking, what ``saetools serve`` runs) and :func:`serve_in_thread` (a context
  manager running uvicorn in a background thread on a loopback port, for tests and scripts).

Modules, bottom to top:

* ``protocol``: parsing and validating request bodies into typed requests, the server's settings
  (:class:`ServeConfig`), :class:`APIError`, :class:`SamplingParams`.
* ``limits``: what one request may cost (body size, work per request, steering magnitudes, the
  worker's queue) and the checks that hold it to that.
* ``middleware``: request ids (``x-request-id``) and the logged, generic 500.
* ``steering``: the ``saetools`` field turned into interventions per request (``Steering``), and a
  batch's interventions applied row by row (``SteerPlan``).
* ``sampling``: choosing each row's token and reporting logprobs from a batch's logits.
* ``engine``: :class:`Engine`, its rows and batches, the worker loop, a row's failure kept to it.
* ``responses``: response bodies both endpoints share (usage, SSE lines, collecting events) and
  the chat completion layout.
* ``completions``: the legacy ``/v1/completions`` layout (text offsets, logprob maps).
* ``app``: :class:`ChatServer`, the FastAPI routes, :func:`serve`, :func:`serve_in_thread`.
"""

from __future__ import annotations

from .app import ChatServer, RunningServer, serve, serve_in_thread
from .engine import Engine
from .protocol import (
    CLAMP_KEYS,
    IGNORED_IF_DEFAULT,
    STEER_KEYS,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingParams,
    ServeConfig,
)
from .steering import Steering, SteerPlan

__all__ = [
    "APIError",
    "CLAMP_KEYS",
    "ChatRequest",
    "ChatServer",
    "CompletionRequest",
    "Engine",
    "IGNORED_IF_DEFAULT",
    "RunningServer",
    "STEER_KEYS",
    "SamplingParams",
    "ServeConfig",
    "SteerPlan",
    "Steering",
    "serve",
    "serve_in_thread",
]
