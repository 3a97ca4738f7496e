"""The Hugging Face Trainer integration: :class:`RegularizedTrainerMixin` for any ``Trainer``
subclass (TRL's ``SFTTrainer`` included) and :class:`RegularizedTrainer`, a ``transformers.Trainer``
with the mixin.

``RegularizedTrainer`` is made on first use (:func:`regularized_trainer_class`, reached through
this module's and the package's ``__getattr__``), so that importing :mod:`saetools.train` does not
import transformers' Trainer.

Gradient accumulation: the terms of :class:`~saetools.regularize.RegularizedLoss` are
per-micro-batch means over the loss tokens. The mixin weights each micro-batch by its token count
and divides by the number of loss tokens in the whole accumulated batch, so an update from 8
micro-batches of 1 equals the update from 1 batch of 8 (task loss *and* every term are token means
over the full batch).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..capture import IGNORE_INDEX
from ..regularize import RegularizedLoss

_LOGIT_HIDING_OPTIONS = (
    ("use_liger_kernel", "use_liger_kernel=False"),
    ("use_liger_loss", "use_liger_loss=False"),
)


class RegularizedTrainerMixin:
    """Adds :class:`RegularizedLoss` terms to a ``transformers.Trainer`` (or TRL ``SFTTrainer``).

    Put it first in the bases: ``class MyTrainer(RegularizedTrainerMixin, SFTTrainer)``. Extra
    constructor arguments: ``regularizer`` (a ready :class:`RegularizedLoss`) or
    ``regularizer_terms`` (+ optional ``reference``, ``anchor``). ``compute_loss`` runs the model
    through the regularizer (task loss on the ``labels``, each term), logs each term (averaged over
    the steps between two logs) and weights micro-batches by their loss tokens so that gradient
    accumulation gives the update of one big batch.

    Options that hide the logits (Liger kernels' fused/chunked loss) are refused at construction
    with a message naming the option to set, since every term needs θ's logits or activations.
    """

    def __init__(
        self,
        *args,
        regularizer: RegularizedLoss | None = None,
        regularizer_terms: Sequence | None = None,
        reference: nn.Module | None = None,
        anchor: Iterable | None = None,
        **kwargs,
    ) -> None:
        args_obj = kwargs.get("args", args[1] if len(args) > 1 else None)
        _check_logit_options(args_obj)
        super().__init__(*args, **kwargs)
        if regularizer is None:
            regularizer = RegularizedLoss(
                self.model, list(regularizer_terms or []), reference, anchor=anchor
            )
        self.regularizer = regularizer
        self._term_sums: dict[str, float] = {}
        self._term_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # θ's pass must go through the wrapper the Trainer built (DDP: gradient all-reduce)
        self.regularizer.model = model
        out = self.regularizer(inputs)
        if out.logits is None:
            raise RuntimeError(
                "the model returned no logits (a chunked or fused loss hides them); set "
                "use_liger_kernel=False in the training arguments"
            )
        loss = out.loss
        n = out.n_tokens
        if num_items_in_batch is not None:
            total = float(num_items_in_batch)
            loss = loss * (n / max(total, 1.0))
            if getattr(self.args, "average_tokens_across_devices", False):
                if getattr(self.args, "world_size", 1) > 1:
                    loss = loss * self.accelerator.num_processes
            self.loss_is_scaled_for_ga = True
        else:
            self.loss_is_scaled_for_ga = False  # Trainer divides by the accumulation steps
        for k, v in out.logs.items():
            if k in ("loss", "n_tokens"):
                continue
            self._term_sums[k] = self._term_sums.get(k, 0.0) + v
        self._term_count += 1
        self._trl_metrics(inputs, out.logits)
        return (loss, {"logits": out.logits}) if return_outputs else loss

    def _trl_metrics(self, inputs, logits: torch.Tensor) -> None:
        """The metrics TRL's own ``compute_loss`` records (``entropy``, ``mean_token_accuracy``,
        ``num_tokens``), computed from θ's logits, when the trainer keeps TRL's ``_metrics``."""
        metrics = getattr(self, "_metrics", None)
        labels = inputs.get("labels")
        if not isinstance(metrics, dict) or labels is None:
            return
        mode = "train" if self.model.training else "eval"
        if mode not in metrics:
            return
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            target = labels[:, 1:]
            mask = target != IGNORE_INDEX
            rows = logits[:, :-1][mask].float()
            logp = torch.log_softmax(rows, dim=-1)
            entropy_sum = gather(-(logp.exp() * logp).sum()).sum()
            correct = gather((rows.argmax(-1) == target[mask]).sum()).sum()
            n_valid = gather(mask.sum()).sum()
        valid = int(n_valid) > 0
        metrics[mode]["entropy"].append(float(entropy_sum / n_valid) if valid else 0.0)
        metrics[mode]["mean_token_accuracy"].append(float(correct / n_valid) if valid else 0.0)
        if mode == "train" and hasattr(self, "_total_train_tokens"):
            if "attention_mask" in inputs:
                n_tok = int(gather(inputs["attention_mask"].sum()).sum())
            else:
                n_tok = int(gather(torch.tensor(inputs["input_ids"].size(1))).sum())
            self._total_train_tokens += n_tok // getattr(self, "_tp_size", 1)
            metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs, *args, **kwargs):
        if self._term_count and "loss" in logs:
            for k, v in self._term_sums.items():
                logs[f"reg/{k}"] = v / self._term_count
            self._term_sums, self._term_count = {}, 0
        return super().log(logs, *args, **kwargs)

    def _get_num_items_in_batch(self, batch_samples, device):
        n = super()._get_num_items_in_batch(batch_samples, device)
        if n is None and batch_samples and "labels" in batch_samples[0]:
            # the model's forward takes no loss kwargs, so the Trainer did not count: count anyway,
            # so that micro-batches are token-weighted
            n = sum(int(b["labels"][..., 1:].ne(IGNORE_INDEX).sum()) for b in batch_samples)
            n = torch.tensor(n, device=device)
            if (
                getattr(self.args, "average_tokens_across_devices", False)
                and self.args.world_size > 1
            ):
                n = self.accelerator.gather(n).sum()
        return n


def _check_logit_options(args) -> None:
    if args is None:
        return
    for attr, fix in _LOGIT_HIDING_OPTIONS:
        if getattr(args, attr, False):
            raise ValueError(
                f"{type(args).__name__}.{attr} is set: its fused (chunked) loss never materializes "
                f"the logits that the regularizer terms need. Set {fix}."
            )


@functools.cache
def regularized_trainer_class() -> type:
    """``RegularizedTrainer``: made once, on first use (it imports transformers' Trainer)."""
    from transformers import Trainer

    class RegularizedTrainer(RegularizedTrainerMixin, Trainer):
        """``transformers.Trainer`` with :class:`RegularizedTrainerMixin`."""

    return RegularizedTrainer


def __getattr__(name):
    if name == "RegularizedTrainer":
        return regularized_trainer_class()
    raise AttributeError(name)
