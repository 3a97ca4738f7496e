"""JSONL probe files: the records of a file, and the strict native schema.

:func:`jsonl_records` decodes a file into ``(line, record)`` pairs (blank lines skipped, every
other line one JSON object). :func:`parse_native` checks them against saetools' own schema
(``docs/datasets.md``, "File format"): one kind per file, every field known, ids given and unique.
:func:`is_literature_shape` tells a file as the literature publishes it (``{"messages": ...}``
records without ids), which :mod:`probes.foreign` reads instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .schema import ProbeFormatError, ProbeItem, infer_kind, to_item

__all__ = ["is_literature_shape", "jsonl_records", "parse_native"]


def jsonl_records(data: bytes, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based line, object)`` for every non-blank line, lazily (so a later line's fault is
    found after an earlier record's); a line that is not a JSON object is an error naming the file
    and line."""
    where = path.name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeFormatError(f"{where}: file is not valid UTF-8 ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeFormatError(
                f"{where}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(record, dict):
            raise ProbeFormatError(
                f"{where}:{lineno}: expected a JSON object, got {type(record).__name__}"
            )
        yield lineno, record


def is_literature_shape(first: dict[str, Any] | None) -> bool:
    """``first`` (a file's first record) has no ``id`` and is a chat record or has no ``split``
    either: the shape the literature publishes (``{"messages": [...]}``), not saetools' schema,
    which gives every record an id."""
    if first is None or "id" in first:
        return False
    return "messages" in first or "split" not in first


def parse_native(
    records: Iterable[tuple[int, dict[str, Any]]], path: Path
) -> tuple[str, list[ProbeItem]]:
    """The kind and items of a file in saetools' own schema (every fault names file and line)."""
    where = path.name
    kind: str | None = None
    kind_line = 0
    seen: dict[str, int] = {}
    items: list[ProbeItem] = []
    for lineno, record in records:

        def fail(msg: str, _lineno: int = lineno) -> ProbeFormatError:
            return ProbeFormatError(f"{where}:{_lineno}: {msg}")

        this_kind = infer_kind(record)
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
        item = to_item(record, kind, fail)
        if item.id in seen:
            raise fail(f"duplicate id {item.id!r} (first used on line {seen[item.id]})")
        seen[item.id] = lineno
        items.append(item)
    if kind is None:
        raise ProbeFormatError(f"{where}: probe set {path.stem!r} is empty (no records)")
    return kind, items
