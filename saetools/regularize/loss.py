"""RegularizedLoss: the task loss plus the terms, computed on a batch inside any training loop.

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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..directions import DirectionFileError, DirectionSet
from ..sae import SAEError
from ..sites import Site, SiteError, hooks, n_layers, parse_sites
from ..stats import orthonormal_basis
from ..steer import ablate as ablate_op
from ..steer import add as add_op
from .batch import forward_kwargs, loss_mask, model_inputs
from .penalties import (
    cross_entropy,
    directional_l2_term,
    kl_term,
    ldifs_term,
    mean_shift,
    sae_latents_term,
    site_shifts,
    undo_shift,
)
from .reference import choose_reference, reference_pass, unwrap
from .terms import (
    KL,
    LDIFS,
    SOURCES,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    LossTerm,
    SAELatents,
    Steer,
    Term,
    ldifs_sites,
)


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


@dataclass
class _Resolved:
    term: LossTerm
    sites: list[Site]
    bases: dict[Site, torch.Tensor] = field(default_factory=dict)  # [k, d] float32 cpu


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
        self._interventions: list[tuple[Site, object]] = []
        self.steer_terms: list[Steer | Ablate] = []
        resolved = self._resolve(terms, reference, force)
        self.groups = {
            src: _Group(src, [r for r in resolved if r.term.on == src]) for src in SOURCES
        }
        self.terms = terms
        needs_ref = any(g.needs_reference for g in self.groups.values())
        self.reference, self.use_adapter_toggle = choose_reference(self.inner, reference, needs_ref)
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
        inner = unwrap(model)
        if hasattr(self, "inner") and inner is not self.inner:
            raise ValueError(
                "the new model wraps another model than the one the terms were set for"
            )
        self._model, self.inner = model, inner

    # ------------------------------------------------------------ set-up helpers
    def _resolve(self, terms: list, reference: nn.Module | None, force: bool) -> list[_Resolved]:
        """Check each term against the model; the loss terms with their sites and bases, in
        order. Steer/Ablate terms go to ``steer_terms`` and their hooks to ``_interventions``."""
        checked: set[int] = set()
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
            else:
                resolved.append(self._resolve_loss_term(t, reference))
        for t in self.steer_terms:
            for s in self._parse(t, t.sites if t.sites is not None else t.directions.sites):
                if isinstance(t, Steer):
                    vec = self._unit(t, s)
                    self._interventions.append((s, ("add", vec, t.alpha)))
                else:
                    self._interventions.append((s, ("ablate", self._basis(t, s), None)))
        return resolved

    def _resolve_loss_term(self, t: LossTerm, reference: nn.Module | None) -> _Resolved:
        if isinstance(t, KL):
            return _Resolved(t, [])
        if isinstance(t, SAELatents):
            try:
                t.sae.check(reference if reference is not None else self.inner)
            except SAEError as e:
                raise SAEError(f"SAELatents {t.name!r}: {e}") from e
            return _Resolved(t, self._parse(t, [t.sae.site]))
        if isinstance(t, LDIFS):
            spec = t.sites if t.sites is not None else ldifs_sites(self.n_layers)
            return _Resolved(t, self._parse(t, spec))
        r = _Resolved(t, self._parse(t, t.sites if t.sites is not None else t.directions.sites))
        r.bases = {s: self._basis(t, s) for s in r.sites}
        return r

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
        return reference_pass(
            self.reference if self.reference is not None else self.inner,
            inputs,
            group.act_sites,
            need_logits=group.needs_ref_logits,
            adapters_of=self.inner if self.use_adapter_toggle else None,
        )

    def _theta_pass(self, inputs, sites: Sequence[Site], *, grad_model: nn.Module):
        store: dict[Site, torch.Tensor] = {}

        def make(site):
            def fn(h):
                store[site] = h
                return None

            return fn

        with hooks(self.inner, [(s, make(s)) for s in sites]):
            logits = grad_model(**forward_kwargs(inputs)).logits
        missing = [s.name for s in sites if s not in store]
        if missing:
            raise RuntimeError(f"the forward pass never reached sites {missing}")
        return store, logits

    def _counterfactual_logits(self, r: _Resolved, inputs, h0: dict[Site, torch.Tensor], rng):
        """θ's logits with the shift along each site's basis undone (:func:`~.penalties.undo_shift`),
        under the main pass's RNG state (same dropout); without gradient when the term detaches
        its target."""
        term: DirectionalKL = r.term  # type: ignore[assignment]

        def make(site):
            basis = r.bases[site]

            def fn(h):
                return undo_shift(h, h0[site], self._on(basis, h), term.one_sided)

            return fn

        ctx = torch.no_grad() if term.detach_target else torch.enable_grad()
        devices = [rng[2]] if rng[1] is not None else []
        with torch.random.fork_rng(devices=devices, device_type=rng[3]), ctx:
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.get_device_module(rng[3]).set_rng_state(rng[1], rng[2])
            with hooks(self.inner, [(s, make(s)) for s in r.sites]):
                return self.inner(**forward_kwargs(inputs)).logits

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
        """Each term of ``group`` into ``out_terms`` (and its extra logs into ``logs``), from θ's
        pass (``store``, ``logits``) and one θ0 pass on the same ``inputs``."""
        h0, ref_logits = self._reference_pass(group, inputs)
        mask, _ = loss_mask(inputs)
        n = int(mask.sum())
        for r in group.terms:
            t = r.term
            if isinstance(t, KL):
                val = kl_term(ref_logits, logits, mask, n)
            elif isinstance(t, SAELatents):
                s = r.sites[0]
                t.sae._on(store[s])
                val, excess = sae_latents_term(t.sae.sae, t.latents, store[s], h0[s], mask, n)
                logs[f"{t.name}/excess"] = excess
            elif isinstance(t, LDIFS):
                val = ldifs_term(store, h0, r.sites, mask, n)
            else:
                deltas = site_shifts(store, h0, r.sites, r.bases, mask, self._on)
                logs[f"{t.name}/shift"] = mean_shift(deltas, n)
                if isinstance(t, DirectionalL2):
                    val = directional_l2_term(deltas, t.one_sided, n)
                else:
                    cf = self._counterfactual_logits(r, inputs, h0, rng)
                    val = kl_term(cf, logits, mask, n)
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
        inputs = model_inputs(batch, device)
        bgroup, agroup = self.groups["batch"], self.groups["anchor"]
        out_terms: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        with self.interventions():
            rng = _rng_state(device)
            store, logits = self._theta_pass(inputs, bgroup.act_sites, grad_model=self.model)
            mask, targets = loss_mask(inputs)
            n = int(mask.sum())
            task = cross_entropy(logits, mask, targets, n)
            if bgroup.terms:
                self._group_terms(bgroup, inputs, store, logits, rng, out_terms, logs)
            del store
            if agroup.terms:
                a_inputs = model_inputs(
                    anchor if anchor is not None else self._next_anchor(), device
                )
                a_rng = _rng_state(device)
                a_store, a_logits = self._theta_pass(
                    a_inputs, agroup.act_sites, grad_model=self.model
                )
                self._group_terms(agroup, a_inputs, a_store, a_logits, a_rng, out_terms, logs)
        return self._output(task, out_terms, logs, logits, n)

    def _output(self, task, out_terms, logs, logits, n: int) -> RegularizedOutput:
        """``loss = task + Σ weight * term`` (terms of weight 0 are left out of the sum) and the
        logs as plain floats, read from the device in one transfer."""
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
