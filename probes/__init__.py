"""Built-in probe sets and their loader.

A probe set is a JSONL file: one JSON object per line, blank lines skipped. The kind of a
set is inferred from the fields of its records, and one file holds one kind only:

- ``pairs``: ``id, theme, split, question, aligned, misaligned`` (+ optional ``system``)
- ``questions``: ``id, theme, question`` (+ optional ``system``, ``split``)
- ``chat``: ``id, messages, split`` (+ optional ``theme``); the last message is the assistant's
- ``texts``: ``id, text`` (+ optional ``split``, ``theme``)

:func:`load` also reads the shapes the emergent-misalignment literature publishes: chat JSONL of
``{"messages": [...]}`` without ids, CSV/TSV, parquet and Hugging Face ``datasets`` folders (with
``columns=`` renaming: ids derived from the content, a seeded split), and evaluation questions as
the emergent-misalignment paper's YAML. See ``docs/datasets.md`` for the full schema, each
format, and a datasheet of every shipped set.

Modules:

- ``schema.py``: :class:`ProbeItem`, :class:`ProbeSet`, :class:`ProbeFormatError`, the fields of
  each kind and the check of one record (every reader ends there).
- ``jsonl.py``: JSONL records and the strict native schema.
- ``foreign.py``: the literature's shapes -> items (column renaming, derived ids, seeded split).
- ``readers.py``: CSV/TSV, parquet and ``datasets`` folder readers.
- ``questions_yaml.py``: the emergent-misalignment paper's question YAML.
- ``judge_prompts.py``: :class:`JudgePrompts` and :func:`load_judge_prompts`.

Example::

    import probes
    core = probes.load("em-core")
    train = core.split("train")
    mine = probes.load("pairs.csv", columns="question=prompt,aligned=good,misaligned=bad")
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping
from pathlib import Path

from .foreign import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST_FRACTION,
    check_split_options,
    derived_id,
    parse_columns,
    read_rows,
    seeded_test_ids,
)
from .jsonl import is_literature_shape, jsonl_records, parse_native
from .judge_prompts import JUDGE_PLACEHOLDERS, JudgePrompts, load_judge_prompts
from .questions_yaml import parse_questions_yaml
from .readers import read_csv, read_datasets_folder, read_parquet
from .schema import KINDS, ROLES, SPLITS, ProbeFormatError, ProbeItem, ProbeSet

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_TEST_FRACTION",
    "JUDGE_PLACEHOLDERS",
    "KINDS",
    "ROLES",
    "SPLITS",
    "JudgePrompts",
    "ProbeFormatError",
    "ProbeItem",
    "ProbeSet",
    "as_set",
    "available",
    "check_split_options",
    "derived_id",
    "load",
    "load_judge_prompts",
    "parse_columns",
    "seeded_test_ids",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
# Question files in the emergent-misalignment paper's shape (any other file is read as JSONL
# unless it is a .csv, .tsv or .parquet file or a folder).
YAML_SUFFIXES = (".yaml", ".yml")


def available() -> list[str]:
    """Names of the built-in probe sets, sorted."""
    return sorted(p.stem for p in DATA_DIR.glob("*.jsonl"))


def load(
    name_or_path: str | os.PathLike,
    *,
    columns: str | Mapping[str, str] | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> ProbeSet:
    """Load a built-in set by name (``"em-core"``) or a user's file or folder by path.

    A ``.jsonl`` file in saetools' schema is read strictly, as it always was. Read in the
    literature's shapes instead (``docs/datasets.md``, "Other formats"): a JSONL file whose
    first record has no ``id`` and is a chat record or has no ``split`` either (the literature's
    ``{"messages": [...]}``); any JSONL file when ``columns`` is given; ``.csv``,
    ``.tsv`` and ``.parquet`` files; folders written by ``datasets``' ``save_to_disk``; and
    ``.yaml``/``.yml`` question files of the emergent-misalignment paper. ``columns`` renames the
    file's columns to saetools' fields (``"question=prompt,aligned=good,misaligned=bad"`` or a
    dict); records without ids get ids derived from their content, and pairs and chat records
    without a split get a seeded split (``test_fraction``, default 0.1, ``split_seed``, default
    0). ``ProbeSet.origin`` says which of these happened.
    """
    check_split_options(test_fraction, split_seed)
    cols = parse_columns(columns)
    path = _resolve(name_or_path)
    if path.is_dir():
        table = read_datasets_folder(path)
        return _from_table(table, path, "datasets", cols, test_fraction, split_seed)
    suffix = path.suffix.lower()
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if suffix in YAML_SUFFIXES:
        if cols:
            raise ValueError(f"{path.name}: columns do not apply to a YAML question file")
        items = parse_questions_yaml(data, path)
        origin = {"format": "yaml", "columns": None, "ids": "file", "split": "none"}
        return _set(path, "questions", items, sha, origin)
    if suffix in (".csv", ".tsv"):
        return _from_table(read_csv(data, path), path, "csv", cols, test_fraction, split_seed)
    if suffix == ".parquet":
        return _from_table(read_parquet(path), path, "parquet", cols, test_fraction, split_seed)
    records = jsonl_records(data, path)
    first = next(records, None)
    rows = itertools.chain([first] if first is not None else [], records)
    if cols or is_literature_shape(first[1] if first is not None else None):
        named = ((f"{path.name}:{line}", rec) for line, rec in rows)
        kind, items, origin = read_rows(
            named,
            path,
            fmt="jsonl",
            columns=cols,
            test_fraction=test_fraction,
            split_seed=split_seed,
        )
        return _set(path, kind, items, sha, origin)
    kind, items = parse_native(rows, path)
    return _set(
        path, kind, items, sha, {"format": "jsonl", "columns": None, "ids": "file", "split": "file"}
    )


def _from_table(table, path, fmt, cols, test_fraction, split_seed) -> ProbeSet:
    kind, items, origin = read_rows(
        table.rows,
        path,
        fmt=fmt,
        columns=cols,
        header=table.columns,
        header_where=table.header_where,
        test_fraction=test_fraction,
        split_seed=split_seed,
    )
    return _set(path, kind, items, table.sha256, origin)


def _set(path: Path, kind: str, items, sha256: str, origin: dict) -> ProbeSet:
    return ProbeSet(
        name=path.stem if path.is_file() else path.name,
        kind=kind,
        items=tuple(items),
        sha256=sha256,
        path=str(path.resolve()),
        origin=origin,
    )


def as_set(probes: str | os.PathLike | ProbeSet, *kinds: str, **load_options) -> ProbeSet:
    """``probes`` itself when it is a loaded set, else :func:`load` of it (with ``load_options``:
    ``columns``, ``test_fraction``, ``split_seed``); with ``kinds``, the set must be of one of them
    (:meth:`ProbeSet.require`)."""
    ps = load(probes, **load_options) if isinstance(probes, str | os.PathLike) else probes
    return ps.require(*kinds) if kinds else ps


def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    builtin = DATA_DIR / f"{text}.jsonl"
    is_bare_name = os.sep not in text and "/" not in text and not text.endswith(".jsonl")
    if is_bare_name and builtin.is_file():
        return builtin
    path = Path(text).expanduser()
    if path.is_file() or path.is_dir():
        return path
    names = ", ".join(available()) or "(none)"
    if is_bare_name:
        raise FileNotFoundError(
            f"unknown probe set {text!r}: not a built-in set and not a file. Built-in sets: {names}"
        )
    raise FileNotFoundError(f"probe file not found: {text!r}. Built-in sets: {names}")
