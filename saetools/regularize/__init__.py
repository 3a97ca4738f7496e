"""Loss terms for fine-tuning: the directional KL, its cheap relative, and the baselines.

A fine-tuned model θ is compared with a frozen reference θ0 along misalignment directions (or
everywhere, for the baselines); :class:`RegularizedLoss` adds the terms to the task loss inside any
training loop (:mod:`saetools.train` wraps it for the Hugging Face Trainer and its own loop). See
docs/regularizers.md.

Modules:

* :mod:`.terms`: the term dataclasses (:class:`DirectionalKL`, :class:`DirectionalL2`,
  :class:`KL`, :class:`LDIFS`, :class:`SAELatents`, :class:`Steer`, :class:`Ablate`), what each
  computes, and the checks on their fields; :func:`ldifs_sites`.
* :mod:`.penalties`: the math of each term as plain functions of logits and activations at the
  loss tokens.
* :mod:`.resolve`: terms checked against the model and resolved to sites and orthonormal bases,
  grouped by the batch they are computed on; Steer/Ablate terms as hooks.
* :mod:`.reference`: θ0: the frozen copy or the adapters-off toggle, its forward pass, and
  unwrapping DDP / FSDP / compile wrappers.
* :mod:`.passes`: θ's passes: the main pass and the directional KL's counterfactual pass.
* :mod:`.batch`: the batch keys, the loss mask (Hugging Face shift), :func:`chat_batch`.
* :mod:`.loss`: :class:`RegularizedLoss`, the driver (resolve once; per call: θ's pass, θ0's pass,
  each term, the weighted sum) and :class:`RegularizedOutput`.
"""

from __future__ import annotations

from .batch import chat_batch
from .loss import RegularizedLoss, RegularizedOutput
from .terms import (
    KL,
    LDIFS,
    Ablate,
    DirectionalKL,
    DirectionalL2,
    LossTerm,
    SAELatents,
    Steer,
    Term,
    ldifs_sites,
)
from .terms import SOURCES as SOURCES  # public, kept out of __all__ as before

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
