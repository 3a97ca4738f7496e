"""Record residual-stream activations at named sites, with streaming reducers.

Two layers of API:

* :func:`record` - a context manager that stores the raw activation of each site during any forward
  pass you run (hooks are removed on exit, even when the forward raises).
* :func:`capture` - runs chat examples through the model in length-sorted batches, stops the forward
  after the deepest site it needs, and reduces each example's activations on the fly
  (``response_mean``, ``last``, ``prompt_mean`` or ``all``) into running sums, keeping per-example
  vectors only when asked. With ``distributed=True`` the processes of a torch.distributed group
  share the examples and all end with the single-process result (:mod:`saetools.distributed`).

Answer tokens are located through the tokenizer's chat template: the conversation is rendered with
and without the answer, and the answer's characters are mapped to tokens with the tokenizer's
offsets. Nothing is guessed from special tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import einops
import torch
from torch import nn
from tqdm.auto import tqdm

from .sites import Site, hooks, parse_sites

AGGREGATIONS = ("response_mean", "last", "prompt_mean", "all")


class ChatTemplateError(ValueError):
    """The tokenizer cannot format a conversation."""


@dataclass(frozen=True)
class ChatExample:
    """A conversation prompt (list of ``{"role", "content"}``) and an optional assistant answer."""

    messages: tuple[dict, ...]
    response: str | None = None

    @classmethod
    def from_question(
        cls, question: str, response: str | None = None, system: str | None = None
    ) -> ChatExample:
        msgs: list[dict] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": question})
        return cls(messages=tuple(msgs), response=response)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and the token span ``[response_start, response_end)`` of its answer."""

    input_ids: tuple[int, ...]
    response_start: int
    response_end: int

    @property
    def prompt_len(self) -> int:
        return self.response_start


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"the tokenizer of this model ({type(tokenizer).__name__}) has no chat template. saetools "
            "formats every prompt through the chat template. Pass one with --chat-template FILE (a Jinja "
            "template) on the command line, or set `tokenizer.chat_template = ...` in Python."
        )


def encode_chat(tokenizer, example: ChatExample) -> Encoded:
    """Tokenize a conversation through the chat template and locate the answer's tokens."""
    _require_template(tokenizer)
    messages = [dict(m) for m in example.messages]
    prompt_text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    if example.response is None:
        ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        return Encoded(tuple(ids), len(ids), len(ids))
    if not example.response.strip():
        raise ValueError("an example has an empty answer; every answer must contain text")
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": example.response}], tokenize=False
    )
    start_char = len(prompt_text)
    if not full_text.startswith(prompt_text) or not full_text[start_char:].lstrip().startswith(
        example.response.strip()[:20]
    ):
        # Templates that rewrite earlier turns when an answer is added (rare): locate the answer text.
        start_char = full_text.rfind(example.response.strip())
        if start_char < 0:
            raise ChatTemplateError(
                "cannot locate the assistant answer inside the rendered chat template"
            )
    else:
        start_char += len(full_text[start_char:]) - len(full_text[start_char:].lstrip())
    end_char = start_char + len(example.response.strip())
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    tok_start = tok_end = None
    for i, (a, b) in enumerate(offsets):
        if b > start_char and tok_start is None:
            tok_start = i
        if a < end_char:
            tok_end = i + 1
    if tok_start is None or tok_end is None or tok_end <= tok_start:
        raise ChatTemplateError("the assistant answer maps to no tokens")
    return Encoded(tuple(ids), tok_start, tok_end)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [b, t]
    attention_mask: torch.Tensor  # [b, t]
    position_ids: torch.Tensor  # [b, t]
    response_mask: torch.Tensor  # [b, t] bool
    prompt_mask: torch.Tensor  # [b, t] bool
    last_index: torch.Tensor  # [b] index of the last answer token (last prompt token if no answer)


def collate(
    encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right", device=None
) -> Batch:
    """Pad encoded examples into a batch. Position ids count real tokens only, so left padding
    gives the same activations as no padding."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    width = max(len(e.input_ids) for e in encoded)
    n = len(encoded)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    resp = torch.zeros((n, width), dtype=torch.bool)
    prompt = torch.zeros((n, width), dtype=torch.bool)
    last = torch.zeros(n, dtype=torch.long)
    for i, e in enumerate(encoded):
        L = len(e.input_ids)
        off = width - L if padding_side == "left" else 0
        ids[i, off : off + L] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, off : off + L] = 1
        resp[i, off + e.response_start : off + e.response_end] = True
        prompt[i, off : off + e.response_start] = True
        last[i] = off + (
            e.response_end - 1 if e.response_end > e.response_start else e.response_start - 1
        )
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    b = Batch(ids, attn, pos, resp, prompt, last)
    if device is not None:
        b = Batch(*(t.to(device) for t in (ids, attn, pos, resp, prompt, last)))
    return b


class StopForward(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside a hook to end a forward pass early once every needed site has been seen."""


@contextmanager
def record(
    model: nn.Module, sites: Sequence[Site], *, stop_after: bool = False
) -> Iterator[dict[Site, torch.Tensor]]:
    """Store each site's activation (detached) in the yielded dict during forward passes.

    With ``stop_after=True`` the forward pass is cut short with :class:`StopForward` after the
    deepest site; wrap the call in :func:`run_until` or catch it yourself. Hooks are removed on
    exit whatever happens.
    """
    store: dict[Site, torch.Tensor] = {}
    last_site = max(sites)

    def make(site: Site):
        def fn(h: torch.Tensor):
            store[site] = h.detach()
            if stop_after and site == last_site:
                raise StopForward
            return None

        return fn

    with hooks(model, [(s, make(s)) for s in sites]):
        yield store


def run_until(model: nn.Module, sites: Sequence[Site], **inputs) -> dict[Site, torch.Tensor]:
    """One forward pass that stops after the deepest of ``sites``; returns their activations."""
    with record(model, sites, stop_after=True) as store, torch.no_grad():
        try:
            model(**inputs, use_cache=False)
        except StopForward:
            pass
    missing = [s.name for s in sites if s not in store]
    if missing:
        raise RuntimeError(f"the forward pass never reached sites {missing}")
    return store


def site_batches(
    model: nn.Module,
    tokenizer,
    encoded: Sequence[Encoded],
    order: Sequence[int],
    batch_size: int,
    site: Site,
) -> Iterator[tuple[list[int], Batch, torch.Tensor]]:
    """Walk ``encoded`` in ``order``, ``batch_size`` examples at a time (right padded, on the
    model's device), yielding ``(indices, batch, activation at site [b, t, d])``. Each forward pass
    stops after ``site``. Stop iterating early to skip the remaining batches."""
    device = next(model.parameters()).device
    pad = _pad_id(tokenizer)
    for start in range(0, len(order), batch_size):
        idx = list(order[start : start + batch_size])
        batch = collate([encoded[i] for i in idx], pad, "right", device)
        h = run_until(
            model,
            [site],
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )[site]
        yield idx, batch, h


def reduce_batch(h: torch.Tensor, batch: Batch, aggregate: str) -> torch.Tensor:
    """Reduce one site's activations ``[b, t, d]`` to per-example vectors ``[b, d]``
    (or, for ``all``, to the flat list of real tokens ``[n_tokens, d]``)."""
    h = h.float()
    if batch.attention_mask.device != h.device:
        # a model split over devices (device_map="auto"): this block lives elsewhere
        batch = Batch(*(t.to(h.device) for t in vars(batch).values()))
    if aggregate == "response_mean" or aggregate == "prompt_mean":
        mask = batch.response_mask if aggregate == "response_mean" else batch.prompt_mask
        counts = mask.sum(-1, keepdim=True)
        if bool((counts == 0).any()):
            raise ValueError(
                f"aggregate {aggregate!r} needs at least one such token in every example"
            )
        m = mask.to(h.dtype)
        return einops.einsum(h, m, "b t d, b t -> b d") / counts.to(h.dtype)
    if aggregate == "last":
        return h[torch.arange(h.shape[0], device=h.device), batch.last_index]
    if aggregate == "all":
        return h[batch.attention_mask.bool()]
    raise ValueError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}")


@dataclass
class CaptureResult:
    """Running sums per site (float64), the number of reduced vectors, and optional per-example vectors
    (in the input order; for ``all``, token rows in input order)."""

    sites: list[Site]
    aggregate: str
    sums: dict[Site, torch.Tensor]
    count: int
    per_example: dict[Site, torch.Tensor] | None = None
    n_tokens: int = 0
    extra: dict = field(default_factory=dict)

    def mean(self, site: Site) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no examples were captured")
        return (self.sums[site] / self.count).float()


def encode_all(tokenizer, examples: Sequence[ChatExample]) -> list[Encoded]:
    out = []
    for i, ex in enumerate(examples):
        try:
            out.append(encode_chat(tokenizer, ex))
        except ValueError as e:
            raise type(e)(f"example {i}: {e}") from e
    return out


def _pad_id(tokenizer) -> int:
    """The tokenizer's pad token id, else its eos token id, else 0."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(tokenizer.eos_token_id or 0)


def length_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Indices of ``encoded`` sorted by length (stable: ties keep input order), cut into batches."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@dataclass
class _Partial:
    """What one process accumulated over its batches (sums on each site's device, rows on CPU)."""

    sums: dict[Site, torch.Tensor]
    count: int
    n_tokens: int
    kept: dict[Site, list[tuple[int, torch.Tensor]]]


def _capture_batches(
    model: nn.Module,
    encoded: Sequence[Encoded],
    batches: Sequence[Sequence[int]],
    sites: list[Site],
    *,
    aggregate: str,
    pad_id: int,
    keep_per_example: bool,
    padding_side: str,
    early_stop: bool,
    bar,
) -> _Partial:
    """Run the given batches (lists of indices into ``encoded``) and reduce them."""
    device = next(model.parameters()).device
    sums: dict[Site, torch.Tensor] = {}
    kept: dict[Site, list[tuple[int, torch.Tensor]]] = {s: [] for s in sites}
    count = 0
    n_tokens = 0
    for idx in batches:
        batch = collate([encoded[i] for i in idx], pad_id, padding_side, device)
        inputs = dict(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
        )
        if early_stop:
            acts = run_until(model, sites, **inputs)
        else:
            with record(model, sites) as acts, torch.no_grad():
                model(**inputs, use_cache=False)
        n_tokens += int(batch.attention_mask.sum())
        for j, s in enumerate(sites):
            red = reduce_batch(acts[s], batch, aggregate)
            if j == 0:
                count += int(red.shape[0])
            sums[s] = sums.get(
                s, torch.zeros(red.shape[-1], dtype=torch.float64, device=red.device)
            ) + red.double().sum(0)
            if keep_per_example:
                if aggregate == "all":
                    lens = batch.attention_mask.sum(-1).tolist()
                    for i, chunk in zip(idx, red.split(lens), strict=True):
                        kept[s].append((i, chunk.cpu()))
                else:
                    for i, row in zip(idx, red, strict=True):
                        kept[s].append((i, row.cpu()))
        bar.update(len(idx))
    return _Partial(sums, count, n_tokens, kept)


def _check_encoded(encoded: Sequence[Encoded], aggregate: str) -> None:
    if aggregate == "response_mean" and any(e.response_end == e.response_start for e in encoded):
        raise ValueError(
            "aggregate 'response_mean' needs an answer for every example; use 'last' or 'prompt_mean'"
        )


def capture(
    model: nn.Module,
    tokenizer,
    examples: Sequence[ChatExample],
    sites: Sequence[Site] | str,
    *,
    aggregate: str = "response_mean",
    batch_size: int = 16,
    keep_per_example: bool = False,
    padding_side: str = "right",
    progress: bool | str = True,
    early_stop: bool = True,
    distributed: bool = False,
    group=None,
    shard: str = "batches",
) -> CaptureResult:
    """Capture and reduce activations of ``examples`` at ``sites``.

    Examples are batched in order of length (less padding) and the forward pass stops after the
    deepest site. Sums are kept in float64; per-example vectors only if ``keep_per_example``.

    ``distributed=True`` splits the examples over the processes of ``group`` (default: the
    initialized torch.distributed default group; every process must call ``capture`` with the same
    arguments), all-reduces the sums and counts and all-gathers the per-example vectors in input
    order: every process returns the single-process result. ``shard`` is ``"batches"`` (the
    single-process length-sorted batches, dealt round-robin: per-example vectors are computed in
    the very batches one process would use), ``"contiguous"`` or ``"strided"`` (example index
    ranges or ``i % world_size``; each process tokenizes only its own examples). Only rank 0 shows
    a progress bar. See :mod:`saetools.distributed`.
    """
    from .sites import n_layers as count_layers

    if aggregate not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if not examples:
        raise ValueError("no examples to capture (the probe set or split is empty)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    sites = parse_sites(sites, count_layers(model))
    from .distributed import SHARDS

    if shard not in SHARDS:
        raise ValueError(f"unknown shard {shard!r}; choose one of {', '.join(SHARDS)}")
    if distributed:
        from .distributed import capture_distributed

        return capture_distributed(
            model,
            tokenizer,
            examples,
            sites,
            aggregate=aggregate,
            batch_size=batch_size,
            keep_per_example=keep_per_example,
            padding_side=padding_side,
            progress=progress,
            early_stop=early_stop,
            group=group,
            shard=shard,
        )
    if group is not None:
        raise ValueError("group= is given but distributed=False; pass distributed=True")
    encoded = encode_all(tokenizer, examples)
    _check_encoded(encoded, aggregate)
    batches = length_batches(encoded, batch_size)
    desc = progress if isinstance(progress, str) else "capture"
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, unit="ex", leave=False)
    try:
        part = _capture_batches(
            model,
            encoded,
            batches,
            sites,
            aggregate=aggregate,
            pad_id=_pad_id(tokenizer),
            keep_per_example=keep_per_example,
            padding_side=padding_side,
            early_stop=early_stop,
            bar=bar,
        )
    finally:
        bar.close()
    per_example = None
    if keep_per_example:
        per_example = {}
        for s in sites:
            rows = [r for _, r in sorted(part.kept[s], key=lambda x: x[0])]
            per_example[s] = torch.cat(rows) if aggregate == "all" else torch.stack(rows)
    return CaptureResult(
        sites=list(sites),
        aggregate=aggregate,
        sums={s: v.cpu() for s, v in part.sums.items()},
        count=part.count,
        per_example=per_example,
        n_tokens=part.n_tokens,
    )
