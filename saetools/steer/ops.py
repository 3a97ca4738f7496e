"""The steering operators: plain callables on an activation ``h [..., d]``, and the package's error.

Each operator is computed in ``h``'s dtype, O(d) per token with no loop over tokens: :func:`add`
(``h + alpha * v``), :func:`ablate` (remove the component in the span of an orthonormal basis) and
:func:`clamp` (set the projection on a unit vector to a value). :data:`OPS` names them as
:class:`saetools.steer.Intervention` takes them. :class:`SteeringError` lives here, at the bottom of
the package, because every other module of :mod:`saetools.steer` raises it.
"""

from __future__ import annotations

import einops
import torch

OPS = ("add", "ablate", "clamp")


class SteeringError(ValueError):
    """Bad steering input: unknown op, unusable vector, missing value, bad positions, ..."""


def projection(h: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Projection ``<h, unit>`` of each activation ``[..., d]`` on a unit vector ``[d]`` -> ``[...]``."""
    return einops.einsum(h, unit.to(h.dtype), "... d, d -> ...")


def add(h: torch.Tensor, vector: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``h + alpha * vector`` (the vector as given: raw or unit is the caller's choice)."""
    return h + alpha * vector.to(h.dtype)


def ablate(h: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove the component of ``h`` in the span of ``basis`` (``[d]`` or ``[k, d]``, orthonormal rows).

    Orthonormalise several directions first (:func:`saetools.stats.orthonormal_basis`);
    :class:`Intervention` does.
    """
    b = basis.to(h.dtype)
    if b.ndim == 1:
        b = b[None]
    coeff = einops.einsum(h, b, "... d, k d -> ... k")
    return h - einops.einsum(coeff, b, "... k, k d -> ... d")


def clamp(h: torch.Tensor, unit: torch.Tensor, value: float) -> torch.Tensor:
    """Set the projection of ``h`` on the unit vector ``unit`` to ``value``; the rest is unchanged."""
    u = unit.to(h.dtype)
    p = einops.einsum(h, u, "... d, d -> ...")
    return h + einops.einsum(value - p, u, "..., d -> ... d")
