"""Batches as the regularizer reads them: the keys it takes, the loss mask, the forward arguments.

A batch is a dict of ``input_ids``, ``attention_mask``, ``labels`` (-100 where no loss) and an
optional ``position_ids``. The loss mask follows the Hugging Face shift: position t counts when
``labels[t + 1] != -100``. :func:`chat_batch` builds such a batch from chat examples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..capture import IGNORE_INDEX, collate, encode_all


def chat_batch(tokenizer, examples, *, device=None, padding_side: str = "right") -> dict:
    """A training batch (``input_ids``, ``attention_mask``, ``position_ids``, ``labels``) from
    :class:`~saetools.capture.ChatExample` s: the loss is on the answer tokens only."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    b = collate(encode_all(tokenizer, examples), pad or 0, padding_side, device)
    labels = b.input_ids.masked_fill(~b.response_mask, IGNORE_INDEX)
    return {
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "position_ids": b.position_ids,
        "labels": labels,
    }


def loss_mask(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask over positions [:, :-1], targets [n]) in the HF shift convention."""
    labels = batch.get("labels")
    if labels is None:
        labels = batch["input_ids"].masked_fill(
            batch.get("attention_mask", torch.ones_like(batch["input_ids"])) == 0, IGNORE_INDEX
        )
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


def model_inputs(batch: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """The batch's known keys on ``device``; refuses a batch without ``input_ids`` or with labels
    of another shape."""
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


def forward_kwargs(inputs: Mapping[str, torch.Tensor]) -> dict:
    """The model's keyword arguments for a pass over ``inputs`` (no labels, no KV cache)."""
    kw = {k: v for k, v in inputs.items() if k != "labels"}
    kw["use_cache"] = False
    return kw
