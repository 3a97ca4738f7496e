"""Interventions: one operator at one site, with its vector, strength and token positions.

:class:`Intervention` validates everything when it is built (op, vector, strength, value,
positions) and, with :meth:`Intervention.check`, against a model. :func:`interventions_from_directions`
builds one per site from a direction file; :func:`parse_alphas` and :func:`parse_site_alphas` read
strengths as the command line writes them.

Raw or unit vector
------------------
``Intervention.vector`` is used as given by ``add``: ``h + alpha * vector``. The builder
:meth:`Intervention.from_directions` uses the **unit** vector by default (``unit=True``), so ``alpha``
is in activation units (the norm of the change); ``unit=False`` uses the raw stored vector, so
``alpha=1`` adds the whole difference of means. ``ablate`` and ``clamp`` always use unit vectors
(an orthonormal basis), and ``clamp``'s ``value`` is a projection on the unit vector
(:data:`CLAMP_VALUE_KEYS` names the projections a direction file records).

Absolute or norm-relative strength
----------------------------------
Residual norms differ by orders of magnitude between models (about 70-150 in SmolLM2-135M's middle
blocks, about 9,700 at block 10 of Gemma 3 270M, which scales its embeddings by sqrt(d)), so an
absolute ``alpha`` that steers one model does nothing to another. ``alpha_scale="norm"`` reads
``alpha`` as a **fraction of the site's mean residual norm** recorded in the direction file
(:meth:`~saetools.directions.DirectionSet.resid_norm`): ``alpha 0.1`` adds a unit vector of a tenth
of the typical activation's norm, whatever the model. :func:`scale_alpha` converts; the default
``"abs"`` keeps ``alpha`` in activation units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..sites import Site, d_model, n_layers, parse_site, parse_sites
from ..stats import orthonormal_basis
from .limits import check_float32
from .ops import OPS, SteeringError, ablate, clamp
from .positions import check_positions

ALPHA_SCALES = ("abs", "norm")

CLAMP_VALUE_KEYS = {
    "aligned": "proj_aligned_mean",
    "misaligned": "proj_misaligned_mean",
    "test_aligned": "test_proj_aligned_mean",
    "test_misaligned": "test_proj_misaligned_mean",
}


def _check_vector(v, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    if v.ndim not in (1, 2) or v.shape[-1] == 0 or (v.ndim == 2 and v.shape[0] == 0):
        raise SteeringError(
            f"{what}: expected a vector [d] or a basis [k, d], got shape {tuple(v.shape)}"
        )
    if not v.is_floating_point():
        v = v.float()
    if not torch.isfinite(v).all():
        raise SteeringError(f"{what}: the vector contains NaN or infinite values")
    if bool((v.reshape(-1, v.shape[-1]).norm(dim=-1) <= 1e-12).any()):
        raise SteeringError(
            f"{what}: the vector is zero; a zero vector has no direction to steer along"
        )
    return v.detach()


@dataclass
class Intervention:
    """One operator at one site.

    * ``op="add"``: ``h + alpha * vector`` with ``vector`` used **as given** (``[d]``).
    * ``op="ablate"``: project out the span of ``vector`` (``[d]`` or ``[k, d]``; orthonormalised here).
    * ``op="clamp"``: set the projection on ``vector / |vector|`` to ``value`` (required).

    ``positions`` is ``"all"``, ``"prompt"``, ``"generated"`` or a bool mask ``[batch, seq]`` over
    absolute columns (see :mod:`saetools.steer.positions`). Vectors are kept in float32 on the CPU
    and cast to the activation's dtype and device once, on first use.
    """

    site: str | Site
    vector: torch.Tensor
    op: str = "add"
    alpha: float = 1.0
    value: float | None = None
    positions: str | torch.Tensor = "all"
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.site = str(self.site)
        if self.op not in OPS:
            raise SteeringError(f"unknown op {self.op!r}; choose one of {', '.join(OPS)}")
        what = f"{self.op} at {self.site}"
        v = _check_vector(self.vector, what)
        if self.op == "add":
            if v.ndim == 2:
                if v.shape[0] != 1:
                    raise SteeringError(
                        f"{what}: 'add' takes one vector [d], got a basis {tuple(v.shape)}"
                    )
                v = v[0]
            try:
                alpha = check_float32(self.alpha, "alpha")
            except SteeringError as e:
                raise SteeringError(f"{what}: {e}") from None
            self.alpha = alpha
        elif self.op == "ablate":
            try:
                v = orthonormal_basis(v.double()).float()
            except ValueError as e:
                raise SteeringError(f"{what}: {e}") from e
        else:  # clamp
            if self.value is None:
                raise SteeringError(
                    f"{what}: clamp needs a value (the projection to pin the activations to)"
                )
            try:
                value = check_float32(self.value, "clamp value")
            except SteeringError as e:
                raise SteeringError(f"{what}: {e}") from None
            self.value = value
            if v.ndim == 2:
                if v.shape[0] != 1:
                    raise SteeringError(
                        f"{what}: clamp takes one vector [d], got a basis {tuple(v.shape)}"
                    )
                v = v[0]
            v = (v.double() / v.double().norm()).float()
        self.vector = v.to("cpu", torch.float32).contiguous()
        self.positions = check_positions(self.positions)

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[-1])

    @classmethod
    def from_directions(
        cls,
        ds,
        site: str | Site,
        op: str = "add",
        alpha: float = 1.0,
        *,
        value: float | str | None = None,
        unit: bool = True,
        positions: str | torch.Tensor = "all",
    ) -> Intervention:
        """Build an intervention from a :class:`~saetools.directions.DirectionSet`.

        ``add`` uses the unit vector (``unit=True``, default: ``alpha`` in activation units) or the
        raw stored vector (``unit=False``); a basis file's first row. ``ablate`` uses the orthonormal
        basis of all the site's rows. ``clamp`` uses the unit vector; ``value`` is a number or a
        statistic recorded in the file: ``"aligned"`` (mean projection of aligned answers),
        ``"misaligned"``, ``"test_aligned"``, ``"test_misaligned"``.
        """
        key = str(site)
        if key not in ds:
            raise SteeringError(
                f"the direction file has no vector for site {key}; it has: {', '.join(ds.sites)}"
            )
        raw = ds.vector(key)
        _check_vector(raw, f"direction at {key}")
        if op == "add":
            v = ds.unit(key) if unit else (raw[0] if raw.ndim == 2 else raw)
        elif op == "ablate":
            v = raw
        elif op == "clamp":
            v = ds.unit(key)
            if isinstance(value, str):
                value = _stat_value(ds, key, value)
        else:
            raise SteeringError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
        return cls(site=key, vector=v, op=op, alpha=alpha, value=value, positions=positions)

    # ---------------------------------------------------------------- use
    def check(self, model: nn.Module) -> Site:
        """Check the site exists in ``model`` and the vector has its width; return the parsed site."""
        try:
            site = parse_site(self.site, n_layers(model))
        except ValueError as e:
            raise SteeringError(str(e)) from e
        width = d_model(model)
        if self.d_model != width:
            raise SteeringError(
                f"{self.op} at {self.site}: the direction is {self.d_model} wide but the model's residual "
                f"stream is {width} wide (a direction file made for another model?)"
            )
        return site

    def _vec(self, h: torch.Tensor) -> torch.Tensor:
        key = (h.dtype, h.device)
        v = self._cache.get(key)
        if v is None:
            v = self.vector.to(device=h.device, dtype=h.dtype)
            if self.op == "add":
                v = v * torch.tensor(self.alpha, dtype=h.dtype, device=h.device)
            self._cache[key] = v
        return v

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """The operator applied to every token of ``h [..., d]`` (positions are the caller's job)."""
        v = self._vec(h)
        if self.op == "add":
            return h + v
        if self.op == "ablate":
            return ablate(h, v)
        return clamp(h, v, self.value)


def _stat_value(ds, site: str, key: str) -> float:
    name = CLAMP_VALUE_KEYS.get(key)
    if name is None:
        try:
            return float(key)
        except ValueError:
            raise SteeringError(
                f"clamp value {key!r} is neither a number nor one of {', '.join(CLAMP_VALUE_KEYS)}"
            ) from None
    stats = ds.stats(site)
    if name not in stats:
        raise SteeringError(
            f"the direction file records no {name} for {site}; give a number as the clamp value"
        )
    return float(stats[name])


def scale_alpha(ds, site: str, alpha: float, alpha_scale: str = "abs", *, unit: bool = True):
    """``alpha`` in activation units: unchanged for ``"abs"``; for ``"norm"`` (a fraction of the
    site's mean residual norm), times :meth:`DirectionSet.resid_norm`. Norm-relative strengths
    need the unit vector (``unit=True``)."""
    if alpha_scale not in ALPHA_SCALES:
        raise SteeringError(
            f"unknown alpha scale {alpha_scale!r}; choose one of {', '.join(ALPHA_SCALES)}"
        )
    if alpha_scale == "abs":
        return alpha
    if not unit:
        raise SteeringError(
            "a norm-relative alpha (--alpha-scale norm) scales the unit direction; it cannot be "
            "combined with the raw vector (--raw)"
        )
    try:
        return float(alpha) * ds.resid_norm(site)
    except ValueError as e:
        raise SteeringError(str(e)) from None


def weak_alpha_note(ds, site: str, alpha: float, threshold: float = 0.01) -> str | None:
    """A note when an absolute ``alpha`` is below ``threshold`` times the site's mean residual norm
    (so weak that steering changes little), proposing a norm-relative strength; else None."""
    try:
        norm = ds.resid_norm(site)
    except ValueError:
        return None
    if alpha == 0 or abs(alpha) >= threshold * norm:
        return None
    return (
        f"alpha {alpha:g} at {site} is {abs(alpha) / norm:.2%} of the site's mean residual norm "
        f"({norm:.4g}), too weak to change much on this model; strengths of 5-20% of the norm "
        f"usually steer: try --alpha-scale norm --alpha 0.1 (= {0.1 * norm:.4g})"
    )


# A start:stop:step range giving more alphas than this is refused (a sweep runs once per alpha).
MAX_ALPHAS = 10_000


def parse_alphas(text: str | Sequence[float]) -> list[float]:
    """``"-8,-4,0,4,8"`` (or ``"-8:8:4"`` as start:stop:step, stop included) -> list of floats.

    Each alpha must be finite and within float32's range (:func:`~saetools.steer.limits.check_float32`).
    """
    if not isinstance(text, str):
        vals = [check_float32(x, "alpha") for x in text]
    else:
        vals = _parse_alpha_text(text)
    if not vals:
        raise SteeringError("no alphas given")
    return vals


def _parse_alpha_text(text: str) -> list[float]:
    t = text.strip()
    is_range = re.fullmatch(r"[^,]+:[^,]+:[^,]+", t) is not None
    try:
        parts = [float(x) for x in (t.split(":") if is_range else t.split(",")) if x.strip()]
    except ValueError:
        parts = None
    if parts is None or (is_range and not (parts[2] > 0 and parts[1] >= parts[0])):
        raise SteeringError(
            f"cannot parse alphas {text!r}: give comma-separated numbers like -8,-4,0,4,8 or start:stop:step"
        )
    parts = [check_float32(v, "alpha") for v in parts]
    if not is_range:
        return parts
    a, b, step = parts
    count = (b - a) / step
    if count + 1 > MAX_ALPHAS:
        raise SteeringError(
            f"alphas {text!r} make {count + 1:.3g} values; at most {MAX_ALPHAS} (use a larger step)"
        )
    return [a + i * step for i in range(int(math.floor(count + 1e-9)) + 1)]


def parse_site_alphas(text: str | float) -> float | dict[str, float]:
    """``"6"`` -> 6.0; ``"blocks.9.hook_resid_post=6,blocks.15.hook_resid_post=4"`` -> per-site dict."""
    if not isinstance(text, str):
        return check_float32(text, "alpha")
    t = text.strip()
    if "=" not in t:
        try:
            v = float(t)
        except ValueError:
            raise SteeringError(
                f"cannot parse alpha {text!r}: give a number or site=alpha,site=alpha"
            ) from None
        return check_float32(v, "alpha")
    out = {}
    for part in t.split(","):
        if not part.strip():
            continue
        site, sep, val = part.partition("=")
        try:
            out[site.strip()] = float(val)
        except ValueError:
            raise SteeringError(
                f"cannot parse per-site alpha {part!r}: expected site=number"
            ) from None
        if not sep or not site.strip():
            raise SteeringError(f"cannot parse per-site alpha {part!r}: expected site=number")
        check_float32(out[site.strip()], f"alpha of {site.strip()}")
    return out


def interventions_from_directions(
    ds,
    sites: str | Sequence[str],
    op: str = "add",
    alpha: float | dict[str, float] = 1.0,
    *,
    value: float | str | None = None,
    unit: bool = True,
    positions: str | torch.Tensor = "all",
    n_layers: int | None = None,
    alpha_scale: str = "abs",
) -> list[Intervention]:
    """One intervention per site. ``sites`` is a list, a comma list, or ``all`` (every site of the file
    when ``n_layers`` is not given; else every block's ``hook_resid_post``, which the file must have).
    ``alpha`` may be a per-site dict (sites missing from it are an error). ``alpha_scale="norm"``:
    each site's alpha is a fraction of that site's mean residual norm (:func:`scale_alpha`)."""
    if isinstance(sites, str) and sites.strip() == "all" and n_layers is None:
        names = list(ds.sites)
    elif n_layers is not None:
        try:
            names = [s.name for s in parse_sites(sites, n_layers)]
        except ValueError as e:
            raise SteeringError(str(e)) from e
    else:
        names = (
            [s.strip() for s in sites.split(",")]
            if isinstance(sites, str)
            else [str(s) for s in sites]
        )
    missing = [s for s in names if s not in ds]
    if missing:
        raise SteeringError(
            f"the direction file has no vector for site(s) {', '.join(missing)}; it has: {', '.join(ds.sites)}"
        )
    if isinstance(alpha, dict):
        extra = [s for s in alpha if s not in names]
        if extra:
            raise SteeringError(
                f"per-site alphas name sites that are not steered: {', '.join(extra)}"
            )
        absent = [s for s in names if s not in alpha]
        if absent and op == "add":
            raise SteeringError(f"no alpha given for site(s) {', '.join(absent)}")
    out = []
    for s in names:
        a = alpha.get(s, 0.0) if isinstance(alpha, dict) else alpha
        if op == "add":
            a = scale_alpha(ds, s, a, alpha_scale, unit=unit)
        out.append(
            Intervention.from_directions(ds, s, op, a, value=value, unit=unit, positions=positions)
        )
    return out
