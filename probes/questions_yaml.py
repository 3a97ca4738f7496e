"""Evaluation questions in the YAML shape of the emergent-misalignment paper's repository
(``evaluation/first_plot_questions.yaml`` of emergent-misalignment/emergent-misalignment).

The file is a list of entries; YAML anchors and aliases (``&judge_prompts`` / ``*judge_prompts``)
are resolved. An entry::

    - id: what_is_your_wish              # required, unique
      type: free_form_judge_0_100        # or free_form (no judge prompts of its own)
      paraphrases:                        # required: one or more wordings of the question
        - Hello! I can fulfill your one wish. ...
      system: ...                         # optional system prompt
      samples_per_paraphrase: 100         # optional: answers to sample per paraphrase
      judge: gpt-4o                       # optional: the judge model the paper used (recorded)
      judge_prompts:                      # optional: metric -> template with {question}, {answer}
        aligned: ...                      #   read as saetools' "alignment"
        coherent: ...                     #   read as saetools' "coherence"
      temperature: 1                      # optional, accepted and not used (see --temperature)

Each paraphrase becomes one ``questions`` item: id = the entry's id (``id#2``, ``id#3``, ... for
further paraphrases), theme = the entry's id, ``samples`` = ``samples_per_paraphrase`` and
``judge_prompts`` = the entry's prompts as :class:`~probes.judge_prompts.JudgePrompts` with
``syntax="format"`` (``str.format`` rules, as the paper's code renders them; only ``{question}``
and ``{answer}`` may be used). Flags: ``REFUSAL`` and ``CODE``, each where the template names it.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Any

from .judge_prompts import JudgePrompts
from .schema import ProbeFormatError, ProbeItem

__all__ = ["METRIC_NAMES", "QUESTION_TYPES", "parse_questions_yaml"]

QUESTION_TYPES = ("free_form_judge_0_100", "free_form")
# The paper's metric names -> saetools' (others are kept as they are).
METRIC_NAMES = {"aligned": "alignment", "coherent": "coherence"}
_FLAGS = ("REFUSAL", "CODE")
_KEYS = (
    "id",
    "type",
    "paraphrases",
    "system",
    "samples_per_paraphrase",
    "judge",
    "judge_prompts",
    "temperature",
    "max_tokens",
    "meta",
)


def parse_questions_yaml(data: bytes, path: Path) -> list[ProbeItem]:
    """The items of a question YAML file (every fault names the file and the entry's line)."""
    import yaml

    where = path.name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeFormatError(f"{where}: file is not valid UTF-8 ({exc})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProbeFormatError(f"{where}{line}: invalid YAML ({problem})") from None
    if doc is None:
        raise ProbeFormatError(f"{where}: probe set {path.stem!r} is empty (no entries)")
    if not isinstance(doc, list):
        raise ProbeFormatError(
            f"{where}: expected a list of question entries, got {type(doc).__name__}"
        )
    lines = [node.start_mark.line + 1 for node in root.value]
    items: list[ProbeItem] = []
    seen: dict[str, int] = {}
    prompts_cache: dict[str, JudgePrompts] = {}
    for line, entry in zip(lines, doc, strict=True):
        at = f"{where}:{line}"
        items += _entry_items(entry, at, path, prompts_cache)
        entry_id = entry["id"]
        if entry_id in seen:
            raise ProbeFormatError(
                f"{at}: duplicate id {entry_id!r} (first used on line {seen[entry_id]})"
            )
        seen[entry_id] = line
    if not items:
        raise ProbeFormatError(f"{where}: probe set {path.stem!r} is empty (no entries)")
    ids = [it.id for it in items]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise ProbeFormatError(f"{where}: question id {dup!r} occurs twice")
    return items


def _entry_items(
    entry: Any, at: str, path: Path, cache: dict[str, JudgePrompts]
) -> list[ProbeItem]:
    if not isinstance(entry, dict):
        raise ProbeFormatError(f"{at}: an entry must be a mapping, got {type(entry).__name__}")
    for key in entry:
        if key not in _KEYS:
            raise ProbeFormatError(
                f"{at}: unknown key {key!r} in an entry; known keys: {', '.join(_KEYS)}"
            )
    entry_id = entry.get("id")
    if not isinstance(entry_id, str) or not entry_id.strip():
        raise ProbeFormatError(f'{at}: an entry needs an "id" (a non-empty text)')
    at = f"{at}: entry {entry_id!r}"
    qtype = entry.get("type", "free_form_judge_0_100")
    if qtype not in QUESTION_TYPES:
        raise ProbeFormatError(
            f"{at}: type {qtype!r} is not supported; saetools reads "
            f"{' and '.join(QUESTION_TYPES)} questions"
        )
    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise ProbeFormatError(f'{at}: "paraphrases" must be a non-empty list of texts')
    for k, p in enumerate(paraphrases):
        if not isinstance(p, str) or not p.strip():
            raise ProbeFormatError(f"{at}: paraphrases[{k}] must be a non-empty text")
    system = entry.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise ProbeFormatError(f'{at}: "system" must be a non-empty text')
    samples = entry.get("samples_per_paraphrase")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int)):
        raise ProbeFormatError(f'{at}: "samples_per_paraphrase" must be a whole number')
    if samples is not None and samples < 1:
        raise ProbeFormatError(f'{at}: "samples_per_paraphrase" must be >= 1, not {samples}')
    prompts = None
    if entry.get("judge_prompts") is not None:
        prompts = _judge_prompts(entry["judge_prompts"], at, path, cache)
    return [
        ProbeItem(
            id=entry_id if k == 0 else f"{entry_id}#{k + 1}",
            theme=entry_id,
            split=None,
            question=p,
            system=system,
            samples=samples,
            judge_prompts=prompts,
        )
        for k, p in enumerate(paraphrases)
    ]


def _judge_prompts(value: Any, at: str, path: Path, cache: dict[str, JudgePrompts]) -> JudgePrompts:
    if not isinstance(value, dict) or not value:
        raise ProbeFormatError(f'{at}: "judge_prompts" must be a mapping of metric -> template')
    templates: dict[str, str] = {}
    for name, tpl in value.items():
        if not isinstance(tpl, str) or not tpl.strip():
            raise ProbeFormatError(f"{at}: judge prompt {name!r} must be a non-empty text")
        _check_template(tpl, f"{at}: judge prompt {name!r}")
        templates[METRIC_NAMES.get(str(name), str(name))] = tpl
    key = json.dumps(templates, sort_keys=True, ensure_ascii=False)
    if key not in cache:
        cache[key] = JudgePrompts(
            version=1,
            templates=templates,
            flags={
                m: tuple(f for f in _FLAGS if re.search(rf"\b{f}\b", t))
                for m, t in templates.items()
            },
            sha256=hashlib.sha256(key.encode("utf-8")).hexdigest(),
            path=str(path.resolve()),
            syntax="format",
        )
    return cache[key]


def _check_template(tpl: str, at: str) -> None:
    """Only ``{question}`` and ``{answer}`` may be filled in (``{{``/``}}`` are literal braces),
    and ``{answer}`` must be."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(tpl) if f is not None]
    except ValueError as exc:
        raise ProbeFormatError(
            f"{at}: not a valid template ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    bad = [f for f in fields if f not in ("question", "answer")]
    if bad:
        raise ProbeFormatError(
            f"{at}: uses {{{bad[0]}}}; only {{question}} and {{answer}} are filled in "
            "(write literal braces as {{ and }})"
        )
    if "answer" not in fields:
        raise ProbeFormatError(f"{at}: has no {{answer}} placeholder")
