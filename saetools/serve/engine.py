"""The model in **one worker thread**: batching, sampling and the continuous-batching loop.

:class:`Engine` queues requests as rows (one row per choice, so ``n=3`` is three rows); the worker
collects the rows that arrive within ``batch_wait_ms`` of each other (up to ``max_batch``),
left-pads their prompts into one batch and decodes them together with the KV cache, each row with
its own sampling parameters, seed, stop strings and steering (:class:`~.steering.SteerPlan`).
Between decode steps, rows that finished leave the batch (their KV-cache rows are dropped) and rows
waiting in the queue join it: they are prefilled in a forward of their own and their cache is
merged into the running one, left-padded (continuous batching). Joining needs a plain dynamic KV
cache; models with sliding-window layers (Mistral, Gemma 2) run batch after batch instead.

Sampling and logprobs are in :mod:`saetools.serve.sampling`. A prefill that scores long prompts
runs in column chunks (with the KV cache), so that no forward makes more than
``Engine.max_prefill_logits`` logits; each chunk's logprobs are reduced to what is returned.

Failures
--------
A row whose logits are not finite (NaN or infinity: its steering made the activations overflow)
fails alone, with a 400 when the row is steered; an exception while sampling or reporting one row
fails that row alone (500). Only an exception in a batch's forward fails every row of the batch.
Every 500 is logged with its request ids (logger ``saetools.serve.engine``) and tells the client
only its request id.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..capture import pad_token_id
from ..sites import base_model, hooks
from ..steer import Intervention, context_length
from .middleware import internal_error
from .protocol import APIError, SamplingParams
from .sampling import logprobs_of, sample
from .steering import SteerPlan

logger = logging.getLogger(__name__)


class EngineRequest:
    """What the engine knows of a request: where to send events, whether the client left, and
    the id its errors are logged under."""

    def __init__(self, sink: Callable[[tuple], None], request_id: str | None = None):
        self.sink = sink
        self.cancelled = False
        self.request_id = request_id

    def emit(self, event: tuple) -> None:
        try:
            self.sink(event)
        except Exception:  # the client is gone (closed event loop, ...): stop generating for it
            self.cancelled = True


class _Row:
    """One choice being generated."""

    def __init__(
        self,
        request: EngineRequest,
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

    ``stats`` counts ``batches``, ``rows`` (prefilled), ``tokens`` (sampled), ``running`` (rows in
    the batch being decoded now), ``dropped`` (rows stopped because their client left) and
    ``failed`` (rows that ended with an error).
    """

    max_prefill_logits = 1 << 25  # logits one prefill forward may make (128 MiB in float32)

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
        self.stats = {"batches": 0, "rows": 0, "tokens": 0, "running": 0, "dropped": 0, "failed": 0}

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
        request_id: str | None = None,
    ) -> EngineRequest:
        """Queue ``n`` choices for one prompt; returns a handle whose ``cancelled`` stops them
        (``request_id``: what its failures are logged under and quote)."""
        req = EngineRequest(sink, request_id)
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
            except Exception:  # never let one batch kill the worker
                ids = sorted({str(r.request.request_id) for r in rows if not r.done})
                logger.exception(
                    "generation failed for a batch of %d rows (requests %s)",
                    len(rows),
                    ", ".join(ids),
                )
                for r in rows:
                    self._fail(r, internal_error(r.request.request_id))
            finally:
                self.stats["running"] = 0

    def _fail(self, r: _Row, err: APIError) -> None:
        """End row ``r`` with ``err`` (nothing when it already ended)."""
        if not r.done:
            r.done = True
            self.stats["failed"] += 1
            r.request.emit(("error", r.index, err))

    def _crashed(self, r: _Row) -> None:
        """End row ``r`` with a 500 after an exception (called in the ``except`` block: the
        traceback is logged with the request id)."""
        rid = r.request.request_id
        logger.exception("request %s: choice %d failed", rid, r.index)
        self._fail(r, internal_error(rid))

    def _overflowed(self, r: _Row) -> None:
        """End row ``r``, whose logits are not finite: a 400 when it is steered (the steering made
        the activations overflow), else a logged 500."""
        if r.interventions:
            err = APIError(
                400,
                "the model's logits became NaN or infinite for this request: its steering "
                "(saetools.steer, saetools.clamp or the server's default steering) made the "
                "activations overflow; use a smaller alpha or value",
                param="saetools",
                code="non_finite_logits",
            )
        else:
            rid = r.request.request_id
            logger.error("request %s: choice %d: the model's logits are not finite", rid, r.index)
            err = internal_error(rid)
        self._fail(r, err)

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

    def _forward(self, plan: SteerPlan, phase: str, **kw):
        plan.phase = phase
        with (
            hooks(self.model, plan.hook_fns(self.model)) if plan.sites else contextlib.nullcontext()
        ):
            return self.model(use_cache=True, **kw)

    def _left_pad(self, rows: list[_Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' prompts left-padded into ``ids``, ``attention_mask`` and ``position_ids``."""
        b = len(rows)
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = len(r.prompt_ids)
            ids[i, width - p :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attn[i, width - p :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)

    def _chunks(self, b: int, width: int, keep: int) -> list[tuple[int, int]]:
        """Column ranges of the prefill forwards: one, unless the last ``keep`` columns' logits
        (``b`` rows) would pass ``max_prefill_logits``; then the first forward ends after as many
        of them as fit, and the rest follow in chunks of that many columns."""
        cols = max(1, self.max_prefill_logits // (b * self.vocab))
        ends = [*range(width - keep + cols, width, cols), width]
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def _prefill(self, rows: list[_Row]) -> _Batch:
        """The forward over the left-padded prompts (in column chunks with the KV cache when
        scored prompts would make too many logits at once, see :meth:`_chunks`); reports the
        scored rows' prompt logprobs and samples each row's first token."""
        ids, attn, pos = self._left_pad(rows)
        b, width = ids.shape
        self.stats["rows"] += b
        # prompts are right-aligned: the last columns cover every scored prompt
        keep = max(
            (len(r.prompt_ids) for r in rows if r.params.prompt_logprobs is not None), default=1
        )
        scores = {i: [] for i, r in enumerate(rows) if r.params.prompt_logprobs is not None}
        plan = SteerPlan(rows, self.device)
        cache = last = None
        for start, end in self._chunks(b, width, keep):
            first = max(start, width - keep)  # the first column whose logits are needed
            out = self._forward(
                plan,
                "prompt",
                input_ids=ids[:, start:end],
                attention_mask=attn[:, :end],
                position_ids=pos[:, start:end],
                logits_to_keep=end - first,
                **({} if cache is None else {self._cache_kw: cache}),
            )
            cache = out.cache if self._cache_kw == "cache" else out.past_key_values
            for i, got in scores.items():
                self._score_prompt(rows[i], ids[i], out.logits[i], first, width, got)
            last = out.logits[:, -1, :].float()
            del out  # only the last column's logits are kept
        batch = _Batch(rows, cache, attn, pos[:, -1] + 1, None)
        for i, r in enumerate(rows):
            if i in scores and not r.done and not r.request.cancelled:
                try:
                    entries = self._prompt_entries(r, scores[i])
                except Exception:
                    self._crashed(r)
                else:
                    r.request.emit(("prompt", r.index, entries))
            if r.params.max_tokens == 0 and not r.done:  # scoring only
                r.done = True
                r.request.emit(("finish", r.index, "length", 0))
        batch.tokens = self._step(rows, last)
        return batch

    def _score_prompt(
        self, r: _Row, ids: torch.Tensor, logits: torch.Tensor, first: int, width: int, got: list
    ) -> None:
        """Add to ``got`` the (logprob, top-k) pairs of ``r``'s prompt tokens predicted by the
        columns ``first ..`` that ``logits [columns, V]`` covers (``ids``: the row's padded
        prompt, ``width`` columns; column ``j`` predicts token ``j + 1``)."""
        if r.done:
            return
        j0 = max(first, width - len(r.prompt_ids))
        j1 = min(first + logits.shape[0], width - 1)
        if j1 <= j0:
            return
        part = logits[j0 - first : j1 - first, : self.vocab]
        if not bool(torch.isfinite(part).all()):
            self._overflowed(r)
            return
        k = r.params.prompt_logprobs or 0
        got.extend(logprobs_of(part, ids[j0 + 1 : j1 + 1], [k] * (j1 - j0)))

    def _prompt_entries(self, r: _Row, scored: list) -> list[dict]:
        """Logprob entries of ``r``'s prompt tokens from their (logprob, top-k) pairs; the first
        token has none."""
        first = r.prompt_ids[0]
        entries = [dict(self._entry(first, 0.0, []), logprob=None, top_logprobs=[])]
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
            self.stats["dropped"] += sum(r.request.cancelled and not r.done for r in batch.rows)
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
            self.stats["running"] = len(batch.rows)
            if not batch.rows:
                break
            if changed or plan is None:
                if joinable:
                    batch.trim()
                plan = SteerPlan(batch.rows, self.device)
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
        bad = ~torch.isfinite(logits).all(dim=-1)
        if bool(bad.any()):  # those rows fail alone; the others go on
            for i in bad.nonzero()[:, 0].tolist():
                self._overflowed(rows[i])
            logits = logits.masked_fill(bad[:, None], 0.0)
        tokens = sample(logits, rows, self._crashed)
        want_lp = [i for i, r in enumerate(rows) if r.params.logprobs]
        scored: dict[int, tuple[float, list[tuple[int, float]]]] = {}
        if want_lp:
            sel = torch.tensor(want_lp, device=logits.device)
            ks = [rows[i].params.top_logprobs for i in want_lp]
            scored = dict(zip(want_lp, logprobs_of(logits[sel], tokens[sel], ks), strict=True))
        toks = tokens.tolist()
        self.stats["tokens"] += len(toks)
        for i, r in enumerate(rows):
            if r.done or r.request.cancelled:
                continue
            try:
                entry = self._entry(toks[i], *scored[i]) if i in scored else None
                self._advance(r, toks[i], entry)
            except Exception:
                self._crashed(r)
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
