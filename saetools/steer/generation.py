"""Steered generation: chat template, left padding, batched HF ``generate`` with the KV cache.

:func:`generate` answers chat prompts under :class:`~saetools.steer.hooks.steer`, batched in order
of length and returned in the input order. :func:`as_messages` turns a prompt (a string, a message
list or a :class:`~saetools.capture.ChatExample`) into messages, :func:`encode_prompts` runs them
through the chat template with the generation prompt, and :func:`context_length` reads the model's
context, which prompts and ``max_new_tokens`` must fit.

(The module is ``generation``, not ``generate``, so that ``saetools.steer.generate`` names one
thing: the function.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..capture import ChatExample, Encoded, collate, encode_chat, pad_token_id
from ..sites import base_model
from .hooks import as_interventions, steer
from .intervention import Intervention
from .limits import check_seed, check_temperature, check_top_p
from .ops import SteeringError


def as_messages(prompt) -> list[dict]:
    """A prompt (a string, a message list or a ChatExample) as a list of message dicts."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, ChatExample):
        return [dict(m) for m in prompt.messages]
    if isinstance(prompt, (list, tuple)) and all(
        isinstance(m, dict) and "role" in m for m in prompt
    ):
        return [dict(m) for m in prompt]
    raise SteeringError(
        f"a prompt must be a string or a list of {{'role', 'content'}} messages, not {prompt!r:.80}"
    )


def context_length(model: nn.Module) -> int | None:
    """The model's context in tokens, from its config (None when the config does not say)."""
    cfg = base_model(model).config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def encode_prompts(
    tokenizer, prompts, model: nn.Module | None = None, max_new_tokens: int = 0
) -> list[list[int]]:
    """Token ids of each prompt through the chat template (with the generation prompt).

    With ``model``, refuse prompts that do not fit its context (``max_position_embeddings``) together
    with ``max_new_tokens``.
    """
    limit = context_length(model) if model is not None else None
    out = []
    for i, p in enumerate(prompts):
        ids = list(encode_chat(tokenizer, ChatExample(messages=tuple(as_messages(p)))).input_ids)
        if limit is not None and len(ids) + max_new_tokens > limit:
            raise SteeringError(
                f"prompt {i} is {len(ids)} tokens long; with max_new_tokens {max_new_tokens} it does not fit "
                f"the model's context of {limit} tokens"
            )
        out.append(ids)
    return out


def _generation_config(
    model, tokenizer, max_new_tokens, temperature, top_p, min_new_tokens, use_cache
):
    from transformers import GenerationConfig

    base = getattr(base_model(model), "generation_config", None)
    gc = copy.deepcopy(base) if base is not None else GenerationConfig()
    gc.max_new_tokens = int(max_new_tokens)
    gc.min_new_tokens = min_new_tokens
    gc.pad_token_id = pad_token_id(tokenizer)
    gc.use_cache = use_cache
    if tokenizer.eos_token_id is not None:
        eos = gc.eos_token_id if gc.eos_token_id is not None else []
        eos = [eos] if isinstance(eos, int) else list(eos)
        if tokenizer.eos_token_id not in eos:
            eos.append(int(tokenizer.eos_token_id))
        gc.eos_token_id = eos
    if temperature and temperature > 0:
        gc.do_sample = True
        gc.temperature = float(temperature)
        gc.top_p = float(top_p) if top_p is not None else 1.0
        gc.top_k = None
    else:
        gc.do_sample = False
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
    return gc


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence,
    interventions: Sequence[Intervention] | Intervention = (),
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    min_new_tokens: int | None = None,
    use_cache: bool = True,
    streamer=None,
    return_tokens: bool = False,
) -> list[str] | list[list[int]]:
    """Steered generation of answers to chat ``prompts`` (strings or message lists).

    Each prompt goes through the chat template with the generation prompt; batches are left-padded
    with the tokenizer's pad token (set to eos when missing) and run through HF ``generate`` with the
    KV cache. ``temperature=0`` is greedy; otherwise sampling with ``temperature`` and ``top_p``,
    seeded by ``seed`` (``torch.manual_seed`` once, before the first batch). Out-of-range values
    are refused (:mod:`saetools.steer.limits`): ``temperature`` negative, NaN or beyond float32,
    ``top_p`` outside ``(0, 1]``, ``seed`` outside ``-2**63 .. 2**64 - 1``. Prompts are batched in
    order of length and answers returned in the input order: decoded strings (special tokens
    skipped), or generated token ids up to and including the first eos with ``return_tokens``.
    """
    if isinstance(prompts, (str, dict)):
        raise SteeringError("prompts must be a list (of strings or message lists)")
    if max_new_tokens < 1:
        raise SteeringError(f"max_new_tokens must be >= 1, not {max_new_tokens}")
    if batch_size < 1:
        raise SteeringError(f"batch_size must be >= 1, not {batch_size}")
    if temperature is None:
        raise SteeringError("temperature must be >= 0 (0 is greedy), not None")
    temperature = check_temperature(temperature)
    if top_p is not None:
        top_p = check_top_p(top_p)
    if seed is not None:
        seed = check_seed(seed)
    interventions = as_interventions(interventions)
    if any(isinstance(iv.positions, torch.Tensor) for iv in interventions):
        raise SteeringError(
            "generate() batches prompts in its own order; an explicit position mask cannot follow that. "
            "Use positions 'all', 'prompt' or 'generated', or call model.generate inside steer() yourself"
        )
    encoded = encode_prompts(tokenizer, prompts, model, max_new_tokens)
    gc = _generation_config(
        model, tokenizer, max_new_tokens, temperature, top_p, min_new_tokens, use_cache
    )
    eos = set(gc.eos_token_id or [])
    device = next(model.parameters()).device
    if seed is not None:
        torch.manual_seed(seed)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: dict[int, list[int]] = {}
    with steer(model, interventions) as ctx, torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate(
                [Encoded(tuple(encoded[i]), len(encoded[i]), len(encoded[i])) for i in idx],
                gc.pad_token_id,
                "left",
                device,
            )
            width = batch.input_ids.shape[1]
            ctx.reset(prompt_len=width)
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                generation_config=gc,
                streamer=streamer,
            )
            for row, i in enumerate(idx):
                toks = out[row, width:].tolist()
                for j, t in enumerate(toks):
                    if t in eos:
                        toks = toks[: j + 1]
                        break
                results[i] = toks
    tokens = [results[i] for i in range(len(encoded))]
    if return_tokens:
        return tokens
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
