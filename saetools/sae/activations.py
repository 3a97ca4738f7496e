"""Training text for SAEs and the activations captured from it.

:func:`local_text` turns probe sets (the built-in ones by default, or JSONL files in the probe
format) into chat examples: pairs give both answers, chat sets the conversation, question and text
sets the message alone. Only the ``train`` split of a set that has splits is used, so held-out
evaluations (``em-core`` test answers) stay clean. :func:`model_samples` adds the model's own answers
to prompts. :func:`collect_activations` keeps every *distinct* token activation once: the first token
of each sequence (an attention sink whose norm is ~100x the others on SmolLM2) is skipped, and so is
any token whose whole prefix has been seen before (the system prompt the chat template adds to every
conversation, the question shared by the two answers of a pair), as a causal model gives it the same
activation again (:func:`distinct_positions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

import probes

from ..capture import ChatExample, encode_all, probe_examples, site_batches
from ..sites import Site, d_model, n_layers, parse_site
from ..steer import as_messages, generate
from .io import SAEError

__all__ = [
    "Activations",
    "TextSource",
    "collect_activations",
    "distinct_positions",
    "local_text",
    "model_samples",
]


@dataclass
class TextSource:
    """Chat examples to capture activations from, and a description recorded with the SAE."""

    examples: list
    description: str

    def __add__(self, other: TextSource) -> TextSource:
        return TextSource(
            self.examples + other.examples, f"{self.description}; {other.description}"
        )


def local_text(
    sets: Sequence[str] | str | None = None, *, split: str | None = "train"
) -> TextSource:
    """Examples from probe sets (built-in names or JSONL paths; default: every built-in set).

    Pairs give both answers, chat sets the conversation, question and text sets the message alone.
    With ``split="train"`` a set with train/test splits contributes its train split only.
    """
    names = (
        probes.available()
        if sets is None
        else (
            [s.strip() for s in sets.split(",") if s.strip()]
            if isinstance(sets, str)
            else list(sets)
        )
    )
    if not names:
        raise SAEError("no probe sets given for the training text")
    examples, parts = [], []
    for name in names:
        ps = probes.load(name)
        has_splits = {it.split for it in ps.items} >= {"train", "test"}
        sub = ps.split(split) if (split and has_splits) else ps
        ex = probe_examples(sub)
        examples.extend(ex)
        parts.append(f"{ps.name}{'/' + split if (split and has_splits) else ''} ({len(ex)})")
    return TextSource(examples, "probe sets: " + ", ".join(parts))


def model_samples(
    model: nn.Module,
    tokenizer,
    prompts: Sequence,
    *,
    n: int | None = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> TextSource:
    """The model's own answers to ``prompts`` (cycled to ``n`` samples), as chat examples."""
    prompts = list(prompts)
    if not prompts:
        raise SAEError("no prompts to sample answers for")
    n = len(prompts) if n is None else int(n)
    chosen = [prompts[i % len(prompts)] for i in range(n)]
    answers = generate(
        model,
        tokenizer,
        chosen,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    out = [
        ChatExample(messages=tuple(as_messages(p)), response=a)
        for p, a in zip(chosen, answers, strict=True)
        if a.strip()
    ]
    return TextSource(
        out,
        f"{len(out)} of the model's own answers (temperature {temperature:g}, <= {max_new_tokens} tokens)",
    )


def distinct_positions(
    sequences: Sequence[Sequence[int]], *, seen: set | None = None, skip_first: bool = True
) -> list[list[int]]:
    """Positions of each token sequence whose activation is new: not the first token (with
    ``skip_first``) and, with ``seen`` (a set updated in place), not a token whose whole prefix was
    already seen in this or an earlier sequence (a causal model repeats that activation exactly)."""
    out = []
    for ids in sequences:
        keep, h = [], 0
        for pos, tok in enumerate(ids):
            h = hash((h, int(tok)))
            if skip_first and pos == 0:
                continue
            if seen is not None:
                if h in seen:
                    continue
                seen.add(h)
            keep.append(pos)
        out.append(keep)
    return out


@dataclass
class Activations:
    """Captured activations ``[n, d]`` (float32, CPU) and how they were gathered."""

    acts: torch.Tensor
    site: str
    tokens_seen: int
    examples_used: int
    examples_total: int
    exhausted: bool


def collect_activations(
    model: nn.Module,
    tokenizer,
    examples: Sequence,
    site: str | Site,
    *,
    max_tokens: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    dedupe: bool = True,
    skip_first: bool = True,
    progress: bool | str = True,
) -> Activations:
    """Activations at ``site`` of every distinct token of ``examples`` (see the module docstring).

    Examples are taken in a seeded random order (sorted by length within windows of 8 batches to cut
    padding), the forward stops after the site, and capture ends once ``max_tokens`` are kept.
    """
    site = parse_site(str(site), n_layers(model)) if not isinstance(site, Site) else site
    if not examples:
        raise SAEError("the text source has no examples")
    if max_tokens is not None and max_tokens < 1:
        raise SAEError(f"max_tokens must be at least 1 (or None for all), not {max_tokens}")
    encoded = encode_all(tokenizer, list(examples))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=g).tolist()
    window = batch_size * 8
    order = [
        i
        for s in range(0, len(order), window)
        for i in sorted(order[s : s + window], key=lambda i: len(encoded[i].input_ids))
    ]
    seen: set[int] = set()
    kept: list[torch.Tensor] = []
    n_kept = n_seen = used = 0
    bar = tqdm(
        total=max_tokens,
        desc=progress if isinstance(progress, str) else f"capture {site.name}",
        disable=not progress,
        unit="tok",
        leave=False,
    )
    try:
        for idx, batch, h in site_batches(model, tokenizer, encoded, order, batch_size, site):
            keep = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
            for row, pos in enumerate(
                distinct_positions(
                    [encoded[i].input_ids for i in idx],
                    seen=seen if dedupe else None,
                    skip_first=skip_first,
                )
            ):
                keep[row, pos] = True
            n_seen += int(batch.attention_mask.sum())
            rows = h[keep.to(h.device)].detach().to("cpu", torch.float32)
            if max_tokens is not None and n_kept + len(rows) > max_tokens:
                rows = rows[: max_tokens - n_kept]
            kept.append(rows)
            n_kept += len(rows)
            used += len(idx)
            bar.update(len(rows))
            if max_tokens is not None and n_kept >= max_tokens:
                break
    finally:
        bar.close()
    acts = torch.cat(kept) if kept else torch.zeros(0, d_model(model))
    return Activations(
        acts=acts,
        site=site.name,
        tokens_seen=n_seen,
        examples_used=used,
        examples_total=len(encoded),
        exhausted=used >= len(encoded) and (max_tokens is None or n_kept < max_tokens),
    )
