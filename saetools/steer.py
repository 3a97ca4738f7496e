"""Inference-time steering: add, ablate and clamp along directions, in any forward pass or generation.

Three layers of API:

* **Operators**, plain callables on an activation ``h [..., d]``, computed in ``h``'s dtype, O(d)
  per token with no loop over tokens: :func:`add` (``h + alpha * v``), :func:`ablate` (remove the
  component in the span of an orthonormal basis) and :func:`clamp` (set the projection on a unit
  vector to a value).
* :class:`Intervention`, one operator at one site with its vector, strength and token positions, and
  the context manager :func:`steer` that installs interventions as forward hooks through
  :func:`saetools.sites.hooks` and removes them on exit, whatever happens (exceptions,
  ``KeyboardInterrupt``). :func:`steer_tl` does the same with TransformerLens hook names on a
  ``TransformerBridge``.
* :func:`generate`: chat template, left padding, batched HF ``generate`` with the KV cache, answers
  back as strings.

Raw or unit vector
------------------
``Intervention.vector`` is used as given by ``add``: ``h + alpha * vector``. The builder
:meth:`Intervention.from_directions` uses the **unit** vector by default (``unit=True``), so ``alpha``
is in activation units (the norm of the change); ``unit=False`` uses the raw stored vector, so
``alpha=1`` adds the whole difference of means. ``ablate`` and ``clamp`` always use unit vectors
(an orthonormal basis), and ``clamp``'s ``value`` is a projection on the unit vector.

Token positions
---------------
``positions`` is ``"all"``, ``"prompt"``, ``"generated"`` or an explicit bool mask ``[batch, seq]``.
Positions are **absolute columns** of the sequence as laid out in ``input_ids`` (and in the
``sequences`` HF ``generate`` returns), padding included. A forward pre-hook on the top-level model
reads how many columns the KV cache already holds (``cache.get_seq_length()``); a call of width
``T`` covers columns ``[offset, offset + T)``. So a decode step that sees one new token knows it is
column ``offset``, and position rules give the same result with or without a cache.

``prompt`` means columns ``< prompt_len`` and ``generated`` columns ``>= prompt_len``. With left
padding every row's prompt ends at the same column, so ``prompt`` covers exactly each row's real
prompt tokens (pad columns may be steered too; they are masked out of attention and change
nothing). ``prompt_len`` is either given (``steer(..., prompt_len=P)`` or ``ctx.reset(P)``; an int or
one column per row) or found automatically: a call that starts on an empty cache starts a new
context and its width is the prompt length, except that a call which repeats the recorded prompt
and extends it (generation with ``use_cache=False``, or a naive loop recomputing the whole prefix)
continues the same context. An explicit mask is indexed by the same absolute columns; columns
beyond its width are not steered.

TransformerLens
---------------
:func:`bridge_from_hf` boots a ``TransformerBridge`` from an already loaded HF model (offline; the
bridge rewires the modules it wraps, so it works on a deep copy and leaves your model alone).
:func:`steer_tl` installs the same interventions through ``bridge.hooks`` with TL names
(``blocks.15.hook_resid_post``); :func:`tl_fwd_hooks` returns the ``(name, fn)`` list for
``run_with_hooks``.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import einops
import torch
from torch import nn

from .capture import pad_token_id
from .sites import Site, base_model, d_model, hooks, n_layers, parse_site, parse_sites

OPS = ("add", "ablate", "clamp")
POSITIONS = ("all", "prompt", "generated")
CLAMP_VALUE_KEYS = {
    "aligned": "proj_aligned_mean",
    "misaligned": "proj_misaligned_mean",
    "test_aligned": "test_proj_aligned_mean",
    "test_misaligned": "test_proj_misaligned_mean",
}

__all__ = [
    "OPS",
    "POSITIONS",
    "Intervention",
    "SteeringError",
    "ablate",
    "add",
    "bridge_from_hf",
    "clamp",
    "encode_prompts",
    "generate",
    "interventions_from_directions",
    "parse_alphas",
    "parse_site_alphas",
    "projection",
    "steer",
    "steer_tl",
    "tl_fwd_hooks",
]


class SteeringError(ValueError):
    """Bad steering input: unknown op, unusable vector, missing value, bad positions, ..."""


# --------------------------------------------------------------------------------------------
# Operators


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


# --------------------------------------------------------------------------------------------
# Interventions


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
    absolute columns (see the module docstring). Vectors are kept in float32 on the CPU and cast to
    the activation's dtype and device once, on first use.
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
                alpha = float(self.alpha)
            except (TypeError, ValueError):
                raise SteeringError(f"{what}: alpha must be a number, not {self.alpha!r}") from None
            if not math.isfinite(alpha):
                raise SteeringError(f"{what}: alpha must be finite, not {alpha}")
            self.alpha = alpha
        elif self.op == "ablate":
            from .stats import orthonormal_basis

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
                value = float(self.value)
            except (TypeError, ValueError):
                raise SteeringError(
                    f"{what}: clamp value must be a number, not {self.value!r}"
                ) from None
            if not math.isfinite(value):
                raise SteeringError(f"{what}: clamp value must be finite, not {value}")
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


def check_positions(positions):
    if isinstance(positions, str):
        if positions not in POSITIONS:
            raise SteeringError(
                f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)} or a bool mask"
            )
        return positions
    if isinstance(positions, torch.Tensor):
        if positions.ndim != 2:
            raise SteeringError(
                f"a position mask must be [batch, seq], got shape {tuple(positions.shape)}"
            )
        return positions.bool()
    raise SteeringError(
        f"positions must be one of {', '.join(POSITIONS)} or a bool tensor, not {type(positions).__name__}"
    )


def parse_alphas(text: str | Sequence[float]) -> list[float]:
    """``"-8,-4,0,4,8"`` (or ``"-8:8:4"`` as start:stop:step, stop included) -> list of floats."""
    if not isinstance(text, str):
        vals = [float(x) for x in text]
    else:
        t = text.strip()
        try:
            if re.fullmatch(r"[^,]+:[^,]+:[^,]+", t):
                a, b, s = (float(x) for x in t.split(":"))
                if s <= 0 or b < a:
                    raise ValueError
                n = int(math.floor((b - a) / s + 1e-9)) + 1
                vals = [a + i * s for i in range(n)]
            else:
                vals = [float(x) for x in t.split(",") if x.strip()]
        except ValueError:
            raise SteeringError(
                f"cannot parse alphas {text!r}: give comma-separated numbers like -8,-4,0,4,8 or start:stop:step"
            ) from None
    if not vals:
        raise SteeringError("no alphas given")
    if not all(math.isfinite(v) for v in vals):
        raise SteeringError(f"alphas must be finite numbers, got {vals}")
    return vals


def parse_site_alphas(text: str | float) -> float | dict[str, float]:
    """``"6"`` -> 6.0; ``"blocks.9.hook_resid_post=6,blocks.15.hook_resid_post=4"`` -> per-site dict."""
    if not isinstance(text, str):
        return float(text)
    t = text.strip()
    if "=" not in t:
        try:
            v = float(t)
        except ValueError:
            raise SteeringError(
                f"cannot parse alpha {text!r}: give a number or site=alpha,site=alpha"
            ) from None
        if not math.isfinite(v):
            raise SteeringError(f"alpha must be finite, not {v}")
        return v
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
        if not sep or not site.strip() or not math.isfinite(out[site.strip()]):
            raise SteeringError(f"cannot parse per-site alpha {part!r}: expected site=number")
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
) -> list[Intervention]:
    """One intervention per site. ``sites`` is a list, a comma list, or ``all`` (every site of the file
    when ``n_layers`` is not given; else every block's ``hook_resid_post``, which the file must have).
    ``alpha`` may be a per-site dict (sites missing from it are an error)."""
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
        out.append(
            Intervention.from_directions(ds, s, op, a, value=value, unit=unit, positions=positions)
        )
    return out


# --------------------------------------------------------------------------------------------
# Position tracking


class _Positions:
    """Tracks which absolute columns the current forward call covers, and the prompt length.

    A forward pre-hook on the top-level model records ``offset`` (tokens already in the KV cache)
    and the call's width; an always-called forward hook clears it. Site hooks turn a position rule
    into a ``[batch or 1, T]`` mask, computed once per call and rule.
    """

    def __init__(self, prompt_len=None):
        self.fixed = prompt_len is not None
        self.prompt_len = self._as_len(prompt_len)
        self.prompt_ids: torch.Tensor | None = None
        self.call: tuple[int, int, int] | None = None  # (offset, batch, width)
        self._masks: dict = {}

    @staticmethod
    def _as_len(p):
        if p is None:
            return None
        if isinstance(p, torch.Tensor):
            return p.detach().long().reshape(-1)
        if isinstance(p, (list, tuple)):
            return torch.tensor(p, dtype=torch.long)
        return int(p)

    def reset(self, prompt_len=None) -> None:
        self.fixed = prompt_len is not None
        self.prompt_len = self._as_len(prompt_len)
        self.prompt_ids = None
        self._masks = {}

    # ---------------------------------------------------------------- hooks on the top-level model
    def pre_hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        x = ids if isinstance(ids, torch.Tensor) else kwargs.get("inputs_embeds")
        if not isinstance(x, torch.Tensor) or x.ndim < 2:
            self.call = None
            return None
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        offset = 0
        if cache is not None and hasattr(cache, "get_seq_length"):
            offset = int(cache.get_seq_length())
        batch, width = int(x.shape[0]), int(x.shape[1])
        self.call = (offset, batch, width)
        self._masks = {}
        if not self.fixed:
            self._auto_prompt(
                offset, width, ids if isinstance(ids, torch.Tensor) and ids.ndim == 2 else None
            )
        return None

    def post_hook(self, module, args, output):
        self.call = None
        self._masks = {}
        return None

    def _auto_prompt(self, offset: int, width: int, ids: torch.Tensor | None) -> None:
        if offset == 0:
            p = self.prompt_len
            if (
                isinstance(p, int)
                and self.prompt_ids is not None
                and ids is not None
                and width > p
                and ids.shape[0] == self.prompt_ids.shape[0]
                and torch.equal(ids[:, :p], self.prompt_ids.to(ids.device))
            ):
                return  # the same prompt, extended: a cache-free continuation
            self.prompt_len = width
            self.prompt_ids = ids.detach().clone() if ids is not None else None
        elif self.prompt_len is None:
            self.prompt_len = (
                offset + width
            )  # a first call on a pre-filled cache: treat it all as prompt

    # ---------------------------------------------------------------- masks
    def mask(self, positions, h: torch.Tensor):
        """``None``: steer every token; ``False``: steer none; else a bool mask ``[b or 1, T]``."""
        if isinstance(positions, str) and positions == "all":
            return None
        batch, width = int(h.shape[0]), int(h.shape[1])
        if self.call is not None and self.call[1:] == (batch, width):
            offset = self.call[0]
        else:  # a forward call the top-level hook did not see (the inner model called directly)
            offset = 0
            if not self.fixed and self.prompt_len is None:
                self.prompt_len = width
        key = positions if isinstance(positions, str) else id(positions)
        cached = self._masks.get((key, h.device, offset, batch, width))
        if cached is not None:
            return cached
        cols = torch.arange(offset, offset + width, device=h.device)
        if isinstance(positions, str):
            p = self.prompt_len
            if p is None:
                p = width + offset
            if isinstance(p, torch.Tensor):
                if p.numel() != batch:
                    raise SteeringError(
                        f"prompt_len has {p.numel()} entries but the batch has {batch} rows"
                    )
                m = cols[None, :] < p.to(h.device)[:, None]
            else:
                m = (cols < p)[None, :]
            if positions == "generated":
                m = ~m
        else:
            pm = positions
            if pm.shape[0] != batch:
                raise SteeringError(
                    f"the position mask has {pm.shape[0]} rows but the batch has {batch}"
                )
            m = torch.zeros((batch, width), dtype=torch.bool, device=h.device)
            hi = min(offset + width, pm.shape[1])
            if hi > offset:
                m[:, : hi - offset] = pm[:, offset:hi].to(h.device)
        if bool(m.all()):
            out = None
        elif not bool(m.any()):
            out = False
        else:
            out = m
        self._masks[(key, h.device, offset, batch, width)] = out
        return out


def _is_intervention(x) -> bool:
    """An :class:`Intervention`, or any object with the same protocol: ``site``, ``positions``,
    ``check(model) -> Site`` and ``apply(h) -> h`` (e.g. :class:`saetools.sae.LatentClamp`)."""
    return isinstance(x, Intervention) or (
        hasattr(x, "site")
        and hasattr(x, "positions")
        and callable(getattr(x, "check", None))
        and callable(getattr(x, "apply", None))
    )


def _as_list(interventions) -> list:
    if _is_intervention(interventions):
        return [interventions]
    out = list(interventions)
    for iv in out:
        if not _is_intervention(iv):
            raise SteeringError(
                f"expected Intervention objects (or objects with site, positions, check(model) and apply(h)), "
                f"got {type(iv).__name__}"
            )
    return out


def _make_fn(iv: Intervention, pos: _Positions):
    def fn(h: torch.Tensor) -> torch.Tensor | None:
        m = pos.mask(iv.positions, h)
        if m is False:
            return None
        new = iv.apply(h)
        if m is None:
            return new
        return torch.where(m[..., None], new, h)

    return fn


class steer:  # noqa: N801 - used like a function: ``with steer(model, interventions):``
    """Context manager steering every forward pass of ``model`` (including ``generate``).

    ``interventions`` is one :class:`Intervention` or a list; several at one site run in the order
    given. Everything is validated before any hook is installed; hooks are removed on exit even
    after exceptions or ``KeyboardInterrupt``, and the model is then exactly as before.
    ``prompt_len`` fixes where the prompt ends (int, or one column per row); otherwise it is found
    automatically (see the module docstring). ``ctx.reset(prompt_len)`` starts a new context.
    """

    def __init__(self, model: nn.Module, interventions, *, prompt_len=None):
        self.model = model
        self.interventions = _as_list(interventions)
        self.sites: list[Site] = []
        for iv in self.interventions:
            self.sites.append(iv.check(model))
        self.positions = _Positions(prompt_len)
        self._hooks = hooks(
            model,
            [
                (s, _make_fn(iv, self.positions))
                for s, iv in zip(self.sites, self.interventions, strict=True)
            ],
        )
        self._top: list = []

    def reset(self, prompt_len=None) -> None:
        """Forget the recorded prompt; with ``prompt_len``, fix it for the next calls."""
        self.positions.reset(prompt_len)

    def __enter__(self) -> steer:
        top = base_model(self.model)
        try:
            self._top.append(
                top.register_forward_pre_hook(self.positions.pre_hook, with_kwargs=True)
            )
            self._top.append(top.register_forward_hook(self.positions.post_hook, always_call=True))
            self._hooks.__enter__()
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        try:
            self._hooks.remove()
        finally:
            while self._top:
                self._top.pop().remove()
            self.positions.call = None

    def __exit__(self, *exc) -> None:
        self._remove()


# --------------------------------------------------------------------------------------------
# TransformerLens backend


def bridge_from_hf(model: nn.Module, tokenizer, *, copy_model: bool = True):
    """Boot a TransformerLens ``TransformerBridge`` around an already loaded HF causal LM (offline).

    The bridge replaces the modules it wraps inside the HF model, so by default it gets a deep copy
    and ``model`` stays a plain HF model. The bridge runs the same weights through HF's own forward.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf = copy.deepcopy(base_model(model)) if copy_model else base_model(model)
    name = getattr(hf.config, "_name_or_path", None) or type(hf).__name__
    device = next(hf.parameters()).device
    dtype = next(hf.parameters()).dtype
    # TransformerLens reloads a tokenizer by name to turn on add_bos_token, which fails for tokenizers
    # built in memory and would change how prompts tokenize. Give it a copy that says it is already
    # set up, so the bridge tokenizes exactly like ``tokenizer``.
    tok = copy.deepcopy(tokenizer)
    if tok is not None:
        tok.init_kwargs.setdefault("name_or_path", name)
        tok.init_kwargs["add_bos_token"] = True
    return TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
    )


def _tl_check(bridge, iv: Intervention) -> str:
    n = int(bridge.cfg.n_layers)
    try:
        site = parse_site(iv.site, n)
    except ValueError as e:
        raise SteeringError(str(e)) from e
    if iv.d_model != int(bridge.cfg.d_model):
        raise SteeringError(
            f"{iv.op} at {iv.site}: the direction is {iv.d_model} wide but the bridge's d_model is {bridge.cfg.d_model}"
        )
    if site.name not in bridge.hook_dict:
        raise SteeringError(f"the TransformerBridge has no hook point {site.name}")
    return site.name


def tl_fwd_hooks(
    interventions, positions: _Positions | None = None, bridge=None
) -> list[tuple[str, object]]:
    """``[(hook_name, fn)]`` for ``bridge.run_with_hooks(..., fwd_hooks=...)`` / ``bridge.hooks(...)``.

    Without ``positions`` only ``positions="all"`` interventions work (there is no cache offset to
    read); :func:`steer_tl` tracks positions through the bridge's HF model.
    """
    interventions = _as_list(interventions)
    out = []
    for iv in interventions:
        name = _tl_check(bridge, iv) if bridge is not None else parse_site(iv.site, 10**6).name
        if positions is None and not (isinstance(iv.positions, str) and iv.positions == "all"):
            raise SteeringError(
                "position rules other than 'all' need steer_tl (which tracks the KV cache)"
            )
        fn = _make_fn(iv, positions or _Positions())

        def hook_fn(tensor, hook=None, _fn=fn):
            new = _fn(tensor)
            return tensor if new is None else new

        out.append((name, hook_fn))
    return out


@contextmanager
def steer_tl(bridge, interventions, *, prompt_len=None) -> Iterator[_Positions]:
    """Steer a ``TransformerBridge`` with TL hook names; hooks are removed on exit, whatever happens."""
    interventions = _as_list(interventions)
    for iv in interventions:
        _tl_check(bridge, iv)
    pos = _Positions(prompt_len)
    fwd = tl_fwd_hooks(interventions, pos, bridge)
    top = bridge.original_model
    handles = []
    try:
        handles.append(top.register_forward_pre_hook(pos.pre_hook, with_kwargs=True))
        handles.append(top.register_forward_hook(pos.post_hook, always_call=True))
        with bridge.hooks(fwd_hooks=fwd):
            yield pos
    finally:
        while handles:
            handles.pop().remove()


# --------------------------------------------------------------------------------------------
# Generation


def as_messages(prompt) -> list[dict]:
    from .capture import ChatExample

    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, ChatExample):
        return [dict(m) for m in prompt.messages]
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(m, dict) and "role" in m for m in prompt
    ):
        return [dict(m) for m in prompt]
    raise SteeringError(
        f"a prompt must be a string or a list of {{'role', 'content'}} messages, not {prompt!r:.80}"
    )


def context_length(model: nn.Module) -> int | None:
    cfg = base_model(model).config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def encode_prompts(
    tokenizer, prompts, model: nn.Module | None = None, max_new_tokens: int = 0
) -> list[list[int]]:
    """Token ids of each prompt through the chat template (with the generation prompt).

    With ``model``, refuse prompts that do not fit its context (``max_position_embeddings``) together
    with ``max_new_tokens``.
    """
    from .capture import ChatExample, encode_chat

    limit = context_length(model) if model is not None else None
    out = []
    for i, p in enumerate(prompts):
        ids = list(encode_chat(tokenizer, ChatExample(messages=tuple(as_messages(p)))).input_ids)
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise SteeringError(
                f"prompt {i} is {len(ids)} tokens long; with max_new_tokens {max_new_tokens} it does not fit "
                f"the model's context of {limit} tokens"
            )
        out.append(ids)
    return out


def _generation_config(
    model, tokenizer, max_new_tokens, temperature, top_p, min_new_tokens, use_cache
):
    from transformers import GenerationConfig

    base = getattr(base_model(model), "generation_config", None)
    gc = copy.deepcopy(base) if base is not None else GenerationConfig()
    gc.max_new_tokens = int(max_new_tokens)
    gc.min_new_tokens = min_new_tokens
    gc.pad_token_id = pad_token_id(tokenizer)
    gc.use_cache = use_cache
    if tokenizer.eos_token_id is not None:
        eos = gc.eos_token_id if gc.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id not in eos:
            eos.append(int(tokenizer.eos_token_id))
        gc.eos_token_id = eos
    if temperature and temperature > 0:
        gc.do_sample = True
        gc.temperature = float(temperature)
        gc.top_p = float(top_p) if top_p is not None else 1.0
        gc.top_k = None
    else:
        gc.do_sample = False
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
    return gc


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence,
    interventions: Sequence[Intervention] | Intervention = (),
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    min_new_tokens: int | None = None,
    use_cache: bool = True,
    streamer=None,
    return_tokens: bool = False,
) -> list[str] | list[list[int]]:
    """Steered generation of answers to chat ``prompts`` (strings or message lists).

    Each prompt goes through the chat template with the generation prompt; batches are left-padded
    with the tokenizer's pad token (set to eos when missing) and run through HF ``generate`` with the
    KV cache. ``temperature=0`` is greedy; otherwise sampling with ``temperature`` and ``top_p``,
    seeded by ``seed`` (``torch.manual_seed`` once, before the first batch). Prompts are batched in
    order of length and answers returned in the input order: decoded strings (special tokens
    skipped), or generated token ids up to and including the first eos with ``return_tokens``.
    """
    if isinstance(prompts, (str, dict)):
        raise SteeringError("prompts must be a list (of strings or message lists)")
    if max_new_tokens < 1:
        raise SteeringError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if batch_size < 1:
        raise SteeringError(f"batch_size must be >= 1, not {batch_size}")
    if temperature is None or temperature < 0 or not math.isfinite(temperature):
        raise SteeringError(f"temperature must be >= 0, not {temperature}")
    interventions = _as_list(interventions)
    if any(isinstance(iv.positions, torch.Tensor) for iv in interventions):
        raise SteeringError(
            "generate() batches prompts in its own order; an explicit position mask cannot follow that. "
            "Use positions 'all', 'prompt' or 'generated', or call model.generate inside steer() yourself"
        )
    from .capture import Encoded, collate

    encoded = encode_prompts(tokenizer, prompts, model, max_new_tokens)
    gc = _generation_config(
        model, tokenizer, max_new_tokens, temperature, top_p, min_new_tokens, use_cache
    )
    eos = set(gc.eos_token_id or [])
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: dict[int, list[int]] = {}
    with steer(model, interventions) as ctx, torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate(
                [Encoded(tuple(encoded[i]), len(encoded[i]), len(encoded[i])) for i in idx],
                gc.pad_token_id,
                "left",
                device,
            )
            width = batch.input_ids.shape[1]
            ctx.reset(prompt_len=width)
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=gc,
                streamer=streamer,
            )
            for row, i in enumerate(idx):
                toks = out[row, width:].tolist()
                for j, t in enumerate(toks):
                    if t in eos:
                        toks = toks[: j + 1]
                        break
                results[i] = toks
    tokens = [results[i] for i in range(len(encoded))]
    if return_tokens:
        return tokens
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
