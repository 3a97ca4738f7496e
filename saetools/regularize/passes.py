"""θ's forward passes: the main pass (with gradient, recording activations at the terms' sites)
and :class:`~.terms.DirectionalKL`'s counterfactual pass, which replays the main pass's RNG state
so that both see the same dropout. θ0's pass is in :mod:`.reference`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..sites import Site, hooks
from .batch import forward_kwargs
from .penalties import OnDevice, undo_shift


def rng_state(device: torch.device):
    """CPU and accelerator RNG states, so the counterfactual pass sees the main pass's dropout."""
    cpu = torch.get_rng_state()
    if device.type == "cpu":
        return (cpu, None, None, "cuda")
    mod = torch.get_device_module(device.type)
    idx = device.index if device.index is not None else mod.current_device()
    return (cpu, mod.get_rng_state(idx), idx, device.type)


def theta_pass(
    inner: nn.Module,
    grad_model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """θ's activations at ``sites`` (hooks on ``inner``, not detached) and its logits, from a pass
    through ``grad_model`` (``inner`` itself or the wrapper the trainer built, e.g. DDP)."""
    store: dict[Site, torch.Tensor] = {}

    def make(site):
        def fn(h):
            store[site] = h
            return None

        return fn

    with hooks(inner, [(s, make(s)) for s in sites]):
        logits = grad_model(**forward_kwargs(inputs)).logits
    missing = [s.name for s in sites if s not in store]
    if missing:
        raise RuntimeError(f"the forward pass never reached sites {missing}")
    return store, logits


def counterfactual_logits(
    inner: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
    bases: Mapping[Site, torch.Tensor],
    h0: Mapping[Site, torch.Tensor],
    rng,
    *,
    one_sided: bool,
    detach_target: bool,
    on: OnDevice,
) -> torch.Tensor:
    """θ's logits with the shift along each site's basis undone (:func:`~.penalties.undo_shift`,
    at every one of ``sites``), under the RNG state ``rng`` of the main pass;
    without gradient when ``detach_target``."""

    def make(site):
        basis = bases[site]

        def fn(h):
            return undo_shift(h, h0[site], on(basis, h), one_sided)

        return fn

    ctx = torch.no_grad() if detach_target else torch.enable_grad()
    devices = [rng[2]] if rng[1] is not None else []
    with torch.random.fork_rng(devices=devices, device_type=rng[3]), ctx:
        torch.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.get_device_module(rng[3]).set_rng_state(rng[1], rng[2])
        with hooks(inner, [(s, make(s)) for s in sites]):
            return inner(**forward_kwargs(inputs)).logits
