"""Built-in probe sets and their loader.

A probe set is a JSONL file: one JSON object per line, blank lines skipped. The kind of a
set is inferred from the fields of its records, and one file holds one kind only:

- ``pairs``: ``id, theme, split, question, aligned, misaligned`` (+ optional ``system``)
- ``questions``: ``id, theme, question`` (+ optional ``system``, ``split``)
- ``chat``: ``id, messages, split`` (+ optional ``theme``); the last message is the assistant's
- ``texts``: ``id, text`` (+ optional ``split``, ``theme``)

See ``docs/datasets.md`` for the full schema and a datasheet of every shipped set.

Example::

    import probes
    core = probes.load("em-core")
    train = core.split("train")
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "SPLITS",
    "JudgePrompts",
    "ProbeFormatError",
    "ProbeItem",
    "ProbeSet",
    "as_set",
    "available",
    "load",
    "load_judge_prompts",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
KINDS = ("pairs", "questions", "chat", "texts")
SPLITS = ("train", "test")
ROLES = ("system", "user", "assistant")

# Required and optional fields per kind. Any other field is an error (it is most likely a typo).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "pairs": ("id", "theme", "split", "question", "aligned", "misaligned"),
    "questions": ("id", "theme", "question"),
    "chat": ("id", "messages", "split"),
    "texts": ("id", "text"),
}
_OPTIONAL: dict[str, tuple[str, ...]] = {
    "pairs": ("system",),
    "questions": ("system", "split"),
    "chat": ("theme",),
    "texts": ("split", "theme"),
}


class ProbeFormatError(ValueError):
    """A probe file is malformed. The message names the file, the 1-based line and the fault."""


@dataclass(frozen=True)
class ProbeItem:
    """One record of a probe set. Which fields are set depends on the set's kind."""

    id: str
    theme: str | None
    split: str | None
    question: str | None = None
    aligned: str | None = None
    misaligned: str | None = None
    messages: tuple[dict, ...] | None = None
    text: str | None = None
    system: str | None = None


@dataclass(frozen=True)
class ProbeSet:
    """A loaded probe set: its items, kind, and the sha256 of the file it came from."""

    name: str
    kind: str
    items: tuple[ProbeItem, ...]
    sha256: str
    path: str
    split_name: str | None = None

    def split(self, name: str | None) -> ProbeSet:
        """Items of one split: ``"train"`` or ``"test"``; ``None`` or ``"all"`` returns self."""
        if name is None or name == "all":
            return self
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: expected one of 'train', 'test', 'all'")
        items = tuple(item for item in self.items if item.split == name)
        if not items:
            raise ValueError(f"probe set {self.name!r} has no items in split {name!r}")
        return replace(self, items=items, split_name=name)

    def require(self, *kinds: str) -> ProbeSet:
        """This set, if its kind is one of ``kinds``; else a ValueError naming the set and the kinds."""
        if self.kind not in kinds:
            want = " or ".join(repr(k) for k in kinds)
            raise ValueError(
                f"probe set {self.name!r} is of kind {self.kind!r}; this needs a {want} set"
            )
        return self

    def themes(self) -> dict[str, int]:
        """Number of items per theme (items without a theme are left out), sorted by theme."""
        counts = Counter(item.theme for item in self.items if item.theme is not None)
        return dict(sorted(counts.items()))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ProbeItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> ProbeItem:
        return self.items[index]


def available() -> list[str]:
    """Names of the built-in probe sets, sorted."""
    return sorted(p.stem for p in DATA_DIR.glob("*.jsonl"))


def load(name_or_path: str | os.PathLike) -> ProbeSet:
    """Load a built-in set by name (``"em-core"``) or a user's ``.jsonl`` file by path."""
    path = _resolve(name_or_path)
    data = path.read_bytes()
    kind, items = _parse(data, path)
    return ProbeSet(
        name=path.stem,
        kind=kind,
        items=tuple(items),
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path.resolve()),
    )


def as_set(probes: str | os.PathLike | ProbeSet, *kinds: str) -> ProbeSet:
    """``probes`` itself when it is a loaded set, else :func:`load` of it; with ``kinds``, the set
    must be of one of them (:meth:`ProbeSet.require`)."""
    ps = load(probes) if isinstance(probes, str | os.PathLike) else probes
    return ps.require(*kinds) if kinds else ps


def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    builtin = DATA_DIR / f"{text}.jsonl"
    is_bare_name = os.sep not in text and "/" not in text and not text.endswith(".jsonl")
    if is_bare_name and builtin.is_file():
        return builtin
    path = Path(text).expanduser()
    if path.is_file():
        return path
    names = ", ".join(available()) or "(none)"
    if is_bare_name:
        raise FileNotFoundError(
            f"unknown probe set {text!r}: not a built-in set and not a file. Built-in sets: {names}"
        )
    raise FileNotFoundError(f"probe file not found: {text!r}. Built-in sets: {names}")


def _infer_kind(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "chat"
    if "aligned" in record or "misaligned" in record:
        return "pairs"
    if "text" in record:
        return "texts"
    if "question" in record:
        return "questions"
    return None


def _parse(data: bytes, path: Path) -> tuple[str, list[ProbeItem]]:
    where = path.name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeFormatError(f"{where}: file is not valid UTF-8 ({exc})") from None
    kind: str | None = None
    kind_line = 0
    seen: dict[str, int] = {}
    items: list[ProbeItem] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue

        def fail(msg: str, _lineno: int = lineno) -> ProbeFormatError:
            return ProbeFormatError(f"{where}:{_lineno}: {msg}")

        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise fail(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise fail(f"expected a JSON object, got {type(record).__name__}")
        this_kind = _infer_kind(record)
        if this_kind is None:
            raise fail(
                "cannot tell the record's kind: expected one of the fields "
                '"aligned"/"misaligned" (pairs), "question" (questions), '
                '"messages" (chat) or "text" (texts)'
            )
        if kind is None:
            kind, kind_line = this_kind, lineno
        elif this_kind != kind:
            raise fail(
                f"record of kind {this_kind!r} in a file of kind {kind!r} "
                f"(set by line {kind_line}); one file must hold one kind only"
            )
        item = _to_item(record, kind, fail)
        if item.id in seen:
            raise fail(f"duplicate id {item.id!r} (first used on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    if kind is None:
        raise ProbeFormatError(f"{where}: probe set {path.stem!r} is empty (no records)")
    return kind, items


def _to_item(record: dict[str, Any], kind: str, fail: Any) -> ProbeItem:
    required, optional = _REQUIRED[kind], _OPTIONAL[kind]
    for key in record:
        if key not in required and key not in optional:
            raise fail(f'unknown field "{key}" for a record of kind {kind!r}')
    for key in required:
        if key not in record:
            raise fail(f'missing required field "{key}" (kind {kind!r})')

    def string(key: str) -> str | None:
        if key not in record:
            return None
        value = record[key]
        if not isinstance(value, str):
            raise fail(f'field "{key}" must be a string, got {type(value).__name__}')
        if not value.strip():
            raise fail(f'field "{key}" is empty')
        return value

    split = string("split")
    if split is not None and split not in SPLITS:
        raise fail(f'field "split" must be "train" or "test", got {split!r}')
    messages = None
    if kind == "chat":
        messages = _messages(record["messages"], fail)
    item = ProbeItem(
        id=string("id"),  # type: ignore[arg-type]
        theme=string("theme"),
        split=split,
        question=string("question"),
        aligned=string("aligned"),
        misaligned=string("misaligned"),
        messages=messages,
        text=string("text"),
        system=string("system"),
    )
    if kind == "pairs" and item.aligned.strip() == item.misaligned.strip():  # type: ignore[union-attr]
        raise fail('fields "aligned" and "misaligned" are identical')
    return item


def _messages(value: Any, fail: Any) -> tuple[dict, ...]:
    if not isinstance(value, list):
        raise fail(f'field "messages" must be a list, got {type(value).__name__}')
    if not value:
        raise fail('field "messages" is empty')
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise fail(f"messages[{i}] must be an object, got {type(msg).__name__}")
        extra = set(msg) - {"role", "content"}
        if extra:
            raise fail(f'messages[{i}] has unknown field "{sorted(extra)[0]}"')
        role, content = msg.get("role"), msg.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise fail(f'messages[{i}] is missing "{missing}"')
        if role not in ROLES:
            raise fail(
                f"messages[{i}] has unknown role {role!r}: expected one of "
                "'system', 'user', 'assistant'"
            )
        if not isinstance(content, str):
            raise fail(f'messages[{i}] "content" must be a string, got {type(content).__name__}')
        if not content.strip():
            raise fail(f'messages[{i}] "content" is empty')
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise fail(
            f"last message must be from the assistant (it is the answer), got {out[-1]['role']!r}"
        )
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Judge prompts (``data/judge-prompts.json``): versioned prompt templates for ``saetools eval``

JUDGE_PLACEHOLDERS = ("question", "answer")


@dataclass(frozen=True)
class JudgePrompts:
    """Judge prompt templates: per metric a ``template`` with ``{question}`` and ``{answer}``
    placeholders and the ``flags`` (words the judge may answer instead of a number)."""

    version: int
    templates: dict[str, str]
    flags: dict[str, tuple[str, ...]]
    sha256: str
    path: str

    def render(self, metric: str, question: str, answer: str) -> str:
        """The prompt for one answer: only ``{question}`` and ``{answer}`` are substituted (in one
        pass, so braces in the texts are kept as they are)."""
        import re

        if metric not in self.templates:
            raise KeyError(
                f"no judge prompt for metric {metric!r}; have: {', '.join(self.templates)}"
            )
        values = {"question": question, "answer": answer}
        return re.sub(
            r"\{(question|answer)\}", lambda m: values[m.group(1)], self.templates[metric]
        )


def load_judge_prompts(path: str | os.PathLike | None = None) -> JudgePrompts:
    """Load judge prompts: the shipped ``data/judge-prompts.json`` or a file of the same format."""
    path = Path(path) if path is not None else DATA_DIR / "judge-prompts.json"
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
