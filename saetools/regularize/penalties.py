"""The math of each term, as plain functions of θ's and θ0's logits and activations.

Every value is a mean over the loss tokens (``mask``: positions ``[:, :-1]`` whose next token is
trained; ``n`` their count), computed in at least float32. :class:`~.loss.RegularizedLoss` runs
the passes and hands their outputs to these functions; each term's formula is in
:mod:`.terms`.

The logit terms (the task cross-entropy, :class:`~.terms.KL`, :class:`~.terms.DirectionalKL`) come
in two exact forms: from full logits ``[b, t, V]`` (:func:`cross_entropy`, :func:`kl_term`), and
chunked (:func:`chunked_logit_sums`): from the final hidden states at the loss tokens, running the
LM head on ``chunk`` rows at a time, each chunk under :func:`torch.utils.checkpoint.checkpoint` so
that neither the forward nor the backward holds more than one chunk's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

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
    """Rows of ``x`` ``[b, t, ...]`` at the loss tokens: ``[n, ...]`` (on ``x``'s device: with
    blocks on several devices, each site's activations stay where their block ran)."""
    return x[:, :-1][mask.to(x.device)]


def rows_on(x: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """:func:`at_tokens` of ``x`` (θ0's), at least float32, on ``like``'s device (θ's)."""
    return up(at_tokens(x, mask)).to(like.device)


def kl_rows(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ p) per row, from logits [n, V] (at least float32)."""
    lt = F.log_softmax(up(target_logits), dim=-1)
    lp = F.log_softmax(up(logits), dim=-1)
    return (lt.exp() * (lt - lp)).sum(-1)


def cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, n: int
) -> torch.Tensor:
    """Cross-entropy of θ's next-token predictions at the loss tokens (token mean)."""
    rows = up(at_tokens(logits, mask))
    return token_mean(F.cross_entropy(rows, targets.to(rows.device), reduction="none"), n)


def kl_term(target_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, n: int):
    """``mean_t KL(target_t ‖ p_t)``: :class:`~.terms.KL` (target θ0's logits) and
    :class:`~.terms.DirectionalKL` (target the counterfactual pass's logits)."""
    rows = at_tokens(logits, mask)
    return token_mean(kl_rows(rows_on(target_logits, mask, rows), rows), n)


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
        h = up(at_tokens(store[s], mask))
        d = h - rows_on(h0[s], mask, h)
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
        z0 = sae.encode(at_tokens(h0, mask).to(h.device, sae.dtype)).index_select(-1, idx)
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
        out.append((h - rows_on(h0[s], mask, h)) @ U.T)
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


def undo_shift(
    h: torch.Tensor, h0: torch.Tensor, basis: torch.Tensor, one_sided: bool, on: OnDevice
) -> torch.Tensor:
    """The counterfactual activation of :class:`~.terms.DirectionalKL`: ``h - Uᵀ U (h - h0)``
    (one-sided: only the positive coordinates of ``U (h - h0)`` are undone). The correction is
    computed in at least float32 and subtracted in ``h``'s dtype."""
    hu = up(h)
    U = on(basis, hu)
    delta = (hu - up(h0).to(h.device)) @ U.T
    if one_sided:
        delta = delta.clamp(min=0)
    return h - (delta @ U).to(h.dtype)


# --------------------------------------------------------------------------------------------
# Chunked logit terms


@dataclass
class HeadRows:
    """Logits not yet computed: final hidden states at the loss tokens ``[n, d]`` and the head that
    turns rows of them into logits. ``fixed``: a target without gradient (θ0's, or a detached
    counterfactual), computed under ``torch.no_grad``."""

    hidden: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    fixed: bool = False


def _chunk_sums(
    theta: HeadRows, targets: Sequence[HeadRows], labels: torch.Tensor | None, h, *ts
) -> torch.Tensor:
    """``[CE sum (if labels), KL(target_k ‖ p) sum for each k]`` over one chunk of rows."""
    lp = F.log_softmax(up(theta.head(h)), dim=-1)
    out = []
    if labels is not None:
        out.append(-lp.gather(-1, labels.to(lp.device)[:, None]).sum())
    for tgt, th in zip(targets, ts, strict=True):
        if tgt.fixed:
            with torch.no_grad():
                lt = F.log_softmax(up(tgt.head(th)), dim=-1)
        else:
            lt = F.log_softmax(up(tgt.head(th)), dim=-1)
        lt = lt.to(lp.device)
        out.append((lt.exp() * (lt - lp)).sum())
    return torch.stack(out)


def chunked_logit_sums(
    theta: HeadRows,
    targets: Sequence[HeadRows],
    labels: torch.Tensor | None,
    chunk: int,
) -> torch.Tensor:
    """Sums over the loss tokens of the cross-entropy of ``labels`` (first entry, when given) and
    of ``KL(target_k ‖ p)`` for each target (θ's distribution ``p`` from ``theta``), computed
    ``chunk`` rows at a time. With gradient, each chunk is checkpointed: its logits are freed after
    the forward and recomputed in the backward, so at most one chunk's logits exist at a time.
    Divide by the token count for the means of :func:`cross_entropy` and :func:`kl_term`."""
    n = theta.hidden.shape[0]
    k = (labels is not None) + len(targets)
    dtype = torch.float64 if theta.hidden.dtype == torch.float64 else torch.float32
    total = theta.hidden.new_zeros(k, dtype=dtype)
    if n == 0:  # keep the result on the graph, as the full-logit form does
        return total + 0 * theta.hidden.sum()
    grad = torch.is_grad_enabled()  # (the head's own weights may train even if no input does)
    for i in range(0, n, max(1, chunk)):
        sl = slice(i, i + max(1, chunk))
        y = labels[sl] if labels is not None else None
        args = (theta.hidden[sl], *(t.hidden[sl] for t in targets))
        if grad:
            part = checkpoint(_chunk_sums, theta, targets, y, *args, use_reentrant=False)
        else:
            part = _chunk_sums(theta, targets, y, *args)
        total = total + part.to(total.device)
    return total


def logit_stats(
    rows: HeadRows, labels: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ entropy, Σ [argmax == label]) of the distributions of ``rows``, ``chunk`` rows at a time,
    without gradient (the metrics TRL logs: ``entropy``, ``mean_token_accuracy``)."""
    ent = rows.hidden.new_zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.long, device=rows.hidden.device)
    with torch.no_grad():
        for i in range(0, rows.hidden.shape[0], max(1, chunk)):
            z = up(rows.head(rows.hidden[i : i + max(1, chunk)]))
            lp = F.log_softmax(z, dim=-1)
            ent = ent + (-(lp.exp() * lp).sum()).double().to(ent.device)
            right = z.argmax(-1) == labels[i : i + max(1, chunk)].to(z.device)
            correct = correct + right.sum().to(correct.device)
    return ent, correct
