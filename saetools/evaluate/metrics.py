"""Offline metrics: numbers measured on the model itself, no judge needed.

* :func:`sample_answers`: the model's own answers to ``em-eval`` questions (:class:`Sample` s, which
  the suites fill with projections and judge scores);
* :func:`answer_projections` (from :mod:`saetools.scoring`, re-exported): the mean projection of
  answers' tokens on a direction at a site;
* :func:`neutral_perplexity`: perplexity of the shipped ``neutral`` texts;
* :func:`held_out_loss`: the loss on a narrow set's test split (the labels ``saetools train`` uses);
* :func:`in_domain_contrast`: ``narrow-medical-bad`` vs ``narrow-medical-good`` on their test twins;
* :func:`opswap_accuracy`: exact-match accuracy on ``opswap`` test items (greedy;
  :func:`parse_opswap_answer`);
* :func:`paired_shift`: the general shift of one :func:`~saetools.evaluate.evaluate` result
  against another's, pair by pair.

Every metric is measured on the model as evaluated: with its adapter, and inside
:func:`saetools.steer.steer` with the given interventions (so a steered model's projections include
the steering).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

import probes

from ..capture import ChatExample
from ..scoring import NEUTRAL_PROMPT, answer_projections, score_answers, task_loss
from ..stats import mean_se, t_interval, wilson_interval
from ..steer import check_seed, generate, steer
from ..train import TrainingDataError, eval_batches, load_chat_data
from .errors import EvaluationError

__all__ = [
    "DEFAULT_SAMPLES",
    "Sample",
    "answer_projections",
    "held_out_loss",
    "in_domain_contrast",
    "neutral_perplexity",
    "opswap_accuracy",
    "paired_shift",
    "parse_opswap_answer",
    "sample_answers",
    "samples_per_question",
]

DEFAULT_SAMPLES = 4  # answers per question when neither the caller nor the question says


@dataclass
class Sample:
    """One sampled answer to an ``em-eval`` question, with its scores once measured."""

    question_id: str
    theme: str | None
    question: str
    index: int
    answer: str
    system: str | None = None
    projection: float | None = None
    alignment: float | None = None
    coherence: float | None = None
    flag: str | None = None
    misaligned: bool | None = None
    extra: dict = field(default_factory=dict)


def samples_per_question(item, n: int | None = None) -> int:
    """Answers to sample for a question: ``n`` when given, else the question's own count, else
    :data:`DEFAULT_SAMPLES`."""
    if n is not None:
        return n
    return item.samples or DEFAULT_SAMPLES


def sample_answers(
    model: nn.Module,
    tokenizer,
    questions="em-eval",
    n: int | None = None,
    interventions: Sequence = (),
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> list[Sample]:
    """``n`` answers per question (a ``questions`` probe set or its name), sampled at
    ``temperature`` (1 by default) with the interventions applied, seeded once with ``seed``.
    ``n=None``: each question's own count (``samples_per_paraphrase`` of a question YAML file),
    else :data:`DEFAULT_SAMPLES`."""
    if n is not None and n < 1:
        raise EvaluationError(f"samples per question must be >= 1, not {n}")
    ps = probes.as_set(questions)
    items = [it for it in ps.items if it.question]
    if not items:
        raise EvaluationError(f"probe set {ps.name!r} has no questions to sample answers for")
    jobs = [(it, j) for it in items for j in range(samples_per_question(it, n))]
    prompts = []
    for it, _ in jobs:
        msgs = [{"role": "system", "content": it.system}] if it.system else []
        prompts.append([*msgs, {"role": "user", "content": it.question}])
    torch.manual_seed(check_seed(seed))
    answers: list[str] = []
    with tqdm(total=len(prompts), desc="sample", unit="answer", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            answers += generate(
                model,
                tokenizer,
                chunk,
                list(interventions),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None,
                batch_size=batch_size,
            )
            bar.update(len(chunk))
    return [
        Sample(it.id, it.theme, it.question, j, a, it.system)
        for (it, j), a in zip(jobs, answers, strict=True)
    ]


def neutral_perplexity(
    model: nn.Module, tokenizer, neutral="neutral", interventions: Sequence = (), batch_size=16
) -> float:
    """exp(mean NLL per answer token) of the ``neutral`` texts, each scored as the assistant's answer
    to :data:`saetools.scoring.NEUTRAL_PROMPT` (as ``saetools sweep`` does)."""
    ps = probes.as_set(neutral, "texts")
    ex = [ChatExample.from_question(NEUTRAL_PROMPT, it.text) for it in ps.items]
    with steer(model, list(interventions)):
        s = score_answers(model, tokenizer, ex, batch_size=batch_size)
    return float(torch.exp(-s["logp"].sum() / s["n_tokens"].sum()))


def _chat_examples(data, split: str | None):
    try:
        return load_chat_data(data, split)
    except TrainingDataError as e:
        raise EvaluationError(str(e)) from None


def held_out_loss(
    model: nn.Module,
    tokenizer,
    data,
    interventions: Sequence = (),
    *,
    split: str | None = "test",
    batch_size: int = 16,
    max_length: int | None = 256,
) -> float:
    """Token-mean cross-entropy on the answers of a chat set's split (the labels ``saetools train``
    uses: the answer's tokens and the end-of-turn token after it)."""
    exs = _chat_examples(data, split)
    batches = eval_batches(tokenizer, exs, max_length=max_length, batch_size=batch_size)
    with steer(model, list(interventions)):
        return task_loss(model, batches)


def in_domain_contrast(
    model: nn.Module,
    tokenizer,
    bad="narrow-medical-bad",
    good="narrow-medical-good",
    interventions: Sequence = (),
    *,
    split: str | None = "test",
    batch_size: int = 16,
) -> dict:
    """Per twin pair: mean log p per token of the bad answer minus that of the good answer (same
    prompt). Twins are records at the same position of the two sets' split with the same prompt."""
    b, g = _chat_examples(bad, split), _chat_examples(good, split)
    if len(b) != len(g):
        raise EvaluationError(
            f"in-domain contrast needs twin sets of equal size, got {len(b)} and {len(g)}"
        )
    for i, (x, y) in enumerate(zip(b, g, strict=True)):
        if x.messages != y.messages:
            raise EvaluationError(f"record {i} of the two sets has different prompts (not twins)")
    with steer(model, list(interventions)):
        s = score_answers(model, tokenizer, b + g, batch_size=batch_size)
    per_tok = s["logp"] / s["n_tokens"].clamp(min=1).double()
    d = per_tok[: len(b)] - per_tok[len(b) :]
    mean, sem = mean_se(d.tolist())
    return {
        "contrast_per_token": mean,
        "contrast_sem": sem,
        "frac_prefer_bad": float((d > 0).double().mean()),
        "n_pairs": len(b),
    }


def parse_opswap_answer(text: str) -> str:
    """The answer of a generation for exact match: its first non-empty line, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _first_int(text: str) -> str | None:
    m = re.search(r"-?\d+", text)
    return str(int(m.group(0))) if m else None


def opswap_accuracy(
    model: nn.Module,
    tokenizer,
    data="opswap",
    interventions: Sequence = (),
    *,
    split: str | None = "test",
    max_new_tokens: int = 8,
    batch_size: int = 16,
    limit: int | None = None,
) -> dict:
    """Exact-match accuracy on a chat set's split, greedy decoding.

    ``accuracy``: :func:`parse_opswap_answer` (the first non-empty line, stripped) equals the
    expected answer (stripped). ``accuracy_first_int``: the first integer anywhere in the generation
    equals the expected integer (lenient; for models that add words around the number)."""
    exs = _chat_examples(data, split)[: limit or None]
    prompts = [[dict(m) for m in e.messages] for e in exs]
    outs = generate(
        model,
        tokenizer,
        prompts,
        list(interventions),
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        batch_size=batch_size,
    )
    exact = [parse_opswap_answer(o) == e.response.strip() for o, e in zip(outs, exs, strict=True)]
    lenient = [
        _first_int(o) is not None and _first_int(o) == _first_int(e.response)
        for o, e in zip(outs, exs, strict=True)
    ]
    k = sum(exact)
    return {
        "accuracy": k / len(exs),
        "accuracy_ci95": list(wilson_interval(k, len(exs))),
        "accuracy_first_int": sum(lenient) / len(exs),
        "n": len(exs),
        "examples": [
            {"prompt": e.messages[-1]["content"], "expected": e.response, "output": o}
            for e, o in list(zip(exs, outs, strict=True))[:5]
        ],
    }


def paired_shift(result: Mapping, base: Mapping) -> dict:
    """The general shift of one :func:`~saetools.evaluate.evaluate` result against another
    (usually the base model) on the same em-core pairs: per pair, the per-token contrast
    difference; their mean, standard error and 95% Student-t interval (``n`` pairs)."""
    try:
        a = result["em"]["per_pair_contrast_per_token"]
        b = base["em"]["per_pair_contrast_per_token"]
    except KeyError:
        raise ValueError(
            "paired_shift needs two evaluate() results of the 'em' suite (with per-pair contrasts)"
        ) from None
    if len(a) != len(b) or result["em"].get("pairs") != base["em"].get("pairs"):
        raise ValueError(
            f"paired_shift needs the same em-core pairs in both results, not {len(a)} and {len(b)}"
            f" pairs ({result['em'].get('pairs')} vs {base['em'].get('pairs')})"
        )
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, se = mean_se(d)
    lo, hi = t_interval(d)
    return {"shift": m, "shift_se": se, "shift_ci95": [lo, hi], "n": len(d)}
