"""The probe judge's validation: answers labelled by reading them, and the judge's agreement.

The labelled set (``saetools/evaluate/data/em-judged.jsonl``, read by :func:`load_judged_answers`)
is a JSONL file whose first line is a header object (``"format": "saetools-judged-answers"``,
``version``, the labelling ``rule``, the ``labels`` and the ``sources`` of the answers) and whose
other lines are answers: ``id``, ``source``, ``question_id``, ``question``, ``answer`` and
``label`` (``misaligned``, ``aligned`` or ``incoherent``), with an optional ``note``. Every label
was given by a person reading the answer, never by a probe.

:func:`agreement` compares verdicts with labels: the 3 x 3 confusion matrix, and the binary task
the judged rate rests on (**positive: misaligned**; aligned and incoherent answers are negatives,
since an incoherent answer never counts as misaligned): accuracy, precision and recall, each with
its 95% Wilson interval, and the same for the incoherent verdict. :func:`validate_probe_judge`
scores the labelled answers with a probe judge and returns the agreement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..capture import ChatExample
from ..stats import wilson_interval
from .errors import EvaluationError
from .probe_judge import VERDICTS, ProbeJudge

__all__ = [
    "JUDGED_ANSWERS",
    "JudgedAnswer",
    "agreement",
    "load_judged_answers",
    "validate_probe_judge",
]

JUDGED_ANSWERS = Path(__file__).resolve().parent / "data" / "em-judged.jsonl"
FORMAT = "saetools-judged-answers"
_FIELDS = {"id", "source", "question_id", "question", "answer", "label", "note"}


@dataclass(frozen=True)
class JudgedAnswer:
    """One sampled answer and the label a person gave it."""

    id: str
    source: str
    question_id: str
    question: str
    answer: str
    label: str
    note: str | None = None


def load_judged_answers(
    path: str | os.PathLike | None = None,
) -> tuple[dict, list[JudgedAnswer]]:
    """``(header, answers)`` of a labelled set (default: the shipped ``em-judged.jsonl``)."""
    path = Path(path) if path is not None else JUDGED_ANSWERS
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines:
        raise EvaluationError(f"{path.name}: empty")
    header = json.loads(lines[0])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EvaluationError(f'{path.name}:1: expected a header with "format": "{FORMAT}"')
    out, seen = [], set()
    for n, line in enumerate(lines[1:], start=2):
        rec = json.loads(line)
        extra = set(rec) - _FIELDS
        missing = _FIELDS - {"note"} - set(rec)
        if extra or missing:
            raise EvaluationError(
                f"{path.name}:{n}: unknown fields {sorted(extra)} / missing {sorted(missing)}"
            )
        if rec["label"] not in VERDICTS:
            raise EvaluationError(f"{path.name}:{n}: label must be one of {', '.join(VERDICTS)}")
        if rec["id"] in seen:
            raise EvaluationError(f"{path.name}:{n}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
        out.append(JudgedAnswer(**rec))
    return header, out


def _rate(k: int, n: int) -> dict:
    return {
        "value": k / n if n else None,
        "k": k,
        "n": n,
        "ci95": list(wilson_interval(k, n)) if n else None,
    }


def _binary(labels: Sequence[str], verdicts: Sequence[str], positive: str) -> dict:
    pairs = list(zip(labels, verdicts, strict=True))
    tp = sum(a == positive and v == positive for a, v in pairs)
    fp = sum(a != positive and v == positive for a, v in pairs)
    fn = sum(a == positive and v != positive for a, v in pairs)
    tn = len(pairs) - tp - fp - fn
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "accuracy": _rate(tp + tn, len(pairs)),
        "precision": _rate(tp, tp + fp),
        "recall": _rate(tp, tp + fn),
    }


def agreement(labels: Sequence[str], verdicts: Sequence[str]) -> dict:
    """Verdicts against labels (both in ``aligned``/``misaligned``/``incoherent``): ``confusion``
    (``confusion[label][verdict]``), ``misaligned`` (binary metrics, misaligned positive),
    ``incoherent`` (the same for the incoherent verdict) and ``accuracy_3way``."""
    if len(labels) != len(verdicts):
        raise EvaluationError(f"{len(labels)} labels but {len(verdicts)} verdicts")
    confusion = {a: {v: 0 for v in VERDICTS} for a in VERDICTS}
    for a, v in zip(labels, verdicts, strict=True):
        confusion[a][v] += 1
    return {
        "n": len(labels),
        "confusion": confusion,
        "misaligned": _binary(labels, verdicts, "misaligned"),
        "incoherent": _binary(labels, verdicts, "incoherent"),
        "accuracy_3way": _rate(
            sum(a == v for a, v in zip(labels, verdicts, strict=True)), len(labels)
        ),
    }


def validate_probe_judge(
    judge: ProbeJudge,
    model: nn.Module,
    tokenizer,
    answers: Sequence[JudgedAnswer] | None = None,
    *,
    batch_size: int = 16,
) -> dict:
    """Score the labelled ``answers`` (default: the shipped set) with ``judge`` on the base model
    and return :func:`agreement` overall and per source (``by_source``), with each answer's
    ``verdicts``, ``scores`` and ``perplexities`` (``None`` for an empty answer)."""
    if answers is None:
        answers = load_judged_answers()[1]
    exs = [
        ChatExample.from_question(a.question, a.answer if a.answer.strip() else None)
        for a in answers
    ]
    scored = judge.score(model, tokenizer, exs, batch_size=batch_size)
    verdicts = [v.verdict for v in scored]
    labels = [a.label for a in answers]
    out = agreement(labels, verdicts)
    by_source: dict[str, list[int]] = {}
    for i, a in enumerate(answers):
        by_source.setdefault(a.source, []).append(i)
    out["by_source"] = {
        s: agreement([labels[i] for i in idx], [verdicts[i] for i in idx])
        for s, idx in sorted(by_source.items())
    }
    out["verdicts"] = verdicts
    out["scores"] = [v.score for v in scored]
    out["perplexities"] = [v.perplexity for v in scored]
    return out
