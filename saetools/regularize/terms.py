"""The regularizer terms: what each one computes, and the checks on its fields.

A fine-tuned model θ is compared with a frozen reference θ0 (see :mod:`.reference`). For a site s
with an orthonormal basis U ``[k, d]`` of the misalignment direction(s), h_t θ's activation at
token t, h0_t θ0's:

* ``δ_t = U (h_t - h0_t)``: θ's shift along the direction(s) (``[k]``; one-sided: ``max(δ, 0)``).
* :class:`DirectionalKL`: ``mean_t KL(p̃_t ‖ p_t)``. ``p_t`` is θ's next-token distribution,
  ``p̃_t`` θ's distribution in a counterfactual pass where, at **every** site of the term (in
  forward order), the shift along U is undone: the counterfactual activation ``c`` becomes
  ``c - Uᵀ U (c - h0)`` (one-sided: only the positive coordinates are undone). Undone at every token
  position, prompt included. ``p̃`` is a fixed target by default (``detach_target=True``: the
  counterfactual pass runs without gradient), so the gradient only moves ``p`` toward ``p̃``.
* :class:`DirectionalL2`: ``mean_t Σ_sites ‖δ_t‖²`` (one-sided: ``‖max(δ_t, 0)‖²``). No extra pass
  of θ.
* :class:`KL`: ``mean_t KL(p0_t ‖ p_t)`` with ``p0`` θ0's distribution.
* :class:`LDIFS`: ``mean_t mean_sites ‖h_t - h0_t‖²``; default sites: ``hook_resid_post`` of 5
  evenly spaced blocks ending at the last one (:func:`ldifs_sites`).
* :class:`Steer` (preventative steering: ``h + alpha * unit`` at its sites) and :class:`Ablate`
  (project the span of the basis out) change θ's forward passes during training instead of adding
  a loss. They are applied to every pass of θ that :class:`~.loss.RegularizedLoss` runs (main,
  counterfactual, anchor), never to θ0, and they are removed after each call, so the trained model
  generates without them.

**Normalized strengths** (``normalize=True`` on :class:`DirectionalKL` and :class:`DirectionalL2`;
off by default, so earlier numbers reproduce). Residual norms differ by orders of magnitude
between models, so the same λ pulls very differently. Normalized, both terms measure the shift
along the direction in one unit, ``ε·n_s`` with ``ε =`` :data:`NORM_FRACTION` (1%) and ``n_s`` the
site's mean residual norm recorded in the direction file
(:meth:`~saetools.directions.DirectionSet.resid_norm`):

* :class:`DirectionalL2`: ``mean_t Σ_sites ‖δ_t / (ε·n_s)‖²``;
* :class:`DirectionalKL`: the term divided by ``KL_ref``, the KL that shifting θ0 by ``ε·n_s``
  along the direction at every site of the term causes on the first batch (measured once, at θ0,
  with two extra θ0 passes). For small shifts KL is quadratic in the shift, so the normalized
  term is about ``(δ / ε·n_s)²``, like the normalized L2.

"Tokens" are the loss-mask tokens: position t counts when ``labels[t + 1] != -100`` (the
Hugging Face shift), i.e. the positions whose next-token prediction is trained. Activation terms use
the activations at those same positions. Every term is a mean over those tokens of the batch it is
computed on. The math of each term lives in :mod:`.penalties`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..directions import DirectionSet
from ..sae import load_sae, parse_latents

SOURCES = ("batch", "anchor")
# the unit of normalized directional terms: this fraction of the site's mean residual norm
NORM_FRACTION = 0.01


# --------------------------------------------------------------------------------------------
# Terms


def _check_common(term, *, has_weight: bool = True) -> None:
    kind = type(term).__name__
    if not isinstance(term.name, str) or not term.name:
        raise ValueError(f"{kind}: name must be a non-empty string, not {term.name!r}")
    if has_weight:
        try:
            w = float(term.weight)
        except (TypeError, ValueError):
            raise ValueError(
                f"{kind} {term.name!r}: weight must be a number, not {term.weight!r}"
            ) from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"{kind} {term.name!r}: weight must be finite and >= 0, not {w}")
        term.weight = w
    on = getattr(term, "on", "batch")
    if on not in SOURCES:
        raise ValueError(f"{kind} {term.name!r}: on must be 'batch' or 'anchor', not {on!r}")
    ds = getattr(term, "directions", None)
    if ds is not None and not isinstance(ds, DirectionSet):
        raise TypeError(f"{kind} {term.name!r}: directions must be a DirectionSet")


@dataclass
class DirectionalKL:
    """``mean_t KL(p̃_t ‖ p_t)``: the change of θ's output caused by its shift along the directions.

    ``sites``: site names (a list, a comma-separated string, ``all``, ranges) or ``None`` for every
    site of ``directions``. Each site uses ``directions.basis(site)``.
    """

    directions: DirectionSet
    sites: str | Sequence[str] | None = None
    weight: float = 1.0
    one_sided: bool = False
    detach_target: bool = True
    on: str = "batch"
    name: str = "directional_kl"
    normalize: bool = False  # divide by KL_ref (see the module docstring)

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass
class DirectionalL2:
    """``mean_t Σ_sites ‖U (h_t - h0_t)‖²`` (one-sided: positive coordinates only)."""

    directions: DirectionSet
    sites: str | Sequence[str] | None = None
    weight: float = 1.0
    one_sided: bool = False
    on: str = "batch"
    name: str = "directional_l2"
    normalize: bool = False  # shifts in units of NORM_FRACTION x the site's residual norm

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass
class KL:
    """``mean_t KL(p0_t ‖ p_t)``, p0 from the reference model (a full θ0 forward pass)."""

    weight: float = 1.0
    on: str = "batch"
    name: str = "kl"

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass
class LDIFS:
    """``mean_t mean_sites ‖h_t - h0_t‖²``; ``sites=None``: :func:`ldifs_sites` (5 blocks)."""

    weight: float = 1.0
    sites: str | Sequence[str] | None = None
    on: str = "batch"
    name: str = "ldifs"

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass
class Steer:
    """Preventative steering: ``h + alpha * unit(site)`` at each site, in every training pass of θ."""

    directions: DirectionSet
    sites: str | Sequence[str] | None = None
    alpha: float = 1.0
    name: str = "steer"

    def __post_init__(self) -> None:
        _check_common(self, has_weight=False)
        try:
            a = float(self.alpha)
        except (TypeError, ValueError):
            raise ValueError(f"Steer {self.name!r}: alpha must be a number") from None
        if not math.isfinite(a):
            raise ValueError(f"Steer {self.name!r}: alpha must be finite, not {a}")
        self.alpha = a


@dataclass
class Ablate:
    """Concept-ablation fine-tuning: project the span of the basis out at each site, in θ's passes."""

    directions: DirectionSet
    sites: str | Sequence[str] | None = None
    name: str = "ablate"

    def __post_init__(self) -> None:
        _check_common(self, has_weight=False)


@dataclass
class SAELatents:
    """One-sided penalty on SAE latents rising above their reference values (the ``sae-latents``
    baseline): ``mean_t Σ_i relu(z_i(h_t) - z_i(h0_t))²`` over the chosen latents ``i``, where
    ``z = sae.encode(·)`` at the SAE's own site (``cfg.metadata.hook_name``), ``h`` is θ's activation
    and ``h0`` θ0's. Latents that fall, or rise no higher than in θ0, cost nothing.

    ``sae``: a :class:`saetools.sae.LoadedSAE`, a sae-lens ``SAE``, a folder or ``release:id``
    (see :func:`saetools.sae.load_sae`). The SAE is frozen (its parameters get
    ``requires_grad=False``); the gradient flows through its encoder into θ.
    """

    sae: object
    latents: str | int | Sequence[int]
    weight: float = 1.0
    on: str = "batch"
    name: str = "sae_latents"

    def __post_init__(self) -> None:
        _check_common(self)
        self.sae = load_sae(self.sae)
        ids = parse_latents(self.latents) if isinstance(self.latents, str) else self.latents
        self.latents = self.sae.check_latents(ids)
        for p in self.sae.sae.parameters():
            p.requires_grad_(False)


LossTerm = DirectionalKL | DirectionalL2 | KL | LDIFS | SAELatents
Term = LossTerm | Steer | Ablate


def ldifs_sites(n: int, count: int = 5) -> list[str]:
    """``hook_resid_post`` of ``count`` evenly spaced blocks ending at the last one (deduplicated):
    30 blocks -> 5, 11, 17, 23, 29."""
    layers = sorted({max(0, round((i + 1) * n / count) - 1) for i in range(count)})
    return [f"blocks.{k}.hook_resid_post" for k in layers]
