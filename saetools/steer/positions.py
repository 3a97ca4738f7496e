"""Token positions: which columns of a sequence an intervention steers, with or without a KV cache.

``positions`` is ``"all"``, ``"prompt"``, ``"generated"`` or an explicit bool mask ``[batch, seq]``
(:func:`check_positions` validates one). Positions are **absolute columns** of the sequence as laid
out in ``input_ids`` (and in the ``sequences`` HF ``generate`` returns), padding included. A
forward pre-hook on the top-level model reads how many columns the KV cache already holds
(``cache.get_seq_length()``); a call of width ``T`` covers columns ``[offset, offset + T)``. So a
decode step that sees one new token knows it is column ``offset``, and position rules give the same
result with or without a cache. :class:`PositionTracker` does that bookkeeping.

``prompt`` means columns ``< prompt_len`` and ``generated`` columns ``>= prompt_len``. With left
padding every row's prompt ends at the same column, so ``prompt`` covers exactly each row's real
prompt tokens (pad columns may be steered too; they are masked out of attention and change
nothing). ``prompt_len`` is either given (``steer(..., prompt_len=P)`` or ``ctx.reset(P)``; an int or
one column per row) or found automatically: a call that starts on an empty cache starts a new
context and its width is the prompt length, except that a call which repeats the recorded prompt
and extends it (generation with ``use_cache=False``, or a naive loop recomputing the whole prefix)
continues the same context. An explicit mask is indexed by the same absolute columns; columns
beyond its width are not steered.
"""

from __future__ import annotations

import torch

from .ops import SteeringError

POSITIONS = ("all", "prompt", "generated")


def check_positions(positions):
    """``positions`` checked: one of :data:`POSITIONS`, or a ``[batch, seq]`` mask made bool."""
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise SteeringError(
                f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)} or a bool mask"
            )
        return positions
    if isinstance(positions, torch.Tensor):
        if positions.ndim != 2:
            raise SteeringError(
                f"a position mask must be [batch, seq], got shape {tuple(positions.shape)}"
            )
        return positions.bool()
    raise SteeringError(
        f"positions must be one of {', '.join(POSITIONS)} or a bool tensor, not {type(positions).__name__}"
    )


class PositionTracker:
    """Tracks which absolute columns the current forward call covers, and the prompt length.

    A forward pre-hook on the top-level model records ``offset`` (tokens already in the KV cache)
    and the call's width; an always-called forward hook clears it. Site hooks turn a position rule
    into a ``[batch or 1, T]`` mask, computed once per call and rule.
    """

    def __init__(self, prompt_len=None):
        self.fixed = prompt_len is not None
        self.prompt_len = self._as_len(prompt_len)
        self.prompt_ids: torch.Tensor | None = None
        self.call: tuple[int, int, int] | None = None  # (offset, batch, width)
        self._masks: dict = {}

    @staticmethod
    def _as_len(p):
        if p is None:
            return None
        if isinstance(p, torch.Tensor):
            return p.detach().long().reshape(-1)
        if isinstance(p, (list, tuple)):
            return torch.tensor(p, dtype=torch.long)
        return int(p)

    def reset(self, prompt_len=None) -> None:
        self.fixed = prompt_len is not None
        self.prompt_len = self._as_len(prompt_len)
        self.prompt_ids = None
        self._masks = {}

    # ---------------------------------------------------------------- hooks on the top-level model
    def pre_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            self.call = None
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offset = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        batch, width = int(x.shape[0]), int(x.shape[1])
        self.call = (offset, batch, width)
        self._masks = {}
        if not self.fixed:
            self._auto_prompt(
                offset, width, ids if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None
            )
        return None

    def post_hook(self, module, args, output):
        self.call = None
        self._masks = {}
        return None

    def _auto_prompt(self, offset: int, width: int, ids: torch.Tensor | None) -> None:
        if offset == 0:
            p = self.prompt_len
            if (
                isinstance(p, int)
                and self.prompt_ids is not None
                and ids is not None
                and width > p
                and ids.shape[0] == self.prompt_ids.shape[0]
                and torch.equal(ids[:, :p], self.prompt_ids.to(ids.device))
            ):
                return  # the same prompt, extended: a cache-free continuation
            self.prompt_len = width
            self.prompt_ids = ids.detach().clone() if ids is not None else None
        elif self.prompt_len is None:
            self.prompt_len = (
                offset + width
            )  # a first call on a pre-filled cache: treat it all as prompt

    # ---------------------------------------------------------------- masks
    def mask(self, positions, h: torch.Tensor):
        """``None``: steer every token; ``False``: steer none; else a bool mask ``[b or 1, T]``."""
        if isinstance(positions, str) and positions == "all":
            return None
        batch, width = int(h.shape[0]), int(h.shape[1])
        if self.call is not None and self.call[1:] == (batch, width):
            offset = self.call[0]
        else:  # a forward call the top-level hook did not see (the inner model called directly)
            offset = 0
            if not self.fixed and self.prompt_len is None:
                self.prompt_len = width
        key = positions if isinstance(positions, str) else id(positions)
        cached = self._masks.get((key, h.device, offset, batch, width))
        if cached is not None:
            return cached
        cols = torch.arange(offset, offset + width, device=h.device)
        if isinstance(positions, str):
            p = self.prompt_len
            if p is None:
                p = width + offset
            if isinstance(p, torch.Tensor):
                if p.numel() != batch:
                    raise SteeringError(
                        f"prompt_len has {p.numel()} entries but the batch has {batch} rows"
                    )
                m = cols[None, :] < p.to(h.device)[:, None]
            else:
                m = (cols < p)[None, :]
            if positions == "generated":
                m = ~m
        else:
            pm = positions
            if pm.shape[0] != batch:
                raise SteeringError(
                    f"the position mask has {pm.shape[0]} rows but the batch has {batch}"
                )
            m = torch.zeros((batch, width), dtype=torch.bool, device=h.device)
            hi = min(offset + width, pm.shape[1])
            if hi > offset:
                m[:, : hi - offset] = pm[:, offset:hi].to(h.device)
        if bool(m.all()):
            out = None
        elif not bool(m.any()):
            out = False
        else:
            out = m
        self._masks[(key, h.device, offset, batch, width)] = out
        return out
