"""The probe-set data model and the validation of one record.

:class:`ProbeItem` (one record), :class:`ProbeSet` (a loaded set), :class:`ProbeFormatError`, the
fields of each kind (:data:`REQUIRED`, :data:`OPTIONAL`), :func:`infer_kind` and
:func:`to_item`, which checks one record against its kind and builds the item. Every reader
(native JSONL, the literature's shapes in :mod:`probes.foreign`, the question YAML in
:mod:`probes.questions_yaml`) ends in :func:`to_item`, so a record means the same whatever file
it came from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .judge_prompts import JudgePrompts

__all__ = [
    "FIELDS",
    "KINDS",
    "OPTIONAL",
    "REQUIRED",
    "ROLES",
    "SPLITS",
    "ProbeFormatError",
    "ProbeItem",
    "ProbeSet",
    "check_messages",
    "infer_kind",
    "to_item",
]

KINDS = ("pairs", "questions", "chat", "texts")
SPLITS = ("train", "test")
ROLES = ("system", "user", "assistant")

# Required and optional fields per kind. Any other field is an error (it is most likely a typo).
REQUIRED: dict[str, tuple[str, ...]] = {
    "pairs": ("id", "theme", "split", "question", "aligned", "misaligned"),
    "questions": ("id", "theme", "question"),
    "chat": ("id", "messages", "split"),
    "texts": ("id", "text"),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "pairs": ("system",),
    "questions": ("system", "split"),
    "chat": ("theme",),
    "texts": ("split", "theme"),
}
# Every field of every kind, in a fixed order.
FIELDS = (
    "id",
    "theme",
    "split",
    "question",
    "aligned",
    "misaligned",
    "system",
    "messages",
    "text",
)

Fail = Callable[[str], Exception]


class ProbeFormatError(ValueError):
    """A probe file is malformed. The message names the file, the 1-based line and the fault."""


@dataclass(frozen=True)
class ProbeItem:
    """One record of a probe set. Which fields are set depends on the set's kind.

    ``samples`` and ``judge_prompts`` come only from question files in the emergent-misalignment
    paper's YAML shape: the answers to sample per question and the question's own judge prompts.
    """

    id: str
    theme: str | None
    split: str | None
    question: str | None = None
    aligned: str | None = None
    misaligned: str | None = None
    messages: tuple[dict, ...] | None = None
    text: str | None = None
    system: str | None = None
    samples: int | None = None
    judge_prompts: JudgePrompts | None = None


@dataclass(frozen=True)
class ProbeSet:
    """A loaded probe set: its items, kind, and the sha256 of the file it came from.

    ``origin`` says how the set was read: ``format`` (``jsonl``, ``csv``, ``parquet``,
    ``datasets``, ``yaml``), ``columns`` (the renaming applied, if any), ``ids`` (``"file"`` or
    ``"derived"``: a hash of each record's content) and ``split`` (``"file"``, ``"seeded"`` with
    ``test_fraction`` and ``split_seed``, or ``"none"``). Empty for a set built in memory.
    """

    name: str
    kind: str
    items: tuple[ProbeItem, ...]
    sha256: str
    path: str
    split_name: str | None = None
    origin: dict = field(default_factory=dict)

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


def infer_kind(record: dict[str, Any]) -> str | None:
    """The kind a record's fields mean (``messages`` > ``aligned``/``misaligned`` > ``text`` >
    ``question``), or ``None``."""
    if "messages" in record:
        return "chat"
    if "aligned" in record or "misaligned" in record:
        return "pairs"
    if "text" in record:
        return "texts"
    if "question" in record:
        return "questions"
    return None


def to_item(
    record: dict[str, Any], kind: str, fail: Fail, *, relaxed: tuple[str, ...] = ()
) -> ProbeItem:
    """Check ``record`` against the fields of ``kind`` and build its item; ``fail(message)`` makes
    the exception to raise (it adds the file and line). Fields in ``relaxed`` may be absent even
    where the kind requires them (the literature's files have no ``theme``)."""
    required = tuple(k for k in REQUIRED[kind] if k not in relaxed)
    optional = OPTIONAL[kind] + tuple(k for k in REQUIRED[kind] if k in relaxed)
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
        messages = check_messages(record["messages"], fail)
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


def check_messages(value: Any, fail: Fail) -> tuple[dict, ...]:
    """A chat record's ``messages``: a non-empty list of ``{"role", "content"}`` objects whose last
    one is the assistant's."""
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
