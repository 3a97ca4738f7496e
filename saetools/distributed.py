"""torch.distributed process groups for saetools: start one from the launcher's environment
(``torchrun``, ``accelerate launch``), ask which rank this is, and the few collectives the
data-parallel capture (:mod:`saetools.capture.sharded`) builds on. gloo on CPU, nccl on GPU.

    # torchrun --nproc_per_node 2 my_script.py
    from saetools.distributed import init_from_env, is_main_process
    launch = init_from_env("cuda")           # or "cpu"; no-op outside a launcher
    lm = load_model("default", device=launch.device)
    ds = extract_diffmeans(lm.model, lm.tokenizer, probes.load("em-core"), distributed=launch.active)
    if is_main_process():
        ds.save("em.safetensors")
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch

__all__ = [
    "DistributedError",
    "Launch",
    "agree_or_raise",
    "all_gather_padded",
    "comm_device",
    "init_from_env",
    "is_main_process",
    "resolve_group",
    "torch_distributed",
]


class DistributedError(RuntimeError):
    """torch.distributed is not usable as asked, or another rank failed."""


def torch_distributed():
    """The ``torch.distributed`` module (imported on first use)."""
    import torch.distributed as dist

    return dist


def resolve_group(group=None):
    """The process group to use (``None`` means the default group); raises a clear error when
    torch.distributed is unavailable or no process group is initialized."""
    dist = torch_distributed()
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
    dist = torch_distributed()
    if not (dist.is_available() and dist.is_initialized()):
        return True
    return dist.get_rank(group) == 0


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
    dist = torch_distributed()
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
    dist = torch_distributed()
    if dist.is_initialized():
        dist.destroy_process_group()


def comm_device(group) -> torch.device:
    backend = torch_distributed().get_backend(group)
    if "nccl" in str(backend).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_or_raise(error: BaseException | None, n_examples: int, group) -> None:
    """Every rank learns whether any rank failed (or was given other examples); all raise together
    instead of hanging in the next collective."""
    dist = torch_distributed()
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


def all_gather_padded(t: torch.Tensor, group, device: torch.device) -> list[torch.Tensor]:
    """All-gather tensors that differ in their first dimension only."""
    dist = torch_distributed()
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
