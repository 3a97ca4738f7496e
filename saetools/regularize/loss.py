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
from dataclasses import dataclass

import torch
from torch import nn

from ..sites import Site, hooks, n_layers
from ..steer import ablate as ablate_op
from ..steer import add as add_op
from .batch import loss_mask, model_inputs
from .passes import counterfactual_logits, rng_state, theta_pass
from .penalties import (
    cross_entropy,
    directional_l2_term,
    kl_term,
    ldifs_term,
    mean_shift,
    sae_latents_term,
    site_shifts,
)
from .reference import choose_reference, reference_pass, unwrap
from .resolve import Intervention, TermGroup, resolve_terms
from .terms import KL, LDIFS, SOURCES, Ablate, DirectionalL2, SAELatents, Steer, Term


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
        resolved, steer_terms, interventions = resolve_terms(
            terms, reference if reference is not None else self.inner, self.n_layers, force=force
        )
        self.steer_terms: list[Steer | Ablate] = steer_terms
        self._interventions: list[Intervention] = interventions
        self.groups = {
            src: TermGroup(src, [r for r in resolved if r.term.on == src]) for src in SOURCES
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
        # KL_ref of each normalized DirectionalKL term, measured on its first batch (see .terms)
        self.kl_refs: dict[str, float] = {}

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

    # ------------------------------------------------------------ hooks
    def _on(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (id(t), like.device, like.dtype)
        v = self._dev_cache.get(key)
        if v is None:
            v = t.to(device=like.device, dtype=like.dtype)
            self._dev_cache[key] = v
        return v

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
    def _reference_pass(self, group: TermGroup, inputs) -> tuple[dict[Site, torch.Tensor], object]:
        return reference_pass(
            self.reference if self.reference is not None else self.inner,
            inputs,
            group.act_sites,
            need_logits=group.needs_ref_logits,
            adapters_of=self.inner if self.use_adapter_toggle else None,
        )

    # ------------------------------------------------------------ terms
    def _group_terms(
        self,
        group: TermGroup,
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
                t.sae.follow(store[s])
                val, excess = sae_latents_term(t.sae.sae, t.latents, store[s], h0[s], mask, n)
                logs[f"{t.name}/excess"] = excess
            elif isinstance(t, LDIFS):
                val = ldifs_term(store, h0, r.sites, mask, n)
            else:
                deltas = site_shifts(store, h0, r.sites, r.bases, mask, self._on)
                logs[f"{t.name}/shift"] = mean_shift(deltas, n)
                if isinstance(t, DirectionalL2):
                    if r.units:  # normalized: shifts in units of ε x the site's residual norm
                        deltas = [d / r.units[s] for d, s in zip(deltas, r.sites, strict=True)]
                    val = directional_l2_term(deltas, t.one_sided, n)
                else:
                    cf = counterfactual_logits(
                        self.inner,
                        inputs,
                        r.sites,
                        r.bases,
                        h0,
                        rng,
                        one_sided=t.one_sided,
                        detach_target=t.detach_target,
                        on=self._on,
                    )
                    val = kl_term(cf, logits, mask, n)
                    if r.units:  # normalized: in units of KL_ref (see .terms)
                        logs[f"{t.name}/raw"] = val.detach()
                        val = val / self._kl_ref(r, inputs, mask, n)
            if not isinstance(val, torch.Tensor):
                val = logits.new_zeros((), dtype=torch.float32)
            out_terms[t.name] = val

    def _kl_ref(self, r, inputs, mask: torch.Tensor, n: int) -> float:
        """``KL_ref`` of a normalized :class:`DirectionalKL`: the KL between θ0 and θ0 shifted by
        ``ε·n_s`` along the direction at every site of the term, on the first batch it sees
        (measured once, then kept: :attr:`kl_refs`)."""
        name = r.term.name
        if name in self.kl_refs:
            return self.kl_refs[name]
        ref = self.reference if self.reference is not None else self.inner
        adapters = self.inner if self.use_adapter_toggle else None

        def shift(site):
            return lambda h: add_op(h, self._on(r.bases[site][0], h), r.units[site])

        with hooks(ref, [(s, shift(s)) for s in r.sites]):
            _, shifted = reference_pass(ref, inputs, [], need_logits=True, adapters_of=adapters)
        _, plain = reference_pass(ref, inputs, [], need_logits=True, adapters_of=adapters)
        kl = float(kl_term(shifted, plain, mask, n))
        if not (kl > 0 and kl < float("inf")):
            raise ValueError(
                f"DirectionalKL {name!r}: normalize=True measured a reference KL of {kl} (a shift of "
                "1% of the residual norm changes nothing?); use normalize=False"
            )
        self.kl_refs[name] = kl
        return kl

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
            rng = rng_state(device)
            store, logits = theta_pass(self.inner, self.model, inputs, bgroup.act_sites)
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
                a_rng = rng_state(device)
                a_store, a_logits = theta_pass(self.inner, self.model, a_inputs, agroup.act_sites)
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
