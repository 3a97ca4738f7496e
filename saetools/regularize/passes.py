"""θ's forward passes: the main pass (with gradient, recording activations at the terms' sites)
and :class:`~.terms.DirectionalKL`'s counterfactual pass, which replays the main pass's RNG state
so that both see the same dropout. θ0's pass is in :mod:`.reference`.

Each pass takes an optional :class:`~.head.HeadTap`: it then records the final hidden states and
skips (most of) the LM head, for the chunked logit terms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack, nullcontext

import torch
from torch import nn

from ..sites import Site, hooks
from .batch import forward_kwargs
from .head import HeadTap
from .penalties import OnDevice, undo_shift


def accelerator_devices(model: nn.Module) -> list[torch.device]:
    """The non-CPU devices ``model``'s parameters live on (several with ``device_map``)."""
    return sorted(
        {p.device for p in model.parameters() if p.device.type not in ("cpu", "meta")}, key=str
    )


def rng_state(devices: Sequence[torch.device]):
    """The CPU's and each accelerator device's RNG states, so the counterfactual pass sees the
    main pass's dropout (on every device, when blocks are spread over several)."""
    acc = []
    for d in devices:
        mod = torch.get_device_module(d.type)
        idx = d.index if d.index is not None else mod.current_device()
        acc.append((d.type, idx, mod.get_rng_state(idx)))
    return torch.get_rng_state(), acc


def set_rng(rng) -> None:
    """Go back to a state from :func:`rng_state` (to rerun a pass or a step exactly)."""
    torch.set_rng_state(rng[0])
    for kind, idx, state in rng[1]:
        torch.get_device_module(kind).set_rng_state(state, idx)


def theta_pass(
    inner: nn.Module,
    grad_model: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
    tap: HeadTap | None = None,
) -> tuple[dict[Site, torch.Tensor], torch.Tensor]:
    """θ's activations at ``sites`` (hooks on ``inner``, not detached) and its logits, from a pass
    through ``grad_model`` (``inner`` itself or the wrapper the trainer built, e.g. DDP); with a
    ``tap``, the logits of the tap's ``keep`` positions only, the hidden states in the tap."""
    store: dict[Site, torch.Tensor] = {}

    def make(site):
        def fn(h):
            store[site] = h
            return None

        return fn

    with hooks(inner, [(s, make(s)) for s in sites]), tap or nullcontext():
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
    tap: HeadTap | None = None,
) -> torch.Tensor:
    """θ's logits with the shift along each site's basis undone (:func:`~.penalties.undo_shift`,
    at every one of ``sites``), under the RNG state ``rng`` of the main pass;
    without gradient when ``detach_target``. With a ``tap``: as in :func:`theta_pass`."""

    def make(site):
        basis = bases[site]

        def fn(h):
            return undo_shift(h, h0[site], basis, one_sided, on)

        return fn

    ctx = torch.no_grad() if detach_target else torch.enable_grad()
    kinds = {kind for kind, _, _ in rng[1]}
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[], device_type="cpu"))
        for kind in kinds:
            idx = [i for k, i, _ in rng[1] if k == kind]
            stack.enter_context(torch.random.fork_rng(devices=idx, device_type=kind))
        stack.enter_context(ctx)
        set_rng(rng)
        with hooks(inner, [(s, make(s)) for s in sites]), tap or nullcontext():
            return inner(**forward_kwargs(inputs)).logits
