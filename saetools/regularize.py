"""Loss terms for fine-tuning: the directional KL, its cheap relative, and the baselines.

A fine-tuned model θ is compared with a frozen reference θ0: with PEFT, the same model with its
adapters disabled; otherwise a frozen copy. For a site s with an orthonormal basis U ``[k, d]`` of
the misalignment direction(s), h_t θ's activation at token t, h0_t θ0's:

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
  a loss. They are applied to every pass of θ that :class:`RegularizedLoss` runs (main,
  counterfactual, anchor), never to θ0, and they are removed after each call, so the trained model
  generates without them.

"Tokens" are the loss-mask tokens: position t counts when ``labels[t + 1] != -100`` (the
Hugging Face shift), i.e. the positions whose next-token prediction is trained. Activation terms use
the activations at those same positions. Every term is a mean over those tokens of the batch it is
computed on.

Usage (plain PyTorch)::

    from saetools.regularize import DirectionalKL, KL, RegularizedLoss

    reg = RegularizedLoss(peft_model, [DirectionalKL(em_dirs, "all", weight=1.0), KL(weight=0.1)])
    for batch in loader:              # dict(input_ids, attention_mask, labels[, position_ids])
        out = reg(batch)              # RegularizedOutput
        out.loss.backward()           # task + Σ weight * term
        opt.step(); opt.zero_grad()
        print(out.logs)               # {"loss", "task_loss", "<term>", "<term>/shift", "n_tokens"}

Anchors: a term built with ``on="anchor"`` is computed on a separate batch of general text (an
extra forward and backward of θ, and an extra θ0 pass), taken from ``anchor=`` (an iterable of
batches, cycled) given to :class:`RegularizedLoss`, or passed per call: ``reg(batch, anchor=b)``.

Gradient checkpointing recomputes block forwards during ``backward()``; the Steer/Ablate hooks
must then still be installed: wrap forward *and* backward in ``with reg.interventions():``.

Gradient accumulation: every term is a per-micro-batch mean; ``RegularizedOutput.n_tokens`` gives
the token count for token-weighted accumulation.

Passes per step (``b`` = batch group, ``a`` = anchor group), all under ``torch.no_grad`` except θ's:
θ0 once per group (only up to the deepest site unless :class:`KL` needs its logits), θ once per group
with gradient, and one more θ pass per group for :class:`DirectionalKL`. See docs/regularizers.md.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .capture import IGNORE_INDEX, StopForward
from .directions import DirectionFileError, DirectionSet
from .scoring import eval_mode
from .sites import Site, SiteError, hooks, is_peft, n_layers, parse_sites
from .stats import orthonormal_basis
from .steer import ablate as ablate_op
from .steer import add as add_op

__all__ = [
    "KL",
    "LDIFS",
    "Ablate",
    "DirectionalKL",
    "DirectionalL2",
    "LossTerm",
    "RegularizedLoss",
    "RegularizedOutput",
    "SAELatents",
    "Steer",
    "Term",
    "chat_batch",
    "ldifs_sites",
]

SOURCES = ("batch", "anchor")


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
        from .sae import load_sae, parse_latents

        _check_common(self)
        self.sae = load_sae(self.sae)
        ids = parse_latents(self.latents) if isinstance(self.latents, str) else self.latents
        self.latents = self.sae.check_latents(ids)
        for p in self.sae.sae.parameters():
            p.requires_grad_(False)


LossTerm = DirectionalKL | DirectionalL2 | KL | LDIFS | SAELatents
Term = LossTerm | Steer | Ablate


def chat_batch(tokenizer, examples, *, device=None, padding_side: str = "right") -> dict:
    """A training batch (``input_ids``, ``attention_mask``, ``position_ids``, ``labels``) from
    :class:`~saetools.capture.ChatExample` s: the loss is on the answer tokens only."""
    from .capture import collate, encode_all

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    b = collate(encode_all(tokenizer, examples), pad or 0, padding_side, device)
    labels = b.input_ids.masked_fill(~b.response_mask, IGNORE_INDEX)
    return {
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "position_ids": b.position_ids,
        "labels": labels,
    }


def ldifs_sites(n: int, count: int = 5) -> list[str]:
    """``hook_resid_post`` of ``count`` evenly spaced blocks ending at the last one (deduplicated):
    30 blocks -> 5, 11, 17, 23, 29."""
    layers = sorted({max(0, round((i + 1) * n / count) - 1) for i in range(count)})
    return [f"blocks.{k}.hook_resid_post" for k in layers]


# --------------------------------------------------------------------------------------------
# Output


@dataclass
class RegularizedOutput:
    """``loss = task_loss + Σ weight * terms[name]``. ``terms`` hold unweighted values (with grad);
    ``logs`` plain floats: ``loss``, ``task_loss``, each term, ``<term>/shift`` (mean over tokens and
    sites of the shift along the first basis row, for direction terms), ``n_tokens``.
    ``logits`` are the main pass's logits ``[b, t, vocab]``."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    logs: dict[str, float]
    logits: torch.Tensor
    n_tokens: int = 0


# --------------------------------------------------------------------------------------------
# Internals


@dataclass
class _Resolved:
    term: LossTerm
    sites: list[Site]
    bases: dict[Site, torch.Tensor] = field(default_factory=dict)  # [k, d] float32 cpu


def _inner(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel / FSDP / torch.compile wrappers."""
    wrappers = ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel")
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif type(model).__name__ in wrappers and isinstance(
            getattr(model, "module", None), nn.Module
        ):
            model = model.module
        else:
            return model


def _loss_mask(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over positions [:, :-1], targets [n]) in the HF shift convention."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"].masked_fill(
            batch.get("attention_mask", torch.ones_like(batch["input_ids"])) == 0, IGNORE_INDEX
        )
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


def _model_inputs(batch: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    if "input_ids" not in batch:
        raise ValueError("a batch needs input_ids (and attention_mask, labels)")
    out = {}
    for key in ("input_ids", "attention_mask", "position_ids", "labels"):
        v = batch.get(key)
        if v is not None:
            out[key] = v.to(device)
    if "labels" in out and out["labels"].shape != out["input_ids"].shape:
        raise ValueError(
            f"labels {tuple(out['labels'].shape)} and input_ids {tuple(out['input_ids'].shape)} "
            "differ in shape"
        )
    return out


def _forward_kwargs(inputs: Mapping[str, torch.Tensor]) -> dict:
    kw = {k: v for k, v in inputs.items() if k != "labels"}
    kw["use_cache"] = False
    return kw


def _up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64)."""
    return x if x.dtype == torch.float64 else x.float()


def _kl_rows(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ p) per row, from logits [n, V] (at least float32)."""
    lt = F.log_softmax(_up(target_logits), dim=-1)
    lp = F.log_softmax(_up(logits), dim=-1)
    return (lt.exp() * (lt - lp)).sum(-1)


def _sum_mean(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.sum() / max(n, 1)


@dataclass
class _Group:
    """Terms computed on one source (the training batch or an anchor batch)."""

    source: str
    terms: list[_Resolved]

    @property
    def act_sites(self) -> list[Site]:
        return sorted({s for r in self.terms for s in r.sites})

    @property
    def needs_ref_logits(self) -> bool:
        return any(isinstance(r.term, KL) for r in self.terms)

    @property
    def needs_reference(self) -> bool:
        return bool(self.terms)


# --------------------------------------------------------------------------------------------
# Orchestrator


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` to serve as θ0.

    ``copy.deepcopy`` does not copy functions, so a ``forward`` that a library patched onto an
    instance as a closure (TRL's ``SFTTrainer`` binds such a wrapper for its fused LM head) would
    still call the *original* module, and the copy's own weights and hooks would never
    run. Such instance-level patches are dropped from the copy, which then runs its class's
    forward. Bound methods and ``functools.partial`` objects (accelerate's hooks) are copied
    correctly and kept.
    """
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        fwd = mod.__dict__.get("forward")
        func = fwd.__func__ if isinstance(fwd, types.MethodType) else fwd
        # a closure may hold the original module (deepcopy re-binds ``self`` but not closures)
        if isinstance(func, types.FunctionType) and func.__closure__:
            del mod.__dict__["forward"]
    return ref


class RegularizedLoss:
    """Task loss plus regularizer terms, computed on a batch inside any training loop.

    ``model``: the model being trained (a transformers causal LM, a PEFT model, or either wrapped in
    DistributedDataParallel). ``terms``: loss terms and Steer/Ablate interventions. ``reference``:
    the frozen θ0. With a PEFT model and no ``reference``, θ0 is the same model with adapters
    disabled (no extra memory). Otherwise, if a loss term needs θ0 and none is given, a deep copy is
    made once, frozen and put in eval mode (it costs one more copy of the weights). ``anchor``: an
    iterable of anchor batches (cycled) for terms with ``on="anchor"``. ``force``: accept direction
    files made for another model of the same width.

    θ0's passes run in eval mode (no dropout). Each call returns a :class:`RegularizedOutput`;
    hooks are installed for the call only and removed afterwards, also after exceptions.
    """

    def __init__(
        self,
        model: nn.Module,
        terms: Sequence[Term],
        reference: nn.Module | None = None,
        *,
        anchor: Iterable[Mapping[str, torch.Tensor]] | None = None,
        force: bool = False,
    ) -> None:
        self.model = model  # sets self.inner too
        self.n_layers = n_layers(self.inner)
        terms = list(terms)
        names = [t.name for t in terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"several terms are named {dup}; give each a distinct name=")
        checked: set[int] = set()
        self._interventions: list[tuple[Site, object]] = []
        self.steer_terms: list[Steer | Ablate] = []
        resolved: list[_Resolved] = []
        for t in terms:
            if not isinstance(
                t, DirectionalKL | DirectionalL2 | KL | LDIFS | SAELatents | Steer | Ablate
            ):
                raise TypeError(f"unknown term {t!r}")
            ds = getattr(t, "directions", None)
            if ds is not None and id(ds) not in checked:
                try:
                    ds.check_model(reference if reference is not None else self.inner, force=force)
                except DirectionFileError as e:
                    raise DirectionFileError(f"{type(t).__name__} {t.name!r}: {e}") from e
                checked.add(id(ds))
            if isinstance(t, Steer | Ablate):
                self.steer_terms.append(t)
                continue
            if isinstance(t, KL):
                resolved.append(_Resolved(t, []))
                continue
            if isinstance(t, SAELatents):
                from .sae import SAEError

                try:
                    t.sae.check(reference if reference is not None else self.inner)
                except SAEError as e:
                    raise SAEError(f"SAELatents {t.name!r}: {e}") from e
                resolved.append(_Resolved(t, self._parse(t, [t.sae.site])))
                continue
            if isinstance(t, LDIFS):
                spec = t.sites if t.sites is not None else ldifs_sites(self.n_layers)
                resolved.append(_Resolved(t, self._parse(t, spec)))
                continue
            r = _Resolved(t, self._parse(t, t.sites if t.sites is not None else ds.sites))
            r.bases = {s: self._basis(t, s) for s in r.sites}
            resolved.append(r)
        for t in self.steer_terms:
            for s in self._parse(t, t.sites if t.sites is not None else t.directions.sites):
                if isinstance(t, Steer):
                    vec = self._unit(t, s)
                    self._interventions.append((s, ("add", vec, t.alpha)))
                else:
                    self._interventions.append((s, ("ablate", self._basis(t, s), None)))
        self.groups = {
            src: _Group(src, [r for r in resolved if r.term.on == src]) for src in SOURCES
        }
        self.terms = terms
        needs_ref = any(g.needs_reference for g in self.groups.values())
        self.use_adapter_toggle = reference is None and is_peft(self.inner)
        if reference is not None:
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)
            if n_layers(reference) != self.n_layers:
                raise ValueError(
                    f"reference has {n_layers(reference)} blocks, the model {self.n_layers}"
                )
        elif needs_ref and not self.use_adapter_toggle:
            reference = _frozen_copy(self.inner)
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)
        self.reference = reference
        if self.groups["anchor"].terms and anchor is None:
            self._anchor_src = None
        else:
            if anchor is not None and hasattr(anchor, "__len__") and len(anchor) == 0:
                raise ValueError("the anchor set is empty: give at least one anchor batch")
            self._anchor_src = anchor
        self._anchor_it: Iterator | None = None
        self._active = 0
        self._dev_cache: dict = {}

    @property
    def model(self) -> nn.Module:
        """The model θ runs through (may be a DDP wrapper); setting it re-derives ``inner``, the
        unwrapped model that hooks go on (e.g. after ``accelerate.prepare`` wraps the model)."""
        return self._model

    @model.setter
    def model(self, model: nn.Module) -> None:
        inner = _inner(model)
        if hasattr(self, "inner") and inner is not self.inner:
            raise ValueError(
                "the new model wraps another model than the one the terms were set for"
            )
        self._model, self.inner = model, inner

    # ------------------------------------------------------------ set-up helpers
    def _parse(self, term, spec) -> list[Site]:
        try:
            return parse_sites(spec, self.n_layers)
        except SiteError as e:
            raise SiteError(f"{type(term).__name__} {term.name!r}: {e}") from e

    def _basis(self, term, site: Site) -> torch.Tensor:
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

    def _unit(self, term, site: Site) -> torch.Tensor:
        return self._basis(term, site)[0]

    def _on(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (id(t), like.device, like.dtype)
        v = self._dev_cache.get(key)
        if v is None:
            v = t.to(device=like.device, dtype=like.dtype)
            self._dev_cache[key] = v
        return v

    # ------------------------------------------------------------ hooks
    def _intervention_fns(self) -> list[tuple[Site, object]]:
        fns = []
        for site, (op, vec, alpha) in self._interventions:
            if op == "add":

                def fn(h, _v=vec, _a=alpha):
                    return add_op(h, self._on(_v, h), _a)
            else:

                def fn(h, _v=vec):
                    return ablate_op(h, self._on(_v, h))

            fns.append((site, fn))
        return fns

    @contextmanager
    def interventions(self):
        """Install the Steer/Ablate hooks on θ (no-op if none, or if already installed).

        :meth:`__call__` does this by itself; hold it across ``backward()`` when gradient
        checkpointing recomputes forwards."""
        if self._active or not self._interventions:
            self._active += 1
            try:
                yield
            finally:
                self._active -= 1
            return
        with hooks(self.inner, self._intervention_fns()):
            self._active += 1
            try:
                yield
            finally:
                self._active -= 1

    # ------------------------------------------------------------ passes
    def _reference_pass(self, group: _Group, inputs) -> tuple[dict[Site, torch.Tensor], object]:
        sites = group.act_sites
        ref = self.reference if self.reference is not None else self.inner
        kwargs = _forward_kwargs(inputs)
        with ExitStack() as stack:
            if self.use_adapter_toggle:
                stack.enter_context(self.inner.disable_adapter())
            stack.enter_context(eval_mode(ref))
            stack.enter_context(torch.no_grad())
            store: dict[Site, torch.Tensor] = {}
            last = max(sites) if sites else None
            stop = not group.needs_ref_logits

            def make(site):
                def fn(h):
                    store[site] = h.detach()
                    if stop and site == last:
                        raise StopForward
                    return None

                return fn

            logits = None
            with hooks(ref, [(s, make(s)) for s in sites]):
                try:
                    logits = ref(**kwargs).logits
                except StopForward:
                    pass
        missing = [s.name for s in sites if s not in store]
        if missing:
            raise RuntimeError(f"the reference forward pass never reached sites {missing}")
        return store, logits

    def _theta_pass(self, inputs, sites: Sequence[Site], *, grad_model: nn.Module):
        store: dict[Site, torch.Tensor] = {}

        def make(site):
            def fn(h):
                store[site] = h
                return None

            return fn

        with hooks(self.inner, [(s, make(s)) for s in sites]):
            logits = grad_model(**_forward_kwargs(inputs)).logits
        missing = [s.name for s in sites if s not in store]
        if missing:
            raise RuntimeError(f"the forward pass never reached sites {missing}")
        return store, logits

    def _counterfactual_logits(self, r: _Resolved, inputs, h0: dict[Site, torch.Tensor], rng):
        term: DirectionalKL = r.term  # type: ignore[assignment]

        def make(site):
            basis = r.bases[site]

            def fn(h):
                U = self._on(basis, h)
                delta = (h - h0[site].to(h.dtype)) @ U.T
                if term.one_sided:
                    delta = delta.clamp(min=0)
                return h - delta @ U

            return fn

        ctx = torch.no_grad() if term.detach_target else torch.enable_grad()
        devices = [rng[2]] if rng[1] is not None else []
        with torch.random.fork_rng(devices=devices, device_type=rng[3]), ctx:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.get_device_module(rng[3]).set_rng_state(rng[1], rng[2])
            with hooks(self.inner, [(s, make(s)) for s in r.sites]):
                return self.inner(**_forward_kwargs(inputs)).logits

    # ------------------------------------------------------------ terms
    def _group_terms(
        self,
        group: _Group,
        inputs,
        store: dict[Site, torch.Tensor],
        logits: torch.Tensor,
        rng,
        out_terms: dict[str, torch.Tensor],
        logs: dict[str, torch.Tensor],
    ) -> None:
        h0, ref_logits = self._reference_pass(group, inputs)
        mask, _ = _loss_mask(inputs)
        n = int(mask.sum())
        for r in group.terms:
            t = r.term
            if isinstance(t, KL):
                val = _sum_mean(_kl_rows(ref_logits[:, :-1][mask], logits[:, :-1][mask]), n)
            elif isinstance(t, SAELatents):
                s = r.sites[0]
                sae = t.sae.sae
                t.sae._on(store[s])
                idx = torch.tensor(t.latents, device=store[s].device)
                h = store[s][:, :-1][mask].to(sae.dtype)
                z = sae.encode(h).index_select(-1, idx)
                with torch.no_grad():
                    z0 = sae.encode(h0[s][:, :-1][mask].to(sae.dtype)).index_select(-1, idx)
                excess = (_up(z) - _up(z0)).clamp(min=0)
                val = _sum_mean(excess.pow(2).sum(-1), n)
                logs[f"{t.name}/excess"] = _sum_mean(excess.detach().sum(-1), n)
            elif isinstance(t, LDIFS):
                acc = 0.0
                for s in r.sites:
                    d = _up(store[s][:, :-1][mask]) - _up(h0[s][:, :-1][mask])
                    acc = acc + _sum_mean(d.pow(2).sum(-1), n)
                val = acc / len(r.sites)
            else:
                shifts = []
                acc = 0.0
                for s in r.sites:
                    h = _up(store[s][:, :-1][mask])
                    U = self._on(r.bases[s], h)
                    delta = (h - _up(h0[s][:, :-1][mask])) @ U.T  # [n, k]
                    shifts.append(_sum_mean(delta[:, 0].detach(), n))
                    if isinstance(t, DirectionalL2):
                        dd = delta.clamp(min=0) if t.one_sided else delta
                        acc = acc + _sum_mean(dd.pow(2).sum(-1), n)
                logs[f"{t.name}/shift"] = torch.stack(shifts).mean()
                if isinstance(t, DirectionalL2):
                    val = acc
                else:
                    cf = self._counterfactual_logits(r, inputs, h0, rng)
                    val = _sum_mean(_kl_rows(cf[:, :-1][mask], logits[:, :-1][mask]), n)
            if not isinstance(val, torch.Tensor):
                val = logits.new_zeros((), dtype=torch.float32)
            out_terms[t.name] = val

    def _next_anchor(self):
        if self._anchor_src is None:
            raise ValueError(
                "terms "
                + ", ".join(repr(r.term.name) for r in self.groups["anchor"].terms)
                + " are computed on anchor batches, but no anchor was given: pass anchor= to "
                "RegularizedLoss or to the call"
            )
        for _ in range(2):
            if self._anchor_it is None:
                self._anchor_it = iter(self._anchor_src)
            try:
                return next(self._anchor_it)
            except StopIteration:
                self._anchor_it = None
        raise ValueError(
            "the anchor set is empty (or a one-shot iterator that is exhausted): give a list or a "
            "DataLoader of anchor batches"
        )

    # ------------------------------------------------------------ call
    def __call__(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        anchor: Mapping[str, torch.Tensor] | None = None,
    ) -> RegularizedOutput:
        """Task loss and terms on ``batch`` (``input_ids``, ``attention_mask``, ``labels`` with
        -100 where no loss; optional ``position_ids``). ``anchor``: this step's anchor batch."""
        device = next(self.inner.parameters()).device
        inputs = _model_inputs(batch, device)
        bgroup, agroup = self.groups["batch"], self.groups["anchor"]
        out_terms: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        with self.interventions():
            rng = _rng_state(device)
            store, logits = self._theta_pass(inputs, bgroup.act_sites, grad_model=self.model)
            mask, targets = _loss_mask(inputs)
            n = int(mask.sum())
            task = _sum_mean(
                F.cross_entropy(_up(logits[:, :-1][mask]), targets, reduction="none"), n
            )
            if bgroup.terms:
                self._group_terms(bgroup, inputs, store, logits, rng, out_terms, logs)
            del store
            if agroup.terms:
                a_inputs = _model_inputs(
                    anchor if anchor is not None else self._next_anchor(), device
                )
                a_rng = _rng_state(device)
                a_store, a_logits = self._theta_pass(
                    a_inputs, agroup.act_sites, grad_model=self.model
                )
                self._group_terms(agroup, a_inputs, a_store, a_logits, a_rng, out_terms, logs)
        loss = task
        by_name = {t.name: t for t in self.terms}
        for name, val in out_terms.items():
            w = by_name[name].weight
            if w != 0:
                loss = loss + w * val
        keys = ["loss", "task_loss", *out_terms, *logs]
        vals = torch.stack(
            [loss.detach().double(), task.detach().double()]
            + [v.detach().double() for v in out_terms.values()]
            + [v.detach().double() for v in logs.values()]
        ).tolist()
        flat = dict(zip(keys, vals, strict=True))
        flat["n_tokens"] = float(n)
        return RegularizedOutput(
            loss=loss, task_loss=task, terms=out_terms, logs=flat, logits=logits, n_tokens=n
        )


def _rng_state(device: torch.device):
    """CPU and accelerator RNG states, so the counterfactual pass sees the main pass's dropout."""
    cpu = torch.get_rng_state()
    if device.type == "cpu":
        return (cpu, None, None, "cuda")
    mod = torch.get_device_module(device.type)
    idx = device.index if device.index is not None else mod.current_device()
    return (cpu, mod.get_rng_state(idx), idx, device.type)
