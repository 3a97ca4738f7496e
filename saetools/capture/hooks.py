"""Record activations at sites during a forward pass, and stop the pass after the deepest one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..sites import Site, hooks

__all__ = ["StopForward", "record", "run_until"]


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
