"""Deprecated: the old home of the SAE latent tools, kept so old imports keep working.

Use :mod:`saetools.extract.latents` (latent statistics and rankings),
:mod:`saetools.extract.latent_report` (the plotly report) and
:mod:`saetools.extract.latent_directions` (decoder rows as a DirectionSet) instead.
"""

from __future__ import annotations

from .latent_directions import directions_from_latents
from .latent_report import latent_report
from .latents import (
    RANK_BY,
    LatentActivations,
    LatentRanking,
    auroc_columns,
    latent_activations,
    latent_activations_from_tensors,
    rank_from_activations,
    rank_latents,
    rank_latents_modeldiff,
)

__all__ = [
    "RANK_BY",
    "LatentActivations",
    "LatentRanking",
    "auroc_columns",
    "directions_from_latents",
    "latent_activations",
    "latent_activations_from_tensors",
    "latent_report",
    "rank_from_activations",
    "rank_latents",
    "rank_latents_modeldiff",
]
