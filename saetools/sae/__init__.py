"""Sparse autoencoders through sae-lens: load, train, measure, save, and clamp latents.

Modules:

* :mod:`~saetools.sae.io`: load and save sae-lens SAEs (:func:`load_sae`, :func:`save_sae`,
  :class:`LoadedSAE` with its fit checks against a model), :class:`SAEError`,
  :func:`parse_latents`.
* :mod:`~saetools.sae.activations`: training text (:class:`TextSource`, :func:`local_text`,
  :func:`model_samples`) and the distinct token activations captured from it
  (:func:`distinct_positions`, :class:`Activations`, :func:`collect_activations`).
* :mod:`~saetools.sae.training`: training with sae-lens's own trainer (:class:`SAETrainConfig`,
  :func:`train_sae`, :func:`train_sae_on_activations`, :class:`TrainResult`) and the quality
  figures (:class:`SAEQuality`, :func:`evaluate_sae`).
* :mod:`~saetools.sae.clamp`: :class:`LatentClamp`, the steering intervention that sets latents to
  values, and :func:`parse_clamps`.

``TrainConfig`` is the old name of :class:`SAETrainConfig` (it clashed with
:class:`saetools.train.TrainConfig`) and stays importable from here.
"""

from __future__ import annotations

from .activations import (
    Activations,
    TextSource,
    collect_activations,
    distinct_positions,
    local_text,
    model_samples,
)
from .clamp import LatentClamp, parse_clamps
from .io import (
    SAE_FILES,
    TRAINING_FILE,
    LoadedSAE,
    SAEError,
    load_sae,
    parse_latents,
    save_sae,
)
from .training import (
    ARCHITECTURES,
    SAEQuality,
    SAETrainConfig,
    TrainResult,
    evaluate_sae,
    train_sae,
    train_sae_on_activations,
)

TrainConfig = SAETrainConfig  # the old name, kept for ``from saetools.sae import TrainConfig``

__all__ = [
    "ARCHITECTURES",
    "SAE_FILES",
    "TRAINING_FILE",
    "Activations",
    "LatentClamp",
    "LoadedSAE",
    "SAEError",
    "SAEQuality",
    "SAETrainConfig",
    "TextSource",
    "TrainConfig",
    "TrainResult",
    "collect_activations",
    "distinct_positions",
    "evaluate_sae",
    "load_sae",
    "local_text",
    "model_samples",
    "parse_clamps",
    "parse_latents",
    "save_sae",
    "train_sae",
    "train_sae_on_activations",
]
