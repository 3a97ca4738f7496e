"""Directions from several sources at once: :func:`stack_directions` stacks, per site, the vectors
(or bases) of several direction files and orthonormalizes them into one ``[k, d]`` basis.

Per site shared by every set, the rows are taken in the order of the sets (a ``[d]`` vector is one
row, a ``[k, d]`` basis k rows), each scaled to unit norm, and orthonormalized by
:func:`saetools.stats.orthonormal_basis` (QR in float64, row i keeps the sign of the i-th input row
after the earlier rows are removed from it). So row 0 is the first set's unit direction, and every
later row is the part of its source's direction that the earlier rows do not span, pointing the
way that source points: a one-sided term on the stacked basis penalizes each row's positive side.
A row that the earlier rows already span (within float32 rounding) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..directions import DirectionFileError, DirectionSet
from ..stats import orthonormal_basis

# per-site statistics copied from the first set that has them (norm-relative strengths)
_NORM_STATS = ("resid_norm_mean", "activation_norm_mean")


def stack_directions(
    sets: Sequence[DirectionSet], names: Sequence[str] | None = None
) -> DirectionSet:
    """One direction set whose basis at each site spans every set's direction(s) there (see the
    module docstring). ``names`` label the sources in the metadata (``sources``). The sets must
    have the same width; only the sites all of them have are kept (refused if there are none)."""
    sets = list(sets)
    if not sets:
        raise DirectionFileError("stack_directions needs at least one direction set")
    names = list(names) if names is not None else [f"set{i}" for i in range(len(sets))]
    if len(names) != len(sets):
        raise DirectionFileError(f"{len(names)} names for {len(sets)} direction sets")
    widths = {ds.d_model for ds in sets}
    if len(widths) != 1:
        raise DirectionFileError(f"direction sets of different widths {sorted(widths)}")
    sites = [s for s in sets[0].sites if all(s in ds for ds in sets[1:])]
    if not sites:
        raise DirectionFileError(f"the direction sets {names} share no site")
    vectors, stats = {}, {}
    for site in sites:
        rows = torch.cat([_unit_rows(ds.vector(site)) for ds in sets])
        try:
            vectors[site] = orthonormal_basis(rows)
        except ValueError as e:
            raise DirectionFileError(f"stacking {names} at {site}: {e}") from e
        stats[site] = _norm_stats(sets, site)
    first = sets[0].metadata
    meta = {
        "method": "stacked",
        "sources": names,
        "rows_per_source": [int(_unit_rows(ds.vector(sites[0])).shape[0]) for ds in sets],
        "stats": stats,
    }
    for key in ("model_id", "fingerprint", "aggregation"):
        if first.get(key) is not None:
            meta[key] = first[key]
    return DirectionSet(vectors, meta)


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """``v`` (``[d]`` or ``[k, d]``) as float64 rows of unit norm (a zero row is refused later)."""
    rows = v.double().reshape(-1, v.shape[-1])
    return rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-30)


def _norm_stats(sets: Sequence[DirectionSet], site: str) -> dict:
    for ds in sets:
        st = {k: v for k, v in ds.stats(site).items() if k in _NORM_STATS}
        if st:
            return st
    return {}
