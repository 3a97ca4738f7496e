"""Training data: chat examples in, labelled and padded batches out.

Labels: -100 everywhere except the assistant answer's tokens **and the end-of-turn token that
follows the answer** (``<|im_end|>`` for ChatML), so the model learns to stop. Anchor examples
(general text for terms computed ``on="anchor"``) count every token. :func:`interleave` is the
``interleave`` defense (safe examples mixed into the task data); :func:`batches_for_step` the
seeded order in which :func:`~saetools.train.train` visits the examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

import probes

from ..capture import IGNORE_INDEX, ChatExample, encode_chat, pad_token_id, probe_examples


class TrainingDataError(ValueError):
    """Training data that cannot be used (wrong kind, empty, no answers)."""


def load_chat_data(data, split: str | None = None, **load_options) -> list[ChatExample]:
    """Chat examples (prompt messages + assistant answer) from a chat probe set name or a path (a
    JSONL file, ``{"messages": [...]}`` records without ids, a parquet file or ``datasets`` folder
    with a ``messages`` column: see :func:`probes.load`, which gets ``load_options``), a loaded
    chat ProbeSet, or a list of ChatExample."""
    if isinstance(data, Sequence) and not isinstance(data, str):
        if all(isinstance(x, ChatExample) for x in data):
            return list(data)
    ps = probes.as_set(data, **load_options)
    if getattr(ps, "kind", None) != "chat":
        raise TrainingDataError(
            f"training data {getattr(ps, 'name', data)!r} is a {getattr(ps, 'kind', '?')!r} set; "
            "training needs a chat set (records with 'messages', the assistant answer last)"
        )
    if split is not None:
        ps = ps.split(split)
    out = []
    for it in ps.items:
        msgs = tuple(dict(m) for m in it.messages)
        out.append(ChatExample(messages=msgs[:-1], response=msgs[-1]["content"]))
    if not out:
        raise TrainingDataError(f"training data {ps.name!r} has no examples")
    return out


def check_fraction(fraction) -> float:
    """``fraction`` as a float; refuses anything but a finite number in [0, 1)."""
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not math.isfinite(fraction)
        or not 0 <= fraction < 1
    ):
        raise ValueError(f"interleave fraction must be a number in [0, 1), not {fraction!r}")
    return float(fraction)


def interleave(
    task: Sequence[ChatExample], safe: Sequence[ChatExample], fraction: float, *, seed: int = 0
) -> list[ChatExample]:
    """The ``interleave`` defense: ``task`` plus safe examples, so that ``fraction`` of the result
    is safe data.

    ``round(fraction / (1 - fraction) * len(task))`` safe examples are drawn in a seeded random
    order (cycling through ``safe`` again when more are needed than it holds), and the whole list
    is shuffled with the same seed, so the mix is the same for the same seed. ``fraction=0``
    returns ``task`` unchanged.
    """
    fraction = check_fraction(fraction)
    task = list(task)
    if not task:
        raise TrainingDataError("interleave: the task data is empty")
    if fraction == 0:
        return task
    safe = list(safe)
    if not safe:
        raise TrainingDataError("interleave: the safe data set is empty")
    n_safe = round(fraction / (1 - fraction) * len(task))
    g = torch.Generator().manual_seed(int(seed))
    picked: list[ChatExample] = []
    while len(picked) < n_safe:
        order = torch.randperm(len(safe), generator=g).tolist()
        picked.extend(safe[i] for i in order[: n_safe - len(picked)])
    mixed = task + picked
    return [mixed[i] for i in torch.randperm(len(mixed), generator=g).tolist()]


def anchor_examples(data) -> list[ChatExample]:
    """General prompts for anchor terms: any probe set kind (pairs: question + aligned answer)."""

    ps = probes.as_set(data)
    if ps.kind == "pairs":
        exs = [ChatExample.from_question(it.question, it.aligned, it.system) for it in ps.items]
    else:
        exs = probe_examples(ps)
    if not exs:
        raise ValueError(f"the anchor set {getattr(ps, 'name', data)!r} is empty")
    return exs


def encode_training_example(
    tokenizer, example: ChatExample, *, max_length: int | None = None, include_eot: bool = True
) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (-100 except the answer tokens and, with ``include_eot``, the
    special end-of-turn token right after the answer). ``max_length`` truncates on the right."""
    enc = encode_chat(tokenizer, example)
    ids = list(enc.input_ids)
    labels = [IGNORE_INDEX] * len(ids)
    end = enc.response_end
    if include_eot and end < len(ids) and ids[end] in set(tokenizer.all_special_ids):
        end += 1
    for i in range(enc.response_start, end):
        labels[i] = ids[i]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def encode_anchor_example(tokenizer, example: ChatExample, *, max_length=None) -> dict:
    """Anchor examples count every token (prompt and answer) in the terms' token means."""
    ids = list(encode_chat(tokenizer, example).input_ids)[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def collate_examples(features: Sequence[Mapping], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids`` (pad_id), ``attention_mask``, ``labels`` (-100 on pads)."""
    width = max(len(f["input_ids"]) for f in features)
    n = len(features)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for i, f in enumerate(features):
        L = len(f["input_ids"])
        ids[i, :L] = torch.as_tensor(list(f["input_ids"]), dtype=torch.long)
        attn[i, :L] = 1
        labels[i, :L] = torch.as_tensor(list(f["labels"]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def eval_batches(
    tokenizer, examples: Sequence[ChatExample], *, max_length: int | None, batch_size: int = 16
) -> list[dict[str, torch.Tensor]]:
    """Encode chat examples as training examples (labels on the answer) and collate them into
    right-padded batches of ``batch_size``, in order: the input of :func:`~saetools.scoring.task_loss`."""
    enc = [encode_training_example(tokenizer, e, max_length=max_length) for e in examples]
    pad = pad_token_id(tokenizer)
    return [collate_examples(enc[i : i + batch_size], pad) for i in range(0, len(enc), batch_size)]


def anchor_batches(
    tokenizer, examples: Sequence[ChatExample], *, max_length: int | None, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Anchor examples (every token counts) collated into right-padded batches of
    ``batch_size``, in order: the ``anchor=`` of :class:`~saetools.regularize.RegularizedLoss`."""
    enc = [encode_anchor_example(tokenizer, e, max_length=max_length) for e in examples]
    pad = pad_token_id(tokenizer)
    return [collate_examples(enc[i : i + batch_size], pad) for i in range(0, len(enc), batch_size)]


class Collator:
    """Callable collator for DataLoader / Trainer (right padding)."""

    def __init__(self, tokenizer_or_pad_id) -> None:
        self.pad_id = (
            tokenizer_or_pad_id
            if isinstance(tokenizer_or_pad_id, int)
            else pad_token_id(tokenizer_or_pad_id)
        )

    def __call__(self, features):
        return collate_examples(features, self.pad_id)


def batches_for_step(n: int, step: int, batch: int, seed: int) -> list[int]:
    """Example indices of global step ``step`` (1-based): epochs of seeded permutations, so the
    order depends only on (seed, step) and a resumed run sees the same batches."""
    idx = []
    start = (step - 1) * batch
    for pos in range(start, start + batch):
        epoch, j = divmod(pos, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        idx.append(int(perm[j]))
    return idx
