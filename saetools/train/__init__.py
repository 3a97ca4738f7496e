"""Fine-tuning with regularizers: data, a Hugging Face Trainer mixin, and the ``train`` loop.

Three ways to train with :class:`~saetools.regularize.RegularizedLoss`:

* :func:`train` (and ``saetools train``): a small, resumable loop (LoRA or full fine-tuning, AdamW)
  that logs every term, measures the *general shift* on ``em-core`` test pairs every ``eval_every``
  steps and writes ``metrics.jsonl``, ``curves.html``, ``run.json`` and atomic checkpoints.
* :class:`RegularizedTrainer` (a ``transformers.Trainer``) or :class:`RegularizedTrainerMixin` on any
  Trainer subclass, e.g. TRL's ``SFTTrainer``::

      from trl import SFTTrainer
      class MyTrainer(RegularizedTrainerMixin, SFTTrainer): ...
      trainer = MyTrainer(model=peft_model, args=cfg, train_dataset=ds,
                          regularizer_terms=[DirectionalKL(dirs, "all", weight=1.0)])

* your own loop: call ``RegularizedLoss`` on each batch (see :mod:`saetools.regularize`).

Modules:

* :mod:`.data`: chat examples in, labelled and padded batches out (:func:`load_chat_data`,
  :func:`encode_training_example`, :func:`collate_examples`, :class:`Collator`, the
  ``interleave`` defense, the seeded step order).
* :mod:`.trainer`: :class:`RegularizedTrainerMixin` and the lazily made
  :class:`RegularizedTrainer` (importing this package does not import transformers' Trainer).
* :mod:`.config`: :class:`TrainConfig` (a run's ``run.json``), :data:`REGULARIZERS`,
  :func:`parse_regularizers`, :func:`build_terms`.
* :mod:`.checkpoints`: atomic checkpoints, RNG states, resuming, :func:`check_run_folder`.
* :mod:`.run`: the :func:`train` loop, in named steps; :func:`lora_config`.
* :mod:`.figures`: :func:`curves_figure` (``curves.html``).
"""

from __future__ import annotations

from ..callable_package import make_callable
from .checkpoints import RunMismatchError, check_run_folder
from .config import REGULARIZERS, TrainConfig, build_terms, parse_regularizers
from .data import (
    Collator,
    TrainingDataError,
    anchor_batches,
    anchor_examples,
    batches_for_step,
    collate_examples,
    encode_anchor_example,
    encode_training_example,
    eval_batches,
    interleave,
    load_chat_data,
)
from .figures import curves_figure
from .run import lora_config, train
from .trainer import RegularizedTrainerMixin, regularized_trainer_class

__all__ = [
    "REGULARIZERS",
    "Collator",
    "RegularizedTrainer",  # noqa: F822 - made lazily by __getattr__ (imports transformers)
    "RegularizedTrainerMixin",
    "RunMismatchError",
    "TrainConfig",
    "TrainingDataError",
    "anchor_batches",
    "anchor_examples",
    "batches_for_step",
    "build_terms",
    "check_run_folder",
    "collate_examples",
    "curves_figure",
    "encode_anchor_example",
    "encode_training_example",
    "eval_batches",
    "interleave",
    "load_chat_data",
    "lora_config",
    "parse_regularizers",
    "regularized_trainer_class",
    "train",
]


def __getattr__(name):
    if name == "RegularizedTrainer":
        cls = regularized_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ``saetools.train(model, tokenizer, config)`` works like ``saetools.train.train``.
make_callable(__name__, train)
