"""Per-request steering: the ``saetools`` field of a request turned into interventions
(:class:`Steering`), and one batch's interventions applied row by row (:class:`SteerPlan`).

Rows with different steering share a batch. For each site, the hook applies every intervention
present in the batch to the rows that asked for it (``torch.where`` on a row mask), in the order
each request gave. Positions follow :mod:`saetools.steer`: ``prompt`` steers the prefill forward
(every prompt column, left padding included, which attention masks out), ``generated`` the decode
steps (each sees one new token), ``all`` both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..sae import LatentClamp, SAEError
from ..sites import n_layers, parse_site, parse_sites
from ..steer import Intervention, SteeringError, interventions_from_directions
from .limits import magnitude_problem
from .protocol import (
    APIError,
    ClampItem,
    ServeConfig,
    SteerItem,
    bad_request,
    clamp_item,
    parse_steering,
    steer_item,
)


class Steering:
    """Turns a request's ``saetools`` field into interventions, against what the server loaded.

    ``directions`` maps names to loaded :class:`~saetools.directions.DirectionSet` objects that
    requests may steer with (``"direction": name``); ``saes`` maps names to loaded SAEs
    (:func:`saetools.sae.load_sae`) whose latents requests may clamp (``saetools.clamp``);
    ``default`` (interventions and :class:`~saetools.sae.LatentClamp` objects) applies to requests
    that carry neither ``saetools.steer`` nor ``saetools.clamp``. The last ``config.steer_cache``
    distinct requests' interventions are kept, so a repeated request builds nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ServeConfig,
        *,
        directions: dict | None = None,
        saes: dict | None = None,
        default: Sequence[Intervention] = (),
    ):
        self.model = model
        self.config = config
        self.directions = dict(directions or {})
        self.saes = dict(saes or {})
        for sae in self.saes.values():
            sae.check(model)
        self.n_layers = n_layers(model)
        self.default = tuple(default)
        for iv in self.default:
            iv.check(model)
            problem = magnitude_problem(iv, config.max_steer_magnitude)
            if problem:
                raise ValueError(f"default steering: {problem}")
        self.default_key = "default:" + steer_desc(self.default)
        self._cache: OrderedDict[str, tuple[Intervention, ...]] = OrderedDict()

    def resolve(self, ext) -> tuple[str, tuple[Intervention, ...]]:
        """The steering key (rows with equal keys share a row mask) and interventions of a
        request whose ``saetools`` field is ``ext``."""
        req = parse_steering(ext)
        if req is None:
            return self.default_key, self.default
        got = self._cache.get(req.key)
        if got is not None:
            self._cache.move_to_end(req.key)
            return req.key, got
        ivs: list = []
        for i, item in enumerate(req.steer):
            ivs.extend(self._interventions(item, f"saetools.steer[{i}]"))
        for i, item in enumerate(req.clamp):
            ivs.append(self._clamp(item, f"saetools.clamp[{i}]"))
        out = tuple(ivs)
        self._cache[req.key] = out
        while len(self._cache) > self.config.steer_cache:
            self._cache.popitem(last=False)
        return req.key, out

    def _clamp(self, item, where: str) -> LatentClamp:
        c: ClampItem = clamp_item(item, where, self.saes.keys())
        try:
            clamp = LatentClamp(self.saes[c.sae], c.ids, c.values, positions=c.positions)
        except (SAEError, ValueError) as e:
            raise bad_request(f"{where}: {e}", f"{where}.latents") from None
        self._check_magnitude(clamp, where, f"{where}.latents")
        return clamp

    def _check_magnitude(self, iv, where: str, param: str) -> None:
        problem = magnitude_problem(iv, self.config.max_steer_magnitude)
        if problem:
            raise bad_request(f"{where}: {problem}", param, "invalid_value")

    def _interventions(self, item, where: str) -> list[Intervention]:
        s: SteerItem = steer_item(item, where)
        try:
            if s.vector is not None:
                v = torch.tensor(s.vector, dtype=torch.float32)
                if s.unit and s.op == "add" and v.numel() and float(v.norm()) > 0:
                    v = v / v.norm()
                sites = [site.name for site in parse_sites(s.site, self.n_layers)]
                ivs = [
                    Intervention(site, v, s.op, alpha=s.alpha, value=s.value, positions=s.positions)
                    for site in sites
                ]
            else:
                ds = self._direction_set(s.direction, where)
                ivs = interventions_from_directions(
                    ds,
                    s.site,
                    s.op,
                    float(s.alpha),
                    value=s.value,
                    unit=s.unit,
                    positions=s.positions,
                    n_layers=self.n_layers,
                    alpha_scale=s.alpha_scale,
                )
            for iv in ivs:
                iv.check(self.model)
        except (SteeringError, ValueError, OverflowError) as e:
            if isinstance(e, APIError):
                raise
            raise bad_request(f"{where}: {e}", where) from None
        for iv in ivs:
            self._check_magnitude(iv, where, f"{where}.{'alpha' if iv.op == 'add' else 'value'}")
        return ivs

    def _direction_set(self, name, where: str):
        if name is None:
            if len(self.directions) == 1:
                return next(iter(self.directions.values()))
            if not self.directions:
                raise bad_request(
                    f"{where}: this server has no direction files loaded (start it with "
                    "--directions FILE) ; give an inline vector instead",
                    f"{where}.direction",
                )
            raise bad_request(
                f"{where}.direction is required: loaded direction files are {', '.join(self.directions)}",
                f"{where}.direction",
            )
        if name not in self.directions:
            raise bad_request(
                f"{where}.direction {name!r} is not loaded; loaded: {', '.join(self.directions) or 'none'}",
                f"{where}.direction",
            )
        return self.directions[name]

    def describe(self) -> list[dict]:
        """The default steering, as ``GET /v1/saetools`` shows it."""
        return [
            {
                "site": iv.site,
                "op": iv.op,
                "latents": list(iv.latents),
                "values": iv.values.tolist(),
            }
            if iv.op == "latent_clamp"
            else {"site": iv.site, "op": iv.op, "alpha": iv.alpha, "value": iv.value}
            for iv in self.default
        ]  # fmt: skip


def steer_desc(ivs: Sequence[Intervention]) -> str:
    """A text that tells interventions apart (the default steering's key)."""

    def one(iv) -> str:
        if iv.op == "latent_clamp":
            return f"latent_clamp@{iv.site}:{list(iv.latents)}:{iv.values.tolist()}:{iv.positions}"
        return f"{iv.op}@{iv.site}:{iv.alpha}:{iv.value}:{iv.positions}"

    return ";".join(one(iv) for iv in ivs)


class SteerPlan:
    """Per-site interventions of a batch, each with the mask of the rows that asked for it.

    ``rows``: the batch's rows, each with ``interventions`` and ``steer_key``; ``phase``
    (``"prompt"`` or ``"generated"``) says which forward runs next."""

    def __init__(self, rows: Sequence, device: torch.device):
        self.phase = "prompt"
        keys: dict[str, list[int]] = {}
        ivs: dict[str, tuple[Intervention, ...]] = {}
        for i, r in enumerate(rows):
            if r.interventions:
                keys.setdefault(r.steer_key, []).append(i)
                ivs[r.steer_key] = r.interventions
        self.masks: dict[str, torch.Tensor] = {}
        self.by_site: dict[str, list[tuple[Intervention, str]]] = {}
        for key, members in keys.items():
            m = torch.zeros(len(rows), dtype=torch.bool)
            m[members] = True
            self.masks[key] = m.to(device)
            for iv in ivs[key]:
                self.by_site.setdefault(str(iv.site), []).append((iv, key))
        self.sites = list(self.by_site)
        self.full = {key: len(members) == len(rows) for key, members in keys.items()}

    def hook_fns(self, model: nn.Module):
        n = n_layers(model)
        return [(parse_site(s, n), self._fn(s)) for s in self.sites]

    def _fn(self, site: str):
        items = self.by_site[site]

        def fn(h: torch.Tensor) -> torch.Tensor | None:
            out = h
            for iv, key in items:
                if iv.positions != "all" and iv.positions != self.phase:
                    continue
                new = iv.apply(out)
                out = (
                    new if self.full[key] else torch.where(self.masks[key][:, None, None], new, out)
                )
            return out

        return fn
