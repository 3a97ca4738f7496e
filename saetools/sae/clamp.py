"""Latent clamping: a steering intervention that sets SAE latents to values.

:class:`LatentClamp` encodes the site's activation, sets chosen latents to values and adds only the
decoded change ``(z' - z) @ W_dec`` to the residual. The SAE's reconstruction error is never added
or removed, so an SAE that reconstructs poorly does not damage the model; clamping a latent to its
current value changes nothing. It works with :func:`saetools.steer.steer` and
:func:`saetools.steer.generate` (KV cache included). :func:`parse_clamps` reads ``latent=value``
clamps from the command line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import einops
import torch
from torch import nn

from ..sites import Site
from ..steer import SteeringError, check_positions
from .io import LoadedSAE, SAEError, load_sae

__all__ = ["LatentClamp", "parse_clamps"]


def parse_clamps(items: str | Sequence[str]) -> dict[int, float]:
    """``"123=0"``, ``["123=0", "456=2.5"]`` or ``"123=0,456=2.5"`` -> ``{latent: value}``."""
    if isinstance(items, str):
        items = [items]
    out: dict[int, float] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            lat, sep, val = part.partition("=")
            try:
                j, v = int(lat.strip()), float(val)
            except ValueError:
                j, v = None, float("nan")
            if not sep or j is None or not math.isfinite(v):
                raise SAEError(
                    f"cannot parse latent clamp {part.strip()!r}: expected latent=value, e.g. 123=0"
                )
            if j in out:
                raise SAEError(f"latent {j} is clamped twice")
            out[j] = v
    if not out:
        raise SAEError("no latent clamps given")
    return out


@dataclass
class LatentClamp:
    """Set SAE latents to values at the SAE's site, keeping the SAE's error term.

    ``h' = h + (z' - z)[latents] @ D`` where ``z = encode(h)``, ``z'`` equals ``z`` except at
    ``latents`` where it is ``values``, and ``D`` the latents' decoder rows
    (:meth:`LoadedSAE.decoder_rows`). Only the decoded change is added, so whatever the SAE fails to
    reconstruct stays in ``h``. ``values`` is one number, one per latent, or a tensor broadcasting
    to ``[..., k]``. ``positions`` follows :class:`saetools.steer.Intervention`.
    """

    sae: LoadedSAE | Any
    latents: int | Sequence[int]
    values: float | Sequence[float] | torch.Tensor = 0.0
    positions: str | torch.Tensor = "all"
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sae, LoadedSAE):
            self.sae = load_sae(self.sae)
        self.latents = self.sae.check_latents(self.latents)
        k = len(self.latents)
        if isinstance(self.values, torch.Tensor):
            v = self.values.detach()
            if v.shape[-1:] not in ((k,), (1,)) and v.ndim > 0:
                raise SAEError(f"clamp values have shape {tuple(v.shape)}; expected [..., {k}]")
        else:
            vals = [self.values] if isinstance(self.values, (int, float)) else list(self.values)
            if len(vals) == 1:
                vals = vals * k
            if len(vals) != k:
                raise SAEError(f"{len(vals)} clamp values for {k} latents")
            try:
                vals = [float(x) for x in vals]
            except (TypeError, ValueError):
                raise SAEError(f"clamp values must be numbers, not {self.values!r}") from None
            v = torch.tensor(vals, dtype=torch.float32)
        if not torch.isfinite(v.float()).all():
            raise SAEError("clamp values must be finite")
        self.values = v
        self.rows = self.sae.decoder_rows(self.latents)  # [k, d]
        self.positions = check_positions(self.positions)

    @property
    def site(self) -> str:
        return self.sae.site

    @property
    def d_model(self) -> int:
        return self.sae.d_in

    @property
    def op(self) -> str:
        return "latent_clamp"

    def check(self, model: nn.Module) -> Site:
        try:
            return self.sae.check(model)
        except SAEError as e:
            raise SteeringError(str(e)) from e

    def _tensors(self, h: torch.Tensor):
        key = (h.device, h.dtype)
        got = self._cache.get(key)
        if got is None:
            dt = self.sae.sae.dtype
            got = (
                torch.tensor(self.latents, device=h.device),
                self.values.to(device=h.device, dtype=dt),
                self.rows.to(device=h.device, dtype=dt),
            )
            self._cache[key] = got
        return got

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        """The decoded change ``(z' - z)[latents] @ D`` for activations ``h [..., d]`` (SAE dtype)."""
        idx, values, rows = self._tensors(h)
        z = self.sae.encode(h)
        dz = values - z.index_select(-1, idx)
        return einops.einsum(dz, rows, "... k, k d -> ... d")

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` plus the decoded change (O(d * d_sae) per token for the encoder, no token loop)."""
        return h + self.delta(h).to(h.dtype)
