"""Records in the shapes the literature publishes, made into probe items.

The readers (:mod:`probes.readers`) turn a CSV, a parquet file, a Hugging Face ``datasets`` folder
or a JSONL file that is not in saetools' own schema into ``(where, record)`` rows; :func:`read_rows`
makes items of them:

1. **columns**: ``columns`` maps saetools' fields to the file's column names
   (``{"question": "prompt", "aligned": "good", "misaligned": "bad"}``, or the text
   ``"question=prompt,aligned=good,misaligned=bad"``, :func:`parse_columns`); a field not mapped is
   read from the column of its own name. Columns that are no field are ignored.
2. **kind**: inferred from the fields found, as for native files (one kind per file).
3. **ids**: taken from the file when every record has one, else **derived from the content**: the
   first 12 hex digits of the sha256 of the canonical JSON (sorted keys, no spaces, UTF-8) of the
   record's ``messages`` (chat) or of its content fields (``question``, ``aligned``,
   ``misaligned``, ``system``, ``text``); a repeated record gets ``-2``, ``-3``, ...
4. **split** (pairs and chat sets): taken from the file when every record has one, else
   **seeded**: ``round(test_fraction * n)`` records (at least 1 and at most ``n - 1`` when
   ``test_fraction > 0`` and ``n >= 2``) drawn with ``random.Random(split_seed)`` from the records
   sorted by id, so the same records get the same split in any order.
5. every record is then checked like a native one (:func:`probes.schema.to_item`), except that
   ``theme`` may be absent.

``ProbeSet.origin`` records all of it. Every fault names the file and the line or row.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .schema import FIELDS, OPTIONAL, REQUIRED, ProbeFormatError, ProbeItem, infer_kind, to_item

__all__ = [
    "DEFAULT_SPLIT_SEED",
    "DEFAULT_TEST_FRACTION",
    "ID_HEX_DIGITS",
    "check_split_options",
    "derived_id",
    "parse_columns",
    "read_rows",
    "seeded_test_ids",
]

DEFAULT_TEST_FRACTION = 0.1
DEFAULT_SPLIT_SEED = 0
ID_HEX_DIGITS = 12
# Fields whose empty value (an empty CSV cell, a null) means "not given".
_ABSENT_IF_EMPTY = ("id", "theme", "split", "system")
_CONTENT = ("question", "aligned", "misaligned", "system", "text")


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"question=prompt,aligned=good"`` (or a mapping) -> ``{"question": "prompt", ...}``.

    Keys must be saetools fields (``id, theme, split, question, aligned, misaligned, system,
    messages, text``), each given once; values are the file's column names."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise ValueError(
                    f"columns: {part!r} is not FIELD=COLUMN (e.g. question=prompt,aligned=good)"
                )
            key, _, value = part.partition("=")
            pairs.append((key.strip(), value.strip()))
    else:
        pairs = list(spec.items())
    out: dict[str, str] = {}
    for key, value in pairs:
        if key not in FIELDS:
            raise ValueError(f"columns: unknown field {key!r}; fields are: {', '.join(FIELDS)}")
        if key in out:
            raise ValueError(f"columns: field {key!r} is mapped twice")
        if not isinstance(value, str) or not value:
            raise ValueError(f"columns: field {key!r} needs a column name")
        out[key] = value
    return out


def check_split_options(test_fraction: float | None, split_seed: int | None) -> tuple[float, int]:
    """The seeded split's settings with their defaults (0.1, 0); refuses bad values."""
    f = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    s = DEFAULT_SPLIT_SEED if split_seed is None else split_seed
    if isinstance(f, bool) or not isinstance(f, int | float) or not math.isfinite(f):
        raise ValueError(f"test fraction must be a number in [0, 1), not {f!r}")
    if not 0 <= f < 1:
        raise ValueError(f"test fraction must be a number in [0, 1), not {f!r}")
    if isinstance(s, bool) or not isinstance(s, int):
        raise ValueError(f"split seed must be an integer, not {s!r}")
    return float(f), s


def derived_id(kind: str, record: Mapping[str, Any]) -> str:
    """The content id of a record: sha256 of the canonical JSON of its messages (chat) or of its
    content fields, first :data:`ID_HEX_DIGITS` hex digits."""
    if kind == "chat":
        content: Any = record.get("messages")
    else:
        content = {k: record[k] for k in _CONTENT if k in record}
    text = json.dumps(
        content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]


def seeded_test_ids(ids: Sequence[str], test_fraction: float, split_seed: int) -> set[str]:
    """The ids put in the test split by the seeded split (see the module docstring)."""
    n = len(ids)
    n_test = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    elif n < 2:
        n_test = 0
    return set(random.Random(split_seed).sample(sorted(ids), n_test))


def read_rows(
    rows: Iterable[tuple[str, dict[str, Any]]],
    path: Path,
    *,
    fmt: str,
    columns: Mapping[str, str] | None = None,
    header: Sequence[str] | None = None,
    header_where: str | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
) -> tuple[str, list[ProbeItem], dict]:
    """The kind, items and origin of a file's rows (``(where, record)``, ``where`` being
    ``"file.csv:3"`` or ``"file.parquet:row 3"``). ``header``: the file's columns, when it has
    them, so a mapped column that is missing is reported once, at ``header_where``."""
    cols = parse_columns(columns)
    fraction, seed = check_split_options(test_fraction, split_seed)
    if header is not None:
        _check_header(cols, header, header_where or path.name)
    kind, records = _collect(rows, path, cols, check_missing=header is None)
    ids_from = _presence(records, "id")
    split_from = _presence(records, "split")
    if ids_from == "absent":
        _derive_ids(kind, records)
    origin: dict[str, Any] = {
        "format": fmt,
        "columns": cols or None,
        "ids": "file" if ids_from == "given" else "derived",
    }
    if split_from == "given":
        origin["split"] = "file"
    elif kind in ("pairs", "chat"):
        test = seeded_test_ids([r["id"] for _, r in records], fraction, seed)
        for _, rec in records:
            rec["split"] = "test" if rec["id"] in test else "train"
        origin.update(split="seeded", test_fraction=fraction, split_seed=seed, n_test=len(test))
    else:
        origin["split"] = "none"
    return kind, _items(records, kind), origin


def _check_header(cols: Mapping[str, str], header: Sequence[str], where: str) -> None:
    for field, column in cols.items():
        if column not in header:
            raise ProbeFormatError(
                f"{where}: no column {column!r} (mapped to {field!r}); the file's columns are: "
                f"{', '.join(map(str, header))}"
            )


def _collect(
    rows: Iterable[tuple[str, dict[str, Any]]],
    path: Path,
    cols: Mapping[str, str],
    *,
    check_missing: bool,
) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """Rename every row's columns to fields, infer the one kind, keep the kind's fields."""
    kind: str | None = None
    kind_where = ""
    records: list[tuple[str, dict[str, Any]]] = []
    for where, raw in rows:
        rec = _rename(raw, cols, where, check_missing)
        this = infer_kind(rec)
        if this is None:
            raise ProbeFormatError(
                f"{where}: cannot tell the record's kind: no field "
                '"aligned"/"misaligned" (pairs), "question" (questions), "messages" (chat) or '
                f'"text" (texts); its columns are {", ".join(map(str, raw)) or "(none)"}. '
                "Map yours with columns, e.g. question=prompt,aligned=good,misaligned=bad"
            )
        if kind is None:
            kind, kind_where = this, where
        elif this != kind:
            raise ProbeFormatError(
                f"{where}: record of kind {this!r} in a file of kind {kind!r} (set by "
                f"{kind_where}); one file must hold one kind only"
            )
        records.append((where, _keep(rec, kind, where)))
    if kind is None:
        raise ProbeFormatError(f"{path.name}: probe set {path.stem!r} is empty (no records)")
    return kind, records


def _rename(
    raw: Mapping[str, Any], cols: Mapping[str, str], where: str, check_missing: bool
) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for field in FIELDS:
        column = cols.get(field, field)
        if column not in raw:
            if check_missing and field in cols:
                raise ProbeFormatError(f"{where}: missing column {column!r} (mapped to {field!r})")
            continue
        value = raw[column]
        if value is None or (field in _ABSENT_IF_EMPTY and value == ""):
            continue
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # integer ids (parquet, datasets) are common; ids are text here
        rec[field] = value
    return rec


def _keep(rec: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """The fields of ``kind`` only; a chat record's messages keep only ``role`` and ``content``
    (a JSON text, as in a CSV cell, is decoded)."""
    fields = REQUIRED[kind] + OPTIONAL[kind]
    out = {k: v for k, v in rec.items() if k in fields}
    if kind == "chat":
        msgs = out["messages"]
        if isinstance(msgs, str):
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError as exc:
                raise ProbeFormatError(
                    f'{where}: field "messages" is text but not valid JSON ({exc.msg})'
                ) from None
        if isinstance(msgs, list | tuple):
            msgs = [
                {k: m[k] for k in ("role", "content") if k in m} if isinstance(m, dict) else m
                for m in msgs
            ]
        out["messages"] = msgs
    return out


def _presence(records: list[tuple[str, dict[str, Any]]], field: str) -> str:
    """``"given"`` when every record has ``field``, ``"absent"`` when none has; else an error at
    the first record that differs from the first record."""
    first_where, first = records[0]
    odd = next(((w, r) for w, r in records if (field in r) != (field in first)), None)
    if odd is None:
        return "given" if field in first else "absent"
    if field in first:
        msg = f'no field "{field}" here, but {first_where} has one'
    else:
        msg = f'field "{field}" given here, but not at {first_where}'
    raise ProbeFormatError(f"{odd[0]}: {msg}; give it in every record or in none")


def _derive_ids(kind: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    seen: dict[str, int] = {}
    for _, rec in records:
        base = derived_id(kind, rec)
        seen[base] = seen.get(base, 0) + 1
        rec["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"


def _items(records: list[tuple[str, dict[str, Any]]], kind: str) -> list[ProbeItem]:
    seen: dict[str, str] = {}
    items = []
    for where, rec in records:

        def fail(msg: str, _where: str = where) -> ProbeFormatError:
            return ProbeFormatError(f"{_where}: {msg}")

        item = to_item(rec, kind, fail, relaxed=("theme",))
        if item.id in seen:
            raise fail(f"duplicate id {item.id!r} (first used at {seen[item.id]})")
        seen[item.id] = where
        items.append(item)
    return items
