"""Chat examples as token ids: the chat template, the answer's token span, padding into batches.

Answer tokens are located through the tokenizer's chat template: the conversation is rendered with
and without the answer, and the answer's characters are mapped to tokens with the tokenizer's
offsets. Nothing is guessed from special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "ChatExample",
    "ChatTemplateError",
    "Encoded",
    "collate",
    "encode_all",
    "encode_chat",
    "length_batches",
    "pad_token_id",
    "pair_examples",
    "probe_examples",
]

IGNORE_INDEX = -100  # the label of tokens the loss skips (PyTorch's and Hugging Face's convention)


class ChatTemplateError(ValueError):
    """The tokenizer cannot format a conversation."""


@dataclass(frozen=True)
class ChatExample:
    """A conversation prompt (list of ``{"role", "content"}``) and an optional assistant answer."""

    messages: tuple[dict, ...]
    response: str | None = None

    @classmethod
    def from_question(
        cls, question: str, response: str | None = None, system: str | None = None
    ) -> ChatExample:
        msgs: list[dict] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": question})
        return cls(messages=tuple(msgs), response=response)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and the token span ``[response_start, response_end)`` of its answer."""

    input_ids: tuple[int, ...]
    response_start: int
    response_end: int

    @property
    def prompt_len(self) -> int:
        return self.response_start


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"the tokenizer of this model ({type(tokenizer).__name__}) has no chat template. saetools "
            "formats every prompt through the chat template (a base model has none). Pass one with "
            "--chat-template FILE (a Jinja template) or --chat-template gemma (Gemma's turn format, "
            "shipped with saetools) on the command line, or set `tokenizer.chat_template = ...` in "
            "Python."
        )


def encode_chat(tokenizer, example: ChatExample) -> Encoded:
    """Tokenize a conversation through the chat template and locate the answer's tokens."""
    _require_template(tokenizer)
    messages = [dict(m) for m in example.messages]
    prompt_text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    if example.response is None:
        ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        return Encoded(tuple(ids), len(ids), len(ids))
    if not example.response.strip():
        raise ValueError("an example has an empty answer; every answer must contain text")
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": example.response}], tokenize=False
    )
    start_char = len(prompt_text)
    if not full_text.startswith(prompt_text) or not full_text[start_char:].lstrip().startswith(
        example.response.strip()[:20]
    ):
        # Templates that rewrite earlier turns when an answer is added (rare): locate the answer text.
        start_char = full_text.rfind(example.response.strip())
        if start_char < 0:
            raise ChatTemplateError(
                "cannot locate the assistant answer inside the rendered chat template"
            )
    else:
        start_char += len(full_text[start_char:]) - len(full_text[start_char:].lstrip())
    end_char = start_char + len(example.response.strip())
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    tok_start = tok_end = None
    for i, (a, b) in enumerate(offsets):
        if b > start_char and tok_start is None:
            tok_start = i
        if a < end_char:
            tok_end = i + 1
    if tok_start is None or tok_end is None or tok_end <= tok_start:
        raise ChatTemplateError("the assistant answer maps to no tokens")
    return Encoded(tuple(ids), tok_start, tok_end)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [b, t]
    attention_mask: torch.Tensor  # [b, t]
    position_ids: torch.Tensor  # [b, t]
    response_mask: torch.Tensor  # [b, t] bool
    prompt_mask: torch.Tensor  # [b, t] bool
    last_index: torch.Tensor  # [b] index of the last answer token (last prompt token if no answer)


def collate(
    encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right", device=None
) -> Batch:
    """Pad encoded examples into a batch. Position ids count real tokens only, so left padding
    gives the same activations as no padding."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    width = max(len(e.input_ids) for e in encoded)
    n = len(encoded)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    resp = torch.zeros((n, width), dtype=torch.bool)
    prompt = torch.zeros((n, width), dtype=torch.bool)
    last = torch.zeros(n, dtype=torch.long)
    for i, e in enumerate(encoded):
        L = len(e.input_ids)
        off = width - L if padding_side == "left" else 0
        ids[i, off : off + L] = torch.tensor(e.input_ids, dtype=torch.long)
        attn[i, off : off + L] = 1
        resp[i, off + e.response_start : off + e.response_end] = True
        prompt[i, off : off + e.response_start] = True
        last[i] = off + (
            e.response_end - 1 if e.response_end > e.response_start else e.response_start - 1
        )
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    b = Batch(ids, attn, pos, resp, prompt, last)
    if device is not None:
        b = Batch(*(t.to(device) for t in (ids, attn, pos, resp, prompt, last)))
    return b


def encode_all(tokenizer, examples: Sequence[ChatExample]) -> list[Encoded]:
    out = []
    for i, ex in enumerate(examples):
        try:
            out.append(encode_chat(tokenizer, ex))
        except ValueError as e:
            raise type(e)(f"example {i}: {e}") from e
    return out


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token id, else its eos token id (the usual choice for causal LMs)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


def length_batches(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Indices of ``encoded`` sorted by length (stable: ties keep input order), cut into batches."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def probe_examples(probes) -> list[ChatExample]:
    """The texts a probe set (or a list of ChatExample) contributes: for a ``pairs`` set both the
    aligned and the misaligned answer of every item, for a ``chat`` set the conversations (the last,
    assistant message is the answer), for ``questions``/``texts`` sets the prompts alone."""
    if isinstance(probes, Sequence) and all(isinstance(x, ChatExample) for x in probes):
        return list(probes)
    kind = getattr(probes, "kind", None)
    out: list[ChatExample] = []
    for it in probes.items:
        if kind == "pairs":
            out.append(ChatExample.from_question(it.question, it.aligned, it.system))
            out.append(ChatExample.from_question(it.question, it.misaligned, it.system))
        elif kind == "chat":
            msgs = tuple(dict(m) for m in it.messages)
            if msgs[-1].get("role") == "assistant":
                out.append(ChatExample(messages=msgs[:-1], response=msgs[-1]["content"]))
            else:
                out.append(ChatExample(messages=msgs))
        elif kind == "questions":
            out.append(ChatExample.from_question(it.question, None, it.system))
        elif kind == "texts":
            out.append(ChatExample.from_question(it.text))
        else:
            raise ValueError(f"unknown probe set kind {kind!r}")
    return out


def pair_examples(items) -> tuple[list[ChatExample], list[ChatExample]]:
    """(aligned, misaligned) chat examples from the items of a ``pairs`` probe set."""
    aligned, misaligned = [], []
    for it in items:
        if it.aligned is None or it.misaligned is None:
            raise ValueError(f"probe item {it.id} is not an aligned/misaligned pair")
        aligned.append(ChatExample.from_question(it.question, it.aligned, it.system))
        misaligned.append(ChatExample.from_question(it.question, it.misaligned, it.system))
    return aligned, misaligned
