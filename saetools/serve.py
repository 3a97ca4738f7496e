"""An OpenAI-compatible HTTP server for a (steered) model: ``/v1/chat/completions``, the legacy
``/v1/completions`` (raw prompts or token ids; ``echo`` with ``logprobs`` scores the prompt, as
lm-evaluation-harness's loglikelihood tasks ask) and ``/v1/models``.

Three pieces, usable alone:

* :class:`Engine`: the model in **one worker thread**. Requests are queued as rows (one row per
  choice, so ``n=3`` is three rows); the worker collects the rows that arrive within
  ``batch_wait_ms`` of each other (up to ``max_batch``), left-pads their prompts into one batch and
  decodes them together with the KV cache, each row with its own sampling parameters, seed, stop
  strings and steering. Between decode steps, rows that finished leave the batch (their KV-cache
  rows are dropped) and rows waiting in the queue join it: they are prefilled in a forward of their
  own and their cache is merged into the running one, left-padded (continuous batching). Joining
  needs a plain dynamic KV cache; models with sliding-window layers (Mistral, Gemma 2) run batch
  after batch instead.
* :class:`ChatServer`: request validation (OpenAI-style 4xx errors), tokenization through the chat
  template (in its own thread, with its own tokenizer copy), the ``saetools`` steering extension
  field, response and SSE stream formatting. :meth:`ChatServer.app` is the FastAPI application; the
  event loop only awaits queues and never runs the model.
* :func:`serve` (blocking, what ``saetools serve`` runs) and :func:`serve_in_thread` (a context
  manager running uvicorn in a background thread on a loopback port, for tests and scripts).

Per-row steering
----------------
Rows with different steering share a batch. For each site, the hook applies every intervention
present in the batch to the rows that asked for it (``torch.where`` on a row mask), in the order each
request gave. Positions follow :mod:`saetools.steer`: ``prompt`` steers the prefill forward (every
prompt column, left padding included, which attention masks out), ``generated`` the decode steps
(each sees one new token), ``all`` both.

Logprobs
--------
Reported log-probabilities are ``log_softmax`` of the model's (steered) float32 logits, **before**
temperature and top-p, as OpenAI does; the token is sampled from those same logits (divided by the
temperature, then nucleus-filtered). ``temperature=0`` is greedy (argmax).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import inspect
import json
import math
import queue
import random
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from fastapi import Request
from torch import nn

from .sites import base_model, hooks, n_layers, parse_site, parse_sites
from .steer import (
    OPS,
    POSITIONS,
    Intervention,
    SteeringError,
    context_length,
    interventions_from_directions,
    pad_token_id,
)

__all__ = [
    "APIError",
    "ChatServer",
    "Engine",
    "SamplingParams",
    "ServeConfig",
    "serve",
    "serve_in_thread",
]

STEER_KEYS = {"site", "op", "alpha", "value", "direction", "vector", "unit", "positions"}
CLAMP_KEYS = {"sae", "latents", "positions"}
IGNORED_IF_DEFAULT = {
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "audio": (None,),
    "prediction": (None,),
}


# --------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    """An error returned to the client as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --------------------------------------------------------------------------------------------
# Engine: the model in one worker thread


@dataclass(frozen=True)
class SamplingParams:
    """How one row is decoded. ``temperature=0`` is greedy; ``seed`` makes sampling reproducible.

    ``max_tokens=0`` scores the prompt only. ``prompt_logprobs=k`` (not None) reports every prompt
    token's log-probability given the tokens before it, with the ``k`` most likely alternatives
    (the first token has none). ``eos_logprob`` also reports the end-of-sequence token that ends a
    choice (``/v1/completions`` does, ``/v1/chat/completions`` does not)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    prompt_logprobs: int | None = None
    eos_logprob: bool = False


class _Request:
    """What the engine knows of a request: where to send events, and whether the client left."""

    def __init__(self, sink: Callable[[tuple], None]):
        self.sink = sink
        self.cancelled = False

    def emit(self, event: tuple) -> None:
        try:
            self.sink(event)
        except Exception:  # the client is gone (closed event loop, ...): stop generating for it
            self.cancelled = True


class _Row:
    """One choice being generated."""

    def __init__(
        self,
        request: _Request,
        index: int,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        interventions: tuple[Intervention, ...],
        steer_key: str,
        device: torch.device,
    ):
        self.request = request
        self.index = index
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.interventions = interventions
        self.steer_key = steer_key
        seed = params.seed + index if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.tokens: list[int] = []  # every sampled token (eos included)
        self.text_tokens: list[int] = []  # the tokens that make the text (eos excluded)
        self.entries: list[dict | None] = []  # logprob entry per text token
        self.cum_len: list[int] = []  # text length after each text token
        self.emitted = 0  # characters sent
        self.committed = 0  # logprob entries sent
        self.done = False


class Engine:
    """Runs ``model`` in one worker thread and batches the rows it is given (see the module docstring).

    ``submit`` may be called from any thread; events go to each request's ``sink`` (called from the
    worker thread): ``("prompt", index, logprob_entries)`` (first, only with
    ``prompt_logprobs``), ``("delta", index, text, logprob_entries)``, ``("finish", index, reason,
    completion_tokens)`` and ``("error", index, APIError)``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        max_batch: int = 16,
        batch_wait_ms: float = 5.0,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, not {batch_wait_ms}")
        self.model = model
        self.tokenizer = copy.deepcopy(tokenizer)  # decoding only, in the worker thread
        self.max_batch = int(max_batch)
        self.batch_wait = float(batch_wait_ms) / 1000.0
        self.pad_id = pad_token_id(self.tokenizer)
        self.device = next(model.parameters()).device
        self.context_length = context_length(model)
        gc = getattr(base_model(model), "generation_config", None)
        eos = set()
        for e in (getattr(gc, "eos_token_id", None), self.tokenizer.eos_token_id):
            if e is None:
                continue
            eos.update([e] if isinstance(e, int) else list(e))
        self.eos = eos
        self.vocab = int(base_model(model).get_output_embeddings().weight.shape[0])
        # transformers >= 5.2x names the KV cache argument ``cache``; earlier 5.x ``past_key_values``
        params = inspect.signature(base_model(model).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._byte_decoder = _byte_decoder(self.tokenizer)
        self._queue: queue.Queue[_Row] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token_text: dict[int, str] = {}
        self.stats = {"batches": 0, "rows": 0, "tokens": 0}

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="saetools-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:  # fail whatever is still queued
            try:
                row = self._queue.get_nowait()
            except queue.Empty:
                break
            row.request.emit(("error", row.index, APIError(503, "the server is shutting down")))

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        *,
        n: int = 1,
        interventions: Sequence[Intervention] = (),
        steer_key: str = "",
        sink: Callable[[tuple], None],
    ) -> _Request:
        """Queue ``n`` choices for one prompt; returns a handle whose ``cancelled`` stops them."""
        req = _Request(sink)
        ivs = tuple(interventions)
        for i in range(n):
            self._queue.put(_Row(req, i, prompt_ids, params, ivs, steer_key, self.device))
        return req

    # ---------------------------------------------------------------- worker
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            rows = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(rows) < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    rows.append(
                        self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            rows = [r for r in rows if not r.request.cancelled]
            if not rows:
                continue
            try:
                with torch.inference_mode():
                    self._run(rows)
            except Exception as e:  # never let one batch kill the worker
                err = APIError(
                    500,
                    f"generation failed: {type(e).__name__}: {e}",
                    type="server_error",
                )
                for r in rows:
                    if not r.done:
                        r.done = True
                        r.request.emit(("error", r.index, err))

    def _tok_text(self, t: int) -> tuple[str, list[int]]:
        """A token's text and its bytes (the raw bytes for byte-level BPE vocabularies, so a token
        holding part of a UTF-8 character reports its real bytes, with U+FFFD as its text)."""
        got = self._token_text.get(t)
        if got is None:
            text = self.tokenizer.decode([t])
            raw = None
            if self._byte_decoder is not None:
                piece = self.tokenizer.convert_ids_to_tokens(t)
                if isinstance(piece, str) and all(c in self._byte_decoder for c in piece):
                    raw = [self._byte_decoder[c] for c in piece]
            got = (text, raw if raw is not None else list(text.encode("utf-8")))
            self._token_text[t] = got
        return got

    def _entry(self, t: int, lp: float, top: list[tuple[int, float]]) -> dict:
        text, raw = self._tok_text(t)
        return {
            "token": text,
            "logprob": lp,
            "bytes": raw,
            "top_logprobs": [
                {"token": self._tok_text(i)[0], "logprob": v, "bytes": self._tok_text(i)[1]}
                for i, v in top
            ],
        }

    def _forward(self, plan: _SteerPlan, phase: str, **kw):
        plan.phase = phase
        with (
            hooks(self.model, plan.hook_fns(self.model)) if plan.sites else contextlib.nullcontext()
        ):
            return self.model(use_cache=True, **kw)

    def _prefill(self, rows: list[_Row]) -> _Batch:
        """One forward over the left-padded prompts; samples each row's first token."""
        dev = self.device
        b = len(rows)
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = len(r.prompt_ids)
            ids[i, width - p :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attn[i, width - p :] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        self.stats["rows"] += b
        # prompts are right-aligned: the last columns cover every scored prompt
        keep = max(
            (len(r.prompt_ids) for r in rows if r.params.prompt_logprobs is not None), default=1
        )
        out = self._forward(
            _SteerPlan(rows, dev),
            "prompt",
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            logits_to_keep=keep,
        )
        cache = out.cache if self._cache_kw == "cache" else out.past_key_values
        batch = _Batch(rows, cache, attn, pos[:, -1] + 1, None)
        for i, r in enumerate(rows):
            if r.params.prompt_logprobs is not None and not r.request.cancelled:
                r.request.emit(("prompt", r.index, self._prompt_entries(r, out.logits[i])))
            if r.params.max_tokens == 0 and not r.done:  # scoring only
                r.done = True
                r.request.emit(("finish", r.index, "length", 0))
        batch.tokens = self._step(rows, out.logits[:, -1, :].float())
        return batch

    def _prompt_entries(self, r: _Row, logits: torch.Tensor) -> list[dict]:
        """Logprob entries of ``r``'s prompt tokens from its prefill ``logits [width, V]`` (left
        padded: the prompt is the last ``p`` columns; column ``j`` predicts token ``j + 1``)."""
        p, k = len(r.prompt_ids), r.params.prompt_logprobs or 0  # logits: at least p columns
        first = r.prompt_ids[0]
        entries = [dict(self._entry(first, 0.0, []), logprob=None, top_logprobs=[])]
        if p == 1:
            return entries
        target = torch.tensor(r.prompt_ids[1:], device=logits.device)
        scored = _logprobs_of(logits[-p:-1, : self.vocab], target, [k] * (p - 1))
        entries.extend(
            self._entry(t, lp, top) for t, (lp, top) in zip(r.prompt_ids[1:], scored, strict=True)
        )
        return entries

    def _run(self, rows: list[_Row]) -> None:
        """Decode ``rows`` to the end. Between steps, finished rows leave the batch and, when the
        KV cache is a plain dynamic cache, waiting rows join it (prefilled apart, then merged)."""
        self.stats["batches"] += 1
        batch = self._prefill(list(rows))  # a copy: ``rows`` also collects the rows that join
        joinable = _joinable(batch.cache)
        plan = None
        while True:
            changed = batch.drop_finished()
            if joinable and len(batch.rows) < self.max_batch and self._queue.qsize():
                new = []
                while len(batch.rows) + len(new) < self.max_batch:
                    try:
                        row = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not row.request.cancelled:
                        new.append(row)
                if new:
                    rows.extend(new)  # so that a failure below reaches them too (see _loop)
                    other = self._prefill(new)
                    other.drop_finished()
                    if batch.rows and other.rows:
                        batch.merge(other)
                    elif other.rows:
                        batch = other
                    changed = True
            if not batch.rows:
                break
            if changed or plan is None:
                if joinable:
                    batch.trim()
                plan = _SteerPlan(batch.rows, self.device)
            batch.attn = torch.cat([batch.attn, batch.attn.new_ones((len(batch.rows), 1))], dim=1)
            out = self._forward(
                plan,
                "generated",
                input_ids=batch.tokens[:, None],
                attention_mask=batch.attn,
                position_ids=batch.next_pos[:, None],
                **{self._cache_kw: batch.cache},
            )
            batch.next_pos = batch.next_pos + 1
            batch.tokens = self._step(batch.rows, out.logits[:, -1, :].float())

    def _step(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Sample one token per row from ``logits [b, V]``, record it, emit events; return the tokens."""
        logits = logits[:, : self.vocab]
        tokens = _sample(logits, rows)
        want_lp = [i for i, r in enumerate(rows) if r.params.logprobs]
        scored: dict[int, tuple[float, list[tuple[int, float]]]] = {}
        if want_lp:
            sel = torch.tensor(want_lp, device=logits.device)
            ks = [rows[i].params.top_logprobs for i in want_lp]
            scored = dict(zip(want_lp, _logprobs_of(logits[sel], tokens[sel], ks), strict=True))
        toks = tokens.tolist()
        self.stats["tokens"] += len(toks)
        for i, r in enumerate(rows):
            if r.done or r.request.cancelled:
                continue
            entry = self._entry(toks[i], *scored[i]) if i in scored else None
            self._advance(r, toks[i], entry)
        return tokens

    def _advance(self, r: _Row, t: int, entry: dict | None) -> None:
        r.tokens.append(t)
        p = r.params
        reason = None
        stop_at = None
        if t in self.eos:
            reason = "stop"
        else:
            r.text_tokens.append(t)
            r.entries.append(entry)
        text = self.tokenizer.decode(r.text_tokens, skip_special_tokens=True)
        stable = len(text.rstrip("\ufffd"))
        if t not in self.eos:
            r.cum_len.append(stable)
        if p.stop:
            longest = max(len(s) for s in p.stop)
            start = max(0, r.emitted - longest)
            hits = [k for k in (text.find(s, start) for s in p.stop) if k >= 0]
            if hits:
                stop_at = min(hits)
                reason = "stop"
        if reason is None and len(r.tokens) >= p.max_tokens:
            reason = "length"
        if reason is None:
            hold = max((len(s) for s in p.stop), default=1) - 1
            boundary = max(r.emitted, stable - hold)
        elif stop_at is not None:
            boundary = max(r.emitted, stop_at)
            text = text[:boundary]
        else:
            boundary = len(text)
        delta = text[r.emitted : boundary]
        entries = []
        if p.logprobs:
            n_text = len(r.text_tokens)
            while r.committed < n_text and (
                r.cum_len[r.committed] <= boundary or (reason is not None and stop_at is None)
            ):
                entries.append(r.entries[r.committed])
                r.committed += 1
            if t in self.eos and p.eos_logprob and stop_at is None and entry is not None:
                entries.append(entry)
        r.emitted = boundary
        if delta or entries:
            r.request.emit(("delta", r.index, delta, entries))
        if reason is not None:
            r.done = True
            r.request.emit(("finish", r.index, reason, len(r.tokens)))


def _byte_decoder(tokenizer) -> dict[str, int] | None:
    """GPT-2's byte-to-character table inverted, when the tokenizer is byte-level BPE; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = getattr(backend, "decoder", None)
    if dec is None or "ByteLevel" not in type(dec).__name__ and "ByteLevel" not in repr(dec):
        return None
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _logprobs_of(
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


def _sample(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """Greedy rows take the argmax; the others sample at their temperature within their top-p."""
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
        out[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    return out


def _joinable(cache) -> bool:
    """Rows can join a running batch when every cache layer is a plain (non-sliding) dynamic layer."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class _Batch:
    """Rows decoding together: their KV cache, attention mask, next positions and last tokens."""

    def __init__(self, rows, cache, attn, next_pos, tokens):
        self.rows: list[_Row] = rows
        self.cache = cache
        self.attn: torch.Tensor = attn
        self.next_pos: torch.Tensor = next_pos
        self.tokens: torch.Tensor | None = tokens

    def drop_finished(self) -> bool:
        keep = [i for i, r in enumerate(self.rows) if not r.done and not r.request.cancelled]
        if len(keep) == len(self.rows):
            return False
        self.rows = [self.rows[i] for i in keep]
        if keep:
            idx = torch.tensor(keep, device=self.attn.device)
            self.cache.batch_select_indices(idx)
            self.attn, self.next_pos, self.tokens = (
                self.attn[idx],
                self.next_pos[idx],
                self.tokens[idx],
            )
        return True

    def trim(self) -> None:
        """Drop leading cache columns that every row masks out (left padding nobody needs)."""
        used = self.attn.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        if start > 0:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.attn = self.attn[:, start:]

    def merge(self, other: _Batch) -> None:
        """Append ``other``'s rows, left-padding the shorter cache (masked columns of zeros)."""
        la, lb = self.attn.shape[1], other.attn.shape[1]
        width = max(la, lb)
        for a, b in zip(self.cache.layers, other.cache.layers, strict=True):
            a.keys = torch.cat([_pad_left(a.keys, width - la, 2), _pad_left(b.keys, width - lb, 2)])
            a.values = torch.cat(
                [_pad_left(a.values, width - la, 2), _pad_left(b.values, width - lb, 2)]
            )
        self.attn = torch.cat(
            [_pad_left(self.attn, width - la, 1), _pad_left(other.attn, width - lb, 1)]
        )
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.rows = self.rows + other.rows


class _SteerPlan:
    """Per-site interventions of a batch, each with the mask of the rows that asked for it."""

    def __init__(self, rows: list[_Row], device: torch.device):
        self.phase = "prompt"
        keys: dict[str, list[int]] = {}
        ivs: dict[str, tuple[Intervention, ...]] = {}
        for i, r in enumerate(rows):
            if r.interventions:
                keys.setdefault(r.steer_key, []).append(i)
                ivs[r.steer_key] = r.interventions
        self.masks: dict[str, torch.Tensor] = {}
        self.by_site: dict[str, list[tuple[Intervention, str]]] = {}
        for key, members in keys.items():
            m = torch.zeros(len(rows), dtype=torch.bool)
            m[members] = True
            self.masks[key] = m.to(device)
            for iv in ivs[key]:
                self.by_site.setdefault(str(iv.site), []).append((iv, key))
        self.sites = list(self.by_site)
        self.full = {key: len(members) == len(rows) for key, members in keys.items()}

    def hook_fns(self, model: nn.Module):
        n = n_layers(model)
        return [(parse_site(s, n), self._fn(s)) for s in self.sites]

    def _fn(self, site: str):
        items = self.by_site[site]

        def fn(h: torch.Tensor) -> torch.Tensor | None:
            out = h
            for iv, key in items:
                if iv.positions != "all" and iv.positions != self.phase:
                    continue
                new = iv.apply(out)
                out = (
                    new if self.full[key] else torch.where(self.masks[key][:, None, None], new, out)
                )
            return out

        return fn


# --------------------------------------------------------------------------------------------
# The HTTP layer


@dataclass
class ServeConfig:
    """Server settings. ``model_name`` is the id in ``/v1/models``; ``aliases`` are accepted too."""

    model_name: str = "default"
    aliases: tuple[str, ...] = ()
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    default_max_tokens: int = 512
    max_n: int = 16
    max_top_logprobs: int = 20
    max_stop: int = 4
    api_key: str | None = None
    steer_cache: int = 256
    max_queue: int = 1024  # rows waiting for the worker; more gives 429 (None: unbounded)


@dataclass
class _Parsed:
    messages: list[dict]
    params: SamplingParams
    max_tokens_given: bool
    n: int
    stream: bool
    include_usage: bool
    steer_key: str
    interventions: tuple[Intervention, ...]


@dataclass
class _ParsedCompletion:
    prompts: list  # each a string or a list of token ids
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    steer_key: str
    interventions: tuple[Intervention, ...]
    echo: bool


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class ChatServer:
    """Validation, tokenization and response formatting around an :class:`Engine`.

    ``directions`` maps names to loaded :class:`~saetools.directions.DirectionSet` objects that
    requests may steer with (``"direction": name``); ``saes`` maps names to loaded SAEs
    (:func:`saetools.sae.load_sae`) whose latents requests may clamp (``saetools.clamp``);
    ``default_steering`` (interventions and :class:`~saetools.sae.LatentClamp` objects) applies
    to requests that carry neither ``saetools.steer`` nor ``saetools.clamp``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        config: ServeConfig | None = None,
        *,
        directions: dict | None = None,
        saes: dict | None = None,
        default_steering: Sequence[Intervention] = (),
    ):
        self.config = config or ServeConfig()
        self.model = model
        self.engine = Engine(
            model,
            tokenizer,
            max_batch=self.config.max_batch,
            batch_wait_ms=self.config.batch_wait_ms,
        )
        self._tokenizer = copy.deepcopy(tokenizer)  # encoding only, in self._tok_pool
        self._special = frozenset(getattr(tokenizer, "all_special_tokens", ()))
        self._tok_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="saetools-tok")
        self.directions = dict(directions or {})
        self.saes = dict(saes or {})
        for sae in self.saes.values():
            sae.check(model)
        self.n_layers = n_layers(model)
        self.default_steering = tuple(default_steering)
        for iv in self.default_steering:
            iv.check(model)
        self._default_key = "default:" + _steer_desc(self.default_steering)
        self._steer_cache: OrderedDict[str, tuple[Intervention, ...]] = OrderedDict()
        self.created = int(time.time())

    # ---------------------------------------------------------------- validation
    def _check_model(self, body: dict) -> None:
        cfg = self.config
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _bad("you must provide a model parameter", "model")
        if model not in (cfg.model_name, *cfg.aliases):
            raise APIError(
                404,
                f"The model `{model}` does not exist; this server serves `{cfg.model_name}`.",
                param="model",
                code="model_not_found",
            )

    def _options(self, body: dict, *, min_tokens: int) -> dict:
        """The sampling and streaming fields both endpoints share, validated."""
        cfg = self.config

        def number(name, default, lo, hi, *, lo_open=False):
            v = body.get(name)
            if v is None:
                return default
            if not _is_num(v) or not math.isfinite(v):
                raise _bad(f"{name} must be a number, not {v!r}", name)
            if v < lo or v > hi or (lo_open and v == lo):
                rng = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
                raise _bad(f"{name} must be in {rng}, got {v}", name, "invalid_value")
            return float(v)

        temperature = number("temperature", 1.0, 0.0, 2.0)
        top_p = number("top_p", 1.0, 0.0, 1.0, lo_open=True)
        n = body.get("n", 1) if body.get("n") is not None else 1
        if not _is_int(n) or not 1 <= n <= cfg.max_n:
            raise _bad(f"n must be an integer from 1 to {cfg.max_n}, got {n!r}", "n")
        max_tokens = None
        for name in ("max_tokens", "max_completion_tokens"):
            v = body.get(name)
            if v is None:
                continue
            if not _is_int(v) or v < min_tokens:
                raise _bad(f"{name} must be an integer >= {min_tokens}, got {v!r}", name)
            max_tokens = v
        stop = body.get("stop")
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
            stop = tuple(stop)
        else:
            raise _bad("stop must be a string or a list of strings", "stop")
        if len(stop) > cfg.max_stop or any(not s for s in stop):
            raise _bad(f"stop takes at most {cfg.max_stop} non-empty strings", "stop")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise _bad("seed must be an integer", "seed")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise _bad("stream must be a boolean", "stream")
        so = body.get("stream_options")
        include_usage = False
        if so is not None:
            if not stream:
                raise _bad("stream_options is only allowed when stream is true", "stream_options")
            if not isinstance(so, dict):
                raise _bad("stream_options must be an object", "stream_options")
            include_usage = bool(so.get("include_usage", False))
        for name, allowed in IGNORED_IF_DEFAULT.items():
            if name in body and not any(body[name] == a for a in allowed):
                raise _bad(f"{name} is not supported by this server", name, "unsupported_parameter")
        return dict(
            temperature=temperature,
            top_p=top_p,
            n=n,
            max_tokens=max_tokens,
            stop=stop,
            seed=seed,
            stream=stream,
            include_usage=include_usage,
        )

    def parse(self, body: dict) -> _Parsed:
        """Validate a ``/v1/chat/completions`` body."""
        cfg = self.config
        self._check_model(body)
        messages = self._messages(body.get("messages"))
        o = self._options(body, min_tokens=1)
        logprobs = body.get("logprobs") or False
        if not isinstance(logprobs, bool):
            raise _bad("logprobs must be a boolean", "logprobs")
        top = body.get("top_logprobs")
        if top is None:
            top = 0
        elif not _is_int(top) or not 0 <= top <= cfg.max_top_logprobs:
            raise _bad(
                f"top_logprobs must be an integer from 0 to {cfg.max_top_logprobs}", "top_logprobs"
            )
        elif top and not logprobs:
            raise _bad("top_logprobs needs logprobs set to true", "top_logprobs")
        rf = body.get("response_format")
        if rf is not None and rf != {"type": "text"}:
            raise _bad("only response_format {'type': 'text'} is supported", "response_format")
        key, ivs = self._steering(body.get("saetools"))
        return _Parsed(
            messages=messages,
            params=SamplingParams(
                max_tokens=o["max_tokens"] or 1,
                temperature=o["temperature"],
                top_p=o["top_p"],
                stop=o["stop"],
                logprobs=logprobs,
                top_logprobs=top,
                seed=o["seed"],
            ),
            max_tokens_given=o["max_tokens"] is not None,
            n=o["n"],
            stream=o["stream"],
            include_usage=o["include_usage"],
            steer_key=key,
            interventions=ivs,
        )

    def parse_completion(self, body: dict) -> _ParsedCompletion:
        """Validate a legacy ``/v1/completions`` body (prompt: a string, a list of strings, a list
        of token ids or a list of such lists)."""
        cfg = self.config
        self._check_model(body)
        prompts = self._prompts(body.get("prompt"))
        o = self._options(body, min_tokens=0)
        echo = body.get("echo") or False
        if not isinstance(echo, bool):
            raise _bad("echo must be a boolean", "echo")
        logprobs = body.get("logprobs")
        if logprobs is not None and (
            not _is_int(logprobs) or not 0 <= logprobs <= cfg.max_top_logprobs
        ):
            raise _bad(f"logprobs must be an integer from 0 to {cfg.max_top_logprobs}", "logprobs")
        best_of = body.get("best_of")
        if best_of is not None and best_of != o["n"]:
            raise _bad("best_of is not supported (leave it unset or equal to n)", "best_of")
        if body.get("suffix"):
            raise _bad("suffix is not supported by this server", "suffix", "unsupported_parameter")
        if o["max_tokens"] == 0 and o["stream"] and not echo:
            raise _bad("max_tokens 0 without echo streams nothing", "max_tokens")
        key, ivs = self._steering(body.get("saetools"))
        given = o["max_tokens"] is not None
        return _ParsedCompletion(
            prompts=prompts,
            params=SamplingParams(
                max_tokens=o["max_tokens"] if given else 16,  # OpenAI's default for completions
                temperature=o["temperature"],
                top_p=o["top_p"],
                stop=o["stop"],
                logprobs=logprobs is not None,
                top_logprobs=logprobs or 0,
                seed=o["seed"],
                prompt_logprobs=logprobs if echo and logprobs is not None else None,
                eos_logprob=True,
            ),
            n=o["n"],
            stream=o["stream"],
            include_usage=o["include_usage"],
            steer_key=key,
            interventions=ivs,
            echo=echo,
        )

    def _prompts(self, prompt) -> list[str | list[int]]:
        vocab = self.engine.vocab
        if isinstance(prompt, str):
            prompt = [prompt]
        elif isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise _bad(
                "prompt must be a string, a list of strings, a list of token ids or a list of "
                "such lists",
                "prompt",
            )
        for i, p in enumerate(prompt):
            if isinstance(p, str):
                continue
            if not isinstance(p, list) or not p or not all(_is_int(t) for t in p):
                raise _bad(
                    f"prompt[{i}] must be a string or a non-empty list of token ids", "prompt"
                )
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise _bad(
                    f"prompt[{i}] has token ids outside the vocabulary [0, {vocab}): {bad[:5]}",
                    "prompt",
                )
        return prompt

    @staticmethod
    def _messages(messages) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise _bad("messages must be a non-empty list", "messages")
        out = []
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _bad(f"{where} must be an object with role and content", where)
            role = m.get("role")
            if role == "developer":
                role = "system"
            if role not in ("system", "user", "assistant"):
                raise _bad(
                    f"{where}.role must be system, developer, user or assistant, not {role!r}",
                    f"{where}.role",
                )
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if not (
                        isinstance(part, dict)
                        and part.get("type") == "text"
                        and isinstance(part.get("text"), str)
                    ):
                        raise _bad(
                            f"{where}.content: only text parts are supported", f"{where}.content"
                        )
                    parts.append(part["text"])
                content = "".join(parts)
            if not isinstance(content, str):
                raise _bad(f"{where}.content must be a string", f"{where}.content")
            out.append({"role": role, "content": content})
        return out

    def _steering(self, ext) -> tuple[str, tuple[Intervention, ...]]:
        if ext is None:
            return self._default_key, self.default_steering
        if not isinstance(ext, dict):
            raise _bad("saetools must be an object like {'steer': [...]}", "saetools")
        extra = set(ext) - {"steer", "clamp"}
        if extra:
            raise _bad(
                f"unknown saetools field(s) {', '.join(sorted(extra))}; known: steer, clamp",
                "saetools",
            )
        spec, clamp = ext.get("steer"), ext.get("clamp")
        if spec is None and clamp is None:
            return self._default_key, self.default_steering
        if spec is not None and not isinstance(spec, list):
            raise _bad("saetools.steer must be a list of interventions", "saetools.steer")
        if clamp is not None and not isinstance(clamp, list):
            raise _bad("saetools.clamp must be a list of latent clamps", "saetools.clamp")
        try:
            key = json.dumps({"steer": spec or [], "clamp": clamp or []}, sort_keys=True)
        except (TypeError, ValueError):
            raise _bad("saetools.steer and saetools.clamp must be plain JSON", "saetools") from None
        got = self._steer_cache.get(key)
        if got is not None:
            self._steer_cache.move_to_end(key)
            return key, got
        ivs: list = []
        for i, item in enumerate(spec or []):
            ivs.extend(self._intervention(item, f"saetools.steer[{i}]"))
        for i, item in enumerate(clamp or []):
            ivs.append(self._clamp(item, f"saetools.clamp[{i}]"))
        out = tuple(ivs)
        self._steer_cache[key] = out
        while len(self._steer_cache) > self.config.steer_cache:
            self._steer_cache.popitem(last=False)
        return key, out

    def _clamp(self, item, where: str):
        from .sae import LatentClamp, SAEError

        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object like {{'latents': {{'203': 0}}}}", where)
        extra = set(item) - CLAMP_KEYS
        if extra:
            raise _bad(
                f"{where}: unknown field(s) {', '.join(sorted(extra))}; known: "
                f"{', '.join(sorted(CLAMP_KEYS))}",
                where,
            )
        name = item.get("sae")
        if name is None:
            if len(self.saes) != 1:
                raise _bad(
                    f"{where}.sae is required: loaded SAEs are {', '.join(self.saes) or 'none'} "
                    "(start the server with --sae NAME=PATH)",
                    f"{where}.sae",
                )
            name = next(iter(self.saes))
        if name not in self.saes:
            raise _bad(
                f"{where}.sae {name!r} is not loaded; loaded: {', '.join(self.saes) or 'none'}",
                f"{where}.sae",
            )
        lat = item.get("latents")
        if not isinstance(lat, dict) or not lat:
            raise _bad(
                f"{where}.latents must be an object of latent id -> value, like {{'203': 0}}",
                f"{where}.latents",
            )
        ids, vals = [], []
        for k, v in lat.items():
            try:
                j = int(k)
            except (TypeError, ValueError):
                raise _bad(
                    f"{where}.latents: {k!r} is not a latent id", f"{where}.latents"
                ) from None
            if not _is_num(v):  # finiteness: LatentClamp checks it
                raise _bad(f"{where}.latents[{k}] must be a number", f"{where}.latents")
            ids.append(j)
            vals.append(float(v))
        positions = item.get("positions", "all")
        if positions not in POSITIONS:
            raise _bad(
                f"{where}.positions must be one of {', '.join(POSITIONS)}", f"{where}.positions"
            )
        try:
            return LatentClamp(self.saes[name], ids, vals, positions=positions)
        except (SAEError, ValueError) as e:
            raise _bad(f"{where}: {e}", f"{where}.latents") from None

    def _intervention(self, item, where: str) -> list[Intervention]:
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
        extra = set(item) - STEER_KEYS
        if extra:
            raise _bad(
                f"{where}: unknown field(s) {', '.join(sorted(extra))}; known: {', '.join(sorted(STEER_KEYS))}",
                where,
            )
        site = item.get("site")
        if not isinstance(site, str) or not site.strip():
            raise _bad(f"{where}.site must be a site name like blocks.9.hook_resid_post", where)
        op = item.get("op", "add")
        if op not in OPS:
            raise _bad(f"{where}.op must be one of {', '.join(OPS)}, not {op!r}", f"{where}.op")
        alpha = item.get("alpha", 1.0)
        if not _is_num(alpha) or not math.isfinite(alpha):
            raise _bad(f"{where}.alpha must be a finite number", f"{where}.alpha")
        value = item.get("value")
        if value is not None and not (isinstance(value, str) or _is_num(value)):
            raise _bad(f"{where}.value must be a number or a statistic name", f"{where}.value")
        if op == "clamp" and value is None:
            raise _bad(f"{where}: clamp needs a value", f"{where}.value")
        positions = item.get("positions", "all")
        if positions not in POSITIONS:
            raise _bad(
                f"{where}.positions must be one of {', '.join(POSITIONS)}", f"{where}.positions"
            )
        unit = item.get("unit", True)
        if not isinstance(unit, bool):
            raise _bad(f"{where}.unit must be a boolean", f"{where}.unit")
        try:
            if "vector" in item:
                if "direction" in item:
                    raise _bad(f"{where}: give either direction or vector, not both", where)
                vec = item["vector"]
                if not isinstance(vec, list) or not all(_is_num(x) for x in vec):
                    raise _bad(f"{where}.vector must be a list of numbers", f"{where}.vector")
                if isinstance(value, str):
                    raise _bad(f"{where}.value must be a number with an inline vector", where)
                v = torch.tensor(vec, dtype=torch.float32)
                if unit and op == "add" and v.numel() and float(v.norm()) > 0:
                    v = v / v.norm()
                sites = [s.name for s in parse_sites(site, self.n_layers)]
                ivs = [
                    Intervention(s, v, op, alpha=alpha, value=value, positions=positions)
                    for s in sites
                ]
            else:
                ds = self._direction_set(item.get("direction"), where)
                ivs = interventions_from_directions(
                    ds,
                    site,
                    op,
                    float(alpha),
                    value=value,
                    unit=unit,
                    positions=positions,
                    n_layers=self.n_layers,
                )
            for iv in ivs:
                iv.check(self.model)
        except (SteeringError, ValueError) as e:
            if isinstance(e, APIError):
                raise
            raise _bad(f"{where}: {e}", where) from None
        return ivs

    def _direction_set(self, name, where: str):
        if name is None:
            if len(self.directions) == 1:
                return next(iter(self.directions.values()))
            if not self.directions:
                raise _bad(
                    f"{where}: this server has no direction files loaded (start it with "
                    "--directions FILE) ; give an inline vector instead",
                    f"{where}.direction",
                )
            raise _bad(
                f"{where}.direction is required: loaded direction files are {', '.join(self.directions)}",
                f"{where}.direction",
            )
        if name not in self.directions:
            raise _bad(
                f"{where}.direction {name!r} is not loaded; loaded: {', '.join(self.directions) or 'none'}",
                f"{where}.direction",
            )
        return self.directions[name]

    def _encode(self, messages: list[dict]) -> list[int]:
        from .capture import ChatExample, encode_chat

        return list(encode_chat(self._tokenizer, ChatExample(messages=tuple(messages))).input_ids)

    @staticmethod
    def _body(raw: bytes) -> dict:
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise _bad(
                f"We could not parse the JSON body of your request ({e}). The body must be a JSON object.",
                code="invalid_json",
            ) from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object", code="invalid_json")
        return body

    async def prepare(self, raw: bytes) -> tuple[_Parsed, list[int]]:
        """Parse and validate a request body and tokenize its prompt (off the event loop)."""
        req = self.parse(self._body(raw))
        loop = asyncio.get_running_loop()
        try:
            ids = await loop.run_in_executor(self._tok_pool, self._encode, req.messages)
        except Exception as e:
            raise _bad(
                f"could not format the messages with the chat template: {e}", "messages"
            ) from None
        limit = self.engine.context_length
        p = len(ids)
        if limit is not None:
            room = limit - p
            mt = req.params.max_tokens if req.max_tokens_given else 1
            if room < mt:
                raise _bad(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{p + mt} tokens ({p} in the messages, {mt} in the completion). Please reduce the "
                    "length of the messages or completion.",
                    "messages",
                    "context_length_exceeded",
                )
        if not req.max_tokens_given:
            mt = self.config.default_max_tokens
            if limit is not None:
                mt = min(mt, limit - p)
            req.params = dataclasses.replace(req.params, max_tokens=mt)
        return req, ids

    def _encode_prompts(self, prompts: list) -> tuple[list[list[int]], list[str]]:
        ids, texts = [], []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                got = list(self._tokenizer(p, add_special_tokens=True)["input_ids"])
                if not got:
                    raise _bad(f"prompt[{i}] is empty: it needs at least one token", "prompt")
                ids.append(got)
                texts.append(p)
            else:
                ids.append(list(p))
                texts.append(self._tokenizer.decode(p))
        return ids, texts

    async def prepare_completion(
        self, raw: bytes
    ) -> tuple[_ParsedCompletion, list[list[int]], list[str]]:
        """Parse and validate a ``/v1/completions`` body and tokenize its prompts (off the event
        loop); returns the request, each prompt's token ids and each prompt's text."""
        req = self.parse_completion(self._body(raw))
        loop = asyncio.get_running_loop()
        ids, texts = await loop.run_in_executor(self._tok_pool, self._encode_prompts, req.prompts)
        limit = self.engine.context_length
        if limit is not None:
            for i, p in enumerate(ids):
                # the last sampled token is never fed back: m new tokens need m - 1 positions
                if len(p) + max(req.params.max_tokens - 1, 0) > limit:
                    raise _bad(
                        f"This model's maximum context length is {limit} tokens. However, you "
                        f"requested {len(p) + req.params.max_tokens} tokens ({len(p)} in prompt[{i}], "
                        f"{req.params.max_tokens} in the completion). Please reduce the length of "
                        "the prompt or completion.",
                        "prompt",
                        "context_length_exceeded",
                    )
        return req, ids, texts

    # ---------------------------------------------------------------- responses
    def admit(self, req: _Parsed | _ParsedCompletion) -> None:
        """Refuse a request (429) when its rows would make the worker's queue longer than
        ``max_queue``: a burst gets a clear retry-later answer instead of unbounded memory."""
        limit = self.config.max_queue
        rows = req.n * len(getattr(req, "prompts", [None]))
        if limit is not None and rows > limit:
            raise _bad(
                f"this request needs {rows} rows (prompts times n), more than the server queues "
                f"at once ({limit}, --max-queue); split it",
                "prompt" if hasattr(req, "prompts") else "n",
            )
        if limit is not None and self.engine.waiting + rows > limit:
            raise APIError(
                429,
                f"the server is busy: {self.engine.waiting} rows wait for the model (at most "
                f"{limit}, --max-queue); retry later",
                type="rate_limit_error",
                code="queue_full",
            )

    def _submit(
        self, req: _Parsed | _ParsedCompletion, ids: list[list[int]]
    ) -> tuple[list[_Request], asyncio.Queue]:
        """Queue ``n`` rows per prompt; events arrive with choice index ``prompt * n + j``."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        handles = []
        for k, prompt_ids in enumerate(ids):

            def sink(ev, _loop=loop, _q=q, _off=k * req.n):
                _loop.call_soon_threadsafe(_q.put_nowait, (ev[0], _off + ev[1], *ev[2:]))

            handles.append(
                self.engine.submit(
                    prompt_ids,
                    req.params,
                    n=req.n,
                    interventions=req.interventions,
                    steer_key=req.steer_key,
                    sink=sink,
                )
            )
        return handles, q

    async def complete_text(
        self, req: _ParsedCompletion, ids: list[list[int]], texts: list[str]
    ) -> dict:
        """The ``/v1/completions`` response (``text_completion``) for a parsed request."""
        handles, q = self._submit(req, ids)
        total = req.n * len(ids)
        got = await _collect(q, total, handles)
        deltas, gen, prompt_lp, reasons = got.deltas, got.entries, got.prompt, got.reasons
        choices = []
        for c in range(total):
            head = texts[c // req.n] if req.echo else ""
            lp = None
            if req.params.logprobs:
                lp, _ = _legacy_logprobs(prompt_lp[c], 0, self._special)
                more, _ = _legacy_logprobs(gen[c], len(head), self._special)
                lp = {k: lp[k] + more[k] for k in lp}
            choices.append(
                {
                    "text": head + "".join(deltas[c]),
                    "index": c,
                    "logprobs": lp,
                    "finish_reason": reasons[c],
                }
            )
        out = self._base("text_completion")
        out["choices"] = choices
        out["usage"] = _usage(sum(len(p) for p in ids), got.completion_tokens)
        return out

    async def stream_text(self, req: _ParsedCompletion, ids: list[list[int]], texts: list[str]):
        """The ``/v1/completions`` server-sent events for a parsed streaming request."""
        handles, q = self._submit(req, ids)
        base = self._base("text_completion")
        total = req.n * len(ids)
        offset = [0] * total

        def chunk(c, text, entries=None, finish=None):
            lp = None
            if req.params.logprobs:
                lp, offset[c] = _legacy_logprobs(entries or [], offset[c], self._special)
            choice = {"text": text, "index": c, "logprobs": lp, "finish_reason": finish}
            d = dict(base, choices=[choice])
            if req.include_usage:
                d["usage"] = None
            return f"data: {json.dumps(d)}\n\n"

        completion, left = 0, total
        try:
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
                    yield f"data: {json.dumps(ev[2].body())}\n\n"
                    break
            if req.include_usage and not left:
                d = dict(base, choices=[], usage=_usage(sum(len(p) for p in ids), completion))
                yield f"data: {json.dumps(d)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                h.cancelled = True

    def _base(self, kind: str) -> dict:
        from . import __version__

        prefix = "cmpl" if kind == "text_completion" else "chatcmpl"
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.config.model_name,
            "system_fingerprint": f"saetools-{__version__}",
        }

    async def complete(self, req: _Parsed, ids: list[int]) -> dict:
        handles, q = self._submit(req, [ids])
        got = await _collect(q, req.n, handles)
        texts, lps, reasons = got.deltas, got.entries, got.reasons
        out = self._base("chat.completion")
        out["choices"] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(texts[i])},
                "logprobs": {"content": lps[i], "refusal": None} if req.params.logprobs else None,
                "finish_reason": reasons[i],
            }
            for i in range(req.n)
        ]
        out["usage"] = _usage(len(ids), got.completion_tokens)
        return out

    async def stream(self, req: _Parsed, ids: list[int]):
        handles, q = self._submit(req, [ids])
        base = self._base("chat.completion.chunk")

        def chunk(choices, usage=None):
            d = dict(base, choices=choices)
            if req.include_usage:
                d["usage"] = usage
            return f"data: {json.dumps(d)}\n\n"

        completion = 0
        left = req.n
        try:
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
                    yield chunk(
                        [{"index": ev[1], "delta": {}, "logprobs": None, "finish_reason": ev[2]}]
                    )
                else:
                    yield f"data: {json.dumps(ev[2].body())}\n\n"
                    break
            if req.include_usage and not left:
                yield chunk([], _usage(len(ids), completion))
            yield "data: [DONE]\n\n"
        finally:
            for h in handles:
                h.cancelled = True

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.config.model_name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "saetools",
                }
            ],
        }

    def info(self) -> dict:
        """What ``GET /v1/saetools`` returns: loaded directions, default steering, limits."""
        return {
            "model": self.config.model_name,
            "context_length": self.engine.context_length,
            "n_layers": self.n_layers,
            "directions": {name: ds.sites for name, ds in self.directions.items()},
            "saes": {
                name: {"site": sae.site, "d_sae": sae.d_sae, "source": str(sae.source)}
                for name, sae in self.saes.items()
            },
            "default_steering": [
                {
                    "site": iv.site,
                    "op": iv.op,
                    "latents": list(iv.latents),
                    "values": iv.values.tolist(),
                }
                if iv.op == "latent_clamp"
                else {"site": iv.site, "op": iv.op, "alpha": iv.alpha, "value": iv.value}
                for iv in self.default_steering
            ],  # fmt: skip
            "max_batch": self.config.max_batch,
            "stats": dict(self.engine.stats),
        }

    # ---------------------------------------------------------------- app
    def app(self):
        """The FastAPI application (starts the engine on startup, stops it on shutdown)."""
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.engine.start()
            try:
                yield
            finally:
                self.engine.close()

        app = FastAPI(title="saetools serve", lifespan=lifespan)

        def error(e: APIError) -> JSONResponse:
            return JSONResponse(e.body(), status_code=e.status)

        @app.exception_handler(APIError)
        async def _api_error(request, exc: APIError):
            return error(exc)

        @app.exception_handler(HTTPException)
        async def _http_error(request, exc: HTTPException):
            kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
            return error(APIError(exc.status_code, str(exc.detail), type=kind))

        @app.exception_handler(RequestValidationError)
        async def _validation_error(request, exc):
            return error(_bad(str(exc)))

        @app.exception_handler(Exception)
        async def _server_error(request, exc):
            return error(
                APIError(500, f"{type(exc).__name__}: {exc}", type="server_error", code=None)
            )

        def check_key(request: Request) -> None:
            key = self.config.api_key
            if key and request.headers.get("authorization", "") != f"Bearer {key}":
                raise APIError(
                    401,
                    "Incorrect API key provided.",
                    type="invalid_request_error",
                    code="invalid_api_key",
                )

        @app.get("/health")
        async def health():
            return {"status": "ok"}

        @app.get("/v1/models")
        async def list_models(request: Request):
            check_key(request)
            return self.models()

        @app.get("/v1/models/{model_id:path}")
        async def get_model(model_id: str, request: Request):
            check_key(request)
            if model_id not in (self.config.model_name, *self.config.aliases):
                raise APIError(
                    404,
                    f"The model `{model_id}` does not exist",
                    param="model",
                    code="model_not_found",
                )
            return self.models()["data"][0]

        @app.get("/v1/saetools")
        async def info(request: Request):
            check_key(request)
            return self.info()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            check_key(request)
            req, ids = await self.prepare(await request.body())
            self.admit(req)
            if req.stream:
                return StreamingResponse(
                    self.stream(req, ids),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            return JSONResponse(await self.complete(req, ids))

        @app.post("/v1/completions")
        async def completions(request: Request):
            check_key(request)
            req, ids, texts = await self.prepare_completion(await request.body())
            self.admit(req)
            if req.stream:
                return StreamingResponse(
                    self.stream_text(req, ids, texts),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                )
            return JSONResponse(await self.complete_text(req, ids, texts))

        return app


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


@dataclass
class _Collected:
    deltas: list[list[str]]  # text pieces per choice
    entries: list[list[dict]]  # logprob entries of generated tokens per choice
    prompt: list[list[dict]]  # prompt logprob entries per choice (prompt_logprobs only)
    reasons: list[str | None]
    completion_tokens: int


async def _collect(q: asyncio.Queue, total: int, handles: Sequence[_Request]) -> _Collected:
    """Wait for the engine events of ``total`` choices; an error event raises its APIError. The
    handles are cancelled on the way out (a no-op when done; stops the rows if the client left)."""
    got = _Collected(
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


def _usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _steer_desc(ivs: Sequence[Intervention]) -> str:
    def one(iv) -> str:
        if iv.op == "latent_clamp":
            return f"latent_clamp@{iv.site}:{list(iv.latents)}:{iv.values.tolist()}:{iv.positions}"
        return f"{iv.op}@{iv.site}:{iv.alpha}:{iv.value}:{iv.positions}"

    return ";".join(one(iv) for iv in ivs)


# --------------------------------------------------------------------------------------------
# Running it


def _uvicorn_server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
    return uvicorn.Server(config)


def serve(
    server: ChatServer, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run the server in the foreground until interrupted (Ctrl-C)."""
    import uvicorn

    uvicorn.run(server.app(), host=host, port=port, log_level=log_level, access_log=False)


@dataclass
class RunningServer:
    """A server running in a background thread: ``url`` is ``http://host:port``."""

    url: str
    server: ChatServer
    _uv: object = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def base_url(self) -> str:
        """What the ``openai`` client takes as ``base_url``."""
        return self.url + "/v1"

    def stop(self, timeout: float = 30.0) -> None:
        self._uv.should_exit = True
        self._thread.join(timeout)


@contextlib.contextmanager
def serve_in_thread(
    server: ChatServer, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[RunningServer]:
    """Run ``server`` with uvicorn in a background thread (``port=0``: a free port); stop it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    uv = _uvicorn_server(server.app(), log_level)
    t = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    t.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not t.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    running = RunningServer(url=f"http://{host}:{port}", server=server, _uv=uv, _thread=t)
    try:
        yield running
    finally:
        running.stop()
        sock.close()
