"""Streaming reducers: per-example token aggregates at each site, summed in float64 over batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import einops
import torch
from torch import nn

from ..sites import Site
from .chat import Batch, Encoded, collate, pad_token_id
from .hooks import record, run_until

__all__ = [
    "AGGREGATIONS",
    "CaptureResult",
    "PartialCapture",
    "capture_batches",
    "check_encoded",
    "reduce_batch",
    "site_batches",
]

AGGREGATIONS = ("response_mean", "last", "prompt_mean", "all")


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
    pad = pad_token_id(tokenizer)
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


@dataclass
class PartialCapture:
    """What one process accumulated over its batches (sums on each site's device, rows on CPU)."""

    sums: dict[Site, torch.Tensor]
    count: int
    n_tokens: int
    kept: dict[Site, list[tuple[int, torch.Tensor]]]


def capture_batches(
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
) -> PartialCapture:
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
    return PartialCapture(sums, count, n_tokens, kept)


def check_encoded(encoded: Sequence[Encoded], aggregate: str) -> None:
    if aggregate == "response_mean" and any(e.response_end == e.response_start for e in encoded):
        raise ValueError(
            "aggregate 'response_mean' needs an answer for every example; use 'last' or 'prompt_mean'"
        )
