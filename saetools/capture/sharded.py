"""Data-parallel capture (the ``distributed=True`` path of ``capture``) with torch.distributed (``torchrun``, ``accelerate launch``, or your own
``init_process_group``): gloo on CPU, nccl on GPU.

Every process holds the whole model and runs a shard of the examples through the usual streaming
reducers; the float64 sums, the counts and the token counts are then all-reduced (exact up to the
order of float64 additions), and per-example vectors (needed for AUROC, Cohen's d, PCA) are
all-gathered back into the original example order. Every process ends with the single-process
result, so everything computed from it afterwards (directions, statistics) is the same on every
rank; only rank 0 needs to write files.

Use it through the ``distributed=True`` argument of :func:`saetools.capture.capture`,
:func:`saetools.extract.extract_diffmeans` and :func:`saetools.extract.extract_modeldiff`; the
process-group helpers (``init_from_env``, ``is_main_process``) live in :mod:`saetools.distributed`::

    # torchrun --nproc_per_node 2 my_script.py
    launch = init_from_env("cuda")           # or "cpu"; no-op outside a launcher
    lm = load_model("default", device=launch.device)
    ds = extract_diffmeans(lm.model, lm.tokenizer, probes.load("em-core"), distributed=launch.active)
    if is_main_process():
        ds.save("em.safetensors")

Sharding (``shard=`` of ``capture``), all deterministic:

* ``"batches"`` (default): the examples are length-sorted and cut into batches exactly as one process
  would; batch ``j`` goes to rank ``j % world_size``. Each per-example vector is computed in the same
  batch (same padding, same kernels) as in a single process.
* ``"contiguous"``: rank ``r`` takes the ``r``-th of ``world_size`` nearly equal index ranges.
* ``"strided"``: rank ``r`` takes indices ``r, r + world_size, ...``.

With ``"contiguous"`` and ``"strided"`` each rank tokenizes only its own examples; per-example vectors
can then differ from one process's in the last float32 bits (other batch shapes). A rank may get no
examples at all (more ranks than batches); it contributes zeros.

If one rank fails (bad example, out of memory), every rank raises: the failing one its own error,
the others a :class:`DistributedError` naming that rank, instead of hanging in a collective.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import (
    DistributedError,
    agree_or_raise,
    all_gather_padded,
    comm_device,
    resolve_group,
    torch_distributed,
)
from ..sites import d_model
from .chat import encode_chat, length_batches, pad_token_id
from .reduce import CaptureResult, capture_batches, check_encoded

__all__ = ["SHARDS", "all_reduce_result", "capture_distributed", "shard_indices"]

SHARDS = ("batches", "contiguous", "strided")


def shard_indices(n: int, rank: int, world_size: int, mode: str = "contiguous") -> list[int]:
    """Example indices of rank ``rank``: ``"contiguous"`` ranges (sizes differ by at most one,
    lower ranks take the extra) or ``"strided"`` (``i % world_size == rank``)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if n < 0:
        raise ValueError(f"number of examples must be >= 0, not {n}")
    if mode == "strided":
        return list(range(rank, n, world_size))
    if mode == "contiguous":
        base, extra = divmod(n, world_size)
        start = rank * base + min(rank, extra)
        return list(range(start, start + base + (1 if rank < extra else 0)))
    raise ValueError(f"unknown shard mode {mode!r}; choose 'contiguous' or 'strided'")


def all_reduce_result(
    result,
    indices: Sequence[int],
    n_examples: int,
    *,
    rows_per_example: Sequence[int] | None = None,
    d_model: int | None = None,
    group=None,
):
    """Combine the :class:`~saetools.capture.CaptureResult` of each rank's shard into the whole.

    ``indices`` are the global example indices this rank captured, in the order of its
    ``per_example`` rows; ``rows_per_example`` their numbers of rows (aggregate ``all``: tokens per
    example; otherwise one each). Sums, counts and token counts are all-reduced (float64 / int64);
    per-example rows are all-gathered and put back in global example order. A rank with no examples
    passes a result with empty sums and ``d_model``. Every rank must call this.
    """
    dist = torch_distributed()
    group = resolve_group(group)
    dev = comm_device(group)
    sites = list(result.sites)
    if result.sums:
        d = next(iter(result.sums.values())).shape[-1]
    elif d_model is not None:
        d = d_model
    else:
        raise ValueError("a rank with no examples must pass d_model")
    rows = idx_lens = None
    if result.per_example is not None:  # checked before any collective: a raise cannot hang others
        lens = list(rows_per_example) if rows_per_example is not None else [1] * len(indices)
        if len(lens) != len(indices):
            raise ValueError("indices and rows_per_example differ in length")
        idx_lens = torch.tensor(
            [[i, k] for i, k in zip(indices, lens, strict=True)], dtype=torch.long
        )
        idx_lens = idx_lens.reshape(-1, 2)
        rows = torch.stack([result.per_example[s].float().reshape(-1, d) for s in sites], 1)
        if rows.shape[0] != sum(lens):
            raise ValueError(
                f"{rows.shape[0]} per-example rows on this rank, but rows_per_example sums to "
                f"{sum(lens)}"
            )
    sums = torch.stack(
        [result.sums.get(s, torch.zeros(d, dtype=torch.float64)).to(dev) for s in sites]
    ).to(torch.float64)
    dist.all_reduce(sums, group=group)
    counts = torch.tensor([result.count, result.n_tokens], dtype=torch.long, device=dev)
    dist.all_reduce(counts, group=group)
    per_example = None
    # Every rank must agree on whether rows are gathered.
    keep = torch.tensor([0 if rows is None else 1], device=dev)
    dist.all_reduce(keep, op=dist.ReduceOp.MIN, group=group)
    if int(keep) == 1:
        assert rows is not None and idx_lens is not None
        all_idx = all_gather_padded(idx_lens, group, dev)
        all_rows = all_gather_padded(rows, group, dev)
        pieces: list[torch.Tensor | None] = [None] * n_examples
        for il, r in zip(all_idx, all_rows, strict=True):
            for (i, _), chunk in zip(il.tolist(), r.split(il[:, 1].tolist()), strict=True):
                if not 0 <= i < n_examples or pieces[i] is not None:
                    raise DistributedError(f"example {i} is out of range or captured twice")
                pieces[i] = chunk
        missing = [i for i, p in enumerate(pieces) if p is None]
        if missing:
            raise DistributedError(
                f"examples {missing[:10]} were captured by no rank (did every rank pass the same "
                "examples?)"
            )
        full = torch.cat(pieces)  # type: ignore[arg-type]
        per_example = {s: full[:, j].contiguous() for j, s in enumerate(sites)}
    return CaptureResult(
        sites=sites,
        aggregate=result.aggregate,
        sums={s: sums[j].cpu() for j, s in enumerate(sites)},
        count=int(counts[0]),
        per_example=per_example,
        n_tokens=int(counts[1]),
        extra={**result.extra, "world_size": dist.get_world_size(group)},
    )


def capture_distributed(
    model: nn.Module,
    tokenizer,
    examples,
    sites,
    *,
    aggregate: str,
    batch_size: int,
    keep_per_example: bool,
    padding_side: str,
    progress: bool | str,
    early_stop: bool,
    group=None,
    shard: str = "batches",
):
    """The ``distributed=True`` path of :func:`saetools.capture.capture` (validated arguments)."""
    if shard not in SHARDS:
        raise ValueError(f"unknown shard {shard!r}; choose one of {', '.join(SHARDS)}")
    dist = torch_distributed()
    group = resolve_group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = len(examples)
    error: BaseException | None = None
    local = CaptureResult(list(sites), aggregate, {}, 0, None, 0)
    mine: list[int] = []
    lens: list[int] = []
    bar = None
    try:
        encoded, seq, batches = _encode_shard(
            tokenizer, examples, batch_size, aggregate, shard, rank, world
        )
        mine = sorted(i for b in batches for i in b)
        desc = progress if isinstance(progress, str) else "capture"
        bar = tqdm(
            total=len(mine),
            desc=f"{desc} [rank 0 of {world}]",
            disable=not progress or rank != 0,
            unit="ex",
            leave=False,
        )
        part = capture_batches(
            model,
            seq,  # type: ignore[arg-type]
            batches,
            list(sites),
            aggregate=aggregate,
            pad_id=pad_token_id(tokenizer),
            keep_per_example=keep_per_example,
            padding_side=padding_side,
            early_stop=early_stop,
            bar=bar,
        )
        per_example = _kept_rows(part, sites, aggregate, model) if keep_per_example else None
        lens = [
            len(encoded[i].input_ids) if aggregate == "all" else 1  # type: ignore[attr-defined]
            for i in mine
        ]
        local = CaptureResult(
            list(sites),
            aggregate,
            {s: v.cpu() for s, v in part.sums.items()},
            part.count,
            per_example,
            part.n_tokens,
            extra={"shard": shard},
        )
    except Exception as e:  # noqa: BLE001 - re-raised by agree_or_raise on this rank
        error = e
    finally:
        if bar is not None:
            bar.close()
    agree_or_raise(error, n, group)
    return all_reduce_result(
        local, mine, n, rows_per_example=lens, d_model=d_model(model), group=group
    )


def _encode_shard(tokenizer, examples, batch_size: int, aggregate: str, shard: str, rank, world):
    """Encode the examples this rank needs and cut its batches.

    Returns ``(encoded, seq, batches)``: ``encoded`` maps an example index to its encoding, ``seq``
    is indexed by global example index (None where this rank encoded nothing), and ``batches`` hold
    global example indices.
    """
    n = len(examples)
    encoded: dict[int, object] = {}
    if shard == "batches":
        mine_all = list(range(n))
    else:
        mine_all = shard_indices(n, rank, world, shard)
    for i in mine_all:
        try:
            encoded[i] = encode_chat(tokenizer, examples[i])
        except ValueError as e:
            raise type(e)(f"example {i}: {e}") from e
    if shard == "batches":
        seq = [encoded[i] for i in range(n)]
        batches = length_batches(seq, batch_size)[rank::world]
    else:
        seq_idx = mine_all
        local_b = length_batches([encoded[i] for i in seq_idx], batch_size)
        batches = [[seq_idx[j] for j in b] for b in local_b]
        seq = [encoded.get(i) for i in range(n)]  # type: ignore[misc]
    check_encoded([e for e in encoded.values()], aggregate)  # type: ignore[misc]
    return encoded, seq, batches


def _kept_rows(part, sites, aggregate: str, model: nn.Module) -> dict:
    """This rank's per-example rows per site in example order (``[0, d_model]`` when it has none)."""
    per_example = {}
    for s in sites:
        rows = [r for _, r in sorted(part.kept[s], key=lambda x: x[0])]
        if not rows:
            per_example[s] = torch.zeros(0, d_model(model))
        else:
            per_example[s] = torch.cat(rows) if aggregate == "all" else torch.stack(rows)
    return per_example
