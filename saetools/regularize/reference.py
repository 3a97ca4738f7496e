"""The frozen reference θ0: which model plays it, and its forward pass.

With PEFT, θ0 is the same model with its adapters disabled (no extra memory). Otherwise, if a loss
term needs θ0 and none is given, it is a deep copy of θ made once (:func:`frozen_copy`), frozen and
in eval mode. Hooks go on the unwrapped model (:func:`unwrap` strips DDP / FSDP /
``torch.compile`` wrappers). θ0's passes run in eval mode (no dropout) and without gradient, and
stop after the deepest site they need unless θ0's logits are needed (:class:`~.terms.KL`).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping, Sequence
from contextlib import ExitStack

import torch
from torch import nn

from ..capture import StopForward
from ..scoring import eval_mode
from ..sites import Site, hooks, is_peft, n_layers
from .batch import forward_kwargs


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / FSDP / torch.compile wrappers."""
    wrappers = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ in wrappers and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        else:
            return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to serve as θ0.

    ``copy.deepcopy`` does not copy functions, so a ``forward`` that a library patched onto an
    instance as a closure (TRL's ``SFTTrainer`` binds such a wrapper for its fused LM head) would
    still call the *original* module, and the copy's own weights and hooks would never
    run. Such instance-level patches are dropped from the copy, which then runs its class's
    forward. Bound methods and ``functools.partial`` objects (accelerate's hooks) are copied
    correctly and kept.
    """
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        fwd = mod.__dict__.get("forward")
        func = fwd.__func__ if isinstance(fwd, types.MethodType) else fwd
        # a closure may hold the original module (deepcopy re-binds ``self`` but not closures)
        if isinstance(func, types.FunctionType) and func.__closure__:
            del mod.__dict__["forward"]
    return ref


def _freeze(model: nn.Module) -> None:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def choose_reference(
    inner: nn.Module, reference: nn.Module | None, needed: bool
) -> tuple[nn.Module | None, bool]:
    """(θ0 model or None, whether θ0 is ``inner`` with its adapters disabled).

    A given ``reference`` is frozen and must have as many blocks as ``inner``. Without one, a PEFT
    ``inner`` toggles its adapters; otherwise a frozen copy is made when a term ``needed`` θ0."""
    use_adapter_toggle = reference is None and is_peft(inner)
    if reference is not None:
        _freeze(reference)
        if n_layers(reference) != n_layers(inner):
            raise ValueError(
                f"reference has {n_layers(reference)} blocks, the model {n_layers(inner)}"
            )
    elif needed and not use_adapter_toggle:
        reference = frozen_copy(inner)
        _freeze(reference)
    return reference, use_adapter_toggle


def reference_pass(
    ref: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    sites: Sequence[Site],
    *,
    need_logits: bool,
    adapters_of: nn.Module | None = None,
) -> tuple[dict[Site, torch.Tensor], torch.Tensor | None]:
    """θ0's activations at ``sites`` (detached) and, with ``need_logits``, its logits (else the
    pass stops after the deepest site and the logits are None). ``adapters_of``: a PEFT model whose
    adapters are disabled for the pass (θ0 = θ without adapters)."""
    kwargs = forward_kwargs(inputs)
    with ExitStack() as stack:
        if adapters_of is not None:
            stack.enter_context(adapters_of.disable_adapter())
        stack.enter_context(eval_mode(ref))
        stack.enter_context(torch.no_grad())
        store: dict[Site, torch.Tensor] = {}
        last = max(sites) if sites else None
        stop = not need_logits

        def make(site):
            def fn(h):
                store[site] = h.detach()
                if stop and site == last:
                    raise StopForward
                return None

            return fn

        logits = None
        with hooks(ref, [(s, make(s)) for s in sites]):
            try:
                logits = ref(**kwargs).logits
            except StopForward:
                pass
    missing = [s.name for s in sites if s not in store]
    if missing:
        raise RuntimeError(f"the reference forward pass never reached sites {missing}")
    return store, logits
