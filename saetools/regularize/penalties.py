"""The math of each term, as plain functions of θ's and θ0's logits and activations.

Every value is a mean over the loss tokens (``mask``: positions ``[:, :-1]`` whose next token is
trained; ``n`` their count), computed in at least float32. :class:`~.loss.RegularizedLoss` runs
the passes and hands their outputs to these functions; each term's formula is in
:mod:`.terms`. Keeping the math here, one function per term, lets it change (e.g. chunked over
tokens to bound memory) without touching the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..sites import Site

# ``on(t, like)``: ``t`` on ``like``'s device and dtype (cached by the caller)
OnDevice = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def token_mean(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x.sum() / n`` (``n`` at least 1): a per-token value's mean over the loss tokens."""
    return x.sum() / max(n, 1)


def at_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``[b, t, ...]`` at the loss tokens: ``[n, ...]``."""
    return x[:, :-1][mask]


def kl_rows(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ p) per row, from logits [n, V] (at least float32)."""
    lt = F.log_softmax(up(target_logits), dim=-1)
    lp = F.log_softmax(up(logits), dim=-1)
    return (lt.exp() * (lt - lp)).sum(-1)


def cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, n: int
) -> torch.Tensor:
    """Cross-entropy of θ's next-token predictions at the loss tokens (token mean)."""
    return token_mean(F.cross_entropy(up(at_tokens(logits, mask)), targets, reduction="none"), n)


def kl_term(target_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, n: int):
    """``mean_t KL(target_t ‖ p_t)``: :class:`~.terms.KL` (target θ0's logits) and
    :class:`~.terms.DirectionalKL` (target the counterfactual pass's logits)."""
    return token_mean(kl_rows(at_tokens(target_logits, mask), at_tokens(logits, mask)), n)


def ldifs_term(
    store: Mapping[Site, torch.Tensor],
    h0: Mapping[Site, torch.Tensor],
    sites: Sequence[Site],
    mask: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """:class:`~.terms.LDIFS`: ``mean_t mean_sites ‖h_t - h0_t‖²``."""
    acc = 0.0
    for s in sites:
        d = up(at_tokens(store[s], mask)) - up(at_tokens(h0[s], mask))
        acc = acc + token_mean(d.pow(2).sum(-1), n)
    return acc / len(sites)


def sae_latents_term(
    sae, latents: Sequence[int], h: torch.Tensor, h0: torch.Tensor, mask: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`~.terms.SAELatents` with a sae-lens ``sae`` (on ``h``'s device): the value
    ``mean_t Σ_i relu(z_i(h_t) - z_i(h0_t))²`` and, for the logs, ``mean_t Σ_i relu(...)``.
    The gradient flows through the encoder into ``h``; ``h0``'s latents are constants."""
    idx = torch.tensor(latents, device=h.device)
    z = sae.encode(at_tokens(h, mask).to(sae.dtype)).index_select(-1, idx)
    with torch.no_grad():
        z0 = sae.encode(at_tokens(h0, mask).to(sae.dtype)).index_select(-1, idx)
    excess = (up(z) - up(z0)).clamp(min=0)
    return token_mean(excess.pow(2).sum(-1), n), token_mean(excess.detach().sum(-1), n)


def site_shifts(
    store: Mapping[Site, torch.Tensor],
    h0: Mapping[Site, torch.Tensor],
    sites: Sequence[Site],
    bases: Mapping[Site, torch.Tensor],
    mask: torch.Tensor,
    on: OnDevice,
) -> list[torch.Tensor]:
    """``δ_t = U (h_t - h0_t)`` at the loss tokens, one ``[n, k]`` per site (at least float32)."""
    out = []
    for s in sites:
        h = up(at_tokens(store[s], mask))
        U = on(bases[s], h)
        out.append((h - up(at_tokens(h0[s], mask))) @ U.T)
    return out


def mean_shift(deltas: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """The logged ``<term>/shift``: mean over tokens and sites of the first basis row's shift."""
    return torch.stack([token_mean(d[:, 0].detach(), n) for d in deltas]).mean()


def directional_l2_term(deltas: Sequence[torch.Tensor], one_sided: bool, n: int):
    """:class:`~.terms.DirectionalL2`: ``mean_t Σ_sites ‖δ_t‖²`` (one-sided: ``‖max(δ_t, 0)‖²``).
    ``0.0`` when there are no sites."""
    acc = 0.0
    for delta in deltas:
        dd = delta.clamp(min=0) if one_sided else delta
        acc = acc + token_mean(dd.pow(2).sum(-1), n)
    return acc


def undo_shift(h: torch.Tensor, h0: torch.Tensor, U: torch.Tensor, one_sided: bool) -> torch.Tensor:
    """The counterfactual activation of :class:`~.terms.DirectionalKL`: ``h - Uᵀ U (h - h0)``
    (one-sided: only the positive coordinates of ``U (h - h0)`` are undone)."""
    delta = (h - h0.to(h.dtype)) @ U.T
    if one_sided:
        delta = delta.clamp(min=0)
    return h - delta @ U
