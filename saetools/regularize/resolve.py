"""Terms resolved against a model: each term's sites and orthonormal bases, and its group.

Resolving checks everything that can fail before training starts: the term kinds, each direction
file against the model (width, fingerprint unless ``force``), each SAE against the model, site
names, and a vector (of full rank) for every site a term uses. Loss terms are grouped by the batch
they are computed on (:data:`~.terms.SOURCES`); Steer/Ablate terms become hooks on θ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..directions import DirectionFileError, DirectionSet
from ..sae import SAEError
from ..sites import Site, SiteError, parse_sites
from ..stats import orthonormal_basis
from .terms import (
    KL,
    LDIFS,
    NORM_FRACTION,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    LossTerm,
    SAELatents,
    Steer,
    ldifs_sites,
)

# a Steer/Ablate hook: (site, (op "add" | "ablate", vector or basis, alpha or None))
Intervention = tuple[Site, tuple[str, torch.Tensor, float | None]]


@dataclass
class ResolvedTerm:
    """A loss term with its parsed sites and, for direction terms, the basis of each site."""

    term: LossTerm
    sites: list[Site]
    bases: dict[Site, torch.Tensor] = field(default_factory=dict)  # [k, d] float32 cpu
    # normalized terms: the unit of the shift at each site, NORM_FRACTION x its residual norm
    units: dict[Site, float] = field(default_factory=dict)


@dataclass
class TermGroup:
    """Terms computed on one source (the training batch or an anchor batch)."""

    source: str
    terms: list[ResolvedTerm]

    @property
    def act_sites(self) -> list[Site]:
        return sorted({s for r in self.terms for s in r.sites})

    @property
    def needs_ref_logits(self) -> bool:
        return any(isinstance(r.term, KL) for r in self.terms)

    @property
    def needs_reference(self) -> bool:
        return bool(self.terms)


def resolve_terms(
    terms: Sequence, model: nn.Module, n_layers: int, *, force: bool = False
) -> tuple[list[ResolvedTerm], list[Steer | Ablate], list[Intervention]]:
    """(loss terms resolved, in order; Steer/Ablate terms; their hooks). ``model``: the model the
    direction files and SAEs are checked against (the reference when one is given)."""
    checked: set[int] = set()
    resolved: list[ResolvedTerm] = []
    steer_terms: list[Steer | Ablate] = []
    for t in terms:
        if not isinstance(
            t, DirectionalKL | DirectionalL2 | KL | LDIFS | SAELatents | Steer | Ablate
        ):
            raise TypeError(f"unknown term {t!r}")
        ds = getattr(t, "directions", None)
        if ds is not None and id(ds) not in checked:
            try:
                ds.check_model(model, force=force)
            except DirectionFileError as e:
                raise DirectionFileError(f"{type(t).__name__} {t.name!r}: {e}") from e
            checked.add(id(ds))
        if isinstance(t, Steer | Ablate):
            steer_terms.append(t)
        else:
            resolved.append(_resolve_loss_term(t, model, n_layers))
    interventions: list[Intervention] = []
    for t in steer_terms:
        for s in _parse(t, t.sites if t.sites is not None else t.directions.sites, n_layers):
            if isinstance(t, Steer):
                interventions.append((s, ("add", _basis(t, s)[0], t.alpha)))
            else:
                interventions.append((s, ("ablate", _basis(t, s), None)))
    return resolved, steer_terms, interventions


def _resolve_loss_term(t: LossTerm, model: nn.Module, n_layers: int) -> ResolvedTerm:
    if isinstance(t, KL):
        return ResolvedTerm(t, [])
    if isinstance(t, SAELatents):
        try:
            t.sae.check(model)
        except SAEError as e:
            raise SAEError(f"SAELatents {t.name!r}: {e}") from e
        return ResolvedTerm(t, _parse(t, [t.sae.site], n_layers))
    if isinstance(t, LDIFS):
        spec = t.sites if t.sites is not None else ldifs_sites(n_layers)
        return ResolvedTerm(t, _parse(t, spec, n_layers))
    spec = t.sites if t.sites is not None else t.directions.sites
    r = ResolvedTerm(t, _parse(t, spec, n_layers))
    r.bases = {s: _basis(t, s) for s in r.sites}
    if getattr(t, "normalize", False):
        try:
            r.units = {s: NORM_FRACTION * t.directions.resid_norm(s.name) for s in r.sites}
        except DirectionFileError as e:
            raise DirectionFileError(
                f"{type(t).__name__} {t.name!r}: normalize=True needs the sites' residual norms: {e}"
            ) from e
    return r


def _parse(term, spec, n_layers: int) -> list[Site]:
    try:
        return parse_sites(spec, n_layers)
    except SiteError as e:
        raise SiteError(f"{type(term).__name__} {term.name!r}: {e}") from e


def _basis(term, site: Site) -> torch.Tensor:
    ds: DirectionSet = term.directions
    if site.name not in ds:
        raise DirectionFileError(
            f"{type(term).__name__} {term.name!r}: the direction file has no vector for site "
            f"{site.name}; it has: {', '.join(ds.sites)}"
        )
    try:  # float64, so that float64 models see an orthonormal basis to their precision
        return orthonormal_basis(ds.vector(site.name).double())
    except ValueError as e:
        raise DirectionFileError(
            f"{type(term).__name__} {term.name!r}: direction at {site.name}: {e}"
        ) from e
