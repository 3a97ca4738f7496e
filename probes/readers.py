"""File readers for the literature's shapes: CSV/TSV, parquet and Hugging Face ``datasets``
folders (written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``).

Each reader returns a :class:`Table`: the file's column names, its rows as ``(where, record)``
(``where`` names the file and the line or row, for error messages) and the sha256 of its bytes.
:mod:`probes.foreign` makes probe items of the rows. ``pyarrow`` (parquet) and ``datasets``
(folders) are dependencies of saetools and are imported only when such a file is read.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SPLITS, ProbeFormatError

__all__ = ["Table", "read_csv", "read_datasets_folder", "read_parquet"]


@dataclass
class Table:
    """Rows read from a file: ``columns`` (``None`` when rows may differ), ``rows`` as
    ``(where, record)``, ``header_where`` (where a missing column is reported) and ``sha256``."""

    columns: list[str] | None
    rows: list[tuple[str, dict[str, Any]]]
    header_where: str
    sha256: str


def read_csv(data: bytes, path: Path) -> Table:
    """A CSV file (a ``.tsv`` file: tab-separated) with a header line. Lines in errors count from
    1, the header being line 1; a quoted cell may span lines."""
    where = path.name
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProbeFormatError(f"{where}: file is not valid UTF-8 ({exc})") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if not header:
            raise ProbeFormatError(f"{where}: probe set {path.stem!r} is empty (no header line)")
        header = [h.strip() for h in header]
        dup = sorted({h for h in header if header.count(h) > 1})
        if dup:
            raise ProbeFormatError(f"{where}:1: column {dup[0]!r} appears twice in the header")
        rows = []
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ProbeFormatError(
                    f"{where}:{line}: {len(cells)} cells, but the header has {len(header)} columns"
                )
            rows.append((f"{where}:{line}", dict(zip(header, cells, strict=True))))
    except csv.Error as exc:
        raise ProbeFormatError(f"{where}:{reader.line_num}: invalid CSV ({exc})") from None
    return Table(header, rows, f"{where}:1", hashlib.sha256(data).hexdigest())


def read_parquet(path: Path) -> Table:
    """A parquet file; rows are numbered from 1 in errors (``file.parquet:row 3``)."""
    import pyarrow.parquet as pq

    data = path.read_bytes()
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a file it cannot read
        raise ProbeFormatError(f"{path.name}: not a readable parquet file ({exc})") from None
    rows = [(f"{path.name}:row {i}", r) for i, r in enumerate(table.to_pylist(), start=1)]
    return Table(list(table.column_names), rows, path.name, hashlib.sha256(data).hexdigest())


def read_datasets_folder(path: Path) -> Table:
    """A folder written by ``save_to_disk``: a ``Dataset`` (its rows), or a ``DatasetDict`` whose
    splits are ``train`` and/or ``test`` (each row gets its split's name as ``split``)."""
    where = path.name
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise ProbeFormatError(
            f"{where}: a folder, but not one written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json in it)"
        )
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a folder it cannot read
        raise ProbeFormatError(f"{where}: cannot read the datasets folder ({exc})") from None
    sha = _folder_sha256(path)
    if isinstance(ds, datasets.DatasetDict):
        return Table(None, list(_dict_rows(ds, where)), where, sha)
    rows = [(f"{where}:row {i}", r) for i, r in enumerate(ds.to_list(), start=1)]
    return Table(list(ds.column_names), rows, where, sha)


def _dict_rows(ds, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    bad = [name for name in ds if name not in SPLITS]
    if bad:
        raise ProbeFormatError(
            f"{where}: a DatasetDict with split {bad[0]!r}; saetools knows the splits 'train' and "
            f"'test': read one split's folder ({where}/{bad[0]}) instead, which gets a seeded split"
        )
    for name in ds:
        if "split" in ds[name].column_names:
            raise ProbeFormatError(
                f"{where}/{name}: a column 'split' in a DatasetDict that is split already"
            )
        for i, r in enumerate(ds[name].to_list(), start=1):
            yield f"{where}/{name}:row {i}", {**r, "split": name}


def _folder_sha256(path: Path) -> str:
    """sha256 over the folder's files (relative path and bytes, in sorted order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode("utf-8") + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()
