"""Data-parallel capture with torch.distributed (``torchrun``, ``accelerate launch``, or your own
``init_process_group``): gloo on CPU, nccl on GPU.

Every process holds the whole model and runs a shard of the examples through the usual streaming
reducers; the float64 sums, the counts and the token counts are then all-reduced (exact up to the
order of float64 additions), and per-example vectors (needed for AUROC, Cohen's d, PCA) are
all-gathered back into the original example order. Every process ends with the single-process
result, so everything computed from it afterwards (directions, statistics) is the same on every
rank; only rank 0 needs to write files.

Use it through the ``distributed=True`` argument of :func:`saetools.capture.capture`,
:func:`saetools.extract.extract_diffmeans` and :func:`saetools.extract.extract_modeldiff`::

    # torchrun --nproc_per_node 2 my_script.py
    from saetools.distributed import init_from_env, is_main_process
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

import atexit
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "SHARDS",
    "DistributedError",
    "Launch",
    "all_reduce_result",
    "capture_distributed",
    "init_from_env",
    "is_main_process",
    "resolve_group",
    "shard_indices",
]

SHARDS = ("batches", "contiguous", "strided")


class DistributedError(RuntimeError):
    """torch.distributed is not usable as asked, or another rank failed."""


def _dist():
    import torch.distributed as dist

    return dist


def resolve_group(group=None):
    """The process group to use (``None`` means the default group); raises a clear error when
    torch.distributed is unavailable or no process group is initialized."""
    dist = _dist()
    if not dist.is_available():
        raise DistributedError(
            "distributed=True, but this torch build has no torch.distributed support"
        )
    if not dist.is_initialized():
        raise DistributedError(
            "distributed=True, but no torch.distributed process group is initialized. Launch with "
            "`torchrun --nproc_per_node N script.py` (or `accelerate launch`) and call "
            "`saetools.distributed.init_from_env()` or `torch.distributed.init_process_group()` "
            "first; for one process, leave distributed=False"
        )
    return group


def is_main_process(group=None) -> bool:
    """True on rank 0, and in a program that is not distributed at all."""
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return dist.get_rank(group) == 0


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


@dataclass(frozen=True)
class Launch:
    """Where this process stands: from :func:`init_from_env`."""

    rank: int
    world_size: int
    local_rank: int
    device: str
    active: bool  # a process group is initialized: pass ``distributed=launch.active``

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "cpu", backend: str | None = None) -> Launch:
    """Join the process group a launcher describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT``: ``torchrun``, ``accelerate launch``), if any.

    An already initialized group (an ``Accelerator`` was created, or you called
    ``init_process_group``) is used as is. Otherwise, with ``WORLD_SIZE > 1`` the default group is
    initialized (``nccl`` for a CUDA ``device``, else ``gloo``) and destroyed at exit. A ``device`` of
    ``"cuda"`` without an index becomes ``cuda:LOCAL_RANK``. Outside a launcher this returns a
    one-process :class:`Launch` with ``active=False`` and changes nothing.
    """
    dist = _dist()
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    already = dist.is_available() and dist.is_initialized()
    if not already and env_world <= 1:
        return Launch(0, 1, 0, str(dev), False)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not already:
        if not dist.is_available():
            raise DistributedError(
                f"WORLD_SIZE={env_world}, but this torch build has no torch.distributed support"
            )
        dist.init_process_group(backend or ("nccl" if dev.type == "cuda" else "gloo"))
        atexit.register(_destroy)
    return Launch(dist.get_rank(), dist.get_world_size(), local_rank, str(dev), True)


def _destroy() -> None:
    dist = _dist()
    if dist.is_initialized():
        dist.destroy_process_group()


def _comm_device(group) -> torch.device:
    backend = _dist().get_backend(group)
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(error: BaseException | None, n_examples: int, group) -> None:
    """Every rank learns whether any rank failed (or was given other examples); all raise together
    instead of hanging in the next collective."""
    dist = _dist()
    world = dist.get_world_size(group)
    msgs: list = [None] * world
    mine = (None if error is None else f"{type(error).__name__}: {error}", n_examples)
    dist.all_gather_object(msgs, mine, group=group)
    if error is not None:
        raise error
    failed = [(r, m) for r, (m, _) in enumerate(msgs) if m is not None]
    if failed:
        r, m = failed[0]
        raise DistributedError(f"rank {r} of {world} failed during distributed capture: {m}")
    counts = [n for _, n in msgs]
    if len(set(counts)) > 1:
        raise DistributedError(
            f"the ranks passed different numbers of examples to capture ({counts}); every rank "
            "must pass the same examples"
        )


def _all_gather_padded(t: torch.Tensor, group, device: torch.device) -> list[torch.Tensor]:
    """All-gather tensors that differ in their first dimension only."""
    dist = _dist()
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=device)
    ns = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(ns, n, group=group)
    sizes = [int(x) for x in ns]
    width = max(sizes)
    pad = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=device)
    pad[: t.shape[0]] = t.to(device)
    out = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(out, pad, group=group)
    return [o[:k].cpu() for o, k in zip(out, sizes, strict=True)]


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
    from .capture import CaptureResult

    dist = _dist()
    group = resolve_group(group)
    dev = _comm_device(group)
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
        all_idx = _all_gather_padded(idx_lens, group, dev)
        all_rows = _all_gather_padded(rows, group, dev)
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
    from tqdm.auto import tqdm

    from .capture import (
        CaptureResult,
        _capture_batches,
        _check_encoded,
        _pad_id,
        encode_chat,
        length_batches,
    )
    from .sites import d_model

    if shard not in SHARDS:
        raise ValueError(f"unknown shard {shard!r}; choose one of {', '.join(SHARDS)}")
    dist = _dist()
    group = resolve_group(group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n = len(examples)
    error: BaseException | None = None
    local = CaptureResult(list(sites), aggregate, {}, 0, None, 0)
    mine: list[int] = []
    lens: list[int] = []
    bar = None
    try:
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
        _check_encoded([e for e in encoded.values()], aggregate)  # type: ignore[misc]
        mine = sorted(i for b in batches for i in b)
        desc = progress if isinstance(progress, str) else "capture"
        bar = tqdm(
            total=len(mine),
            desc=f"{desc} [rank 0 of {world}]",
            disable=not progress or rank != 0,
            unit="ex",
            leave=False,
        )
        part = _capture_batches(
            model,
            seq,  # type: ignore[arg-type]
            batches,
            list(sites),
            aggregate=aggregate,
            pad_id=_pad_id(tokenizer),
            keep_per_example=keep_per_example,
            padding_side=padding_side,
            early_stop=early_stop,
            bar=bar,
        )
        per_example = None
        if keep_per_example:
            per_example = {}
            for s in sites:
                rows = [r for _, r in sorted(part.kept[s], key=lambda x: x[0])]
                if not rows:
                    per_example[s] = torch.zeros(0, d_model(model))
                else:
                    per_example[s] = torch.cat(rows) if aggregate == "all" else torch.stack(rows)
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
    except Exception as e:  # noqa: BLE001 - re-raised by _agree on this rank
        error = e
    finally:
        if bar is not None:
            bar.close()
    _agree(error, n, group)
    return all_reduce_result(
        local, mine, n, rows_per_example=lens, d_model=d_model(model), group=group
    )
