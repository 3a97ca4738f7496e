"""``capture``: chat examples through the model in length-sorted batches, reduced on the fly."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..sites import Site, n_layers, parse_sites
from .chat import ChatExample, encode_all, length_batches, pad_token_id
from .reduce import AGGREGATIONS, CaptureResult, capture_batches, check_encoded
from .sharded import SHARDS, capture_distributed

__all__ = ["capture"]


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
    if aggregate not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if not examples:
        raise ValueError("no examples to capture (the probe set or split is empty)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    sites = parse_sites(sites, n_layers(model))
    if shard not in SHARDS:
        raise ValueError(f"unknown shard {shard!r}; choose one of {', '.join(SHARDS)}")
    if distributed:
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
    check_encoded(encoded, aggregate)
    batches = length_batches(encoded, batch_size)
    desc = progress if isinstance(progress, str) else "capture"
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress, unit="ex", leave=False)
    try:
        part = capture_batches(
            model,
            encoded,
            batches,
            sites,
            aggregate=aggregate,
            pad_id=pad_token_id(tokenizer),
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
