"""Judge prompts: versioned prompt templates for ``saetools eval``'s LLM judge.

:func:`load_judge_prompts` reads ``data/judge-prompts.json`` (or a file of the same format) into a
:class:`JudgePrompts`. Question files in the emergent-misalignment paper's YAML shape carry their
own prompts (:mod:`probes.questions_yaml`); those are :class:`JudgePrompts` too, with
``syntax="format"`` (Python ``str.format`` rules, as that paper's code renders them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .schema import ProbeFormatError

__all__ = ["DEFAULT_JUDGE_PROMPTS", "JUDGE_PLACEHOLDERS", "JudgePrompts", "load_judge_prompts"]

DEFAULT_JUDGE_PROMPTS = Path(__file__).resolve().parent / "data" / "judge-prompts.json"
JUDGE_PLACEHOLDERS = ("question", "answer")


@dataclass(frozen=True)
class JudgePrompts:
    """Judge prompt templates: per metric a ``template`` with ``{question}`` and ``{answer}``
    placeholders and the ``flags`` (words the judge may answer instead of a number).

    ``syntax``: ``"placeholders"`` (saetools' own files: only ``{question}`` and ``{answer}`` are
    replaced, every other brace is kept) or ``"format"`` (``str.format``: ``{{`` and ``}}`` stand
    for single braces, as in the emergent-misalignment paper's YAML files)."""

    version: int
    templates: dict[str, str]
    flags: dict[str, tuple[str, ...]]
    sha256: str
    path: str
    syntax: str = "placeholders"

    def render(self, metric: str, question: str, answer: str) -> str:
        """The prompt for one answer: only ``{question}`` and ``{answer}`` are substituted (in one
        pass, so braces in the texts are kept as they are)."""
        if metric not in self.templates:
            raise KeyError(
                f"no judge prompt for metric {metric!r}; have: {', '.join(self.templates)}"
            )
        if self.syntax == "format":
            return self.templates[metric].format(question=question, answer=answer)
        values = {"question": question, "answer": answer}
        return re.sub(
            r"\{(question|answer)\}", lambda m: values[m.group(1)], self.templates[metric]
        )


def load_judge_prompts(path: str | os.PathLike | None = None) -> JudgePrompts:
    """Load judge prompts: the shipped ``data/judge-prompts.json`` or a file of the same format."""
    path = Path(path) if path is not None else DEFAULT_JUDGE_PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"judge prompt file not found: {path}")
    data = path.read_bytes()
    where = path.name
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProbeFormatError(f"{where}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != "saetools-judge-prompts":
        raise ProbeFormatError(
            f'{where}: expected an object with "format": "saetools-judge-prompts"'
        )
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise ProbeFormatError(f'{where}: "version" must be a positive integer, got {version!r}')
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ProbeFormatError(f'{where}: "metrics" must be a non-empty object')
    templates: dict[str, str] = {}
    flags: dict[str, tuple[str, ...]] = {}
    for name, spec in metrics.items():
        if not isinstance(spec, dict) or set(spec) - {"template", "flags"}:
            raise ProbeFormatError(
                f'{where}: metric {name!r} must be an object with "template" and optional "flags"'
            )
        tpl = spec.get("template")
        if not isinstance(tpl, str) or not tpl.strip():
            raise ProbeFormatError(f"{where}: metric {name!r} has no template")
        for ph in JUDGE_PLACEHOLDERS:
            if "{" + ph + "}" not in tpl:
                raise ProbeFormatError(
                    f"{where}: the template of metric {name!r} lacks the placeholder {{{ph}}}"
                )
        fl = spec.get("flags", [])
        if not isinstance(fl, list) or not all(
            isinstance(f, str) and f.strip() and f == f.strip().upper() for f in fl
        ):
            raise ProbeFormatError(
                f"{where}: flags of metric {name!r} must be a list of upper-case words"
            )
        templates[name], flags[name] = tpl, tuple(fl)
    return JudgePrompts(
        version=version,
        templates=templates,
        flags=flags,
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path.resolve()),
    )
