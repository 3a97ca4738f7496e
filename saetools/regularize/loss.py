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

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..sites import Site, hooks, n_layers
from ..steer import ablate as ablate_op
from ..steer import add as add_op
from .batch import input_device, loss_mask, model_inputs
from .head import HeadMismatchError, HeadTap, head_matches
from .passes import accelerator_devices, counterfactual_logits, rng_state, set_rng, theta_pass
from .penalties import (
    HeadRows,
    at_tokens,
    chunked_logit_sums,
    cross_entropy,
    directional_l2_term,
    kl_term,
    ldifs_term,
    logit_stats,
    mean_shift,
    sae_latents_term,
    site_shifts,
)
from .reference import choose_reference, reference_pass, unwrap
from .resolve import Intervention, TermGroup, resolve_terms
from .terms import KL, LDIFS, SOURCES, Ablate, DirectionalL2, SAELatents, Steer, Term

# loss tokens per chunk of the LM head (docs/regularizers.md: measured on CPU at vocabularies of
# 49,152 and 151,936)
DEFAULT_LOGIT_CHUNK = 1024


@dataclass
class RegularizedOutput:
    """``loss = task_loss + Σ weight * terms[name]``. ``terms`` hold unweighted values (with grad);
    ``logs`` plain floats: ``loss``, ``task_loss``, each term, ``<term>/shift`` (mean over tokens and
    sites of the shift along the first basis row, for direction terms), ``n_tokens``.
    :attr:`logits` are the main pass's logits ``[b, t, vocab]``: with the chunked logit terms (the
    default) they are computed from the final hidden states on first access (a full-vocabulary
    tensor: prefer :meth:`token_stats` for metrics)."""

    loss: torch.Tensor
    task_loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    logs: dict[str, float]
    n_tokens: int = 0
    full_logits: torch.Tensor | None = field(default=None, repr=False)
    hidden: torch.Tensor | None = field(default=None, repr=False)  # [b, t, d], chunked form
    rows: HeadRows | None = field(default=None, repr=False)  # θ at the loss tokens, chunked form
    labels: torch.Tensor | None = field(default=None, repr=False)  # [n]
    mask: torch.Tensor | None = field(default=None, repr=False)  # [b, t - 1]
    chunk: int = 0

    @property
    def logits(self) -> torch.Tensor:
        """θ's logits ``[b, t, vocab]`` of the main pass."""
        if self.full_logits is None and self.hidden is not None and self.rows is not None:
            self.full_logits = self.rows.head(self.hidden)
        return self.full_logits

    def token_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the entropies, count of argmax-correct predictions) of θ's next-token
        distributions at the loss tokens, without gradient, chunked like the terms."""
        with torch.no_grad():
            if self.rows is not None:
                return logit_stats(self.rows, self.labels, self.chunk)
            rows = HeadRows(at_tokens(self.full_logits, self.mask), lambda z: z)
            return logit_stats(rows, self.labels, max(1, self.n_tokens))


class RegularizedLoss:
    """Task loss plus regularizer terms, computed on a batch inside any training loop.

    ``model``: the model being trained (a transformers causal LM, a PEFT model, or either wrapped in
    DistributedDataParallel). ``terms``: loss terms and Steer/Ablate interventions. ``reference``:
    the frozen θ0. With a PEFT model and no ``reference``, θ0 is the same model with adapters
    disabled (no extra memory). Otherwise, if a loss term needs θ0 and none is given, a deep copy is
    made once, frozen and put in eval mode (it costs one more copy of the weights). ``anchor``: an
    iterable of anchor batches (cycled) for terms with ``on="anchor"``. ``force``: accept direction
    files made for another model of the same width. ``logit_chunk``: the task loss, :class:`KL` and
    :class:`DirectionalKL` run the LM head on this many loss tokens at a time, from the final
    hidden states (exact, and at most one chunk's logits in memory; see docs/regularizers.md);
    ``None``: every pass computes its full ``[b, t, vocab]`` logits, as before.

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
        logit_chunk: int | None = DEFAULT_LOGIT_CHUNK,
    ) -> None:
        if logit_chunk is not None and (
            isinstance(logit_chunk, bool) or not isinstance(logit_chunk, int) or logit_chunk < 1
        ):
            raise ValueError(f"logit_chunk must be a positive integer or None, not {logit_chunk!r}")
        self.logit_chunk = logit_chunk
        self._head_checked = False  # the first chunked call compares one position with the model's
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
    def _tap(self, model: nn.Module) -> HeadTap | None:
        """A :class:`HeadTap` for the chunked logit terms (keeping one position of the model's own
        logits on the first call, to check :func:`head_fn` against them), else None."""
        if self.logit_chunk is None:
            return None
        return HeadTap(model, keep=0 if self._head_checked else 1)

    def _rows(self, tap, logits, mask, head_of, *, fixed: bool, adapters_off=None) -> HeadRows:
        """The tapped pass's hidden states at the loss tokens, with the head of ``head_of``."""
        hidden = tap.result()
        head = tap.head(head_of, adapters_off=adapters_off)
        if not head_matches(logits, hidden, head):
            raise HeadMismatchError(
                f"the logits of {type(head_of).__name__} are not its output embeddings applied to "
                "its final hidden states (unknown post-processing)"
            )
        return HeadRows(at_tokens(hidden, mask), head, fixed)

    def _reference_pass(self, group: TermGroup, inputs, mask):
        """θ0's activations at the group's sites and, when :class:`KL` needs them, its logits
        (full, or :class:`HeadRows` at the loss tokens in the chunked form)."""
        ref = self.reference if self.reference is not None else self.inner
        toggle = self.inner if self.use_adapter_toggle else None
        tap = self._tap(ref) if group.needs_ref_logits else None
        h0, logits = reference_pass(
            ref,
            inputs,
            group.act_sites,
            need_logits=group.needs_ref_logits,
            adapters_of=toggle,
            tap=tap,
        )
        if tap is not None:
            logits = self._rows(tap, logits, mask, ref, fixed=True, adapters_off=toggle)
        return h0, logits

    def _counterfactual(self, r, t, inputs, h0, rng, mask):
        """:class:`DirectionalKL`'s target: the counterfactual pass's logits (or rows)."""
        tap = self._tap(self.inner)
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
            tap=tap,
        )
        if tap is not None:
            cf = self._rows(tap, cf, mask, self.inner, fixed=t.detach_target)
        return cf

    # ------------------------------------------------------------ terms
    def _group_terms(
        self,
        group: TermGroup,
        inputs,
        store: dict[Site, torch.Tensor],
        mask: torch.Tensor,
        rng,
        out_terms: dict[str, torch.Tensor | None],
        logs: dict[str, torch.Tensor],
    ) -> list[tuple[str, torch.Tensor | HeadRows, float | None]]:
        """Each activation term of ``group`` into ``out_terms`` (and its extra logs into ``logs``),
        from θ's activations ``store`` and one θ0 pass on the same ``inputs``. The logit terms
        (:class:`KL`, :class:`DirectionalKL`) get a placeholder, and their targets are returned,
        to be computed with θ's logits by :meth:`_logit_terms`."""
        h0, ref_logits = self._reference_pass(group, inputs, mask)
        n = int(mask.sum())
        targets: list[tuple[str, torch.Tensor | HeadRows, float | None]] = []
        for r in group.terms:
            t = r.term
            val = None
            if isinstance(t, KL):
                targets.append((t.name, ref_logits, None))
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
                    cf = self._counterfactual(r, t, inputs, h0, rng, mask)
                    # normalized: in units of KL_ref (see .terms), divided in _logit_terms
                    ref_kl = self._kl_ref(r, inputs, mask, n) if r.units else None
                    targets.append((t.name, cf, ref_kl))
            if val is not None and not isinstance(val, torch.Tensor):
                val = mask.new_zeros((), dtype=torch.float32)
            out_terms[t.name] = val  # None: a logit term, filled in by _logit_terms
        return targets

    def _logit_terms(
        self, theta, targets, mask, labels, n: int, out_terms, logs
    ) -> torch.Tensor | None:
        """The task cross-entropy (when ``labels`` are given; returned) and each logit term's
        ``KL(target ‖ p)`` (into ``out_terms``; a normalized one divided by its ``KL_ref``, the raw
        value logged): from full logits, or chunked from rows."""
        if isinstance(theta, HeadRows):
            sums = chunked_logit_sums(theta, [x for _, x, _ in targets], labels, self.logit_chunk)
            vals = list(sums / max(n, 1))
            task = vals.pop(0) if labels is not None else None
        else:
            task = cross_entropy(theta, mask, labels, n) if labels is not None else None
            vals = [kl_term(x, theta, mask, n) for _, x, _ in targets]
        for (name, _, ref_kl), v in zip(targets, vals, strict=True):
            if ref_kl is not None:
                logs[f"{name}/raw"] = v.detach()
                v = v / ref_kl
            out_terms[name] = v
        return task

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
        device = input_device(self.inner)
        inputs = model_inputs(batch, device)
        a_inputs = None
        if self.groups["anchor"].terms:
            a_inputs = model_inputs(anchor if anchor is not None else self._next_anchor(), device)
        rng = rng_state(accelerator_devices(self.inner))
        try:
            out = self._step(inputs, a_inputs, rng)
        except HeadMismatchError as e:
            if self.logit_chunk is None or self._head_checked:
                raise
            warnings.warn(
                f"chunked logit terms are off for this model ({e}); every pass now computes its "
                "full logits (logit_chunk=None)",
                stacklevel=2,
            )
            self.logit_chunk = None
            set_rng(rng)  # the step again, as if the first try had not run
            out = self._step(inputs, a_inputs, rng)
        self._head_checked = True
        return out

    def _step(self, inputs, a_inputs, rng) -> RegularizedOutput:
        """One call: θ's pass, the batch group's terms, then the anchor group's."""
        bgroup, agroup = self.groups["batch"], self.groups["anchor"]
        out_terms: dict[str, torch.Tensor] = {}
        logs: dict[str, torch.Tensor] = {}
        with self.interventions():
            tap = self._tap(self.inner)
            store, logits = theta_pass(self.inner, self.model, inputs, bgroup.act_sites, tap)
            mask, labels = loss_mask(inputs)
            n = int(mask.sum())
            theta = (
                logits if tap is None else self._rows(tap, logits, mask, self.inner, fixed=False)
            )
            targets = []
            if bgroup.terms:
                targets = self._group_terms(bgroup, inputs, store, mask, rng, out_terms, logs)
            del store
            task = self._logit_terms(theta, targets, mask, labels, n, out_terms, logs)
            if agroup.terms:
                a_rng = rng_state(accelerator_devices(self.inner))
                a_tap = self._tap(self.inner)
                a_store, a_logits = theta_pass(
                    self.inner, self.model, a_inputs, agroup.act_sites, a_tap
                )
                a_mask, _ = loss_mask(a_inputs)
                a_theta = a_logits
                if a_tap is not None:
                    a_theta = self._rows(a_tap, a_logits, a_mask, self.inner, fixed=False)
                a_targets = self._group_terms(
                    agroup, a_inputs, a_store, a_mask, a_rng, out_terms, logs
                )
                del a_store
                self._logit_terms(
                    a_theta, a_targets, a_mask, None, int(a_mask.sum()), out_terms, logs
                )
        out = self._output(task, out_terms, logs, n)
        out.mask, out.labels = mask, labels
        if tap is None:
            out.full_logits = logits
        else:
            out.hidden, out.rows, out.chunk = tap.result(), theta, self.logit_chunk
        return out

    def _output(self, task, out_terms, logs, n: int) -> RegularizedOutput:
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
        return RegularizedOutput(loss=loss, task_loss=task, terms=out_terms, logs=flat, n_tokens=n)
