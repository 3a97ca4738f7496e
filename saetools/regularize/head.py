"""The LM head, taken out of the forward pass so that the logit terms can run it in chunks.

A causal LM's last step turns the final hidden states ``[b, t, d]`` into logits ``[b, t, V]``
(``logits = lm_head(h)``, then a softcap or a scale on some architectures). At a vocabulary of
151,936, 4 x 512 tokens of float32 logits take 1.2 GB, and the task loss, :class:`~.terms.KL` and
:class:`~.terms.DirectionalKL` each held one or more such tensors. :class:`HeadTap` instead
records the head's input during a pass and lets the head run on ``keep`` positions only (none once
checked); :func:`head_fn` is the head as a function of hidden rows, so :mod:`.penalties` can
compute logits at the loss tokens only, a chunk of rows at a time.

:func:`head_fn` knows the post-processing of transformers' causal LMs (Gemma 2/3's
``final_logit_softcapping``, Cohere's ``logit_scale``, Granite's ``logits_scaling``). On the first
call :class:`~.loss.RegularizedLoss` keeps one position of each pass's logits and compares them
with :func:`head_fn` on the recorded hidden state (:func:`head_matches`); a model whose head does
something else falls back to the full-logits path, with a warning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from ..sites import base_model

Head = Callable[[torch.Tensor], torch.Tensor]


class HeadMismatchError(RuntimeError):
    """The model's logits differ from :func:`head_fn` applied to its final hidden states."""


def output_head(model: nn.Module) -> nn.Module | None:
    """The module that maps final hidden states to logits (``get_output_embeddings()``: the
    ``lm_head``, GPT-NeoX's ``embed_out``; PEFT wrappers looked through), or None."""
    get = getattr(base_model(model), "get_output_embeddings", None)
    mod = get() if callable(get) else None
    return mod if isinstance(mod, nn.Module) else None


def _is_adapted(mod: nn.Module) -> bool:
    """True when PEFT put an adapter (or a trainable copy) on the head itself."""
    return any(type(m).__module__.startswith("peft.") for m in mod.modules())


def head_fn(model: nn.Module, *, adapters_off: nn.Module | None = None) -> Head:
    """``h [..., d] -> logits [..., V]`` as ``model`` computes them after its last norm.

    ``adapters_off``: a PEFT model whose adapters are disabled while the head runs (θ0 as θ
    without adapters), needed only when the head itself carries an adapter."""
    mod = output_head(model)
    if mod is None:
        raise HeadMismatchError(f"{type(model).__name__} has no output embeddings")
    cfg = getattr(base_model(model), "config", None)
    get = getattr(cfg, "get_text_config", None)
    cfg = get() if callable(get) else cfg
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    divide = getattr(cfg, "logits_scaling", None)
    toggle = adapters_off if adapters_off is not None and _is_adapted(mod) else None

    def fn(h: torch.Tensor) -> torch.Tensor:
        with toggle.disable_adapter() if toggle is not None else nullcontext():
            z = mod(h)
        if scale is not None and isinstance(scale, int | float):
            z = z * scale
        if divide is not None and isinstance(divide, int | float):
            z = z / divide
        if softcap is not None and isinstance(softcap, int | float):
            z = torch.tanh(z / softcap) * softcap
        return z

    return fn


def under_autocast(head: Head, device_type: str, dtype: torch.dtype | None) -> Head:
    """``head`` run under ``torch.autocast(device_type, dtype)`` (``dtype`` None: as is). A
    mixed-precision wrapper (accelerate's, the Trainer's ``bf16=True``) may autocast inside the
    model's forward only; the chunked head must compute as the forward's head did."""
    if dtype is None:
        return head

    def fn(h: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            return head(h)

    return fn


class HeadTap:
    """Context manager: during a forward pass, record the input of ``model``'s output head (the
    final hidden states ``[b, t, d]``, in :attr:`hidden`) and let the head compute the last
    ``keep`` positions only (0: none; the pass returns logits ``[b, keep, V]``). :meth:`head`
    gives the head as a function, under the autocast state the forward had there."""

    def __init__(self, model: nn.Module, keep: int = 0) -> None:
        self.module = output_head(model)
        if self.module is None:
            raise HeadMismatchError(f"{type(model).__name__} has no output embeddings")
        self.keep = keep
        self.hidden: torch.Tensor | None = None
        self.autocast: torch.dtype | None = None
        self._handle = None

    def _pre(self, module, args, kwargs):
        if args:
            h, rest = args[0], args[1:]
        else:
            h, rest = kwargs.pop("input"), ()
        if h.dim() != 3:
            raise HeadMismatchError(f"the output head got a {h.dim()}-d input, not [b, t, d]")
        self.hidden = h
        dev = h.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            self.autocast = torch.get_autocast_dtype(dev)
        return (h[:, h.shape[1] - self.keep :], *rest), kwargs

    def __enter__(self) -> HeadTap:
        self._handle = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def head(self, model: nn.Module, *, adapters_off: nn.Module | None = None) -> Head:
        """:func:`head_fn` of ``model``, under the autocast state recorded in the pass."""
        hidden = self.result()
        return under_autocast(
            head_fn(model, adapters_off=adapters_off), hidden.device.type, self.autocast
        )

    def result(self) -> torch.Tensor:
        """The recorded hidden states; raises when the head never ran."""
        if self.hidden is None:
            raise HeadMismatchError("the forward pass never reached the output head")
        return self.hidden


def head_matches(kept_logits: torch.Tensor, hidden: torch.Tensor, head: Head) -> bool:
    """Whether the model's own logits at its last ``keep`` positions equal ``head`` on the recorded
    hidden states there (the same computation, so any difference is post-processing that
    :func:`head_fn` does not know)."""
    k = kept_logits.shape[1]
    if k == 0:
        return True
    with torch.no_grad():
        mine = head(hidden[:, hidden.shape[1] - k :])
        if mine.shape != kept_logits.shape:
            return False
        a, b = mine.double(), kept_logits.double()
        tol = 1e-3 if kept_logits.dtype in (torch.float32, torch.float64) else 2e-2
        scale = max(1.0, float(b.abs().max()))
        diff = float((a - b).abs().max())
    return math.isfinite(diff) and diff <= tol * scale
